"""Every setting of mpcgpu, resolved once (issue 19).

A :class:`Settings` object is frozen: it is built once, at :func:`mpcgpu.init` (kept as
``rt.settings``), or by a command that runs without the parties (``mpcgpu info``,
``mpcgpu share``), and nothing reads the environment again afterwards.  Each value comes
from the first of, in this order:

1. an **argument** (``mpcgpu.init(kernels="array")``, ``init(settings=...)``);
2. the **command line** (``--device``, ``--key``, ``--parties``, ``--insecure-channels``,
   ``--peer-timeout``);
3. the **environment** (``MPCGPU_*``, see :data:`SETTINGS`; an empty variable counts as unset);
4. the **default**.

A value that does not parse is an :class:`~mpcgpu.errors.MPCError` (a subclass where the
code raised one before: ``BackendError`` for the device and the ring kernel, ``ChannelError``
for the channels) naming the variable and the allowed values.

This is the only module of mpcgpu that reads ``os.environ`` (``tests/test_settings.py``
scans the sources); a child process gets its environment from :func:`environment`.

Modules below the runtime that are used without one (fault injection in the share step,
the kernel choice, the back end) take :func:`active`: the settings of ``mpcgpu.init`` once it
ran, else the settings resolved from the environment on first use (once per process).
"""

from __future__ import annotations

import math
import os
import types
from dataclasses import dataclass, field, fields

from .errors import BackendError, ChannelError, MPCError, RankCountError

ARGUMENT, COMMAND_LINE, ENVIRONMENT, DEFAULT = "argument", "command line", "environment", "default"

#: where ``MPCGPU_FAULT`` may kill a rank (see :mod:`mpcgpu.util.faults`)
FAULT_POINTS = (
    "share",
    "a2b",
    "read-shard",
    "write-shard",
    "write-checkpoint",
    "write-predictions",
    "write-output",
)
#: the launchers' variables of a process's rank on its node, and in the world
LOCAL_RANK_VARS = (
    "MPI_LOCALRANKID",
    "OMPI_COMM_WORLD_LOCAL_RANK",
    "SLURM_LOCALID",
    "MV2_COMM_WORLD_LOCAL_RANK",
    "PMI_LOCAL_RANK",
)
LAUNCH_RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "SLURM_PROCID", "PMIX_RANK", "MV2_COMM_WORLD_RANK")

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


# -- converters: a string (environment, command line) or a typed value -> the canonical value;
#    ValueError when it is not allowed
def _choice(*options):
    def convert(value):
        text = str(value).strip().lower()
        if text not in options:
            raise ValueError
        return text

    return convert


def _flag(value) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError


def _kernel_set(value) -> str:
    """The kernel set asked for (:mod:`mpcgpu.kernelsets`): ``1``/true -> ``auto``, ``0``/false ->
    ``array`` (the names of the old on/off switch of the fused kernels), or a set's name."""
    text = str(value).strip().lower()
    if text in ("auto", "array", "numba", "cupy"):
        return text
    return "auto" if _flag(value) else "array"


def _auto_flag(value):
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return None
    return _flag(value)


