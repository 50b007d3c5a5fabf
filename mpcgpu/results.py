"""Result files users keep: arrays as ``.npy``, metadata as JSON, figures as PNG.

Every file is written under a temporary name in its own directory, flushed to disk and
renamed (``os.replace``): a reader sees no file or the complete file, never part of one,
even if the job is killed while writing.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile

import numpy

from .errors import MPCError


@contextlib.contextmanager
def atomic_path(path):
    """``with atomic_path(path) as tmp:`` write the file ``tmp``; on success it is renamed to
    ``path``, on an error removed."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".partial", dir=folder)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a result gets the usual mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save_npy(path, array) -> str:
    """``numpy.save`` to exactly ``path`` (no ``.npy`` appended), atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            numpy.save(fh, numpy.asarray(array), allow_pickle=False)
    return os.fspath(path)


def save_json(path, obj, indent=2) -> str:
    """``json.dump`` to ``path``, atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as fh:
            json.dump(obj, fh, indent=indent)
            fh.write("\n")
    return os.fspath(path)


def writable_problem(path) -> str | None:
    """Why ``path`` cannot be written (missing or read-only folder, a folder in its place),
    or None; checked before a long job so that its result is not lost at the end."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        return f"cannot write {path}: folder {folder} does not exist"
    if os.path.isdir(path):
        return f"cannot write {path}: it is a folder"
    if not os.access(folder, os.W_OK):
        return f"cannot write {path}: folder {folder} is not writable"
    return None


def check_writable(*paths) -> None:
    for p in paths:
        if p:
            problem = writable_problem(p)
            if problem:
                raise MPCError(problem)


__all__ = ["atomic_path", "save_npy", "save_json", "writable_problem", "check_writable"]
