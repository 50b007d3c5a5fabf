"""`mpcgpu infer`: private inference from model shards and data shards (three MPI ranks, or
``3k``: k groups of three, each classifying its contiguous slice of the images)."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy

from ..models_io import load_private_model
from ..reporting.outputs import check_files, write_outputs
from .channel_args import add_shard_job_arguments, cli_settings
from . import checks
from .checks import peek_frac_bits

SUMMARY = "privately classify a sharded dataset with a sharded model (run under mpirun -n 3 or -n 3k)"
DESCRIPTION = """\
Private inference on three MPI ranks. Each rank opens only its own shards:
  --model STEM   the model shards made by `mpcgpu share weights.h5` (STEM.party<i>.h5)
  --data STEM    the dataset shards made by `mpcgpu share dataset.h5`
Only the result owner (--reveal-to, default party 0) learns the output; the other two
parties learn nothing (not even the predicted class). What is revealed, --output:
  label     the predicted class of each image (default)
  logits    the output layer, rounded exactly to the fixed-point grid (2^-f)
  probs     softmax of those logits, computed by the owner in float64: the owner
            learns the logits (the probabilities up to one additive constant per
            image), which is what the probabilities say plus that constant; chosen
            over a private softmax, whose exp/reciprocal approximations would cost
            many rounds and still be approximate
  topk:K    the K most likely classes per image and their logits, in decreasing
            order (ties: lower class first), selected privately: the other
            logits stay secret; 1 <= K <= number of classes
With labels in the data shards the accuracy is computed privately (the true labels
stay secret) and only the number of correct predictions is revealed to the owner.

Files (result owner only; written under a temporary name and renamed):
  --out FILE.npy   labels (N,) int64 | logits or probs (N, classes) float64 |
                   top-K classes (N, K) int64 with their logits in FILE.scores.npy
  FILE.json        metadata next to it: model, dataset, mode, count, sample order, files

More than three ranks (mpirun -n 3k, --layout block|cyclic): k groups of three; the images
are cut into k contiguous slices in order (group 0 the first), each group reads only its
rows of its parties' shards and classifies them in its own three-party computation, and
the result owner's ranks (one organisation) gather the revealed outputs and counts to
group 0's owner rank, which writes the files (in dataset order) and the summary.

Example:
  mpirun -n 3 mpcgpu infer --model shards/lenet_mnist --data shards/mnist_test --limit 1000
  mpirun -n 6 mpcgpu infer --model shards/lenet_mnist --data shards/mnist_test --out pred.npy
  mpirun -n 3 mpcgpu infer --model shards/lenet_mnist --data shards/mnist_test --output topk:3 --out top3.npy