def _threads(value):
    """``auto`` (None: each rank's share of the cores) or a number of threads >= 1."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return None
    if isinstance(value, bool):
        raise ValueError
    n = int(str(value).strip()) if isinstance(value, str) else int(value)
    if n < 1:
        raise ValueError
    return n


def _text(value):
    if not isinstance(value, str):
        raise ValueError
    return value


def _seconds(value) -> float:
    if isinstance(value, bool):
        raise ValueError
    seconds = float(value)
    if math.isnan(seconds) or seconds < 0:
        raise ValueError
    return seconds


def _rank(value) -> int:
    if isinstance(value, bool):
        raise ValueError
    rank = int(str(value).strip()) if isinstance(value, str) else int(value)
    if rank < 0:
        raise ValueError
    return rank


def _fault(value):
    """``"POINT:RANK[:N]"`` (or the tuple) -> ``(point, rank, n)``."""
    parts = value.strip().split(":") if isinstance(value, str) else list(value)
    if len(parts) not in (2, 3) or parts[0] not in FAULT_POINTS:
        raise ValueError
    rank, n = int(parts[1]), int(parts[2]) if len(parts) == 3 else 1
    if rank < 0 or n < 1:
        raise ValueError
    return (parts[0], rank, n)


def _step_fault(value):
    """``"STEP:RANK"`` (or the tuple) -> ``(step, rank)``."""
    parts = value.strip().split(":") if isinstance(value, str) else list(value)
    if len(parts) != 2:
        raise ValueError
    step, rank = int(parts[0]), int(parts[1])
    if step < 0 or rank < 0:
        raise ValueError
    return (step, rank)


def _home_cache() -> str:
    return os.path.join(os.path.expanduser("~"), ".cache")


def _show(value) -> str:
    if value is None:
        return "auto"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, tuple):
        return ":".join(str(v) for v in value)
    return str(value)


def _show_unset(value) -> str:
    return "-" if value is None else _show(value)


@dataclass(frozen=True)
class Setting:
    """One setting: its field, variable(s), converter, allowed values and meaning."""

    name: str
    env: tuple  # variable names, the first set one counts
    convert: object
    allowed: str
    doc: str
    error: type = MPCError
    option: str | None = None  # the command-line option, where there is one
    show: object = _show

    @property
    def variable(self) -> str:
        """The variable (the first of several: the launchers' rank variables)."""
        return self.env[0] if len(self.env) == 1 else f"{self.env[0]}, ..."


#: every setting, in the order ``mpcgpu info`` lists them
SETTINGS = (
    Setting(
        "device",
        ("MPCGPU_DEVICE",),
        _choice("auto", "cpu", "cuda", "strict"),
        "choose one of auto, cpu, cuda, strict",
        "array back end (auto: CUDA when CuPy and a GPU are usable)",
        BackendError,
        "--device",
    ),
    Setting(
        "kernels",
        ("MPCGPU_FUSED",),
        _kernel_set,
        "use auto, array, numba, cupy, 1 (auto) or 0 (array)",
        "kernel set of the protocols' local steps (auto: numba on the CPU, the GPU slot on CUDA)",
    ),
    Setting(
        "truncation",
        ("MPCGPU_TRUNCATION",),
        _choice("dealer", "hidden"),
        "use dealer (the default) or hidden",
        "every default truncation: rotating dealer (2 rounds) or hidden threshold (12 rounds)",
    ),
    Setting(
        "ring_kernel",
        ("MPCGPU_RING_KERNEL",),
        _choice("auto", "limbs", "native"),
        "choose limbs, native or auto",
        "CPU ring products (auto: measured once per machine, per product shape class)",
        BackendError,
    ),
    Setting(
        "threads",
        ("MPCGPU_THREADS",),
        _threads,
        "use auto or a number of threads >= 1",
        "BLAS and numba threads of each rank (auto: its share of the cores, cores // ranks on the machine)",
    ),
    Setting(
        "compact_weights",
        ("MPCGPU_COMPACT_WEIGHTS",),
        _auto_flag,
        "use 0 (hold both components), 1 (compact) or auto",
        "inference keeps one component of large weights (auto: models of 2^26 parameters or more)",
    ),
    Setting(
        "wait",
        ("MPCGPU_WAIT",),
        _choice("auto", "spin", "sleep"),
        "use spin, sleep or auto",
        "how a party waits for messages (auto: sleep when its node has fewer cores than ranks)",
    ),
    Setting(
        "cuda_aware",
        ("MPCGPU_CUDA_AWARE",),
        _auto_flag,
        "use 1, 0 or auto",
        "whether MPI takes GPU buffers (auto: asked from the MPI library)",
    ),
    Setting(
        "layout",
        ("MPCGPU_LAYOUT",),
        _choice("block", "cyclic"),
        "use block or cyclic",
        "how 3k ranks form k groups of three (block: ranks [pk, pk+k) play party p; cyclic: rank r plays r % 3)",
        RankCountError,
        "--layout",
    ),
    Setting(
        "tune_malloc", ("MPCGPU_TUNE_MALLOC",), _flag, "use 1 or 0", "keep freed memory in the process (CPU, glibc)"
    ),
    Setting(
        "insecure_prg_seed",
        ("MPCGPU_INSECURE_PRG_SEED",),
        _text,
        "any text",
        "INSECURE: derive every PRG key from this text (reproducibility tests only)",
        show=_show_unset,
    ),
    Setting(
        "key",
        ("MPCGPU_KEY",),
        _text,
        "a file name (may contain {party})",
        "this party's private channel key",
        ChannelError,
        "--key",
        _show_unset,
    ),
    Setting(
        "parties",
        ("MPCGPU_PARTIES",),
        _text,
        "a file name",
        "the parties file (the three public keys)",
        ChannelError,
        "--parties",
        _show_unset,
    ),
    Setting(
        "insecure_channels",
        ("MPCGPU_INSECURE_CHANNELS",),
        _flag,
        "use 1 or 0",
        "send every message in clear (trusted network only)",
        ChannelError,
        "--insecure-channels",
    ),
    Setting(
        "peer_timeout",
        ("MPCGPU_PEER_TIMEOUT",),
        _seconds,
        "use a number of seconds >= 0 (0: wait for ever)",
        "abort when a peer is silent this long",
        ChannelError,
        "--peer-timeout",
    ),
    Setting(
        "fault",
        ("MPCGPU_FAULT",),
        _fault,
        f"use POINT:RANK[:N], POINT one of {', '.join(FAULT_POINTS)}, RANK >= 0 (the launcher's rank), N >= 1",
        "tests: kill launcher rank RANK (party RANK of a 3-rank job) the N-th time it reaches POINT",
        show=_show_unset,
    ),
    Setting(
        "fault_kill_after_step",
        ("MPCGPU_FAULT_KILL_AFTER_STEP",),
        _step_fault,
        "use STEP:RANK, STEP >= 0, RANK >= 0 (the launcher's rank)",
        "tests: kill launcher rank RANK (party RANK of a 3-rank job) right after training step STEP",
        show=_show_unset,
    ),
    Setting(
        "cache_home",
        ("XDG_CACHE_HOME",),
        _text,
        "a directory",
        "cache directory (the ring-kernel calibration goes to CACHE_HOME/mpcgpu)",
    ),
    Setting("local_rank", LOCAL_RANK_VARS, _rank, "use an integer >= 0", "launcher: rank on this node (GPU choice)"),
    Setting(
        "launch_rank", LAUNCH_RANK_VARS, _rank, "use an integer >= 0", "launcher: rank in the job (fault injection)"
    ),
)
BY_NAME = {s.name: s for s in SETTINGS}
#: settings that code looks up when it runs (the rest is used once, at init):
#: only these may be changed on a live runtime (``Runtime.overridden``)
LIVE = ("compact_weights", "truncation", "fault", "fault_kill_after_step")


@dataclass(frozen=True)
class Settings:
    """The resolved settings of a process (see the module docstring); build with :func:`resolve`."""

    device: str = "auto"
    kernels: str = "auto"
    truncation: str = "dealer"
    ring_kernel: str = "auto"
    threads: int | None = None
    compact_weights: bool | None = None
    wait: str = "auto"
    cuda_aware: bool | None = None
    layout: str = "block"
    tune_malloc: bool = True
    insecure_prg_seed: str | None = None
    key: str | None = None
    parties: str | None = None
    insecure_channels: bool = False
    peer_timeout: float = 600.0
    fault: tuple | None = None
    fault_kill_after_step: tuple | None = None
    cache_home: str = field(default_factory=_home_cache)
    local_rank: int = 0
    launch_rank: int = 0
    #: ``{name: "argument" | "command line" | "environment" | "default"}``
    sources: types.MappingProxyType = field(
        default_factory=lambda: types.MappingProxyType({}), compare=False, repr=False
    )

    def source(self, name: str) -> str:
        """Where ``name``'s value came from."""
        if name not in BY_NAME:
            raise MPCError(f"no setting {name!r}")
        return self.sources.get(name, DEFAULT)

    def replace(self, **values) -> "Settings":
        """A copy with ``values`` taken as arguments (validated; None leaves a setting as it is)."""
        given = {k: v for k, v in values.items() if v is not None}
        _check_names(given, "argument")
        new = {n: _convert(BY_NAME[n], v, ARGUMENT) for n, v in given.items()}
        changed = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "sources"}
        changed.update(new)
        sources = dict(self.sources)
        sources.update(dict.fromkeys(new, ARGUMENT))
        return Settings(**changed, sources=types.MappingProxyType(sources))

    def rows(self) -> list:
        """``[(name, variable, shown value, source)]`` in the order of :data:`SETTINGS`."""
        return [(s.name, s.variable, s.show(getattr(self, s.name)), self.source(s.name)) for s in SETTINGS]

    def describe(self) -> str:
        """A table, one setting a line (``mpcgpu info``)."""
        rows = self.rows()
        width = max(len(r[0]) for r in rows), max(len(r[1]) for r in rows), max(len(r[2]) for r in rows)
        return "\n".join(f"  {n:<{width[0]}}  {v:<{width[1]}}  {s:<{width[2]}}  ({where})" for n, v, s, where in rows)


