"""Fault injection for tests: kill this rank at a chosen point of a job.

``MPCGPU_FAULT=POINT:RANK[:N]`` kills party ``RANK`` (SIGKILL to itself: no clean-up, no
excepthook, as the kernel's OOM killer or a lost node would) the ``N``-th time (default 1)
it reaches ``POINT``.  Before dying it writes one line to stderr, complete and read by the
launcher (:func:`mpcgpu.crashreport.report_then_wait`), naming the lost party:

    mpcgpu [party 1] killed by fault injection at 'a2b' (MPCGPU_FAULT=a2b:1) ...

Points (:data:`POINTS`): ``share`` (inside sharing an input, peers waiting), ``a2b`` (between
the adder-input rounds and the prefix tree of A2B / MSB), ``read-shard`` (opening a shard),
``write-shard``, ``write-checkpoint``, ``write-predictions``, ``write-output`` (with the
temporary file written, before it is renamed).  Unset, :func:`point` costs one dictionary
look-up.  A malformed value is an :class:`~mpcgpu.errors.MPCError` on every rank.
"""

from __future__ import annotations

import os
import signal
import time

from .errors import MPCError

ENV = "MPCGPU_FAULT"
POINTS = (
    "share",
    "a2b",
    "read-shard",
    "write-shard",
    "write-checkpoint",
    "write-predictions",
    "write-output",
)

_parsed = {}  # env value -> (point, rank, n)
_seen = {}


def _rank() -> int:
    """This process's MPI rank from the launcher's variables (without initialising MPI:
    the share step runs in one process)."""
    for var in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "SLURM_PROCID", "PMIX_RANK", "MV2_COMM_WORLD_RANK"):
        if os.environ.get(var, "").strip().isdigit():
            return int(os.environ[var])
    return 0


def parse(value: str):
    """``"POINT:RANK[:N]"`` -> ``(point, rank, n)``; MPCError naming the problem otherwise."""
    parts = value.strip().split(":")
    usage = f"{ENV}={value!r}: use POINT:RANK[:N], POINT one of {', '.join(POINTS)}, RANK 0-2, N >= 1"
    if len(parts) not in (2, 3) or parts[0] not in POINTS:
        raise MPCError(usage)
    try:
        rank = int(parts[1])
        n = int(parts[2]) if len(parts) == 3 else 1
    except ValueError:
        raise MPCError(usage) from None
    if not 0 <= rank <= 2 or n < 1:
        raise MPCError(usage)
    return parts[0], rank, n


def point(name: str):
    """Kill this process here if ``MPCGPU_FAULT`` names this point, this rank and this call."""
    value = os.environ.get(ENV)
    if not value:
        return
    if value not in _parsed:
        _parsed[value] = parse(value)
    where, rank, n = _parsed[value]
    if where != name or rank != _rank():
        return
    _seen[name] = _seen.get(name, 0) + 1
    if _seen[name] != n:
        return
    from .crashreport import report_then_wait

    report_then_wait(
        f"mpcgpu [party {rank}] killed by fault injection at {name!r} (call {n}; {ENV}={value}) "
        f"at t={time.time():.3f}: party {rank} is lost\n"
    )
    os.kill(os.getpid(), signal.SIGKILL)
