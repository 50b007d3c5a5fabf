"""The cost of the ``"hidden"`` and ``"exact"`` truncations against the default (issue 20).

    mpiexec -n 3 python benchmarks/trunc_hidden.py [--device cpu|cuda] [--n 1000000] [--batch 8]

Prints, on party 0: for ``n`` replicated elements truncated by 16 bits, the seconds (the
slowest party, minimum of ``--reps``), the bytes of the three parties together and the
rounds of each mode; then a LeNet inference pass (random weights, batch ``--batch``) with
every truncation in the default mode and in the hidden one (``forced``), the output
layer rounded exactly in both.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

import mpcgpu  # noqa: E402
from mpcgpu.nn.models import lenet  # noqa: E402
from mpcgpu.nn.plain import init_params  # noqa: E402
from mpcgpu.nn.private import PrivateModel, share_params  # noqa: E402
from mpcgpu.sharing import truncation  # noqa: E402
from mpcgpu.sharing.arithmetic import ArithmeticShare, share, truncate  # noqa: E402


def timed(rt, fn, reps):
    best, stats = None, None
    for _ in range(reps):
        rt.comm.barrier()
        t0 = time.perf_counter()
        with rt.comm.measure() as m:
            fn()
        rt.backend.synchronize()
        dt = max(rt.comm.allgather_object(time.perf_counter() - t0))
        total = sum(rt.comm.allgather_object(m.bytes_sent))
        if best is None or dt < best:
            best, stats = dt, (total, m.rounds)
    return best, stats[0], stats[1]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu")
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args()
    rt = mpcgpu.init(device=args.device)
    xp = rt.xp
    rng = np.random.default_rng(0)
    words = rt.backend.to_device(rng.integers(0, 2**64, (2, args.n), dtype=np.uint64))
    x = ArithmeticShare(words[0] >> xp.uint64(24), words[1] >> xp.uint64(24), 32, rt)  # some ring value
    rows = []
    for mode in ("prob", "hidden", "exact"):
        rows.append(
            (f"truncate {args.n:,} elements ({mode})",) + timed(rt, lambda: truncate(x, 16, 16, mode=mode), args.reps)
        )
    model = lenet()
    params = init_params(model, rng) if rt.rank == 0 else None
    pm = PrivateModel(model, share_params(model, params))
    images = rng.normal(0, 1, (args.batch, 1, 28, 28))
    xs = share(images if rt.rank == 0 else None, src=0)
    for mode in ("prob", "hidden"):
        with truncation.forced(mode):
            rows.append(
                (f"LeNet inference, batch {args.batch} ({mode})",)
                + timed(rt, lambda: pm.forward(xs, exact=True), args.reps)
            )
    if rt.rank == 0:
        print(f"device: {rt.backend.describe()}")
        print(f"{'what':<46} {'seconds':>9} {'MB (3 parties)':>15} {'rounds':>7}")
        for name, sec, total, rounds in rows:
            print(f"{name:<46} {sec:>9.3f} {total / 1e6:>15.1f} {rounds:>7}")


if __name__ == "__main__":
    main()