"""

MODES = ("label", "logits", "probs", "topk")


@dataclass(frozen=True)
class Output:
    """What `infer` reveals to the result owner: ``mode`` in :data:`MODES`, ``k`` for topk."""

    mode: str = "label"
    k: int | None = None

    def __str__(self) -> str:
        return f"topk:{self.k}" if self.mode == "topk" else self.mode

    def check(self, classes: int) -> None:
        """A clear error if K does not fit the model (before any computation)."""
        from ..errors import MPCError

        if self.mode == "topk" and not 1 <= self.k <= classes:
            raise MPCError(f"--output topk:{self.k}: K must be between 1 and {classes} (the model's classes)")


def parse_output(text: str) -> Output:
    """``label | logits | probs | topk:K`` -> :class:`Output` (MPCError otherwise)."""
    from ..errors import MPCError

    t = str(text).strip().lower()
    if t in ("label", "logits", "probs"):
        return Output(t)
    if t.startswith("topk"):
        _, sep, k = t.partition(":")
        if not sep or not k.strip().lstrip("+-").isdigit():
            raise MPCError(f"--output {text!r}: write topk:K with an integer K, e.g. topk:5")
        k = int(k)
        if k < 1:
            raise MPCError(f"--output {text!r}: K must be at least 1")
        return Output("topk", k)
    raise MPCError(f"--output {text!r} not understood: use label, logits, probs or topk:K (e.g. topk:5)")


def _output_type(text: str) -> Output:
    from ..errors import MPCError

    try:
        return parse_output(text)
    except MPCError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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
    p.add_argument(
        "--output",
        type=_output_type,
        default=Output(),
        metavar="label|logits|probs|topk:K",
        help="what the result owner learns per image (default label; see above)",
    )
    p.add_argument(
        "--out",
        default=None,
        metavar="FILE.npy",
        help="result owner writes the revealed output here (and metadata to FILE.json)",
    )
    p.add_argument("--profile", action="store_true", help="print per-layer time and communication")
    p.add_argument(
        "--json", default=None, metavar="FILE", help="result owner writes a summary (accuracy, time, bytes) as JSON"
    )
    p.add_argument(
        "--warm-up",
        action="store_true",
        help="first classify one image untimed, revealing nothing: on a fresh machine this "
        "compiles the CPU kernels (several seconds, once), so the timed run measures the protocol",
    )
    add_shard_job_arguments(p)


def load_model(rt, stem, verify=True):
    """The model shard set ``stem`` as an inference-only PrivateModel
    (:func:`mpcgpu.models_io.load_private_model`)."""
    return load_private_model(stem, rt, verify=verify)


def _warm_up(rt, model, data, start: int = 0):
    """One untimed private forward pass on the image ``start`` (this group's first), nothing
    revealed (the kernels compile on their first use: seconds on a fresh machine, then
    cached on disk)."""
    from ..data.shards import as_share

    t0 = time.perf_counter()
    img = next(iter(data.batches("images", 1, start=start, stop=start + 1)))
    model.predict_onehot(as_share(img, data.info("images").scale))
    seconds = rt.comm.allreduce_max(time.perf_counter() - t0)
    if rt.rank == 0 and rt.role.root:
        print(f"warm-up: one image in {seconds:.2f} s (kernels compiled or loaded; not timed below)", flush=True)


def output_paths(out: str | None, output: Output) -> dict:
    """The files the result owner writes for ``--out`` (empty without it): ``main`` (the
    output array), ``scores`` (topk), ``meta`` (JSON)."""
    if not out:
        return {}
    main = out if out.endswith(".npy") else out + ".npy"
    stem = main[: -len(".npy")]
    paths = {"main": main, "meta": stem + ".json"}
    if output.mode == "topk":
        paths["scores"] = stem + ".scores.npy"
    return paths


def softmax(logits: numpy.ndarray) -> numpy.ndarray:
    """Row-wise softmax in float64 (shifted by the row maximum: no overflow)."""
    z = numpy.asarray(logits, dtype=numpy.float64)
    e = numpy.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def classify(rt, model, data, n: int, batch_size: int, output: Output, owner: int, profile=None, bar=None, start=0):
    """Private inference of the images ``start..n-1`` of ``data`` (the first ``n`` by
    default; a group of several, its slice: :func:`gather_results`); the result owner gets
    ``(arrays, correct)`` -- ``arrays`` by name (``labels`` | ``logits`` | ``probs`` |
    ``labels`` and ``scores`` for topk), ``correct`` the privately counted number of right
    predictions (None without labels) -- and the other parties ``(None, None)``.

    Per batch of B images and C classes, on top of the forward pass, to the owner only
    (1 round, 8 bytes per element from one party): label: argmax, B labels; logits /
    probs: the output layer rounded exactly (``round_exact``, 12 rounds), B x C values;
    topk:K: exact logits, K argmaxes and one selection round
    (:func:`~mpcgpu.protocols.topk.topk`), B x K labels and B x K logits.  With labels
    in the shards: the argmax one-hot (free for label and topk) times the true one-hot,
    one round, and one revealed count at the end."""
    from ..data.shards import as_share
    from ..nn.loss import count_correct, one_hot
    from ..protocols.topk import topk

    has_labels = "labels" in data.arrays
    names = ("images", "labels") if has_labels else "images"
    classes = model.spec.num_classes
    output.check(classes)
    pieces: dict[str, list] = {}
    correct = None
    for batch in data.batches(names, batch_size, stop=n, **({"start": start} if start else {})):
        img_pair, lab_pair = batch if has_labels else (batch, None)
        x = as_share(img_pair, data.info("images").scale)
        revealed = {}
        if output.mode == "label":
            onehot = model.predict_onehot(x, profile)
            xp = onehot.xp
            revealed["labels"] = (onehot * xp.arange(classes, dtype=xp.int64)).sum(axis=1).reveal(to=owner)
        else:
            logits = model.forward(x, profile=profile, exact=True)
            if output.mode == "topk":
                values, indices, chosen = topk(logits, output.k, with_onehots=True)
                onehot = chosen[:, 0, :] if has_labels else None
                revealed["labels"] = indices.reveal(to=owner)
                revealed["scores"] = values.reveal(to=owner)
            else:
                onehot = logits.argmax(axis=1) if has_labels else None
                revealed["logits"] = logits.reveal(to=owner)
        if has_labels:
            right = count_correct(onehot, one_hot(as_share(lab_pair, data.info("labels").scale), classes))
            correct = right if correct is None else correct + right
        if rt.rank == owner:
            for name, value in revealed.items():
                pieces.setdefault(name, []).append(value)
        if bar is not None:
            bar.update(x.shape[0])
    count = reveal_count(rt, correct, owner)
    if rt.rank != owner:
        return None, None
    shapes = {"labels": (0,), "logits": (0, classes)} if output.mode != "topk" else {"labels": (0, output.k)}
    shapes["scores"] = (0, output.k or 0)
    wanted = {"label": ("labels",), "topk": ("labels", "scores")}.get(output.mode, ("logits",))
    arrays = {}
    for name in wanted:
        dtype = numpy.int64 if name == "labels" else numpy.float64
        got = pieces.get(name)
        arrays[name] = numpy.concatenate(got).astype(dtype) if got else numpy.zeros(shapes[name], dtype)
    if output.mode == "probs":
        arrays = {"probs": softmax(arrays.pop("logits"))}
    return arrays, (int(count) if count is not None else None)


def reveal_count(rt, correct, owner: int):
    """The privately counted number of right predictions (an integer share, or None without
    labels) revealed to the result owner.  With ``k`` groups the groups' count shares are
    summed first, component by component, over each party's role communicator (exact mod
    2^64, inside each organisation: a replicated sharing of the total) and revealed once, in
    group 0: the owner learns the total only, as with one group, not the groups' counts.
    Every rank of every group calls it (a group without rows holds no share: zeros)."""
    if rt.groups == 1:
        return correct.reveal(to=owner) if correct is not None else None
    from ..sharing.arithmetic import sum_over_groups, zeros

    if not rt.role.bcast_object(correct is not None):  # group 0's word: it has rows (the first)
        return None
    total = sum_over_groups(correct if correct is not None else zeros((), scale=0, rt=rt))
    return total.reveal(to=owner) if rt.role.root else None


def gather_results(rt, owner: int, arrays, correct):
    """With ``k`` groups: every group's revealed outputs gathered over the result owner's
    role communicator (its ``k`` ranks: one organisation, so nothing leaves it) to group 0's
    owner rank, concatenated in group order (= dataset order: the groups' slices are
    contiguous and in order).  ``(arrays, correct)`` on that rank (``correct``: the total,
    revealed there by :func:`reveal_count`), ``(None, None)`` on every other; with one
    group, the arguments as they are.  The owner ranks call it."""
    if rt.groups == 1 or rt.rank != owner:
        return (arrays, correct) if rt.rank == owner else (None, None)
    role, merged = rt.role, {}
    for name in arrays:  # the same names in the same order in every group (the mode's)
        got = role.gather(numpy.ascontiguousarray(arrays[name]))
        if role.root:  # group 0 has rows (it takes the first); a group without rows is left out
            merged[name] = numpy.concatenate([a for g, a in enumerate(got) if g == 0 or len(a)])
    return (merged, correct) if role.root else (None, None)


def _sync_groups(rt):
    """Every rank of every group has arrived (with ``k > 1``: the group, then the role, then
    the group again), so that the groups' timed work starts together; nothing with one group."""
    if rt.groups > 1:
        rt.comm.barrier()
        rt.role.barrier()
        rt.comm.barrier()


