"""Load runs with memory over time: private inference over many MNIST images (LeNet) and a
long private training run, each party's resident memory (RSS) sampled every few seconds.

    python benchmarks/load_memory.py                 # 20,000 images, 150 training steps
    python benchmarks/load_memory.py --quick         # 256 images, 4 steps (a smoke test)

Launches ``mpiexec -n 3 mpcgpu infer|train`` itself (single process here), reads
``/proc/PID/status`` of the three ranks, and prints per party: RSS after the warm-up (10%
of the run), at the end, the peak, and the slope over the second half (MB per minute) --
flat memory is a slope near 0.  ``--json FILE`` keeps every sample.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

MNIST = os.environ.get("MPCGPU_MNIST_DIR", "/work/shared/data/mnist")


def rank_pids(tag: str) -> list[int]:
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as fh:
                cmd = fh.read().split(b"\0")
        except OSError:
            continue
        if any(b"mpcgpu.cli" == c for c in cmd) and any(tag.encode() in c for c in cmd) and b"mpiexec" not in cmd[0]:
            pids.append(int(d))
    return sorted(pids)


def rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def sampled_run(cmd, tag, interval):
    """Run ``cmd``; sample the ranks' RSS every ``interval`` s: (rc, seconds, {pid: [(t, MB)]})."""
    from mpcgpu.jobs.launcher import local_env

    t0 = time.monotonic()
    p = subprocess.Popen(cmd, env=local_env("cpu"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    samples: dict[int, list] = {}
    while p.poll() is None:
        for pid in rank_pids(tag):
            v = rss_mb(pid)
            if v is not None:
                samples.setdefault(pid, []).append((round(time.monotonic() - t0, 2), round(v, 1)))
        time.sleep(interval)
    out = p.stdout.read()
    return p.returncode, time.monotonic() - t0, samples, out


def summary(samples: dict) -> list[dict]:
    rows = []
    for i, (_pid, s) in enumerate(sorted(samples.items())):
        if len(s) < 3:
            continue
        t_end = s[-1][0]
        warm = [v for t, v in s if t >= 0.1 * t_end] or [s[-1][1]]
        half = [(t, v) for t, v in s if t >= 0.5 * t_end]
        slope = 0.0
        if len(half) >= 2:
            n = len(half)
            mt = sum(t for t, _ in half) / n
            mv = sum(v for _, v in half) / n
            den = sum((t - mt) ** 2 for t, _ in half) or 1.0
            slope = 60.0 * sum((t - mt) * (v - mv) for t, v in half) / den
        rows.append(
            {
                "rank_process": i,
                "samples": len(s),
                "after_warmup_mb": warm[0],
                "end_mb": s[-1][1],
                "peak_mb": max(v for _, v in s),
                "second_half_slope_mb_per_min": round(slope, 2),
            }
        )
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=20000, help="images to classify (default 20000)")
    ap.add_argument("--steps", type=int, default=150, help="training steps of batch 128 (default 150)")
    ap.add_argument("--interval", type=float, default=2.0, help="seconds between RSS samples (default 2)")
    ap.add_argument("--quick", action="store_true", help="256 images, 4 steps, 0.5 s samples (smoke test)")
    ap.add_argument("--skip", choices=("infer", "train"), default=None, help="leave out one of the two runs")
    ap.add_argument("--json", default=None, help="write every sample and the summary here")
    args = ap.parse_args(argv)
    if args.quick:
        args.images, args.steps, args.interval = 256, 4, 0.5
    from mpcgpu.assets import lenet_weights_path
    from mpcgpu.assets.dataset_h5 import write_dataset
    from mpcgpu.assets.mnist_idx import MNIST_MEAN, MNIST_STD, load_mnist
    from mpcgpu.data.split import split_file
    from mpcgpu.jobs.launcher import find_mpiexec

    report = {}
    with tempfile.TemporaryDirectory(prefix="mpcgpu-load-") as d:
        tag = os.path.basename(d)
        imgs, labels = load_mnist(
            os.path.join(MNIST, "train-images-idx3-ubyte.gz"), os.path.join(MNIST, "train-labels-idx1-ubyte.gz")
        )
        n = max(args.images, 128 * args.steps)
        imgs = imgs.reshape(-1, 1, 28, 28)[:n]
        write_dataset(
            os.path.join(d, "data.h5"),
            imgs,
            labels[:n],
            name="mnist-load",
            mean=MNIST_MEAN,
            std=MNIST_STD,
            num_classes=10,
        )
        split_file(os.path.join(d, "data.h5"), os.path.join(d, "s"), progress=False)
        split_file(lenet_weights_path(), os.path.join(d, "s"), progress=False)
        os.remove(os.path.join(d, "data.h5"))
        base = [find_mpiexec(), "-n", "3", sys.executable, "-m", "mpcgpu.cli"]
        runs = {
            "infer": base
            + [
                "infer",
                "--model",
                os.path.join(d, "s", "lenet_mnist"),
                "--data",
                os.path.join(d, "s", "data"),
                "--limit",
                str(args.images),
                "--batch-size",
                "128",
                "--no-progress",
                "--no-verify",
            ],
            "train": base
            + [
                "train",
                "--model",
                "lenet",
                "--data",
                os.path.join(d, "s", "data"),
                "--epochs",
                "1",
                "--limit",
                str(128 * args.steps),
                "--batch-size",
                "128",
                "--no-progress",
                "--no-verify",
            ],
        }
        for name, cmd in runs.items():
            if name == args.skip:
                continue
            rc, secs, samples, out = sampled_run(cmd, tag, args.interval)
            if rc != 0:
                print(out[-3000:])
                raise SystemExit(f"{name} failed (exit {rc})")
            rows = summary(samples)
            report[name] = {
                "seconds": round(secs, 1),
                "summary": rows,
                "samples": {str(k): v for k, v in samples.items()},
            }
            what = f"{args.images} images" if name == "infer" else f"{args.steps} steps of 128"
            print(f"{name}: {what} in {secs:.0f} s")
            for r in rows:
                print(
                    f"  party process {r['rank_process']}: {r['samples']} samples, RSS after warm-up "
                    f"{r['after_warmup_mb']:.0f} MB, end {r['end_mb']:.0f} MB, peak {r['peak_mb']:.0f} MB, "
                    f"second-half slope {r['second_half_slope_mb_per_min']:+.1f} MB/min"
                )
    if args.json:
        from mpcgpu.util.atomic import write_text

        write_text(args.json, json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
