"""`mpcgpu bench inference`: batch-1 private inference of the paper's networks, timed.

For each model: random weights (He init, seed fixed; the last batch norm of each
residual block scaled by 0.2 so activations of the deep ResNets stay inside the
fixed-point range), one random input, one private forward pass. Printed and
written as JSON: private time, bytes sent by the three parties, rounds, the
plaintext NumPy float64 time of the same forward pass, their ratio, and the
largest difference between the private and the plaintext logits. The one-off
preparation of a model (batch norms folded privately into the convolutions) is
timed apart and written to the JSON.
"""
from __future__ import annotations

import json
import time

import numpy

SUMMARY = "time private batch-1 inference of the paper's networks (run under mpirun -n 3)"
DESCRIPTION = __doc__ + """
Example:
  mpirun -n 3 mpcgpu bench inference --json bench.json
  mpirun -n 3 mpcgpu bench inference --models lenet,alexnet_cifar10
"""

DEFAULT_MODELS = ("lenet", "alexnet_cifar10", "vgg16_cifar10", "alexnet_tinyimagenet", "vgg16_tinyimagenet",
                  "alexnet_imagenet", "vgg16_imagenet", "resnet50", "resnet101", "resnet152")

# what the peers published for batch-1 inference (DESIGN.md section 9): seconds, bytes
PEERS = {"lenet": {"cryptgpu_s": 0.38, "cryptgpu_mb": 3, "piranha_s": 0.031, "piranha_mb": 2.5},
         "alexnet_cifar10": {"cryptgpu_s": 0.91, "cryptgpu_mb": 2.4, "piranha_s": 0.131, "piranha_mb": 2.0},
         "vgg16_cifar10": {"cryptgpu_s": 2.14, "cryptgpu_mb": 56, "piranha_s": 0.469, "piranha_mb": 88},
         "alexnet_imagenet": {"cryptgpu_s": 1.5}, "resnet152": {"cryptgpu_s": 25.0}}


def add_arguments(p):
    p.add_argument("what", choices=("inference",), help="what to benchmark")
    p.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated model names")
    p.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    p.add_argument("--json", default="bench_inference.json", help="output JSON (rank 0), default bench_inference.json")
    p.add_argument("--device", default=None, choices=("auto", "cpu", "cuda"))
    p.add_argument("--seed", type=int, default=0)


def bench_params(model, seed):
    from ..nn import spec as S
    from ..nn.plain import init_params
    params = init_params(model, rng=seed)
    for path, layer in S.walk(model):
        if isinstance(layer, S.Residual):
            bns = [S._join(S._join(path, layer.body_name), n) for n, l in layer.body.children()
                   if isinstance(l, S.BatchNorm2d)]
            if bns:
                params[bns[-1] + ".weight"] *= 0.2
    return params


def run(args) -> int:
    import mpcgpu
    from ..nn.models import get_model
    from ..nn.plain import PlainModel
    from ..nn.private import PrivateModel, share_params
    from ..sharing.arithmetic import share

    rt = mpcgpu.init(device=args.device)
    comm = rt.comm
    results = []
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    if rt.rank == 0:
        print(f"mpcgpu bench inference, batch {args.batch}, {rt.describe()}", flush=True)
        print(f"{'model':<22} {'private s':>10} {'MB (3 parties)':>15} {'rounds':>7} {'plain s':>9} "
              f"{'ratio':>7} {'max |diff|':>11}", flush=True)
    for name in names:
        model = get_model(name)
        rng = numpy.random.default_rng(args.seed)
        params = bench_params(model, args.seed) if rt.rank == 0 else None
        x = rng.standard_normal((args.batch,) + tuple(model.input_shape)) if rt.rank == 0 else None
        private = PrivateModel(model, share_params(model, params, src=0))
        sx = share(x, src=0)
        comm.barrier()
        with comm.measure() as prep:   # once per model: batch norms folded into the convolutions
            t0 = time.perf_counter()
            private.prepare()
            prepare_s = comm.allreduce_max(time.perf_counter() - t0)
        comm.barrier()
        with comm.measure() as m:
            t0 = time.perf_counter()
            logits = private.forward(sx, exact=True)   # revealed below: exact last rounding
            elapsed = time.perf_counter() - t0
        elapsed = comm.allreduce_max(elapsed)
        total_bytes = comm.allreduce_sum(m.bytes_sent)
        revealed = logits.reveal(to=0)
        row = {"model": name, "input_shape": list(model.input_shape), "batch": args.batch,
               "private_seconds": elapsed, "bytes_all_parties": total_bytes, "rounds": m.rounds,
               "prepare_seconds": prepare_s, "prepare_rounds": prep.rounds}
        if rt.rank == 0:
            plain = PlainModel(model, params)
            plain.forward(x, need_grad=False)
            t0 = time.perf_counter()
            ref = plain.forward(x, need_grad=False)
            row["plain_seconds"] = time.perf_counter() - t0
            row["ratio"] = elapsed / row["plain_seconds"]
            row["max_abs_diff"] = float(numpy.abs(revealed - ref).max())
            row["peers"] = PEERS.get(name, {})
            print(f"{name:<22} {elapsed:>10.3f} {total_bytes / 1e6:>15.1f} {m.rounds:>7} "
                  f"{row['plain_seconds']:>9.4f} {row['ratio']:>7.0f} {row['max_abs_diff']:>11.2e}", flush=True)
            results.append(row)
        del private, sx, logits
    if rt.rank == 0 and args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": rt.backend.describe(), "results": results}, fh, indent=2)
        print(f"written {args.json}")
    return 0