def job_totals(rt, owner: int, seconds: float, rows: int, peaks: list, total_bytes: int, rounds: int):
    """The whole job's figures at group 0's owner rank (None elsewhere): the slowest group's
    ``seconds``, the bytes of all groups summed, the most rounds, the peak memory per party
    (the largest over the groups) and, with ``k > 1``, ``groups`` and a ``per_group`` list.
    The owner ranks call it (the arguments are their group's figures)."""
    mine = {"images": rows, "seconds": seconds, "bytes": total_bytes, "rounds": rounds, "peaks": list(peaks)}
    every = rt.role.gather_object(mine) if rt.groups > 1 else [mine]
    if every is None:
        return None
    out = {
        "seconds": max(g["seconds"] for g in every),
        "bytes_all_parties": sum(g["bytes"] for g in every),
        "rounds": max(g["rounds"] for g in every),
        "peak_bytes_per_party": [max(g["peaks"][p] for g in every) for p in range(3)],
    }
    if rt.groups > 1:
        out["groups"] = rt.groups
        out["layout"] = rt.place.layout.kind
        out["per_group"] = [
            {"group": i, "images": g["images"], "seconds": g["seconds"], "bytes_all_parties": g["bytes"]}
            for i, g in enumerate(every)
        ]
    return out


def _groups_banner(rt, n: int) -> str:
    """``", k groups of three: a, b, ... images"`` (empty with one group)."""
    if rt.groups == 1:
        return ""
    from mpcgpu.comm.groups import split_range

    sizes = ", ".join(str(len(r)) for r in split_range(n, rt.groups))
    return f", {rt.groups} groups of three ({rt.place.layout.kind} layout): {sizes} images each"


