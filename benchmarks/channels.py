"""Cost of the encrypted channels: `python benchmarks/channels.py` (launches mpiexec itself).

1. AES-256-GCM throughput on one core (seal and open, as mpcgpu.comm.channels does them).
2. The work of the channels inside a batch-1 private inference: the seconds each party
   spends sealing and opening (``comm.wire["seconds"]``) per forward pass, against the
   pass's time (three ranks with sealed channels; the worker mode of this script).  This
   is the overhead where every party has cores of its own.
3. End to end: `mpcgpu bench inference` with sealed channels (the default) and with
   ``--insecure-channels``, the two runs interleaved ``--reps`` times so that the load of
   a shared machine hits both alike; per model: the medians, and the median of the paired
   ratios (sealed / clear).  With three ranks on two cores a party that waits sleeps, and
   any work on the path of a message is paid again in scheduling delays: this figure is
   an upper bound there, not the cost of the cipher.

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

from mpcgpu.comm.channels import Direction
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


def worker(models, steps):
    """Under mpiexec: per model, forward-pass seconds and the seconds of sealing/opening."""
    import mpcgpu
    from mpcgpu.jobs.bench import _warm_up, bench_params
    from mpcgpu.nn.models import get_model
    from mpcgpu.nn.private import PrivateModel, share_params
    from mpcgpu.sharing.arithmetic import share

    rt = mpcgpu.init(device="cpu")
    comm = rt.comm
    _warm_up(rt)
    rows = []
    for name in models:
        model = get_model(name)
        params = bench_params(model, 0) if rt.rank == 0 else None
        x = numpy.random.default_rng(0).standard_normal((1,) + tuple(model.input_shape)) if rt.rank == 0 else None
        private = PrivateModel(model, share_params(model, params, src=0))
        sx = share(x, src=0)
        private.prepare()
        private.forward(sx, exact=True)
        passes, crypto = [], []
        for _ in range(steps):
            comm.barrier()
            w0, t0 = comm.wire["seconds"], time.perf_counter()
            private.forward(sx, exact=True)
            passes.append(time.perf_counter() - t0)
            crypto.append(comm.wire["seconds"] - w0)
        mine = (float(numpy.median(passes)), float(numpy.median(crypto)))
        everyone = comm.allgather_object(mine)
        rows.append(
            {
                "model": name,
                "pass_s": max(p for p, _ in everyone),
                "channel_s_per_party": [c for _, c in everyone],
                "channel_share": max(c for _, c in everyone) / max(p for p, _ in everyone),
            }
        )
    if rt.rank == 0:
        print("WORKER " + json.dumps(rows), flush=True)


def channel_work(models, steps):
    cmd = [find_mpiexec(), "-n", "3", sys.executable, os.path.abspath(__file__), "--worker"]
    cmd += ["--models", ",".join(models), "--steps", str(steps)]
    env = local_env("cpu")
    env.pop("MPCGPU_INSECURE_CHANNELS", None)
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    lines = [line for line in p.stdout.splitlines() if line.startswith("WORKER ")]
    if p.returncode != 0 or not lines:
        raise SystemExit(f"worker failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    return json.loads(lines[-1][len("WORKER ") :])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="lenet,vgg16_cifar10")
    ap.add_argument("--reps", type=int, default=5, help="interleaved pairs of runs (default 5)")
    ap.add_argument("--steps", type=int, default=3, help="timed passes per run (median; default 3)")
    ap.add_argument("--quick", action="store_true", help="smoke run: lenet, one pair, small AEAD sizes")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    models = ["lenet"] if args.quick else args.models.split(",")
    reps, steps = (1, 1) if args.quick else (args.reps, args.steps)
    if args.worker:
        return worker(models, steps)
    sizes = (1 << 12, 1 << 16) if args.quick else (1 << 12, 1 << 16, 1 << 20, 1 << 23)

    aead = aead_throughput(sizes, 3 if args.quick else 15)
    print("AES-256-GCM on one core (median)")
    print(f"{'bytes':>10} {'seal GB/s':>10} {'open GB/s':>10}")
    for r in aead:
        print(f"{r['bytes']:>10} {r['seal_GBps']:>10.2f} {r['open_GBps']:>10.2f}")

    work = channel_work(models, max(steps, 5))
    print("\nsealing and opening inside one batch-1 private inference (three ranks, median of passes)")
    print(f"{'model':<16} {'pass s':>8} {'channel s per party':>24} {'share':>7}")
    for r in work:
        per = " ".join(f"{c:.4f}" for c in r["channel_s_per_party"])
        print(f"{r['model']:<16} {r['pass_s']:>8.3f} {per:>24} {100 * r['channel_share']:>6.1f}%")

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
            json.dump({"aead": aead, "channel_work": work, "inference": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
