"""The result owner's files of a job that reveals outputs (``infer --out``, ``generate
--out``): checked writable before any computation, then written atomically with mode 0600,
the arrays first and their metadata JSON last (its presence says the set is complete).

Moved here from ``mpcgpu/jobs/infer.py`` (unchanged) so that every job that writes such a
set shares one copy."""

from __future__ import annotations

import os

from mpcgpu.errors import MPCError
from mpcgpu.util.results import save_json, save_npy, writable_problem


def write_outputs(paths: dict, arrays: dict, meta: dict) -> list:
    """The owner's files: arrays first, the metadata JSON last (its presence says the set
    is complete); each written atomically with mode 0600 (they are the owner's alone).
    ``paths``: ``main`` (every array but ``scores``), ``scores`` (if such an array is
    given), ``meta``.  Returns the paths written."""
    order = [("main", name) for name in arrays if name != "scores"] + (
        [("scores", "scores")] if "scores" in arrays else []
    )
    files, written = {}, []
    for key, name in order:
        path = paths[key]
        save_npy(path, arrays[name], fault="write-predictions", private=True)
        files[name] = {
            "file": os.path.basename(path),
            "shape": list(arrays[name].shape),
            "dtype": str(arrays[name].dtype),
        }
        written.append(path)
    save_json(paths["meta"], dict(meta, files=files), private=True)
    written.append(paths["meta"])
    return written


def check_files(comm, owner: int, paths: dict, summary_json: str | None, role=None) -> None:
    """Before any computation: the owner's output files can be written (else the same
    error on every rank of ``comm``, a collective: ``comm.bcast_object``).  With several
    groups (``role``: the runtime's role communicator), the writer is group 0's owner rank
    and its verdict reaches every group."""
    problem = None
    if comm.rank == owner and (role is None or role.root):
        targets = list(paths.values()) + ([summary_json] if summary_json else [])
        if summary_json and os.path.abspath(summary_json) in {os.path.abspath(p) for p in paths.values()}:
            problem = f"--json {summary_json} is also an output file of --out: choose another name"
        for p in targets:
            problem = problem or writable_problem(p)
    problem = comm.bcast_object(problem, root=owner)
    if role is not None:
        problem = role.bcast_object(problem)  # group 0's verdict in every group (k > 1)
    if problem:
        raise MPCError(f"result owner (party {owner}): {problem}")


__all__ = ["write_outputs", "check_files"]