def run(args) -> int:
    import mpcgpu
    from mpcgpu.util import memstat
    from ..data.shards import open_shard
    from ..nn.private import Profile
    from mpcgpu.util.progress import Progress

    output = getattr(args, "output", None) or Output()
    if isinstance(output, str):
        output = parse_output(output)
    checks.at_least(args, 1, "batch_size", "limit")
    precision = args.precision or peek_frac_bits(args.model, checks.launch_party(args))
    rt = mpcgpu.init(precision=precision, cli=cli_settings(args))
    comm, owner = rt.comm, args.reveal_to
    is_owner = rt.rank == owner
    t_load = time.perf_counter()
    model = load_model(rt, args.model, verify=not args.no_verify)
    if not hasattr(model, "spec"):  # a graph model (a transformer): mpcgpu.nn.dag_run.PrivateGraph
        return run_graph(args, rt, model, output, t_load)
    output.check(model.spec.num_classes)
    paths = output_paths(args.out, output)
    check_files(rt.comm, owner, paths, args.json, role=rt.role)
    data = open_shard(args.data, rt, kind="dataset", verify=not args.no_verify)
    if "images" not in data.arrays:
        raise mpcgpu.MPCError(f"dataset shards {args.data} have no 'images' array")
    shape = tuple(data.info("images").shape)
    if shape[1:] != tuple(model.spec.input_shape):
        raise mpcgpu.MPCError(
            f"model {model.spec.name} expects images of shape {model.spec.input_shape}, the dataset has {shape[1:]}"
        )
    n = shape[0] if args.limit is None else min(args.limit, shape[0])  # both >= 1: checks.at_least above
    rows = rt.place.share_of(n)  # this group's slice (all n with one group)
    load_s = time.perf_counter() - t_load
    if getattr(args, "warm_up", False) and len(rows):
        _warm_up(rt, model, data, rows.start)
    _sync_groups(rt)
    comm.reset_stats()
    if rt.rank == 0 and rt.role.root:
        print(
            f"mpcgpu infer: model {model.spec.name}, {n} images of {data.name}, batch {args.batch_size}, "
            f"output {output} to party {owner}{_groups_banner(rt, n)}, {rt.describe()}",
            flush=True,
        )
    profile = Profile() if args.profile else None
    bar = Progress(len(rows), "private inference", enabled=(rt.rank == 0 and rt.role.root and not args.no_progress))
    t0 = time.perf_counter()
    arrays, right = classify(rt, model, data, rows.stop, args.batch_size, output, owner, profile, bar, rows.start)
    elapsed = time.perf_counter() - t0
    data.close()
    mine = comm.stats.as_dict()
    everyone = comm.allgather_object(mine)
    total_bytes = sum(s["bytes_sent"] for s in everyone)
    peaks = comm.allgather_object(memstat.peak_bytes())  # data-independent: the same for any input
    job = None
    if is_owner:
        arrays, right = gather_results(rt, owner, arrays, right)
        job = job_totals(rt, owner, elapsed, len(rows), peaks, total_bytes, mine["rounds"])
    if is_owner and job is not None:  # group 0's owner rank
        summary = owner_summary(
            rt,
            owner,
            job,
            {"model": model.spec.name, "dataset": data.name},
            n,
            "image",
            str(output),
            load_s,
            {"batch_size": args.batch_size},
            right,
            "computed under MPC, only the count is revealed",
        )
        head = {"model": model.spec.name, "dataset": data.name, "dataset_set_id": getattr(data, "set_id", None)}
        mode = {"k": output.k, "classes": model.spec.num_classes}
        deliver(args, rt, output, paths, arrays, summary, n, head, mode, VALUES_NOTE[output.mode])
    if profile is not None and rt.role.root:  # group 0's layers (a collective of its three ranks)
        profile.report(comm)
    return 0


