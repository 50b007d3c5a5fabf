"""HDF5 files: opening for reading with one clear error (shared by datasets, weights and
shards), and writing under a temporary name renamed when complete."""

from __future__ import annotations

import errno
import os

from mpcgpu.util import atomic as _atomic
from mpcgpu.errors import MPCError


#: what h5py (and code reading a file's contents) raises on a damaged or malformed file,
#: beyond OSError: RuntimeError and KeyError on damaged metadata, ValueError / TypeError /
#: IndexError on a garbled datatype, shape or attribute (found by tests/test_fuzz_readers.py)
DAMAGE = (OSError, RuntimeError, KeyError, ValueError, TypeError, IndexError, OverflowError)
#: OS errors that say nothing about the file's contents (while writing elsewhere, say)
_OS_TROUBLE = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.EMFILE, errno.ENFILE}


def is_damage(exc) -> bool:
    """Whether ``exc``, raised while reading a file, means the file is damaged or malformed."""
    if isinstance(exc, MPCError) or not isinstance(exc, DAMAGE):
        return False
    return not (isinstance(exc, OSError) and exc.errno in _OS_TROUBLE)


def damaged_message(what: str, path, exc) -> str:
    return f"{what} {path} is damaged or malformed ({exc.__class__.__name__}: {exc}); nothing was used from it"


_CHECKED = None


def _checked_file_class():
    """``h5py.File`` whose ``with`` block turns a damage error into the caller's MPCError."""
    global _CHECKED
    if _CHECKED is None:
        import h5py

        class CheckedFile(h5py.File):
            def __exit__(self, kind, value, tb):
                super().__exit__(kind, value, tb)
                if value is not None and is_damage(value):
                    raise self._mpc_error(damaged_message(self._mpc_what, self._mpc_path, value)) from None
                return False

        _CHECKED = CheckedFile
    return _CHECKED


def open_for_reading(path, error, what: str):
    """``h5py.File(path, "r")``, or ``error(message)`` naming ``what`` and the problem:
    missing, not a file, or not readable as HDF5 (truncated, corrupt or another format).
    Used as ``with open_for_reading(...) as f:``, an h5py or decoding error inside the block
    (damaged metadata, a garbled attribute, a dataset of an impossible shape) also becomes
    ``error(message)``: a clear message, never a traceback."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise error(f"{what} not found: {path} does not exist")
    if not os.path.isfile(path):
        raise error(f"{what} {path} is not a file")
    try:
        f = _checked_file_class()(path, "r")
    except OSError as exc:
        raise error(f"{what} {path} cannot be opened as HDF5 (truncated, corrupt or not HDF5): {exc}") from None
    f._mpc_error, f._mpc_what, f._mpc_path = error, what, path
    return f


# writing: a temporary name in the same directory, fsync, rename (mpcgpu.util.atomic)
written_atomically = _atomic.written_atomically
