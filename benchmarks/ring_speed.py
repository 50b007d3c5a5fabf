"""Ring products and the linear layers built on them, for interleaved before/after runs (issue 23).

Run from a checkout, with that checkout's mpcgpu on PYTHONPATH:

* ``python benchmarks/ring_speed.py local`` -- one process: the exact ring product at 1024^3
  and at the calibration shapes with the kernel mpcgpu chooses (the kernel set chosen as at
  ``init``, so the fused limb steps where there are any), with the limbs and the native kernel
  forced, torch's int64 matmul (CrypTen's CPU kernel) and float64 NumPy, in the same run;
* ``mpiexec -n 3 python benchmarks/ring_speed.py mpc`` -- three ranks: secret x secret matmul
  1024 and conv 1x64x32x32 by 64x3x3 (padding 1), each call timed 5 times after 2 untimed ones.

Each prints one JSON line (rank 0), for a driver that alternates checkouts and takes medians
(the machine is shared: interleave, and give the CPU model with every figure).  Times are
the minimum of the repetitions (local) or the slowest party's time of each call (mpc).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time

import numpy as np


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor()


def best(fn, *args, repeat=5, warm_up=True):
    if warm_up:
        fn(*args)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t0)
    return min(times)


def local():
    from mpcgpu.device.backend import Backend
    from mpcgpu.kernelsets import choose_kernel_set
    from mpcgpu.ring import choice, native, products as ring

    kernel_set = choose_kernel_set(Backend("cpu"))  # installs its limb steps where it has any
    rng = np.random.default_rng(0)
    out = {"cpu": cpu_model(), "kernel_set": kernel_set.name, "shapes": {}}
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        torch = None
    if os.environ.get("RING_SPEED_TORCH", "1") == "0":
        torch = None  # (a minute per call at 1024 on a loaded AVX2 machine: once per sitting is enough)
    for m, k, n in [(1024, 1024, 1024), (2048, 500, 50), (512, 1152, 128), (128, 800, 500)]:
        a = rng.integers(0, 2**64, (m, k), dtype=np.uint64)
        b = rng.integers(0, 2**64, (k, n), dtype=np.uint64)
        row = {
            "chosen": best(ring.matmul, a, b),
            "limbs K22": best(lambda x, y: ring.matmul(x, y, scheme="K22"), a, b),
            "limbs W22": best(lambda x, y: ring.matmul(x, y, scheme="W22"), a, b),
            "float64": best(np.matmul, a.astype(np.float64), b.astype(np.float64)),
        }
        if native.available():
            row["native"] = best(native.matmul, a, b)
        if torch is not None:
            ta, tb = torch.from_numpy(a.view(np.int64)), torch.from_numpy(b.view(np.int64))
            row["torch int64"] = best(torch.matmul, ta, tb, repeat=2, warm_up=False)  # seconds each on AVX2
        out["shapes"][f"{m}x{k}x{n}"] = row
    current = ring.kernel()
    out["choice"] = current.get("kernel")
    out["choice_1024"] = choice.kernel_for(current, 1, 1024, 1024, 1024) if hasattr(choice, "kernel_for") else None
    print(json.dumps(out))


def mpc():
    import mpcgpu
    from mpcgpu.sharing.arithmetic import share

    rt = mpcgpu.init()
    rng = np.random.default_rng(0)
    a, b = rng.uniform(-1, 1, (1024, 1024)), rng.uniform(-1, 1, (1024, 1024))
    sa, sb = share(a if rt.rank == 0 else None), share(b if rt.rank == 1 else None, src=1)
    x = rng.uniform(-1, 1, (1, 64, 32, 32))
    w = rng.uniform(-0.1, 0.1, (64, 64, 3, 3))
    sx, sw = share(x if rt.rank == 0 else None), share(w if rt.rank == 1 else None, src=1)
    out = {"cpu": cpu_model(), "banner": rt.describe()}
    for name, fn in (
        ("secret matmul 1024", lambda: sa @ sb),
        ("conv 1x64x32x32 64x3x3", lambda: sx.conv2d(sw, padding=1)),
    ):
        for _ in range(2):
            rt.comm.barrier()
            fn()
        runs = []
        for _ in range(5):
            rt.comm.barrier()
            t0 = time.perf_counter()
            fn()
            runs.append(rt.comm.allreduce_max(time.perf_counter() - t0))
        out[name] = runs
    if rt.rank == 0:
        print(json.dumps(out))


if __name__ == "__main__":
    {"local": local, "mpc": mpc}[sys.argv[1]]()