def owner_summary(rt, owner, job, head: dict, n: int, unit: str, output: str, load_s, extra, right, revealed):
    """The whole job's summary at group 0's owner rank (``job``: :func:`job_totals`), printed in
    two lines: time, bytes, rounds and memory per ``unit`` ("image" or "sample"), then the
    private accuracy when ``right`` (the revealed count) is known."""
    elapsed, total_bytes, peaks = job["seconds"], job["bytes_all_parties"], job["peak_bytes_per_party"]
    per = max(n, 1)
    summary = {
        **head,
        f"{unit}s": n,
        "output": output,
        **extra,
        "seconds": elapsed,
        f"seconds_per_{unit}": elapsed / per,
        "load_seconds": load_s,
        "bytes_all_parties": total_bytes,
        "rounds": job["rounds"],
        "peak_bytes_per_party": peaks,
        "device": rt.backend.describe(),
        **{key: job[key] for key in ("groups", "layout", "per_group") if key in job},
    }
    parties = "the three parties" if rt.groups == 1 else f"the three parties of {rt.groups} groups"
    what = (
        f"{n} predictions in {elapsed:.2f} s ({1000 * elapsed / per:.1f} ms/image)"
        if unit == "image"
        else f"{n} samples in {elapsed:.2f} s"
    )
    print(
        f"party {owner} (result owner): {what}, {total_bytes / 1e6:.1f} MB sent by {parties}, "
        f"{job['rounds']} rounds, peak memory per party {', '.join(f'{p / 1e9:.2f}' for p in peaks)} GB",
        flush=True,
    )
    if right is not None:
        summary["correct"] = right
        summary["accuracy"] = right / n if n else 0.0
        print(f"private accuracy: {100 * summary['accuracy']:.2f}% ({right}/{n}; {revealed})", flush=True)
    return summary


