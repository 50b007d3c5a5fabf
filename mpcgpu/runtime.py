"""The runtime of one party: back end, communicator, PRG and fixed-point settings.

``mpcgpu.init()`` builds it once per process (a second call returns the same
object) and every share and protocol finds it through :func:`get`.

Start-up: the communicator agrees on channel keys with both peers (see
:mod:`mpcgpu.comm.channels`), then one round: each party sends its fresh 16-byte key
``k_i`` to party ``i-1`` (see :mod:`mpcgpu.crypto.prg`), over those channels (sealed), and
to both peers the SHA-256 of its ``MPCGPU_INSECURE_PRG_SEED`` (or of its absence):
the three must agree, or every party stops with an error.
The counters are reset afterwards, so
``comm_stats()`` reports only the user's computation.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback

import numpy

from mpcgpu.device.backend import Backend
from mpcgpu.util import faults
from mpcgpu.util.crashreport import report_then_wait
from mpcgpu.comm.channels import ChannelConfig
from mpcgpu.comm.communicator import Communicator
from mpcgpu.comm.groups import Layout, Place, split_communicators
from mpcgpu.comm.role import RoleComm
from mpcgpu.comm.transport import abort_world, ranks_on_this_node, world, world_rank
from mpcgpu.ring import threads as ring_threads
from mpcgpu.ring.encoding import DEFAULT_FRAC_BITS, safe_limit
from .errors import MPCError, ProtocolError, RankCountError
from .kernelsets import build as build_kernel_set
from .kernelsets import choose_kernel_set
from mpcgpu.crypto.prg import INSECURE_SEED_ENV, PartyPRG, fresh_key, key_label, seed_digest, seeded_key
from . import settings as settings_mod

_RUNTIME = None
_STARTING = None  # the communicator of a runtime being built (for the excepthook's settle)


def tune_malloc():
    """Keep freed memory in the process (glibc): protocols allocate and free arrays of tens to
    hundreds of MB at every step, and memory handed back to the system costs page faults
    when it is taken again (measured on a virtual machine: 50 rounds of a 240 MB array 5.0 s
    -> 1.4 s).  Every array comes from the heap (no ``mmap`` per allocation), and up to 1 GiB
    of free memory stays in the process.  A no-op elsewhere; ``MPCGPU_TUNE_MALLOC=0`` (the
    ``tune_malloc`` setting) turns it off."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -2, -3, -4
    ok = (
        mallopt(M_MMAP_THRESHOLD, 32 << 20)
        and mallopt(M_MMAP_MAX, 0)
        and mallopt(M_TRIM_THRESHOLD, 1 << 30)
        and mallopt(M_TOP_PAD, 256 << 20)
    )
    return bool(ok)


