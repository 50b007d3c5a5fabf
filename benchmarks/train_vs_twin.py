"""Compare a private training run with its plaintext twin, step by step.

The private run is `mpcgpu train ... --reveal-loss --json RUN.json` (the loss of every
step revealed to the result owner: a stated disclosure, for this diagnostic).  This
script trains the plaintext twin (`mpcgpu.nn.train_plain.train_twin`, float64) with the same
initial weights (`--init-seed`), sample order (`--seed`), batch size and learning-rate
schedule -- both take them from `mpcgpu.nn.schedule` -- and compares:

* the per-step training loss: largest and mean absolute difference over the first
  100 steps and over the whole run, and the largest jump of the difference from one
  step to the next (a truncation failure would show as one);
* the test accuracy after the run.

    python benchmarks/train_vs_twin.py RUN.json --train mnist_train.h5 --test mnist_test.h5
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from mpcgpu.nn.models import get_model
from mpcgpu.nn.plain import init_params
from mpcgpu.nn.train_plain import train_twin


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="the JSON of the private run (mpcgpu train --json, with --reveal-loss)")
    ap.add_argument("--train", required=True, help="plaintext training dataset (HDF5, as shared)")
    ap.add_argument("--test", required=True, help="plaintext test dataset (HDF5)")
    ap.add_argument("--init-seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="write both loss curves as JSON")
    args = ap.parse_args(argv)
    run = json.load(open(args.run))
    s = run["settings"]
    private = np.array([step["loss"] for step in run["steps"]], dtype=float)
    if np.isnan(private).any():
        print("the private run did not reveal its losses (run it with --reveal-loss)")
        return 2
    spec = get_model(s["model"])
    twin_losses = []
    result = train_twin(
        spec,
        s,
        args.train,
        args.test,
        init_params(spec, rng=args.init_seed),
        epochs=s["epochs"],
        limit=s.get("limit"),
        log=lambda m: None,
        on_step=lambda step, loss: twin_losses.append(loss),
    )
    twin = np.array(twin_losses)
    n = min(len(twin), len(private))
    diff = np.abs(private[:n] - twin[:n])
    head = diff[:100]
    jumps = np.abs(np.diff(private[:n] - twin[:n]))
    print(f"steps compared: {n}")
    print(
        f"loss difference, first 100 steps: max {head.max():.4f}, mean {head.mean():.4f} "
        f"(twin's loss at step 1 {twin[0]:.4f}, at step 100 {twin[min(99, n - 1)]:.4f})"
    )
    print(
        f"loss difference, all steps: max {diff.max():.4f}, mean {diff.mean():.4f}; "
        f"largest step-to-step jump of the difference {jumps.max() if len(jumps) else 0.0:.4f}"
    )
    print(
        f"test accuracy: private {100 * run['test_accuracy']:.2f}%, twin {100 * result.test_accuracy:.2f}% "
        f"(gap {100 * abs(run['test_accuracy'] - result.test_accuracy):.2f} points)"
    )
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(
                {
                    "private": private.tolist(),
                    "twin": twin.tolist(),
                    "private_accuracy": run["test_accuracy"],
                    "twin_accuracy": result.test_accuracy,
                },
                fh,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
