"""The GPU kernel set: the place of CuPy raw / elementwise kernels for the local steps.

On a GPU every array operation of :class:`~mpcgpu.kernelsets.array.ArraySteps` is one
kernel launch and one temporary in device memory; a step written as one
``cupy.ElementwiseKernel`` (or ``RawKernel``) would be one launch.  None is written yet:
every step here is the array step.  To add one, override the step in :class:`CupySteps`
with a kernel built from the array module of the back end (``self.xp`` is CuPy on the CUDA
back end -- never ``import cupy`` here: :mod:`mpcgpu.device.backend` is the one module that imports
it), computing the array step's words from the same inputs, and run
tests/test_kernelsets_mpi.py on a GPU (it compares every available set with ``array``).

Runs on the CUDA back end and on ``strict`` (CuPy's rules over NumPy, which stands in for
it in the tests); ``auto`` chooses it there.
"""

from __future__ import annotations

from .array import ArraySteps


class CupySteps(ArraySteps):
    """The GPU kernel set: today the array steps (see the module docstring)."""

    name = "cupy"

    @classmethod
    def why_not(cls, backend) -> str | None:
        if backend.name not in ("cuda", "strict"):
            return f"GPU kernels run on the CUDA back end (or strict), not on {backend.name}"
        return None


__all__ = ["CupySteps"]