class Runtime:
    """Everything a party needs to run protocols.  ``settings``: the resolved
    :class:`~mpcgpu.settings.Settings` (default: from ``device`` and the environment)."""

    def __init__(
        self,
        device=None,
        precision: int = DEFAULT_FRAC_BITS,
        mpi_comm=None,
        channels=None,
        settings=None,
        wire_hook=None,
    ):
        safe_limit(precision)  # validates the number of fractional bits
        if settings is None:
            settings = settings_mod.resolve(explicit={"device": device})
        elif device is not None:
            settings = settings.replace(device=device)
        self.settings = settings
        if channels is None:
            channels = ChannelConfig.from_settings(settings)  # a key without parties file: an error here
        self.frac_bits = int(precision)
        world_comm = mpi_comm if mpi_comm is not None else world()
        #: this rank's place: its group and party among ``k`` groups (:mod:`mpcgpu.comm.groups`)
        self.place = Place(Layout(world_comm.Get_size(), settings.layout), world_comm.Get_rank())  # before a GPU
        self.group, self.groups = self.place.group, self.place.k
        faults.set_name(self.place.name)
        group_comm, role_comm = split_communicators(world_comm, self.place)
        node_ranks = ranks_on_this_node(world_comm) if self.groups > 1 else None
        self.backend = Backend(settings.device, node_rank=settings.local_rank)
        self.xp = self.backend.xp
        if not self.backend.is_gpu and settings.tune_malloc:
            tune_malloc()
        #: the local steps of the protocols (:mod:`mpcgpu.kernelsets`), chosen once here
        self.kernels = choose_kernel_set(self.backend, settings.kernels)
        global _STARTING
        self.comm = _STARTING = Communicator(
            group_comm,
            self.backend,
            channels=channels,
            wire_hook=wire_hook,
            settings=settings,
            place=self.place,
            node_ranks=node_ranks,
        )
        self.rank = self.comm.rank
        #: the ranks that play this party in the other groups (:mod:`mpcgpu.comm.role`)
        self.role = RoleComm(
            role_comm,
            self.place,
            self.backend,
            peer_timeout=self.comm.peer_timeout,
            wait=settings.wait,
            node_ranks=node_ranks,
        )
        #: this rank's BLAS / numba threads: its share of the cores (:mod:`mpcgpu.ring.threads`)
        self.threads = ring_threads.apply(self.comm.transport.node_ranks, settings.threads)
        self.insecure_seed = settings.insecure_prg_seed
        seed = self.insecure_seed
        own = numpy.frombuffer(
            seeded_key(seed, key_label("pair", self.rank, self.group)) if seed else fresh_key(), dtype=numpy.uint8
        ).copy()
        next_key = self._exchange_keys(own, seed)
        self.prg = PartyPRG(
            own.tobytes(),
            next_key,
            to_device=self.backend.to_device,
            local_key=seeded_key(seed, key_label("local", self.rank, self.group)) if seed else None,
        )
        if seed:
            sys.stderr.write(
                f"mpcgpu: WARNING [party {self.rank}]: {INSECURE_SEED_ENV} is set: every mask is reproducible "
                "from it and NOTHING is private (reproducibility tests only)\n"
            )
        self.comm.reset_stats()
        self._role_calls = 0

    def _exchange_keys(self, own, seed) -> bytes:
        """One round: ``own`` to party i-1 with the digest of ``seed`` (or of its absence),
        the digest alone to party i+1; returns party i+1's key.  ProtocolError on every
        party if the three digests differ: a seed on some parties only would make their keys
        predictable without a word."""
        c = self.comm
        mine = numpy.frombuffer(seed_digest(seed), dtype=numpy.uint8)
        n = mine.size
        got = c.exchange(
            {c.prev: numpy.concatenate([own, mine]), c.next: mine},
            {c.next: ((own.size + n,), numpy.uint8), c.prev: ((n,), numpy.uint8)},
        )
        from_next = self.backend.to_host(got[c.next])
        digests = {self.rank: mine.tobytes(), c.next: from_next[own.size :].tobytes()}
        digests[c.prev] = self.backend.to_host(got[c.prev]).tobytes()
        if len(set(digests.values())) > 1:
            unset = seed_digest(None)
            says = ", ".join(
                f"party {r}: {'unset' if digests[r] == unset else 'seed ' + digests[r].hex()[:12]}" for r in range(3)
            )
            raise ProtocolError(
                f"the parties disagree on {INSECURE_SEED_ENV} ({says}): set it on all three parties "
                "(reproducibility tests only) or on none"
            )
        return from_next[: own.size].tobytes()

    def state(self) -> dict:
        """What continues this party's randomness exactly: PRG streams and the role counter."""
        return {"prg": self.prg.state(), "role_calls": self._role_calls}

    def restore(self, state: dict):
        self.prg.restore(state["prg"])
        self._role_calls = int(state["role_calls"])

    def next_role(self) -> int:
        """The party that deals in the next truncation (the others open).

        Rotates 0, 1, 2, 0, ... identically on every party, which balances the traffic."""
        role = self._role_calls % 3
        self._role_calls += 1
        return role

    def peek_role(self) -> int:
        """The party :meth:`next_role` will return next (without drawing it)."""
        return self._role_calls % 3

    @contextlib.contextmanager
    def overridden(self, **values):
        """Run a block with some settings changed (tests), then put the frozen object back.

        Only the settings that code looks up when it runs (:data:`mpcgpu.settings.LIVE`:
        ``compact_weights``, ``truncation``, the fault injections) can change on a live
        runtime; the others were used at init (the kernel set: :meth:`using_kernels`)."""
        fixed = sorted(set(values) - set(settings_mod.LIVE))
        if fixed:
            raise MPCError(
                f"{', '.join(fixed)}: used once at init, cannot change on a running runtime "
                f"(these can: {', '.join(settings_mod.LIVE)})"
            )
        before = self.settings
        self.settings = before.replace(**values)
        previous = settings_mod.activate(self.settings)
        try:
            yield self.settings
        finally:
            self.settings = before
            settings_mod.activate(previous)

    @contextlib.contextmanager
    def using_kernels(self, name: str):
        """Run a block under kernel set ``name`` (``"array"``, ``"numba"``, ``"cupy"``; a
        :class:`~mpcgpu.errors.BackendError` where it cannot run), then the chosen one again.
        Every set computes the same words and sends the same messages, so the parties need
        not agree on it; tests run a protocol under each and compare."""
        previous = self.kernels
        self.kernels = build_kernel_set(name, self.backend)
        try:
            yield self.kernels
        finally:
            self.kernels = previous

    @property
    def scale(self) -> int:
        return 1 << self.frac_bits

    def name(self) -> str:
        """``"party P"``, or ``"party P of group G"`` with several groups (for messages)."""
        return self.place.name()

    def describe(self) -> str:
        insecure = f", INSECURE reproducible keys ({INSECURE_SEED_ENV})" if self.insecure_seed else ""
        groups = f" of group {self.group} ({self.place.layout.describe()})" if self.groups > 1 else ""
        return (
            f"party {self.rank}/3{groups} on {self.backend.describe()}, {self.frac_bits} fractional bits, "
            f"CUDA-aware MPI: {self.comm.cuda_aware}, protocol kernels: {self.kernels.name}, "
            f"threads: {ring_threads.describe(self.threads)}{insecure}; "
            f"{self.comm.describe_channels()}"
        )


