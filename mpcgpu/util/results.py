"""Result files users keep: arrays as ``.npy``, metadata as JSON, figures as PNG.

Every file is written under a temporary name in its own directory, flushed to disk and
renamed (``os.replace``): a reader sees no file or the complete file, never part of one,
even if the job is killed while writing.
"""

from __future__ import annotations

import json
import os

import numpy

from mpcgpu.util.atomic import written_atomically as atomic_path  # the one atomic writer
from mpcgpu.errors import MPCError


def save_npy(path, array, fault: str = "write-output", private: bool = False) -> str:
    """``numpy.save`` to exactly ``path`` (no ``.npy`` appended), atomically (``fault``: the
    fault point of :mod:`mpcgpu.util.faults` reached before the rename; ``private``: mode 0600)."""
    with atomic_path(path, fault, private=private) as tmp:
        with open(tmp, "wb") as fh:
            numpy.save(fh, numpy.asarray(array), allow_pickle=False)
    return os.fspath(path)


def save_json(path, obj, indent=2, fault: str = "write-output", private: bool = False) -> str:
    """``json.dump`` to ``path``, atomically (``private``: mode 0600)."""
    with atomic_path(path, fault, private=private) as tmp:
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
