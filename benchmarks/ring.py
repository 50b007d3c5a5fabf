"""Exact ring products (mpcgpu.ring) against numpy int64 and one float64 GEMM.

    python benchmarks/ring.py            # ~1-2 minutes on 2 cores
    OPENBLAS_NUM_THREADS=2 python benchmarks/ring.py

BLAS threads: ``OPENBLAS_NUM_THREADS`` defaults to 1 here (set before numpy is
imported), as in the three-rank runs where three parties share two cores; the
ratios limb/float64 hardly depend on it.  Every time is the minimum over
several repetitions (the machine may be shared).

Tables:
* matmul n x n x n, n = 256, 512, 1024: numpy int64 matmul (no BLAS),
  ring.matmul with the default scheme W22 (3 GEMMs, 6 digit products) and
  with W16 (4 GEMMs, 10 products), one float64 GEMM; ratios.
* conv2d for the VGG-16 / CIFAR-10 layers (batch 1, 3x3, padding 1):
  ring.conv2d vs a float64 conv with the same im2col (as_strided gather +
  one GEMM) vs the same im2col in int64.
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", os.environ["OPENBLAS_NUM_THREADS"])

import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from mpcgpu import ring  # noqa: E402

VGG_CIFAR = [(3, 64, 32), (64, 64, 32), (64, 128, 16), (128, 128, 16), (128, 256, 8),
             (256, 256, 8), (256, 512, 4), (512, 512, 4), (512, 512, 2)]


def best(fn, reps, budget=None):
    """Minimum wall time of ``fn`` over ``reps`` runs (fewer if ``budget`` seconds are spent)."""
    times, spent = [], 0.0
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        times.append(dt)
        spent += dt
        if budget is not None and spent > budget:
            break
    return min(times)


def rand_ring(rng, *shape):
    return rng.integers(0, 2 ** 64, size=shape, dtype=np.uint64, endpoint=False)


def im2col(x, kh, kw, pad):
    """(N, C, H, W) -> (C*kh*kw, N*H*W) for stride 1, 'same' padding (any dtype)."""
    n, c, h, w = x.shape
    xp = np.zeros((n, c, h + 2 * pad, w + 2 * pad), dtype=x.dtype)
    xp[:, :, pad:pad + h, pad:pad + w] = x
    s = xp.strides
    v = np.lib.stride_tricks.as_strided(xp, (c, kh, kw, n, h, w), (s[1], s[2], s[3], s[0], s[2], s[3]))
    return np.ascontiguousarray(v).reshape(c * kh * kw, n * h * w)


def bench_matmul(rng):
    print("matmul n x n @ n x n   (ms; ratios: int64/limb, limb/float64)")
    print(f"{'n':>6} {'int64':>10} {'limb W22':>10} {'limb W16':>10} {'float64':>9} "
          f"{'int64/W22':>10} {'W22/f64':>8} {'W16/f64':>8}")
    for n in (256, 512, 1024):
        a, b = rand_ring(rng, n, n), rand_ring(rng, n, n)
        ai, bi = a.view(np.int64), b.view(np.int64)
        af, bf = rng.standard_normal((n, n)), rng.standard_normal((n, n))
        ref = ai @ bi
        assert (ring.matmul(a, b).view(np.int64) == ref).all() and (ring.matmul(a, b, scheme="W16") == ref.view(np.uint64)).all()
        t_int = best(lambda: ai @ bi, 3, budget=6.0)
        t_22 = best(lambda: ring.matmul(a, b), 5, budget=4.0)
        t_16 = best(lambda: ring.matmul(a, b, scheme="W16"), 5, budget=4.0)
        t_f = best(lambda: af @ bf, 9, budget=2.0)
        print(f"{n:>6} {t_int * 1e3:>10.1f} {t_22 * 1e3:>10.1f} {t_16 * 1e3:>10.1f} {t_f * 1e3:>9.2f} "
              f"{t_int / t_22:>9.1f}x {t_22 / t_f:>7.2f}x {t_16 / t_f:>7.2f}x")


def bench_conv(rng):
    print("\nconv2d 3x3 pad 1, batch 1, VGG-16 on CIFAR-10 (ms; float64 and int64 use the same im2col)")
    print(f"{'layer':>16} {'K':>5} {'int64':>9} {'limb':>9} {'float64':>9} {'int64/limb':>10} {'limb/f64':>9}")
    tot = [0.0, 0.0, 0.0]
    for cin, cout, hw in VGG_CIFAR:
        x, w = rand_ring(rng, 1, cin, hw, hw), rand_ring(rng, cout, cin, 3, 3)
        xi, wi = x.view(np.int64), w.view(np.int64).reshape(cout, -1)
        xf, wf = rng.standard_normal(x.shape), rng.standard_normal((cout, cin * 9))
        wsplit = ring.presplit(w)

        def conv_int():
            return (wi @ im2col(xi, 3, 3, 1)).reshape(1, cout, hw, hw)

        def conv_f64():
            return (wf @ im2col(xf, 3, 3, 1)).reshape(1, cout, hw, hw)

        assert (ring.conv2d(x, w, padding=1).view(np.int64) == conv_int()).all()
        assert (ring.conv2d(x, wsplit, padding=1).view(np.int64) == conv_int()).all()
        t_int = best(conv_int, 3, budget=1.0)
        t_limb = best(lambda: ring.conv2d(x, wsplit, padding=1), 7, budget=1.5)
        t_f = best(conv_f64, 9, budget=0.5)
        for i, t in enumerate((t_int, t_limb, t_f)):
            tot[i] += t
        print(f"{f'{cin}->{cout} {hw}x{hw}':>16} {cin * 9:>5} {t_int * 1e3:>9.2f} {t_limb * 1e3:>9.2f} "
              f"{t_f * 1e3:>9.2f} {t_int / t_limb:>9.1f}x {t_limb / t_f:>8.2f}x")
    print(f"{'total':>16} {'':>5} {tot[0] * 1e3:>9.2f} {tot[1] * 1e3:>9.2f} {tot[2] * 1e3:>9.2f} "
          f"{tot[0] / tot[1]:>9.1f}x {tot[1] / tot[2]:>8.2f}x")
    print("(limb conv uses a presplit weight; limb includes splitting x and its im2col of 3 digit planes)")


def main():
    print(f"numpy {np.__version__}, OPENBLAS_NUM_THREADS={os.environ['OPENBLAS_NUM_THREADS']}, "
          f"{os.cpu_count()} CPUs; times are minima over repetitions\n")
    rng = np.random.default_rng(2024)
    t0 = time.perf_counter()
    bench_matmul(rng)
    bench_conv(rng)
    print(f"\ntotal benchmark time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
