"""Files written whole or not at all: a temporary name in the same directory, fsync, rename.

A reader (or a job killed half-way) sees the previous file or the complete new one, never
half of one.  The temporary file is ``<path>.partial``; after a kill (SIGKILL, a lost node:
no clean-up runs) it may remain, and the next write of the same path replaces it.  The
directory is fsync'ed after the rename so that the new name survives a crash of the host.
"""

from __future__ import annotations

import contextlib
import os

from . import faults


def fsync_file(path: str, directory: bool = False):
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def written_atomically(path, fault: str = "write-output"):
    """``with written_atomically(path) as tmp:`` write ``tmp``; on success it is fsync'ed and
    renamed to ``path``; on an error it is removed.  ``fault``: the fault point
    (:mod:`mpcgpu.faults`) reached with the temporary file written, before the rename."""
    path = os.fspath(path)
    tmp = path + ".partial"
    try:
        yield tmp
        faults.point(fault)
        fsync_file(tmp)
        os.replace(tmp, path)
        fsync_file(os.path.dirname(os.path.abspath(path)), directory=True)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
