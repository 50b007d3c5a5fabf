"""Fault injection for tests: kill this rank at a chosen point of a job.

``MPCGPU_FAULT=POINT:RANK[:N]`` kills party ``RANK`` (SIGKILL to itself: no clean-up, no
excepthook, as the kernel's OOM killer or a lost node would) the ``N``-th time (default 1)
it reaches ``POINT``.  Before dying it writes one line to stderr, complete and read by the
launcher (:func:`mpcgpu.util.crashreport.report_then_wait`), naming the lost party:

    mpcgpu [party 1] killed by fault injection at 'a2b' (MPCGPU_FAULT=a2b:1) ...

Points (:data:`POINTS`): ``share`` (inside sharing an input, peers waiting), ``a2b`` (between
the adder-input rounds and the prefix tree of A2B / MSB), ``read-shard`` (opening a shard),
``write-shard``, ``write-checkpoint``, ``write-predictions``, ``write-output`` (with the
temporary file written, before it is renamed).  Unset, :func:`point` costs one dictionary
look-up.  A malformed value is an :class:`~mpcgpu.errors.MPCError` on every rank (raised when
the settings are resolved: :mod:`mpcgpu.settings`, the ``fault`` setting).
"""

from __future__ import annotations

import os
import signal
import time

from mpcgpu import settings

ENV = "MPCGPU_FAULT"
POINTS = settings.FAULT_POINTS
_seen = {}
#: this rank's name in messages (``"party P of group G"``), set by the runtime once it knows
_name = None


def set_name(name):
    """``name()`` gives this rank's name for the fault's message (the runtime sets it)."""
    global _name
    _name = name


def parse(value: str):
    """``"POINT:RANK[:N]"`` -> ``(point, rank, n)``; MPCError naming the problem otherwise."""
    return settings.resolve(env={ENV: value}).fault


def point(name: str):
    """Kill this process here if the ``fault`` setting (``MPCGPU_FAULT``) names this point,
    this rank (the launcher's rank: the share step runs without MPI) and this call."""
    current = settings.active()
    if current.fault is None:
        return
    where, rank, n = current.fault
    value = ":".join(str(v) for v in current.fault)
    if where != name or rank != current.launch_rank:
        return
    _seen[name] = _seen.get(name, 0) + 1
    if _seen[name] != n:
        return
    from mpcgpu.util.crashreport import report_then_wait

    who = _name() if _name is not None else f"party {rank}"
    report_then_wait(
        f"mpcgpu [{who}] killed by fault injection at {name!r} (call {n}; {ENV}={value}) "
        f"at t={time.time():.3f}: {who} is lost\n"
    )
    os.kill(os.getpid(), signal.SIGKILL)
