"""Non-linear protocols (ReLU, max-pool, comparison, MSB, A2B) against plaintext NumPy.

    mpiexec -n 3 python benchmarks/nonlinear.py            # rank 0 prints the table
    mpiexec -n 3 python benchmarks/nonlinear.py --reps 5

Time: wall clock of the slowest party, between two barriers: the first run (cold:
fresh allocations) and the best of ``--reps`` runs (the machine may be shared).  Bytes: share data
sent, summed over the three
parties, and per element.  Rounds: communication rounds of the protocol.
Plaintext: the same operation in NumPy on float64 (best of the same repetitions).

Set OPENBLAS_NUM_THREADS=1 and, with three ranks on few cores, MPICH's
``MPIR_CVAR_CH4_PROGRESS_THROTTLE=1 MPIR_CVAR_CH4_PROGRESS_THROTTLE_NO_PROGRESS_COUNT=32``
(tests/run.sh does).
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", os.environ["OPENBLAS_NUM_THREADS"])

import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import mpcgpu  # noqa: E402
from mpcgpu.protocols import compare, convert  # noqa: E402


def plain_maxpool2(x):
    n, c, h, w = x.shape
    return x.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))


def measure(rt, fn, reps):
    """(first, best) wall time over ``reps`` (slowest party each time), bytes summed, rounds."""
    best, stats, first = None, None, None
    for _ in range(reps):
        rt.comm.barrier()
        t0 = time.perf_counter()
        with rt.comm.measure() as m:
            fn()
        dt = time.perf_counter() - t0
        dt = rt.comm.allreduce_max(dt)
        first = dt if first is None else first
        best = dt if best is None else min(best, dt)
        stats = m
    total = rt.comm.allreduce_sum(stats.bytes_sent)
    return (first, best), total, stats.rounds


def plain_time(fn, reps):
    best = None
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best = dt if best is None else min(best, dt)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test of the script)")
    ap.add_argument("--device", default=os.environ.get("MPCGPU_DEVICE", "cpu"))
    args = ap.parse_args()
    rt = mpcgpu.init(device=args.device)
    rng = np.random.default_rng(7)
    rows = []

    def bench(name, n, shape, protocol, plain):
        x = rng.normal(scale=10.0, size=shape)
        s = mpcgpu.share(x if rt.rank == 0 else None, src=0)
        t, total, rounds = measure(rt, lambda: protocol(s), args.reps)
        tp = plain_time(lambda: plain(x), args.reps)
        rows.append((name, n, t, total, total / n, rounds, tp))

    relu_plain = lambda x: np.maximum(x, 0)  # noqa: E731
    sizes, channels = ((1000,), 4) if args.quick else ((10**5, 10**6), 64)
    for n in sizes:
        bench("relu", n, (n,), compare.relu, relu_plain)
        bench("relu + derivative", n, (n,), lambda s: compare.relu(s, grad=True), lambda x: (np.maximum(x, 0), x > 0))
    bench(
        f"maxpool 2x2 1x{channels}x32x32",
        channels * 32 * 32,
        (1, channels, 32, 32),
        lambda s: s.max_pool2d(2),
        plain_maxpool2,
    )
    bench(
        "maxpool 2x2 + indices",
        channels * 32 * 32,
        (1, channels, 32, 32),
        lambda s: s.max_pool2d(2, return_indices=True),
        plain_maxpool2,
    )
    n = sizes[-1]
    bench("lt (x < 0)", n, (n,), lambda s: s < 0.0, lambda x: x < 0)
    bench("msb", n, (n,), convert.msb, lambda x: x < 0)
    bench("a2b", n, (n,), convert.a2b, lambda x: x.view(np.uint64).copy())

    if rt.rank == 0:
        print(f"mpcgpu non-linear protocols, 3 parties on {rt.backend.describe()}, best of {args.reps}")
        print(
            f"{'protocol':<26}{'elements':>10}{'first s':>9}{'best s':>9}{'MB (3 parties)':>16}"
            f"{'B/elem':>9}{'rounds':>8}{'numpy s':>11}{'ratio':>9}"
        )
        for name, n, t, total, per, rounds, tp in rows:
            print(
                f"{name:<26}{n:>10}{t[0]:>9.3f}{t[1]:>9.3f}{total / 1e6:>16.2f}{per:>9.2f}{rounds:>8}"
                f"{tp:>11.5f}{t[1] / tp:>9.0f}x"
            )
        sys.stdout.flush()


if __name__ == "__main__":
    main()
