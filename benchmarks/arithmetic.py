"""Secret x secret products on three ranks, next to plaintext NumPy float64.

Run: mpiexec -n 3 python benchmarks/arithmetic.py   (rank 0 prints; --quick: tiny sizes)

For each case: private time (the slowest party's best of 5 calls after 2 untimed ones),
bytes sent summed over the three parties, rounds, the plaintext float64 time and the ratio.
"""

import sys
import time

import numpy as np

import mpcgpu
from mpcgpu.sharing.arithmetic import share
from plain_conv import conv_plain


def timed(rt, fn, repeat=5, warm_up=2):
    """Best of ``repeat`` calls after ``warm_up`` untimed ones (the first calls of a size
    grow the process's heap and fill the kernels' buffers: 1.3-2x slower here)."""
    for _ in range(warm_up):
        rt.comm.barrier()
        fn()
    times = []
    for _ in range(repeat):
        rt.comm.barrier()
        with rt.comm.measure() as m:
            t = time.perf_counter()
            fn()
            dt = time.perf_counter() - t
        times.append(dt)
    worst = rt.comm.allreduce_max(min(times))
    total_bytes = rt.comm.allreduce_sum(m.bytes_sent)
    return worst, total_bytes, m.rounds


def plain_time(fn, repeat=3):
    fn()
    return min(_t(fn) for _ in range(repeat))


def _t(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main():
    quick = "--quick" in sys.argv[1:]  # tiny sizes: a smoke test of the script
    rt = mpcgpu.init()
    rng = np.random.default_rng(0)
    rows = []
    for n in (16, 32) if quick else (512, 1024):
        a, b = rng.uniform(-1, 1, (n, n)), rng.uniform(-1, 1, (n, n))
        sa, sb = share(a if rt.rank == 0 else None), share(b if rt.rank == 1 else None, src=1)
        t, nbytes, rounds = timed(rt, lambda: sa @ sb)
        rows.append((f"matmul {n}x{n} @ {n}x{n}", t, nbytes, rounds, plain_time(lambda: a @ b), n * n))
    x = rng.uniform(-1, 1, (1, 64, 32, 32))
    w = rng.uniform(-0.1, 0.1, (64, 64, 3, 3))
    sx, sw = share(x if rt.rank == 0 else None), share(w if rt.rank == 1 else None, src=1)
    t, nbytes, rounds = timed(rt, lambda: sx.conv2d(sw, padding=1))
    rows.append(
        ("conv 1x64x32x32, 64 3x3 p1", t, nbytes, rounds, plain_time(lambda: conv_plain(x, w, 1)), 64 * 32 * 32)
    )
    if rt.rank == 0:
        print(f"mpcgpu {mpcgpu.__version__}: {rt.describe()}")
        print(
            f"{'operation':<30} {'private s':>10} {'bytes (3 parties)':>18} {'B/out elem':>10} "
            f"{'rounds':>6} {'plain s':>9} {'ratio':>7}"
        )
        for name, t, nbytes, rounds, tp, nout in rows:
            print(f"{name:<30} {t:>10.4f} {nbytes:>18,} {nbytes / nout:>10.1f} {rounds:>6} {tp:>9.4f} {t / tp:>7.1f}")


if __name__ == "__main__":
    main()
