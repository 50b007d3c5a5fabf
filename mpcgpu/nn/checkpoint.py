"""Training checkpoints: each party writes only what it holds, and resumes exactly.

File ``DIR/ckpt-<step>.party<i>.h5`` (format ``mpcgpu-checkpoint/1``) of party
``i`` holds:

* ``/params/<name>/{first,second}`` -- its two components of every parameter (batch-norm
  running statistics included), attrs ``scale``;
* ``/optim/{master,velocity}/{first,second}`` -- its components of the optimiser state;
* ``/rng`` -- the keys it already holds and the call counters of its three PRG streams,
  and the truncation role counter.  A resumed run continues these streams only under the
  test seed (``MPCGPU_INSECURE_PRG_SEED``, for bit-identical resume tests); otherwise it
  keeps the fresh keys of its own start-up, so that no step re-run after the checkpoint
  is masked by the words of the crashed run (a party would receive ``x + r`` and
  ``x' + r``: their difference);
* with ``k > 1`` groups of three (written by group 0's rank of the party, after the ``k``
  copies of the state were found identical): root attr ``groups`` = ``k`` and
  ``/rng_groups/<g>`` for ``g = 1 .. k-1``, the PRG state of the party's rank in group ``g``
  (``/rng`` is group 0's).  A file without ``groups`` was made by one group;
* root attrs: format, party, step, ``run_id`` (common to the three parties of one run),
  ``meta`` (JSON: settings, position in the data order, history, public dropout RNG),
  ``settings`` (the canonical JSON of everything that determines the computation: every
  computation-relevant argument, the model spec, the package version) and
  ``settings_sha256`` (its SHA-256: a resume with other settings is refused,
  :func:`settings_digest`, :func:`settings_differences`).

A checkpoint holds this party's components of everything and its PRG keys: it is
created with mode 0600, and a directory holding another party's files is refused when
the parties run on separate hosts (:func:`mpcgpu.util.atomic.check_own_directory`).
A file is written under a temporary name and renamed when complete, so a crash leaves
either the previous checkpoint or the new one.  :func:`latest_common` picks the newest
step that all three parties have (one may have died while writing); the two newest are
kept.  Nothing here is sent to another party but the list of step numbers.
"""

from __future__ import annotations

import hashlib
import json
import os
import re

import numpy

from mpcgpu.util.atomic import check_own_directory
from ..errors import MPCError
from mpcgpu.util.hdf5 import open_for_reading, written_atomically

FORMAT = "mpcgpu-checkpoint/1"
KEEP = 2
_NAME = re.compile(r"^ckpt-(\d{8})\.party(\d)\.h5$")


class CheckpointError(MPCError):
    """A checkpoint is missing, corrupt, of another run or of another party."""


def checkpoint_path(directory: str, step: int, party: int) -> str:
    return os.path.join(directory, f"ckpt-{int(step):08d}.party{int(party)}.h5")


def canonical_json(settings: dict) -> str:
    """``settings`` as canonical JSON: sorted keys, no spaces, no NaN (the digest's input)."""
    return json.dumps(settings, sort_keys=True, separators=(",", ":"), allow_nan=False)


def settings_digest(settings: dict) -> str:
    """SHA-256 (hex) of the canonical JSON of a run's computation-relevant settings."""
    return hashlib.sha256(canonical_json(settings).encode()).hexdigest()


def settings_differences(saved: dict | None, current: dict) -> list:
    """The names of the settings whose values differ (sorted; a name missing on one side
    counts); empty when they cannot be told apart by name."""
    saved = saved or {}
    keys = set(saved) | set(current)
    # compare canonical forms: 0.05 and 0.05 parsed back from JSON are equal, 1 and 1.0 are not
    return sorted(
        k
        for k in keys
        if k not in saved or k not in current or canonical_json({k: saved[k]}) != canonical_json({k: current[k]})
    )


def _pair(group, name, pair, scale=None):
    g = group.create_group(name)
    g.create_dataset("first", data=numpy.ascontiguousarray(pair[0], dtype=numpy.uint64))
    g.create_dataset("second", data=numpy.ascontiguousarray(pair[1], dtype=numpy.uint64))
    if scale is not None:
        g.attrs["scale"] = int(scale)


def _read_pair(g):
    return numpy.asarray(g["first"][()], dtype=numpy.uint64), numpy.asarray(g["second"][()], dtype=numpy.uint64)


