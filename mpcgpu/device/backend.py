"""Array back end: NumPy on the CPU or CuPy on a GPU, behind one handle.

This is the only module of mpcgpu that imports :mod:`cupy`.  Everything else
asks for the array module through :func:`array_module` (given an array) or
:attr:`Backend.xp` (given the runtime), so protocol code is written once and
runs on both.

Device choice: ``device="auto" | "cpu" | "cuda" | "strict"`` or the ``device`` setting
(``MPCGPU_DEVICE``, :mod:`mpcgpu.settings`).  ``strict`` is for tests:
:mod:`mpcgpu.device.strict`, NumPy arithmetic behind
CuPy's rules (no implicit host conversion, no NumPy-only functions, no host/device mixing),
run through the GPU code paths (staged MPI buffers, no CPU-only kernels).  ``auto`` picks
CUDA when CuPy is installed and a GPU is usable, else the CPU.  Asking for ``cuda`` where there is none is a
:class:`~mpcgpu.errors.BackendError`, not a crash.  Each MPI rank is mapped to
GPU ``local_rank % device_count``.

Moves between host and device are always explicit (:meth:`Backend.to_device`,
:meth:`Backend.to_host`); nothing converts implicitly.
"""

from __future__ import annotations

import sys

import numpy

from mpcgpu.errors import BackendError
from mpcgpu import settings

DEVICES = ("auto", "cpu", "cuda", "strict")


def _cupy_if_loaded():
    return sys.modules.get("cupy")


def _strict_if_loaded():
    return sys.modules.get("mpcgpu.device.strict")


def array_module(*arrays):
    """The module (numpy, cupy or mpcgpu.device.strict) that owns ``arrays``; numpy if none is a device array."""
    st = _strict_if_loaded()
    if st is not None:
        for a in arrays:
            if isinstance(a, st.ndarray):
                return st
    cp = _cupy_if_loaded()
    if cp is not None:
        for a in arrays:
            if isinstance(a, cp.ndarray):
                return cp
    return numpy


def is_device_array(a) -> bool:
    """A CuPy array, or an array of the strict test back end (which stands in for one)."""
    st = _strict_if_loaded()
    if st is not None and isinstance(a, st.ndarray):
        return True
    cp = _cupy_if_loaded()
    return cp is not None and isinstance(a, cp.ndarray)


def _import_cupy():
    try:
        import cupy  # noqa: WPS433 (the one place cupy is imported)
    except Exception as exc:  # ImportError, or a broken CUDA install
        return None, f"CuPy cannot be imported ({exc.__class__.__name__}: {exc})"
    try:
        ok = bool(cupy.cuda.is_available())
    except Exception as exc:
        return None, f"CUDA is not usable ({exc})"
    if not ok:
        return None, "CuPy is installed but no CUDA GPU is visible"
    return cupy, None


def local_rank() -> int:
    """Rank of this process among those on the same node (the launcher's variables, resolved
    with the settings: ``local_rank``)."""
    return settings.active().local_rank


class Backend:
    """Where share data lives.  ``xp`` is numpy, cupy or mpcgpu.device.strict; ``name`` is "cpu",
    "cuda" or "strict"."""

    @staticmethod
    def requested_device(device: str | None = None) -> str:
        """``device``, else the ``device`` setting (``MPCGPU_DEVICE``, default "auto");
        BackendError for an unknown name."""
        requested = (device or settings.active().device).lower()
        if requested not in DEVICES:
            raise BackendError(f"unknown device {requested!r}; choose one of {', '.join(DEVICES)}")
        return requested

    def __init__(self, device: str | None = None, node_rank: int | None = None):
        requested = self.requested_device(device)
        self.requested = requested
        self.device_id = None
        if requested == "cpu":
            self._cpu()
            return
        if requested == "strict":
            from mpcgpu.device import strict

            self.xp = strict
            self.name = "strict"
            return
        cp, why = _import_cupy()
        if cp is None:
            if requested == "cuda":
                raise BackendError(
                    f"device 'cuda' was requested but {why}. Install the GPU extra "
                    "(pip install 'mpcgpu[cuda]') on a machine with an NVIDIA GPU, or use --device cpu."
                )
            self._cpu()
            return
        self.xp = cp
        self.name = "cuda"
        count = cp.cuda.runtime.getDeviceCount()
        self.device_id = (local_rank() if node_rank is None else node_rank) % count
        cp.cuda.Device(self.device_id).use()

    def _cpu(self):
        self.xp = numpy
        self.name = "cpu"

    @property
    def is_gpu(self) -> bool:
        """Whether arrays live off the host: CUDA, or the strict back end standing in for it
        (so that tests run the GPU code paths: staged MPI buffers, no CPU-only kernels)."""
        return self.name in ("cuda", "strict")

    def to_device(self, a):
        """Host (NumPy) array -> this back end's array (a copy on the GPU; as is on the CPU)."""
        if self.is_gpu:
            if self.name == "strict" and not is_device_array(a):
                a = numpy.array(a, copy=True)  # a copy, as a host -> device move is
            return self.xp.asarray(a)
        return numpy.asarray(a)

    def to_host(self, a):
        """Back-end array -> NumPy array."""
        if is_device_array(a):
            return a.get()
        return numpy.asarray(a)

    def synchronize(self):
        """Wait for queued GPU work (a no-op on the CPU and the strict back end)."""
        if self.name == "cuda":
            self.xp.cuda.get_current_stream().synchronize()

    def describe(self) -> str:
        if self.name == "cuda":
            return f"cuda:{self.device_id}"
        if self.name == "strict":
            return "strict (NumPy arrays under CuPy's rules, for tests)"
        return "cpu"

    def __repr__(self):
        return f"Backend({self.describe()})"