def init(
    device=None,
    precision: int = DEFAULT_FRAC_BITS,
    mpi_comm=None,
    excepthook: bool = True,
    channels=None,
    settings=None,
    cli: dict | None = None,
    wire_hook=None,
    **overrides,
) -> Runtime:
    """Set up (once) and return the runtime of this party.

    Must be called on all three ranks.  ``device``: "auto", "cpu", "cuda" or "strict"
    (default: ``--device``, ``MPCGPU_DEVICE`` or auto).  ``precision``: fractional bits of the
    fixed-point encoding.  With ``excepthook`` an uncaught exception on any rank
    prints its message and aborts all three ranks instead of leaving the others
    waiting.  ``channels``: a :class:`mpcgpu.comm.channels.ChannelConfig` (default: from the
    settings ``key`` / ``parties`` / ``insecure_channels`` / ``peer_timeout``; without them,
    encrypted channels with ephemeral keys).  ``wire_hook``: a test hook on every outgoing
    message (see :mod:`mpcgpu.comm.link`).

    The settings (:mod:`mpcgpu.settings`) are resolved here, once, and kept as
    ``rt.settings``: ``settings`` (a resolved :class:`~mpcgpu.settings.Settings`) or else the
    environment; ``cli``: the command line's values (``{"device": ..., "key": ...}``) over
    the environment; ``overrides`` (``kernels="array"``, ``wait="sleep"``, ...) and ``device`` over
    everything.
    """
    global _RUNTIME
    explicit = dict(overrides, device=device)
    if _RUNTIME is not None:
        if precision != _RUNTIME.frac_bits:
            raise MPCError(
                f"mpcgpu is already initialised with {_RUNTIME.frac_bits} fractional bits; "
                f"cannot switch to {precision} in the same process"
            )
        wanted = Backend.requested_device(device or (cli or {}).get("device") or "auto")
        if wanted not in ("auto", _RUNTIME.backend.name):
            raise MPCError(
                f"mpcgpu is already initialised on {_RUNTIME.backend.describe()}; "
                f"cannot switch to device {wanted!r} in the same process"
            )
        changed = {k: v for k, v in overrides.items() if v is not None and v != getattr(_RUNTIME.settings, k, v)}
        if changed or (settings is not None and settings != _RUNTIME.settings):
            raise MPCError(
                "mpcgpu is already initialised with other settings "
                f"({', '.join(changed) or 'settings='}); they are resolved once per process"
            )
        return _RUNTIME
    if excepthook:
        install_excepthook()  # first: a malformed setting is one clear line on every rank
    if settings is None:
        settings = settings_mod.resolve(explicit=explicit, cli=cli)
    else:
        settings = settings.replace(**explicit)
    previous = settings_mod.activate(settings)
    try:
        _RUNTIME = Runtime(
            precision=precision, mpi_comm=mpi_comm, channels=channels, settings=settings, wire_hook=wire_hook
        )
    except BaseException:
        settings_mod.activate(previous)
        raise
    return _RUNTIME


def get() -> Runtime:
    if _RUNTIME is None:
        raise MPCError("mpcgpu is not initialised: call mpcgpu.init() on all three ranks first")
    return _RUNTIME


def is_initialised() -> bool:
    return _RUNTIME is not None


def install_excepthook():
    """On an uncaught exception: print it (a one-line message for MPCError), then abort all ranks."""
    if getattr(sys.excepthook, "_mpcgpu", False):
        return

    def hook(kind, value, tb):
        who = _RUNTIME.name() if _RUNTIME is not None else f"party {world_rank()}"
        if isinstance(value, MPCError):
            report = f"mpcgpu [{who}] error: {value}\n"
        else:
            report = f"mpcgpu [{who}] crashed:\n" + "".join(traceback.format_exception(kind, value, tb))
        try:
            sys.stdout.flush()
        except Exception:
            pass
        try:
            sys.stderr.flush()
        except Exception:
            pass
        report_then_wait(report)  # unbuffered, complete, and read by the launcher before any abort
        if isinstance(value, RankCountError):
            os._exit(1)  # every rank detects this by itself: nothing to abort
        comm = _RUNTIME.comm if _RUNTIME is not None else _STARTING
        if isinstance(value, MPCError) and comm is not None:
            # usually raised on every rank alike (a collective check): wait until all three have
            # written theirs (at most 3 s, for an error of one party only)
            try:
                comm.settle(3.0)
            except Exception:
                pass
        # the launcher has read the report; give it a moment to pass it on before the abort
        time.sleep(0.3)
        abort_world(1)
        os._exit(1)

    hook._mpcgpu = True
    sys.excepthook = hook
