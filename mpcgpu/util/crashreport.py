"""Getting a last message out of a process that is about to end (abort or kill).

Under ``mpiexec`` a rank's stderr is a pipe read by the launcher's proxy; an abort (or a
kill) can end the job before the proxy has read what was written.  :func:`report_then_wait`
writes the text in full, then waits until the reader has taken every byte.
"""

from __future__ import annotations

import os
import time


def write_fully(fd: int, data: bytes):
    while data:
        try:
            written = os.write(fd, data)
        except OSError:
            return
        data = data[written:]


def pending_bytes(fd: int) -> int:
    """Bytes written to ``fd`` that its reader has not taken yet (a pipe: FIONREAD works on
    either end; a socket: the unsent output queue); 0 for anything else."""
    import array
    import fcntl
    import stat
    import termios

    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISFIFO(mode):
            request = termios.FIONREAD
        elif stat.S_ISSOCK(mode):
            request = termios.TIOCOUTQ
        else:
            return 0
        count = array.array("i", [0])
        fcntl.ioctl(fd, request, count, True)
        return int(count[0])
    except (OSError, ValueError, AttributeError):
        return 0


def report_then_wait(text: str, fd: int = 2, limit: float = 10.0):
    """Write ``text`` to ``fd`` in full, then make sure it left this process before an abort
    can tear the job down: a file is fsync'ed; a pipe or socket (the MPI launcher's proxy
    reads ranks' stderr through one) is waited on until the reader has taken every byte
    (at most ``limit`` seconds).  Without the wait, the abort raced the launcher's read and
    the exception's text was lost in about one run of 40."""
    write_fully(fd, text.encode(errors="replace"))
    try:
        os.fsync(fd)  # a regular file; EINVAL for a pipe or a terminal
    except OSError:
        pass
    deadline = time.monotonic() + limit
    while pending_bytes(fd) > 0 and time.monotonic() < deadline:
        time.sleep(0.01)
