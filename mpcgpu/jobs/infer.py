"""`mpcgpu infer`: private inference from model shards and data shards (three MPI ranks)."""

from __future__ import annotations

import json
import time

import numpy

from .. import atomic
from . import checks

SUMMARY = "privately classify a sharded dataset with a sharded model (run under mpirun -n 3)"
DESCRIPTION = """\
Private inference on three MPI ranks. Each rank opens only its own shards:
  --model STEM   the model shards made by `mpcgpu share weights.h5` (STEM.party<i>.h5)
  --data STEM    the dataset shards made by `mpcgpu share dataset.h5`
Nothing is revealed but the predicted labels, and only to the result owner
(--reveal-to, default party 0). With labels in the data shards the accuracy is
computed privately (the true labels stay secret) and only the number of correct
predictions is revealed to the result owner.

Example:
  mpirun -n 3 mpcgpu infer --model shards/lenet_mnist --data shards/mnist_test --limit 1000
"""


def add_arguments(p):
    p.add_argument(
        "--model",
        required=True,
        metavar="STEM",
        help="model shard set (stem, file of this party, or pattern with {party})",
    )
    p.add_argument("--data", required=True, metavar="STEM", help="dataset shard set")
    p.add_argument("--batch-size", type=int, default=64, help="images per private forward pass (default 64)")
    p.add_argument("--limit", type=int, default=None, help="classify only the first N images")
    p.add_argument("--reveal-to", type=int, default=0, choices=(0, 1, 2), help="result owner (default 0)")
    p.add_argument("--out", default=None, metavar="FILE.npy", help="result owner writes the predicted labels here")
    p.add_argument("--profile", action="store_true", help="print per-layer time and communication")
    p.add_argument(
        "--json", default=None, metavar="FILE", help="result owner writes a summary (accuracy, time, bytes) as JSON"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress line")
    p.add_argument("--no-verify", action="store_true", help="skip re-hashing the shard files (large sets)")
    p.add_argument(
        "--device",
        default=None,
        choices=("auto", "cpu", "cuda"),
        help="array back end (default: MPCGPU_DEVICE or auto)",
    )
    p.add_argument("--precision", type=int, default=None, help="fractional bits (default: the shards')")


def load_model(rt, stem, verify=True):
    """Open a model shard set and wrap its parameters as shares; returns PrivateModel."""
    from ..data.shards import as_share, open_shard
    from ..nn.models import get_model
    from ..nn.private import DEFAULT_BN_DOMAIN, PrivateModel

    shard = open_shard(stem, rt, kind="model", verify=verify)
    with shard:
        model = get_model(shard.name)
        params = {name: as_share(shard.load(name), shard.info(name).scale) for name in shard.arrays}
        domain = shard.public.get("bn_var_domain")
    return PrivateModel(model, params, bn_domain=tuple(domain) if domain is not None else DEFAULT_BN_DOMAIN)


def peek_frac_bits(stem, rank):
    """The fractional bits recorded in this party's shard (for init before the collective checks)."""
    import h5py
    from ..data.shards import resolve_path

    try:
        with h5py.File(resolve_path(stem, rank), "r") as f:
            return int(f.attrs.get("frac_bits", 16))
    except Exception:
        return 16  # open_shard reports the real problem on every rank


def run(args) -> int:
    import mpcgpu
    from ..comm import world_rank
    from ..data.shards import as_share, open_shard
    from ..nn.loss import count_correct, one_hot
    from ..nn.private import Profile
    from ..progress import Progress

    checks.at_least(args, 1, "batch_size", "limit")
    precision = args.precision or peek_frac_bits(args.model, world_rank())
    rt = mpcgpu.init(device=args.device, precision=precision)
    comm, owner = rt.comm, args.reveal_to
    for path, option in ((args.out, "--out"), (args.json, "--json")):
        checks.output_file(rt, path, owner, option)
    is_owner = rt.rank == owner
    t_load = time.perf_counter()
    model = load_model(rt, args.model, verify=not args.no_verify)
    data = open_shard(args.data, rt, kind="dataset", verify=not args.no_verify)
    if "images" not in data.arrays:
        raise mpcgpu.MPCError(f"dataset shards {args.data} have no 'images' array")
    shape = tuple(data.info("images").shape)
    if shape[1:] != tuple(model.spec.input_shape):
        raise mpcgpu.MPCError(
            f"model {model.spec.name} expects images of shape {model.spec.input_shape}, the dataset has {shape[1:]}"
        )
    has_labels = "labels" in data.arrays
    n = shape[0] if args.limit is None else min(args.limit, shape[0])
    load_s = time.perf_counter() - t_load
    comm.reset_stats()
    if rt.rank == 0:
        print(
            f"mpcgpu infer: model {model.spec.name}, {n} images of {data.name}, batch {args.batch_size}, "
            f"{rt.describe()}",
            flush=True,
        )
    profile = Profile() if args.profile else None
    preds, correct = [], None
    bar = Progress(n, "private inference", enabled=(rt.rank == 0 and not args.no_progress))
    names = ("images", "labels") if has_labels else "images"
    classes = model.spec.num_classes
    t0 = time.perf_counter()
    for batch in data.batches(names, args.batch_size, stop=n):
        img_pair, lab_pair = batch if has_labels else (batch, None)
        x = as_share(img_pair, data.info("images").scale)
        onehot = model.predict_onehot(x, profile)
        xp = onehot.xp
        p = (onehot * xp.arange(classes, dtype=xp.int64)).sum(axis=1).reveal(to=owner)
        if has_labels:
            right = count_correct(onehot, one_hot(as_share(lab_pair, data.info("labels").scale), classes))
            correct = right if correct is None else correct + right
        if is_owner:
            preds.append(p)
        bar.update(x.shape[0])
    right = correct.reveal(to=owner) if correct is not None else None
    elapsed = time.perf_counter() - t0
    data.close()
    mine = comm.stats.as_dict()
    everyone = comm.allgather_object(mine)
    total_bytes = sum(s["bytes_sent"] for s in everyone)
    summary = {
        "model": model.spec.name,
        "dataset": data.name,
        "images": n,
        "batch_size": args.batch_size,
        "seconds": elapsed,
        "seconds_per_image": elapsed / max(n, 1),
        "load_seconds": load_s,
        "bytes_all_parties": total_bytes,
        "rounds": mine["rounds"],
        "device": rt.backend.describe(),
    }
    if is_owner:
        pred = numpy.concatenate(preds).astype(numpy.int64) if preds else numpy.zeros(0, numpy.int64)
        if args.out:
            atomic.save_npy(args.out, pred, fault="write-predictions")  # whole or not at all
        print(
            f"party {owner} (result owner): {n} predictions in {elapsed:.2f} s "
            f"({1000 * elapsed / max(n, 1):.1f} ms/image), {total_bytes / 1e6:.1f} MB sent by the three parties, "
            f"{mine['rounds']} rounds",
            flush=True,
        )
        if right is not None:
            count = int(right)
            summary["correct"] = count
            summary["accuracy"] = count / n if n else 0.0
            print(
                f"private accuracy: {100 * summary['accuracy']:.2f}% ({count}/{n}; computed under MPC, "
                "only the count is revealed)",
                flush=True,
            )
        if args.out:
            print(f"predictions written to {args.out}", flush=True)
        if args.json:
            atomic.write_text(args.json, json.dumps(summary, indent=2))
    if profile is not None:
        profile.report(comm)
    return 0
