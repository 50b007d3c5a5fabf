"""Files written whole or not at all: a temporary name in the same directory, fsync, rename.

A reader (or a job killed half-way) sees the previous file or the complete new one, never
half of one.  The temporary file is ``<path>.partial``; after a kill (SIGKILL, a lost node:
no clean-up runs) it may remain, and the next write of the same path replaces it.  The
directory is fsync'ed after the rename so that the new name survives a crash of the host.

Secret files (shards, checkpoints, private keys, the result owner's outputs) are written
with ``private=True``: the temporary file is created with mode 0600 before a byte is
written (whatever the umask), so the file is never readable by others, not even for a
moment (docs/design.md §12).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys

from mpcgpu.util import faults
from mpcgpu.errors import MPCError


#: the mode of every secret file: read and write for its owner, nothing for anyone else
PRIVATE_MODE = 0o600


def create_private(path) -> str:
    """Create ``path`` empty with mode 0600 exactly (the umask neither widens nor narrows
    it), replacing a leftover of an earlier run; a symbolic link in its place is removed,
    never followed.  Writers then open it for writing (``h5py.File(path, "w")``,
    ``open(path, "wb")``): truncating an existing file keeps its mode."""
    path = os.fspath(path)
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), PRIVATE_MODE)
    try:
        os.fchmod(fd, PRIVATE_MODE)
    finally:
        os.close(fd)
    return path


_PARTY_FILE = re.compile(r"\.party(\d+)(?:\.|$)")
_warned_shared = False


def other_party_files(directory, party: int) -> list:
    """The names in ``directory`` of another party's files (``*.party<j>.*``, ``j != party``),
    sorted; ``[]`` when the directory does not exist."""
    try:
        names = os.listdir(os.fspath(directory) or ".")
    except OSError:
        return []
    found = []
    for name in names:
        m = _PARTY_FILE.search(name)
        if m and int(m.group(1)) != int(party):
            found.append(name)
    return sorted(found)


def check_own_directory(directory, party: int, *, separate_hosts: bool) -> None:
    """Before party ``party`` writes a secret file into ``directory``: another party's file
    there means the directory is shared by servers, and whoever reads it holds two
    parties' components, i.e. every secret.  With separate hosts (a parties file) that is
    an :class:`~mpcgpu.errors.MPCError`; on one machine (the demo, the tests, ephemeral
    keys: the three parties share the disk anyway) it is a warning, printed once."""
    global _warned_shared
    others = other_party_files(directory, party)
    if not others:
        return
    shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
    where = os.path.abspath(os.fspath(directory) or ".")
    if separate_hosts:
        raise MPCError(
            f"party {party}: {where} holds another party's files ({shown}): a directory that two "
            "servers can read gives its readers every secret; give each server a directory of its own"
        )
    if not _warned_shared:
        _warned_shared = True
        print(
            f"mpcgpu [party {party}]: warning: {where} holds other parties' files ({shown}); acceptable "
            "on one machine, but on real servers each party's files must be in a directory of its own",
            file=sys.stderr,
            flush=True,
        )


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
def written_atomically(path, fault: str = "write-output", private: bool = False):
    """``with written_atomically(path) as tmp:`` write ``tmp``; on success it is fsync'ed and
    renamed to ``path``; on an error it is removed.  ``fault``: the fault point
    (:mod:`mpcgpu.util.faults`) reached with the temporary file written, before the rename.
    ``private``: ``tmp`` already exists, empty, with mode 0600 (:func:`create_private`);
    write it by truncating (``"w"``), which keeps the mode."""
    path = os.fspath(path)
    tmp = path + ".partial"
    try:
        if private:
            create_private(tmp)
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
