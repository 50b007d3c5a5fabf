"""Cost of the encrypted channels: `python benchmarks/channels.py` (launches mpiexec itself).

1. AES-256-GCM throughput on one core (seal and open, as mpcgpu.channels does them).
2. Batch-1 private inference (`mpcgpu bench inference`) with sealed channels (the default)
   and with ``--insecure-channels``, the two runs interleaved ``--reps`` times so that the
   load of a shared machine hits both alike; per model: the medians, and the median of the
   paired ratios (sealed / clear) as the overhead.

    python benchmarks/channels.py --models lenet,vgg16_cifar10 --reps 5 --steps 3
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy

from mpcgpu.channels import Direction
from mpcgpu.jobs.launcher import find_mpiexec, local_env


def median_time(fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(numpy.median(times))


def aead_throughput(sizes, repeat):
    rows = []
    for nbytes in sizes:
        x = numpy.random.default_rng(0).integers(0, 2**63, nbytes // 8, dtype=numpy.uint64)
        tx, rx = Direction(os.urandom(32), 0, 1), Direction(os.urandom(32), 0, 1)
        rx.aead = tx.aead
        wire = tx.seal(x)
        t_seal = median_time(lambda: tx.seal(x, counter=0), repeat)

        def open_():
            rx.counter = 0
            rx.open(wire, x.shape, x.dtype)

        t_open = median_time(open_, repeat)
        rows.append({"bytes": nbytes, "seal_GBps": nbytes / t_seal / 1e9, "open_GBps": nbytes / t_open / 1e9})
    return rows


def bench_run(models, steps, insecure):
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    cmd = [find_mpiexec(), "-n", "3", sys.executable, "-m", "mpcgpu.cli", "bench", "inference"]
    cmd += ["--models", ",".join(models), "--steps", str(steps), "--json", path]
    if insecure:
        cmd.append("--insecure-channels")
    env = local_env("cpu")
    env.pop("MPCGPU_INSECURE_CHANNELS", None)
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
        if p.returncode != 0:
            raise SystemExit(f"bench failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
        with open(path) as fh:
            return {r["model"]: r for r in json.load(fh)["results"]}
    finally:
        os.remove(path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="lenet,vgg16_cifar10")
    ap.add_argument("--reps", type=int, default=5, help="interleaved pairs of runs (default 5)")
    ap.add_argument("--steps", type=int, default=3, help="timed passes per run (median; default 3)")
    ap.add_argument("--quick", action="store_true", help="smoke run: lenet, one pair, small AEAD sizes")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    models = ["lenet"] if args.quick else args.models.split(",")
    reps, steps = (1, 1) if args.quick else (args.reps, args.steps)
    sizes = (1 << 12, 1 << 16) if args.quick else (1 << 12, 1 << 16, 1 << 20, 1 << 23)

    aead = aead_throughput(sizes, 3 if args.quick else 15)
    print("AES-256-GCM on one core (median)")
    print(f"{'bytes':>10} {'seal GB/s':>10} {'open GB/s':>10}")
    for r in aead:
        print(f"{r['bytes']:>10} {r['seal_GBps']:>10.2f} {r['open_GBps']:>10.2f}")

    runs = {"sealed": [], "clear": []}
    for rep in range(reps):
        order = (False, True) if rep % 2 == 0 else (True, False)
        for insecure in order:
            runs["clear" if insecure else "sealed"].append(bench_run(models, steps, insecure))
    print(f"\nbatch-1 private inference, {reps} interleaved pairs of runs, {steps} passes each (medians)")
    print(f"{'model':<16} {'sealed s':>9} {'clear s':>9} {'overhead':>9} {'MB (3 parties)':>15} {'rounds':>9}")
    rows = []
    for m in models:
        sealed = [r[m]["private_seconds"] for r in runs["sealed"]]
        clear = [r[m]["private_seconds"] for r in runs["clear"]]
        ratios = [s / c for s, c in zip(sealed, clear)]
        row = {
            "model": m,
            "sealed_s": float(numpy.median(sealed)),
            "clear_s": float(numpy.median(clear)),
            "overhead": float(numpy.median(ratios)) - 1,
            "sealed_runs": sealed,
            "clear_runs": clear,
            "mb": runs["sealed"][0][m]["bytes_all_parties"] / 1e6,
            "rounds": runs["sealed"][0][m]["rounds"],
        }
        rows.append(row)
        print(
            f"{m:<16} {row['sealed_s']:>9.3f} {row['clear_s']:>9.3f} {100 * row['overhead']:>8.1f}% "
            f"{row['mb']:>15.1f} {row['rounds']:>9}"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"aead": aead, "inference": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