def save(
    directory: str,
    party: int,
    step: int,
    *,
    run_id: str,
    params: dict,
    optim: dict,
    rng: dict,
    meta: dict,
    settings: dict,
    separate_hosts: bool = False,
    group_rngs: list | None = None,
) -> str:
    """Write this party's checkpoint of ``step`` atomically; keep the newest ``KEEP``.

    ``params``: ``{name: (first, second, scale)}`` host arrays; ``optim``: the optimiser's
    :meth:`~mpcgpu.nn.optim.PrivateSGD.state` (host arrays); ``rng``: the runtime's
    :meth:`~mpcgpu.runtime.Runtime.state`; ``meta``: JSON-serialisable; ``settings``: the
    computation-relevant settings (JSON), stored with their :func:`settings_digest`.
    ``separate_hosts``: the parties run on their own hosts (a parties file), so another
    party's file in ``directory`` is an error rather than a warning.  ``group_rngs``: with
    several groups, every group's ``rng`` in group order (``group_rngs[0]`` is ``rng``)."""
    import h5py

    os.makedirs(directory, exist_ok=True)
    check_own_directory(directory, party, separate_hosts=separate_hosts)
    path = checkpoint_path(directory, step, party)
    with written_atomically(path, "write-checkpoint", private=True) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update(
            {
                "format": FORMAT,
                "party": int(party),
                "step": int(step),
                "run_id": run_id,
                "meta": json.dumps(meta),
                "settings": canonical_json(settings),
                "settings_sha256": settings_digest(settings),
            }
        )
        pg = f.create_group("params")
        for name, (first, second, scale) in params.items():
            _pair(pg, name, (first, second), scale)
        og = f.create_group("optim")
        og.attrs["scale"] = int(optim["scale"])
        og.attrs["steps"] = int(optim["steps"])
        _pair(og, "master", optim["master"])
        _pair(og, "velocity", optim["velocity"])
        _write_rng(f.create_group("rng"), rng)
        if group_rngs is not None and len(group_rngs) > 1:
            f.attrs["groups"] = len(group_rngs)
            gg = f.create_group("rng_groups")
            for g, other in enumerate(group_rngs[1:], start=1):
                _write_rng(gg.create_group(str(g)), other)
    for old in steps_on_disk(directory, party)[:-KEEP]:
        try:
            os.remove(checkpoint_path(directory, old, party))
        except OSError:
            pass
    return path


def _write_rng(rg, rng: dict):
    rg.attrs["role_calls"] = int(rng["role_calls"])
    for stream, (key, calls) in rng["prg"].items():
        rg.attrs[f"{stream}_key"] = numpy.frombuffer(bytes(key), dtype=numpy.uint8)
        rg.attrs[f"{stream}_calls"] = int(calls)


def _read_rng(rg) -> dict:
    prg = {
        s: (bytes(numpy.asarray(rg.attrs[f"{s}_key"], dtype=numpy.uint8)), int(rg.attrs[f"{s}_calls"]))
        for s in ("own", "next", "local")
    }
    return {"prg": prg, "role_calls": int(rg.attrs["role_calls"])}


def steps_on_disk(directory: str, party: int) -> list:
    """The steps of this party's complete checkpoints in ``directory``, ascending."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    steps = []
    for n in names:
        m = _NAME.match(n)
        if m and int(m.group(2)) == int(party):
            steps.append(int(m.group(1)))
    return sorted(steps)


def latest_common(comm, directory: str):
    """The newest step every party has a checkpoint of (a collective), or None."""
    mine = steps_on_disk(directory, comm.rank)
    everyone = comm.allgather_object(mine)
    common = set(everyone[0]).intersection(*map(set, everyone[1:]))
    return max(common) if common else None


def load(directory: str, party: int, step: int) -> dict:
    """This party's checkpoint of ``step``: ``{"run_id", "params", "optim", "rng", "groups",
    "rng_groups", "meta", "settings", "settings_sha256"}`` (the last two None in a checkpoint without them)."""
    path = checkpoint_path(directory, step, party)
    with open_for_reading(path, CheckpointError, "checkpoint") as f:
        try:
            if (
                f.attrs.get("format") != FORMAT
                or int(f.attrs["party"]) != int(party)
                or int(f.attrs["step"]) != int(step)
            ):
                raise CheckpointError(f"{path} is not party {party}'s checkpoint of step {step}")
            params = {name: (*_read_pair(g), int(g.attrs["scale"])) for name, g in f["params"].items()}
            og = f["optim"]
            optim = {
                "master": _read_pair(og["master"]),
                "velocity": _read_pair(og["velocity"]),
                "scale": int(og.attrs["scale"]),
                "steps": int(og.attrs["steps"]),
            }
            rng = _read_rng(f["rng"])
            groups = int(f.attrs.get("groups", 1))
            rngs = [rng] + [_read_rng(f["rng_groups"][str(g)]) for g in range(1, groups)]
            return {
                "run_id": str(f.attrs["run_id"]),
                "params": params,
                "optim": optim,
                "rng": rng,
                "groups": groups,
                "rng_groups": rngs,
                "meta": json.loads(f.attrs["meta"]),
                "settings": json.loads(f.attrs["settings"]) if "settings" in f.attrs else None,
                "settings_sha256": str(f.attrs["settings_sha256"]) if "settings_sha256" in f.attrs else None,
            }
        except (KeyError, ValueError, OSError) as exc:
            raise CheckpointError(f"{path} is incomplete or corrupt: {exc}") from None


__all__ = [
    "FORMAT",
    "CheckpointError",
    "canonical_json",
    "settings_digest",
    "settings_differences",
    "checkpoint_path",
    "save",
    "load",
    "steps_on_disk",
    "latest_common",
]
