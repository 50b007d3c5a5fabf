"""Kernel sets: the local steps of the protocols, one implementation per kind of hardware.

A protocol with steps (the MSB-corrected truncation of :mod:`mpcgpu.sharing.truncation`;
the adder inputs, the MSB tree and the product with a shared bit of
:mod:`mpcgpu.protocols.convert`) is written **once**.  Its body chooses the roles, draws
the PRG words and makes the exchanges; between two exchanges it calls a named *step* of
``rt.kernels`` for the local computation (``trunc_deal``, ``msb_level``, ``inject_p1_term``
...: :data:`STEPS`).  A kernel set computes the step's outputs from its inputs and nothing
else: no exchange, no PRG draw, no role.  Every kernel set computes the same words, so the
messages and the outputs are bit for bit the same whichever runs (tests/test_kernelsets_mpi.py
runs every protocol under every kernel set available here from the same randomness).  Where
a step consumes PRG words (the masks of an AND or of a resharing), the body draws them at
the granularity that every set agrees on -- the two raw streams of a zero share
(:meth:`mpcgpu.crypto.prg.PartyPRG.zero_share_parts`), the ``(rows, n)`` block of a pair key --
and the step combines them.

The sets (:data:`KERNEL_SETS`):

``array``
    :class:`~mpcgpu.kernelsets.array.ArraySteps`: array-module code (NumPy, CuPy and the
    strict back end).  The reference: every other set must give its words.
``numba``
    :class:`~mpcgpu.kernelsets.numba_cpu.NumbaSteps`: the fused CPU kernels of
    :mod:`mpcgpu.kernelsets.fused`, :mod:`mpcgpu.kernelsets.fused_trunc` and
    :mod:`mpcgpu.kernelsets.fused_relu`, one pass
    over memory per step instead of one per word operation.  NumPy back end, numba
    importable.  Cases the kernels do not cover (``keep=True`` truncation, a bit broadcast
    against ``x``, ``b2a`` alone) run the array steps.
``cupy``
    :class:`~mpcgpu.kernelsets.cupy_raw.CupySteps`: the place of CuPy raw / elementwise
    kernels (one launch per step on a GPU).  Today it has none and runs the array steps; it
    is registered so the choice, the tests and the documentation already treat it as a set.
    On the CUDA back end and on ``strict`` (which stands in for it); it never imports CuPy
    itself (it gets arrays from the back end).

The choice is made once, at :func:`mpcgpu.init` (:func:`choose_kernel_set`), and kept on the
runtime as ``rt.kernels``; ``with rt.using_kernels("array"): ...`` runs a block under
another set (tests).  The request is read in one place, :func:`requested_kernel_set`.
"""

from __future__ import annotations

import importlib


from ..errors import BackendError

#: the environment variable of the request (read by :func:`requested_kernel_set` only)
ENV = "MPCGPU_FUSED"

#: name -> (module, class), in the order of preference of ``auto``
KERNEL_SETS = {
    "cupy": ("mpcgpu.kernelsets.cupy_raw", "CupySteps"),
    "numba": ("mpcgpu.kernelsets.numba_cpu", "NumbaSteps"),
    "array": ("mpcgpu.kernelsets.array", "ArraySteps"),
}

#: every step a kernel set provides (all of them are methods of ArraySteps)
STEPS = (
    "prg_buffer",
    # MSB-corrected truncation (sharing/truncation.py)
    "trunc_deal",
    "trunc_open_message",
    "trunc_open_half",
    # adder inputs of A2B / MSB (protocols/convert.py)
    "adder_sum",
    "adder_and",
    # MSB tree (protocols/convert.py)
    "msb_level1",
    "msb_level",
    "msb_final",
    # product with a shared bit, bit injection (protocols/convert.py)
    "inject_p0_message",
    "inject_p1_message",
    "inject_p2_message",
    "inject_p0_term",
    "inject_p1_term",
    "inject_p2_term",
)


def requested_kernel_set(settings=None) -> str:
    """The kernel set asked for: ``"auto"`` or a name of :data:`KERNEL_SETS`, from the
    ``kernels`` setting (``MPCGPU_FUSED``: ``1`` or unset -> ``auto``, ``0`` -> ``array``, or a
    set's name; :mod:`mpcgpu.settings`, default: this process's settings)."""
    from .. import settings as settings_mod

    return (settings if settings is not None else settings_mod.active()).kernels


def _class(name: str):
    if name not in KERNEL_SETS:
        raise BackendError(f"unknown kernel set {name!r}; choose auto or one of {', '.join(KERNEL_SETS)}")
    module, cls = KERNEL_SETS[name]
    return getattr(importlib.import_module(module), cls)


def why_not(name: str, backend) -> str | None:
    """Why kernel set ``name`` cannot run on ``backend`` (None: it can)."""
    return _class(name).why_not(backend)


def available(backend) -> list:
    """The names of the kernel sets that run on ``backend`` (the reference ``array`` first)."""
    names = [n for n in KERNEL_SETS if why_not(n, backend) is None]
    return sorted(names, key=lambda n: n != "array")


_BUILT = {}


def build(name: str, backend):
    """Kernel set ``name`` for ``backend`` (one instance per set and back end), or a
    :class:`~mpcgpu.errors.BackendError` saying why it cannot run there."""
    why = why_not(name, backend)
    if why is not None:
        raise BackendError(f"kernel set {name!r}: {why}")
    key = (name, id(backend))
    if key not in _BUILT or _BUILT[key].backend is not backend:
        _BUILT[key] = _class(name)(backend)
    return _BUILT[key]


def choose_kernel_set(backend, requested: str = "auto"):
    """The kernel set a runtime on ``backend`` uses: ``requested`` by name, or for ``auto``
    the first of :data:`KERNEL_SETS` that runs there (CUDA and strict: ``cupy``; NumPy with
    numba: ``numba``; else ``array``).  Its limb steps (the ring products' split and
    combination) are installed in :mod:`mpcgpu.ring.limbs` for the whole process."""
    requested = (requested or "auto").strip().lower()
    if requested != "auto":
        return _installed(build(requested, backend))
    for name in KERNEL_SETS:
        if why_not(name, backend) is None:
            return _installed(build(name, backend))
    raise BackendError("no kernel set runs here")  # pragma: no cover (array always runs)


def _installed(chosen):
    """``chosen``, its limb steps installed for the ring products of this process (the array
    code where it has none; the ring's fused steps serve NumPy arrays only)."""
    from ..ring import limbs

    limbs.use_fused_steps(chosen.limb_steps)
    return chosen


def describe(backend, requested: str | None = None) -> str:
    """One line: the set that ``requested`` (default: the ``kernels`` setting) chooses on
    ``backend`` and why the others are not."""
    chosen = choose_kernel_set(backend, requested or requested_kernel_set())
    others = [f"{n}: {why_not(n, backend) or 'available'}" for n in KERNEL_SETS if n != chosen.name]
    return f"protocol kernels: {chosen.name} ({'; '.join(others)}); {ENV}=0 runs the array code"


__all__ = [
    "ENV",
    "KERNEL_SETS",
    "STEPS",
    "requested_kernel_set",
    "why_not",
    "available",
    "build",
    "choose_kernel_set",
    "describe",
]
