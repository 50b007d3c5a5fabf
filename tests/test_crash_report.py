"""The crash report reaches stderr in full before the abort (single process; the
three-rank check launches ``mpiexec -n 3``)."""

import os
import threading
import time

import pytest

from mpcgpu.util.crashreport import pending_bytes, report_then_wait
from test_failures import run_three


def test_report_waits_until_the_reader_took_every_byte():
    r, w = os.pipe()
    got = []
    text = "mpcgpu [party 2] crashed:\n" + "Traceback line\n" * 200 + "RuntimeError: the text that was lost\n"

    def late_reader():
        time.sleep(0.4)
        with os.fdopen(r, "rb") as f:
            got.append(f.read())

    reader = threading.Thread(target=late_reader)
    t0 = time.monotonic()
    reader.start()
    report_then_wait(text, fd=w, limit=10.0)
    waited = time.monotonic() - t0
    assert pending_bytes(w) == 0
    os.close(w)
    reader.join()
    assert waited >= 0.35  # it did wait for the reader
    assert got[0].decode() == text


def test_report_gives_up_after_the_limit_when_nobody_reads():
    r, w = os.pipe()
    try:
        t0 = time.monotonic()
        report_then_wait("x" * 100, fd=w, limit=0.3)
        assert 0.25 <= time.monotonic() - t0 < 3
        assert pending_bytes(w) == 100
    finally:
        os.close(r)
        os.close(w)


def test_report_to_a_regular_file_is_complete(tmp_path):
    path = tmp_path / "err.txt"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        report_then_wait("line one\nline two\n", fd=fd)
    finally:
        os.close(fd)
    assert path.read_text() == "line one\nline two\n"


CRASH = """
    import numpy as np, mpcgpu
    from mpcgpu.sharing.arithmetic import share
    rt = mpcgpu.init(device="cpu")
    x = share(np.ones(1000) if rt.rank == 0 else None)
    if rt.rank == 2:
        raise RuntimeError("boom on party two")
    (x * x).reveal()
    print("finished on", rt.rank)
"""


def _crash_reports(tmp_path, times):
    lost = []
    for i in range(times):
        p, took = run_three(CRASH, tmp_path)
        assert p.returncode != 0 and "finished on" not in p.stdout
        if "RuntimeError: boom on party two" not in p.stderr or "mpcgpu [party 2] crashed:" not in p.stderr:
            lost.append((i, p.stderr[-2000:]))
        assert took < 30
    assert not lost, f"the exception's text was lost in {len(lost)} of {times} runs: {lost[0]}"


def test_crash_report_reaches_stderr_every_time(tmp_path):
    _crash_reports(tmp_path, 3)


@pytest.mark.slow
def test_crash_report_reaches_stderr_in_40_runs(tmp_path):
    _crash_reports(tmp_path, 40)
