"""Argument checks shared by the jobs: a bad value is one clear MPCError on every rank,
before any computation (never a traceback half-way, never a job that runs on nonsense).

Found by the CLI fuzz tests (tests/test_fuzz_cli.py): ``--batch-size 0`` crashed with a
ValueError inside the batch loop, ``--limit -1`` "classified -1 images", ``--lr nan`` crashed
in a protocol, ``--out`` in a missing directory crashed after the whole inference.
"""

from __future__ import annotations

import math

from ..errors import MPCError


def at_least(args, minimum: int, *names):
    """Each ``--name`` (an int, or None when not given) is at least ``minimum``."""
    for name in names:
        v = getattr(args, name, None)
        if v is not None and v < minimum:
            raise MPCError(f"--{name.replace('_', '-')} must be at least {minimum}, not {v}")


def finite(args, *names, positive: tuple = ()):
    """Each ``--name`` (a float or None) is a finite number; those in ``positive`` also > 0."""
    for name in names:
        v = getattr(args, name, None)
        if v is None:
            continue
        if not math.isfinite(v):
            raise MPCError(f"--{name.replace('_', '-')} must be a finite number, not {v}")
        if name in positive and v <= 0:
            raise MPCError(f"--{name.replace('_', '-')} must be positive, not {v}")


def peek_frac_bits(stem, rank):
    """The fractional bits recorded in this party's shard (a job's default --precision,
    needed before the runtime starts and the collective checks run)."""
    import h5py

    from ..data.shards import resolve_path

    try:
        with h5py.File(resolve_path(stem, rank), "r") as f:
            return int(f.attrs.get("frac_bits", 16))
    except Exception:
        return 16  # open_shard reports the real problem on every rank


def launch_party(args=None):
    """This rank's party before the runtime starts, from the launch's rank count and layout
    (``--layout`` / ``MPCGPU_LAYOUT``; :mod:`mpcgpu.comm.groups`): whose shard a job peeks at
    for its defaults.  With 3 ranks it is the world rank; where the count breaks the rule
    (``mpcgpu.init`` reports that on every rank), the world rank."""
    from mpcgpu.comm.groups import Layout
    from mpcgpu.comm.transport import world, world_rank

    from ..settings import resolve
    from .channel_args import cli_settings

    try:
        w = world()
        kind = resolve(cli=cli_settings(args) if args is not None else None).layout
        return Layout(w.Get_size(), kind).party(w.Get_rank())
    except Exception:
        return world_rank()
