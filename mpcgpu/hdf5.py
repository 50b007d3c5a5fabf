"""HDF5 files: opening for reading with one clear error (shared by datasets, weights and
shards), and writing under a temporary name renamed when complete."""

from __future__ import annotations

import os

from . import atomic as _atomic


def open_for_reading(path, error, what: str):
    """``h5py.File(path, "r")``, or ``error(message)`` naming ``what`` and the problem:
    missing, not a file, or not readable as HDF5 (truncated, corrupt or another format)."""
    import h5py

    path = os.fspath(path)
    if not os.path.exists(path):
        raise error(f"{what} not found: {path} does not exist")
    if not os.path.isfile(path):
        raise error(f"{what} {path} is not a file")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise error(f"{what} {path} cannot be opened as HDF5 (truncated, corrupt or not HDF5): {exc}") from None


# writing: a temporary name in the same directory, fsync, rename (mpcgpu.atomic)
written_atomically = _atomic.written_atomically