def _check_names(values: dict, what: str):
    unknown = sorted(set(values) - set(BY_NAME))
    if unknown:
        raise MPCError(
            f"unknown setting{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} ({what}); known: "
            + ", ".join(BY_NAME)
        )


def _convert(setting: Setting, value, source: str, var: str | None = None):
    try:
        return setting.convert(value)
    except (ValueError, TypeError):
        if source == ENVIRONMENT:
            label = f"{var or setting.variable}={value!r}"
        elif source == COMMAND_LINE and setting.option:
            label = f"{setting.option} {value!r} (the setting {setting.variable})"
        else:
            label = f"{setting.name}={value!r} ({source}; the setting {setting.variable})"
        raise setting.error(f"{label}: {setting.allowed}; {setting.name}: {setting.doc}") from None


def _from_env(setting: Setting, env) -> tuple:
    """``(variable, raw)`` of the first set variable of ``setting``, or ``(None, None)``;
    for the launchers' rank variables, the first that is a number."""
    for var in setting.env:
        raw = env.get(var)
        if raw is None or raw.strip() == "":
            continue
        if len(setting.env) > 1 and not raw.strip().isdigit():
            continue
        return var, raw
    return None, None


def resolve(explicit: dict | None = None, cli: dict | None = None, env=None, problems: list | None = None) -> Settings:
    """The settings from ``explicit`` arguments, then ``cli`` (command-line values), then
    ``env`` (a mapping; default ``os.environ``), then the defaults.  A None value in
    ``explicit`` or ``cli`` counts as not given.  A value that is not valid raises, or, with a
    ``problems`` list, is appended to it as the error and the setting keeps its default
    (``mpcgpu info`` shows everything it can)."""
    explicit = {k: v for k, v in (explicit or {}).items() if v is not None}
    cli = {k: v for k, v in (cli or {}).items() if v is not None}
    _check_names(explicit, "argument")
    _check_names(cli, "command line")
    env = os.environ if env is None else env
    values, sources = {}, {}
    for s in SETTINGS:
        try:
            _resolve_one(s, explicit, cli, env, values, sources)
        except MPCError as exc:
            if problems is None:
                raise
            problems.append(exc)
    return Settings(**values, sources=types.MappingProxyType(sources))