def deliver(args, rt, output: Output, paths: dict, arrays: dict, summary: dict, n: int, head, mode, values: str):
    """The result owner's end of `infer`: the output files with their metadata (``head``
    fields first, then the mode and ``mode`` fields, then what every run states), or a
    preview without --out; then the summary JSON with --json."""
    from mpcgpu.util.results import save_json

    if paths:
        meta = {
            **head,
            "mode": output.mode,
            **mode,
            "count": n,
            "order": f"row i is sample i of the dataset shards in stored order (samples 0..{n - 1})",
            "revealed_to": args.reveal_to,
            "frac_bits": rt.frac_bits,
            **({"groups": rt.groups} if rt.groups > 1 else {}),
            "values": values,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        written = write_outputs(paths, arrays, meta)
        print(f"{output} written to {', '.join(written)}", flush=True)
    else:
        _preview(arrays, output)
    if args.json:
        save_json(args.json, summary)


def graph_batches(rt, g, data, n: int, start: int = 0):
    """``(rows, feeds)`` for the graph ``g`` over the samples ``start..n-1`` of ``data`` (a
    :class:`~mpcgpu.data.tokens.TokenDataset` or image shards; the first ``n`` by default, a
    group's slice with several), in batches of the graph's own batch size (its shapes are
    static); a last, shorter batch is padded with repeats of its own rows (their outputs
    dropped; only the rows of the slice are read, each once).  Token ids stay shares (the
    graph expands them privately); the attention masks are public; other public inputs
    (token type ids) are zeros."""
    from ..data.shards import as_share
    from ..errors import MPCError

    batch = int(g.inputs[0].shape[0]) if g.inputs[0].shape else 1
    secret = [t for t in g.inputs if t.role == "secret"]
    if len(secret) != 1:
        raise MPCError(f"graph {g.name}: infer feeds one secret input, the graph has {[t.name for t in secret]}")
    x_in = secret[0]
    tokens = hasattr(data, "masks")
    for lo in range(start, n, batch):
        rows = numpy.arange(lo, min(lo + batch, n), dtype=numpy.int64)
        fill = None if rows.size == batch else numpy.arange(batch) % rows.size  # positions in rows
        feeds = {}
        if tokens:
            x, mask, _ = data.batch(rows)
        else:
            x, mask = as_share(data.take("images", rows), data.info("images").scale), None
        if fill is not None:
            x = x[rt.backend.to_device(fill)]
            mask = None if mask is None else mask[fill]
        feeds[x_in.name] = x
        for t in g.inputs:
            if t.role != "public":
                continue
            if "mask" in t.name and mask is not None:
                feeds[t.name] = mask.astype(bool if t.dtype == "bool" else numpy.int64)
            else:
                feeds[t.name] = numpy.zeros(t.shape, dtype=numpy.float64 if t.dtype == "float" else numpy.int64)
        yield rows, feeds


def run_graph(args, rt, model, output: Output, t_load: float) -> int:
    """`infer` for a graph model: the secret input of each batch from the dataset shards
    (images, or token ids with their public masks), the graph's first output revealed to
    the owner: ``label`` (its argmax over the last axis, chosen privately) or ``logits``
    (the output itself: class logits, hidden states or next-token logits).  With ``k``
    groups, each its slice, gathered as in :func:`run`."""
    from mpcgpu.util import memstat
    from mpcgpu.util.progress import Progress
    from ..data.shards import as_share, open_shard
    from ..data.tokens import TokenDataset, is_token_shard
    from ..errors import MPCError
    from ..nn.loss import count_correct, one_hot
    from ..nn.private import Profile

    g = model.source
    comm, owner = rt.comm, args.reveal_to
    if output.mode not in ("label", "logits"):
        raise MPCError(f"--output {output}: a graph model reveals label or logits (its output tensor)")
    probe = open_shard(args.data, rt, kind="dataset", verify=not args.no_verify)
    tokens = is_token_shard(probe)
    if tokens:
        probe.close()
        data = TokenDataset(args.data, rt, verify=False)
        count = len(data)
    else:
        data = probe
        if "images" not in data.arrays:
            raise MPCError(f"dataset shards {args.data} have no 'images' array")
        count = data.info("images").shape[0]
    n = count if args.limit is None else min(args.limit, count)
    mine = rt.place.share_of(n)  # this group's slice (all n with one group)
    paths = output_paths(args.out, output)
    check_files(rt.comm, owner, paths, args.json, role=rt.role)
    load_s = time.perf_counter() - t_load
    _sync_groups(rt)
    comm.reset_stats()
    if rt.rank == 0 and rt.role.root:
        print(
            f"mpcgpu infer: graph model {g.name} ({len(g.nodes)} nodes), {n} samples of {data.name}, "
            f"output {output} to party {owner}{_groups_banner(rt, n).replace(' images each', ' samples each')}, "
            f"{rt.describe()}",
            flush=True,
        )
    profile = Profile() if args.profile else None
    bar = Progress(len(mine), "private inference", enabled=(rt.rank == 0 and rt.role.root and not args.no_progress))
    pieces, correct = [], None
    labelled = not tokens and "labels" in data.arrays and output.mode == "label"
    t0 = time.perf_counter()
    for rows, feeds in graph_batches(rt, g, data, mine.stop, mine.start):
        y = model.run(feeds, profile=profile, exact=output.mode == "logits")[g.outputs[0]]
        if output.mode == "label":
            onehot = y.argmax(axis=-1)
            xp = onehot.xp
            y = (onehot * xp.arange(onehot.shape[-1], dtype=xp.int64)).sum(axis=-1)
            if labelled and onehot.ndim == 2:  # counted privately; rows of the padding left out
                truth = one_hot(as_share(data.take("labels", rows), data.info("labels").scale), onehot.shape[-1])
                right = count_correct(onehot[: rows.size], truth)
                correct = right if correct is None else correct + right
        got = y.reveal(to=owner)
        if rt.rank == owner:
            pieces.append(got[: rows.size])
        bar.update(rows.size)
    elapsed = time.perf_counter() - t0
    right = reveal_count(rt, correct, owner)
    data.close()
    stats = comm.stats.as_dict()
    total_bytes = sum(s["bytes_sent"] for s in comm.allgather_object(stats))
    peaks = comm.allgather_object(memstat.peak_bytes())
    job = None
    if rt.rank == owner:
        dtype = numpy.int64 if output.mode == "label" else numpy.float64
        name = "labels" if output.mode == "label" else "logits"
        # a group without rows (fewer samples than groups) sends none (gather_results drops it)
        arrays = {name: numpy.concatenate(pieces).astype(dtype) if pieces else numpy.zeros(0, dtype)}
        arrays, right = gather_results(rt, owner, arrays, None if right is None else int(right))
        job = job_totals(rt, owner, elapsed, len(mine), peaks, total_bytes, stats["rounds"])
    if job is not None:  # group 0's owner rank
        summary = owner_summary(
            rt,
            owner,
            job,
            {"model": g.name, "dataset": data.name},
            n,
            "sample",
            str(output),
            load_s,
            {},
            None if right is None else int(right),
            "only the count is revealed",
        )
        head = {"model": g.name, "dataset": data.name}
        deliver(args, rt, output, paths, arrays, summary, n, head, {}, GRAPH_VALUES_NOTE[output.mode])
    if profile is not None and rt.role.root:
        profile.report(comm)
    return 0


GRAPH_VALUES_NOTE = {
    "label": "argmax over the last axis of the graph's first output, chosen privately (ties to the lower index)",
    "logits": "the graph's first output, its last rounding exact (to nearest on the 2^-frac_bits grid: "
    "PrivateGraph.run(exact=True))",
}


VALUES_NOTE = {
    "label": "predicted class (argmax of the logits, ties to the lower class)",
    "logits": "output layer revealed exactly rounded to the fixed-point grid (round_exact, 2^-frac_bits)",
    "probs": "softmax in float64, at the result owner, of the exactly rounded logits",
    "topk": "classes by decreasing logit (ties: lower class first), selected privately; scores: their "
    "exactly rounded logits",
}


def _preview(arrays, output, rows: int = 5):
    """No --out: show the owner the first rows (nothing is saved)."""
    for name, a in arrays.items():
        shown = numpy.array2string(a[:rows], precision=4, suppress_small=True)
        print(f"{name} (first {min(rows, len(a))} of {len(a)}; use --out FILE.npy to save):\n{shown}", flush=True)
