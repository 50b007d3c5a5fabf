"""Exact ring products (mpcgpu.ring.products) against numpy int64 and one float64 GEMM.

    python benchmarks/ring.py            # ~1-2 minutes on 2 cores
    OPENBLAS_NUM_THREADS=2 python benchmarks/ring.py

BLAS threads: ``OPENBLAS_NUM_THREADS`` defaults to 1 here (set before numpy is
imported), as in the three-rank runs where three parties share two cores; the
ratios limb/float64 hardly depend on it.  Every time is the minimum over
several repetitions, taken round-robin across the methods compared (the
machine may be shared, and noise then hits all of them alike).

Tables:
* matmul n x n x n, n = 256, 512, 1024: numpy int64 matmul (no BLAS), the
  float64 limbs with scheme K22 (5 digit products in 4 GEMMs), W22 (6 products
  in 3 GEMMs) and W16 (10 products in 4 GEMMs), the native integer GEMM
  (mpcgpu.ring.native, numba), and one float64 GEMM; ratios to float64.
* conv2d for the VGG-16 / CIFAR-10 layers (batch 1, 3x3, padding 1): the limbs
  and the native kernel vs a float64 conv with the same im2col (as_strided
  gather + one GEMM) vs the same im2col in int64.
* the kernel mpcgpu chose for this machine (mpcgpu.ring.choice) and why.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", os.environ["OPENBLAS_NUM_THREADS"])

import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from mpcgpu.ring import native, products as ring  # noqa: E402

VGG_CIFAR = [
    (3, 64, 32),
    (64, 64, 32),
    (64, 128, 16),
    (128, 128, 16),
    (128, 256, 8),
    (256, 256, 8),
    (256, 512, 4),
    (512, 512, 4),
    (512, 512, 2),
]


def interleaved(fns, rounds, budget=None):
    """Minimum wall time of each ``fns[name]`` (or ``(fn, max_runs)``), run round-robin.

    Interleaving gives every method the same share of a noisy (shared) machine; after
    ``budget`` seconds no new round starts.
    """
    best, runs, t_start = {}, {}, time.perf_counter()
    for _ in range(rounds):
        for name, fn in fns.items():
            fn, cap = fn if isinstance(fn, tuple) else (fn, rounds)
            if runs.get(name, 0) >= cap:
                continue
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            best[name] = min(best.get(name, dt), dt)
            runs[name] = runs.get(name, 0) + 1
        if budget is not None and time.perf_counter() - t_start > budget:
            break
    return best


def rand_ring(rng, *shape):
    return rng.integers(0, 2**64, size=shape, dtype=np.uint64, endpoint=False)


def im2col(x, kh, kw, pad):
    """(N, C, H, W) -> (C*kh*kw, N*H*W) for stride 1, 'same' padding (any dtype)."""
    n, c, h, w = x.shape
    xp = np.zeros((n, c, h + 2 * pad, w + 2 * pad), dtype=x.dtype)
    xp[:, :, pad : pad + h, pad : pad + w] = x
    s = xp.strides
    v = np.lib.stride_tricks.as_strided(xp, (c, kh, kw, n, h, w), (s[1], s[2], s[3], s[0], s[2], s[3]))
    return np.ascontiguousarray(v).reshape(c * kh * kw, n * h * w)


def bench_matmul(rng):
    print("matmul n x n @ n x n   (ms; limbs = float64 digits, scheme K22; native = integer GEMM)")
    print(
        f"{'n':>6} {'int64':>9} {'limbs':>8} {'W22':>8} {'W16':>8} {'native':>8} {'float64':>8} "
        f"{'limbs/f64':>9} {'native/f64':>10} {'W22/f64':>8} {'W16/f64':>8}"
    )
    for n in (256, 512, 1024):
        a, b = rand_ring(rng, n, n), rand_ring(rng, n, n)
        ai, bi = a.view(np.int64), b.view(np.int64)
        af, bf = rng.standard_normal((n, n)), rng.standard_normal((n, n))
        ref = (ai @ bi).view(np.uint64)
        for sc in ("K22", "W22", "W16"):
            assert (ring.matmul(a, b, scheme=sc) == ref).all()
        fns = {
            "int": (lambda: ai @ bi, 2 if n == 1024 else 3),
            "K22": lambda: ring.matmul(a, b, scheme="K22"),
            "W22": lambda: ring.matmul(a, b, scheme="W22"),
            "W16": lambda: ring.matmul(a, b, scheme="W16"),
            "f64": lambda: af @ bf,
        }
        if native.available():
            assert (native.gemm(a, b) == ref).all()
            fns["native"] = lambda: native.gemm(a, b)  # includes transposing b
        t = interleaved(fns, rounds=5, budget=15.0)
        t_f, nat = t["f64"], t.get("native", float("nan"))
        print(
            f"{n:>6} {t['int'] * 1e3:>9.1f} {t['K22'] * 1e3:>8.1f} {t['W22'] * 1e3:>8.1f} "
            f"{t['W16'] * 1e3:>8.1f} {nat * 1e3:>8.1f} {t_f * 1e3:>8.2f} {t['K22'] / t_f:>8.2f}x "
            f"{nat / t_f:>9.2f}x {t['W22'] / t_f:>7.2f}x {t['W16'] / t_f:>7.2f}x"
        )


def bench_conv(rng):
    print("\nconv2d 3x3 pad 1, batch 1, VGG-16 on CIFAR-10 (ms; float64 and int64 use the same im2col)")
    print(
        f"{'layer':>16} {'K':>5} {'int64':>9} {'limbs':>9} {'native':>9} {'float64':>9} {'limbs/f64':>9} "
        f"{'native/f64':>10}"
    )
    tot = {"int": 0.0, "limb": 0.0, "native": 0.0, "f64": 0.0}
    for cin, cout, hw in VGG_CIFAR:
        x, w = rand_ring(rng, 1, cin, hw, hw), rand_ring(rng, cout, cin, 3, 3)
        xi, wi = x.view(np.int64), w.view(np.int64).reshape(cout, -1)
        xf, wf = rng.standard_normal(x.shape), rng.standard_normal((cout, cin * 9))
        wsplit = ring.presplit(w)

        def conv_int():
            return (wi @ im2col(xi, 3, 3, 1)).reshape(1, cout, hw, hw)

        def conv_f64():
            return (wf @ im2col(xf, 3, 3, 1)).reshape(1, cout, hw, hw)

        assert (ring.conv2d(x, wsplit, padding=1).view(np.int64) == conv_int()).all()
        fns = {"int": (conv_int, 3), "limb": lambda: ring.conv2d(x, wsplit, padding=1), "f64": conv_f64}
        if native.available():
            assert (native.conv2d(x, w, padding=1).view(np.int64) == conv_int()).all()
            fns["native"] = lambda: native.conv2d(x, w, padding=1)
        t = interleaved(fns, rounds=9, budget=2.0)
        t.setdefault("native", float("nan"))
        for key in tot:
            tot[key] += t[key]
        print(
            f"{f'{cin}->{cout} {hw}x{hw}':>16} {cin * 9:>5} {t['int'] * 1e3:>9.2f} {t['limb'] * 1e3:>9.2f} "
            f"{t['native'] * 1e3:>9.2f} {t['f64'] * 1e3:>9.2f} {t['limb'] / t['f64']:>8.2f}x "
            f"{t['native'] / t['f64']:>9.2f}x"
        )
    print(
        f"{'total':>16} {'':>5} {tot['int'] * 1e3:>9.2f} {tot['limb'] * 1e3:>9.2f} {tot['native'] * 1e3:>9.2f} "
        f"{tot['f64'] * 1e3:>9.2f} {tot['limb'] / tot['f64']:>8.2f}x {tot['native'] / tot['f64']:>9.2f}x"
    )
    print(
        "(limbs: scheme K22, presplit weight, includes splitting x and the im2col of its slabs; "
        "native: im2col + integer GEMM)"
    )


def main():
    print(
        f"numpy {np.__version__}, OPENBLAS_NUM_THREADS={os.environ['OPENBLAS_NUM_THREADS']}, "
        f"{os.cpu_count()} CPUs; times are minima over repetitions\n"
    )
    rng = np.random.default_rng(2024)
    t0 = time.perf_counter()
    bench_matmul(rng)
    bench_conv(rng)
    choice = ring.kernel()
    print(f"\nkernel chosen for this machine: {choice['kernel']} ({choice['why']})")
    print(f"\ntotal benchmark time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