def _resolve_one(s: Setting, explicit: dict, cli: dict, env, values: dict, sources: dict):
    """Set ``values[s.name]`` and ``sources[s.name]`` from the first place that gives it."""
    if s.name in explicit:
        values[s.name], sources[s.name] = _convert(s, explicit[s.name], ARGUMENT), ARGUMENT
    elif s.name in cli:
        values[s.name], sources[s.name] = _convert(s, cli[s.name], COMMAND_LINE), COMMAND_LINE
    else:
        var, raw = _from_env(s, env)
        if var is not None:
            values[s.name], sources[s.name] = _convert(s, raw, ENVIRONMENT, var), ENVIRONMENT


def environment() -> dict:
    """A copy of this process's environment, for a child process (``mpiexec``) to start from."""
    return dict(os.environ)


_ACTIVE = None


def active() -> Settings:
    """The settings of this process: those of ``mpcgpu.init`` (or :func:`activate`), else the
    ones resolved from the environment at the first call."""
    global _ACTIVE
    if _ACTIVE is None:
        _ACTIVE = resolve()
    return _ACTIVE


def activate(settings: Settings | None) -> Settings | None:
    """Make ``settings`` this process's settings (None: resolve again on next use); returns
    the previous ones."""
    global _ACTIVE
    if settings is not None and not isinstance(settings, Settings):
        raise MPCError(f"expected a Settings object, got {type(settings).__name__}")
    previous, _ACTIVE = _ACTIVE, settings
    return previous
