"""`mpcgpu bench inference | training`: the paper's networks, timed on three ranks.

inference: batch-1 private inference.  For each model: random weights (He init, seed
fixed; the last batch norm of each residual block scaled by 0.2 so activations of the
deep ResNets stay inside the fixed-point range), one random input, one private forward
pass whose output layer is rounded exactly (the logits are revealed to party 0 to
compare with the plaintext twin).  The one-off preparation of a model (batch norms
folded privately into the convolutions) is timed apart.

training: one private SGD step (forward with batch statistics, softmax cross-entropy
with secret labels, backward, update) per model at the batch sizes of the CryptGPU and
Piranha papers, next to the same step of the plaintext NumPy twin.

Each model runs once untimed first ("first s": it includes the first touch of the
process's memory, which on a virtual machine can cost more than the work), then
``--steps`` timed passes or steps, whose median is reported.

Printed and written as JSON: private time, bytes sent by the three parties and by the
busiest one, rounds, the plaintext time and their ratio (and for inference the largest
difference between private and plaintext logits); the peers' published GPU figures ride
along.

Where it will run (--network, repeatable): each row projected onto a network between
three machines, from its measured time, rounds and bytes per party
(mpcgpu.reporting.netmodel):  projected = measured + rounds x RTT + busiest party's bytes / bandwidth.
  lan                10 Gbit/s, 0.2 ms RTT (one data centre: the peers' setting)
  wan                100 Mbit/s, 40 ms RTT (regions of one continent)
  BANDWIDTH,RTT      e.g. 1Gbit,10ms or 100MB/s,2ms
The measured time is an upper bound on the compute (three parties share this machine's
cores), a round costs a full RTT and nothing overlaps: a projection, not a measurement.
Training over K groups of three (--groups K, on three ranks): one group's step on its
slice of the batch (ceil(B/K) rows, update included) is measured and projected
(mpcgpu.reporting.groupmodel):  projected = step(B/K) [on --network] + the role all-reduce
of 2 x 8 x P bytes + group 0's broadcast of the new state, over the intra-organisation
--role-network (node: 10 GB/s, 20 us, the default; ib: 200 Gbit/s, 10 us; eth: 25 Gbit/s,
50 us; or BANDWIDTH,RTT).  Under mpirun -n 3k, bench training measures the k-group step
itself (each group its slice; the slowest rank's time, all groups' bytes).

inference --groups (under mpirun -n 3k: k groups of three): throughput.  A global batch of
--batch images (default 64) is cut into k contiguous slices, one per group; each group
runs its slice's private forward pass (output rounded exactly) in its own three-party
computation, all groups started together; reported: the slowest group's time, images per
second for the whole batch and for each group, bytes summed over the groups.  Run it with
-n 3 (k = 1) and -n 3k to see the throughput against k.  Layer models only (default:
lenet); --groups K checks that the launch has K groups.

--plot FILE.png draws the rows (and projections, and the peers) with matplotlib
(pip install 'mpcgpu[plots]'); `mpcgpu plot FILE.json` draws a saved result later.
"""

from __future__ import annotations

import time

import numpy

from .channel_args import add_channel_arguments, cli_settings

SUMMARY = "time private inference or training of the paper's networks (run under mpirun -n 3)"
DESCRIPTION = (
    __doc__
    + """
Example:
  mpirun -n 3 mpcgpu bench inference --json bench.json
  mpirun -n 3 mpcgpu bench inference --models lenet --network lan --network wan --plot lenet.png
  mpirun -n 3 mpcgpu bench inference --models lenet,alexnet_cifar10
  mpirun -n 3 mpcgpu bench training --models lenet --profile
  mpirun -n 6 mpcgpu bench inference --groups --models lenet --batch 64 --steps 3
"""
)

INFERENCE_MODELS = (
    "lenet",
    "alexnet_cifar10",
    "vgg16_cifar10",
    "alexnet_tinyimagenet",
    "vgg16_tinyimagenet",
    "alexnet_imagenet",
    "vgg16_imagenet",
    "resnet50",
    "resnet101",
    "resnet152",
)
#: (model, batch) of the training comparisons of CryptGPU (Table) and Piranha's artifact
TRAINING = (
    ("lenet", 128),
    ("alexnet_cifar10", 128),
    ("vgg16_cifar10", 32),
    ("alexnet_tinyimagenet", 128),
    ("vgg16_tinyimagenet", 8),
)

# what the peers published (docs/design.md §9): seconds, MB
PEERS = {
    "lenet": {"cryptgpu_s": 0.38, "cryptgpu_mb": 3, "piranha_s": 0.031, "piranha_mb": 2.5},
    "alexnet_cifar10": {"cryptgpu_s": 0.91, "cryptgpu_mb": 2.4, "piranha_s": 0.131, "piranha_mb": 2.0},
    "vgg16_cifar10": {"cryptgpu_s": 2.14, "cryptgpu_mb": 56, "piranha_s": 0.469, "piranha_mb": 88},
    "alexnet_imagenet": {"cryptgpu_s": 1.5},
    "resnet152": {"cryptgpu_s": 25.0},
}
PEERS_TRAINING = {
    "lenet": {"cryptgpu_s": 2.21, "cryptgpu_mb": 1140, "piranha_s": 0.89, "piranha_mb": 420},
    "alexnet_cifar10": {"cryptgpu_s": 2.91, "cryptgpu_mb": 1370, "piranha_s": 1.42, "piranha_mb": 580},
    "vgg16_cifar10": {"cryptgpu_s": 12.14, "cryptgpu_mb": 7550, "piranha_s": 7.47, "piranha_mb": 4260},
}


def add_arguments(p):
    p.add_argument("what", choices=("inference", "training"), help="what to benchmark")
    p.add_argument(
        "--models",
        default=None,
        help="comma-separated registered model names or weights files (an imported network runs at its "
        "own input size and class count; default: the paper's table for WHAT)",
    )
    p.add_argument(
        "--batch", type=int, default=None, help="batch size (default: 1 for inference, the paper's for training)"
    )
    p.add_argument(
        "--steps",
        type=int,
        default=1,
        help="timed passes (inference) or steps (training) per model, after one untimed "
        "first one (default 1; the median is reported)",
    )
    p.add_argument("--profile", action="store_true", help="per-layer time, bytes and rounds")
    p.add_argument(
        "--network",
        action="append",
        default=None,
        metavar="lan|wan|BANDWIDTH,RTT",
        help="also project every row onto this network (repeatable; see above)",
    )
    p.add_argument("--plot", default=None, metavar="FILE.png", help="draw the results as PNG (needs matplotlib)")
    p.add_argument("--json", default=None, help="output JSON (rank 0; default bench_<what>.json)")
    p.add_argument("--device", default=None, choices=("auto", "cpu", "cuda"))
    p.add_argument("--seed", type=int, default=0)
    add_training_group_arguments(p)
    add_channel_arguments(p)


def add_training_group_arguments(p):
    """``bench training --groups K --role-network NET`` (the projection onto K groups)."""
    p.add_argument(
        "--groups",
        nargs="?",
        type=int,
        const=0,
        default=None,
        metavar="K",
        help="inference: throughput of this launch's k groups of three (mpirun -n 3k; K, if given, must be the "
        "launch's k); training: project each row onto K groups of three (measures one group's step on "
        "ceil(B/K) rows; see above)",
    )
    p.add_argument(
        "--role-network",
        default=None,
        metavar="node|ib|eth|BANDWIDTH,RTT",
        help="training --groups: the network between the ranks of one party (default node: 10 GB/s, 20 us)",
    )


def bench_params(model, seed):
    from ..nn import spec as S
    from ..nn.plain import init_params

    params = init_params(model, rng=seed)
    for path, layer in S.walk(model):
        if isinstance(layer, S.Residual):
            bns = [
                S.join_path(S.join_path(path, layer.body_name), n)
                for n, child in layer.body.children()
                if isinstance(child, S.BatchNorm2d)
            ]
            if bns:
                params[bns[-1] + ".weight"] *= 0.2
    return params


def _warm_up(rt):
    """Load the compiled ring kernels (and calibrate on a new machine) before any timing."""
    from mpcgpu.ring import products as ring

    xp = rt.xp
    a = xp.ones((4, 4), dtype=xp.uint64)
    ring.matmul(a, a)
    ring.conv2d(xp.ones((1, 1, 4, 4), dtype=xp.uint64), xp.ones((1, 1, 3, 3), dtype=xp.uint64))


def _timed(comm, fn):
    """``(fn(), seconds of the slowest party)``, started together."""
    comm.barrier()
    t0 = time.perf_counter()
    out = fn()
    return out, comm.allreduce_max(time.perf_counter() - t0)


def _timed_passes(rt, args, model, batch, run, profile):
    """``(output, row)``: ``run(profile)`` once untimed (the first touch of memory), then
    ``--steps`` timed passes; the row holds their median, the bytes and rounds of the last."""
    comm = rt.comm
    first = _timed(comm, lambda: run(None))[1]
    times = []
    for _ in range(max(args.steps, 1)):
        with comm.measure() as m:
            out, elapsed = _timed(comm, lambda: run(profile))
        times.append(elapsed)
    row = {
        "model": model.name,
        "input_shape": list(model.input_shape),
        "batch": batch,
        "private_seconds": float(numpy.median(times)),
        "first_seconds": first,
        "bytes_all_parties": comm.allreduce_sum(m.bytes_sent),
        "bytes_busiest_party": comm.allreduce_max(m.bytes_sent),
        "rounds": comm.allreduce_max(m.rounds - 1),  # less the time's allreduce
        "steps": len(times),
    }
    return out, row


def _inference(rt, model, args, batch):
    from ..nn.plain import PlainModel
    from ..nn.private import PrivateModel, Profile, share_params, wants_compact
    from ..sharing.arithmetic import share

    comm = rt.comm
    rng = numpy.random.default_rng(args.seed)
    params = bench_params(model, args.seed) if rt.rank == 0 else None
    x = rng.standard_normal((batch,) + tuple(model.input_shape)) if rt.rank == 0 else None
    shared = share_params(model, params, src=0, compact=wants_compact(model))  # as infer holds them
    private = PrivateModel(model, shared, inference_only=True)
    sx = share(x, src=0)
    comm.barrier()
    with comm.measure() as prep:  # once per model: batch norms folded into the convolutions
        t0 = time.perf_counter()
        private.prepare()
        prepare_s = comm.allreduce_max(time.perf_counter() - t0)
    profile = Profile() if args.profile else None
    logits, row = _timed_passes(rt, args, model, batch, lambda p: private.forward(sx, exact=True, profile=p), profile)
    revealed = logits.reveal(to=0)
    row.update(prepare_seconds=prepare_s, prepare_rounds=prep.rounds)
    if rt.rank == 0:
        plain = PlainModel(model, params)
        plain.forward(x, need_grad=False)
        t0 = time.perf_counter()
        ref = plain.forward(x, need_grad=False)
        row["plain_seconds"] = time.perf_counter() - t0
        row["max_abs_diff"] = float(numpy.abs(revealed - ref).max())
    return row, profile


def graph_feeds(g, rng, batch: int = 1) -> tuple:
    """Random inputs for a graph model, as its data owner would hold them: ``(secret,
    public)`` dicts of NumPy arrays: token ids (ints below the vocabulary of the table that
    reads them) or a standard normal image for the secret inputs; all-ones masks and zero
    ids for the public ones."""
    secret, public = {}, {}
    for t in g.inputs:
        shape = (batch,) + tuple(t.shape[1:])
        if t.role == "secret" and t.dtype == "int":
            secret[t.name] = rng.integers(0, g.one_hot_width(t.name), shape)
        elif t.role == "secret":
            secret[t.name] = rng.standard_normal(shape)
        elif "mask" in t.name:
            public[t.name] = numpy.ones(shape, dtype=bool if t.dtype == "bool" else numpy.int64)
        else:
            public[t.name] = numpy.zeros(shape, dtype=numpy.float64 if t.dtype == "float" else numpy.int64)
    return secret, public


def _inference_graph(rt, g, args, batch):
    """:func:`_inference` for a graph model (a transformer): random weights of the model's
    own initialisation, random tokens or image, one private pass, the outputs revealed to
    party 0 and compared with the plaintext executor."""
    from ..nn.dag_run import PrivateGraph, run_plain, share_inputs
    from ..nn.private import Profile
    from ..nn.transformers import graph_consts, random_weights
    from ..sharing.arithmetic import share

    from mpcgpu.util import memstat

    if rt.rank == 0:
        params, consts = random_weights(g, args.seed)
    else:  # the public consts alike on every party; the weights are party 0's alone
        params, consts = {p.name: None for p in g.params}, graph_consts(g)
    shared = {n: share(params[n], src=0) for n in params}
    secret, public = graph_feeds(g, numpy.random.default_rng(args.seed), batch)
    feeds = share_inputs(g, {**secret, **public} if rt.rank == 0 else None, rt, ids_one_hot=False)
    private = PrivateGraph(g, shared, consts, rt)
    memstat.reset_peak()  # the peak of the private passes (the owner's set-up of random weights excluded)
    profile = Profile() if args.profile else None
    outs, row = _timed_passes(rt, args, g, batch, lambda p: private.run(feeds, profile=p, exact=True), profile)
    revealed = {name: outs[name].reveal(to=0) for name in g.outputs}
    if rt.rank == 0:
        t0 = time.perf_counter()
        ref = run_plain(g, params, consts, {**public, **secret})
        row["plain_seconds"] = time.perf_counter() - t0
        row["max_abs_diff"] = max(float(numpy.abs(revealed[n] - ref[n]).max()) for n in g.outputs)
        row["mean_abs_diff"] = float(numpy.mean([numpy.abs(revealed[n] - ref[n]).mean() for n in g.outputs]))
        if g.task in ("logits", "lm"):
            z, r = revealed[g.outputs[0]], ref[g.outputs[0]]
            row["argmax_agree"] = float((z.argmax(-1) == r.argmax(-1)).mean())
    return row, profile


def _over_groups(rt, value, how):
    """``value`` combined over the ``k`` groups (``max`` or ``sum``), on every rank; itself with one."""
    if rt.groups == 1:
        return value
    got = rt.role.gather_object(value)
    return rt.role.bcast_object(how(got) if got is not None else None)


def _training(rt, model, args, batch):
    """One private SGD step on ``batch`` rows, timed; with ``k`` groups (mpirun -n 3k) the
    data-parallel step: each group its slice of the same batch, the slowest rank's time,
    every group's bytes (and the role communicators' bytes, ``role_bytes``)."""
    from ..nn.optim import PrivateSGD
    from ..nn.plain import SGD, PlainModel
    from ..nn.private import PrivateModel, Profile, share_params
    from ..nn.trainer import train_step
    from ..sharing.arithmetic import share

    comm = rt.comm
    rng = numpy.random.default_rng(args.seed)
    params = bench_params(model, args.seed) if rt.rank == 0 else None
    x = rng.standard_normal((batch,) + tuple(model.input_shape)) if rt.rank == 0 else None
    y = rng.integers(0, model.num_classes, batch) if rt.rank == 0 else None
    part = rt.place.share_of(batch)  # this group's rows (all of them with one group)
    mine = (x[part.start : part.stop], y[part.start : part.stop]) if rt.rank == 0 else (None, None)
    private = PrivateModel(model, share_params(model, params, src=0))
    private.batch_part = (batch, part.start) if rt.groups > 1 else None
    opt = PrivateSGD(private.params, private.trainable(), lr=0.01, momentum=0.9)
    sx, sy = share(mine[0], src=0), share(mine[1], src=0, integer=True)
    profile = Profile() if args.profile else None

    def step(prof):
        return train_step(private, opt, sx, sy, 0.01, profile=prof, batch_size=batch)

    def timed(prof):
        """(the slowest rank's seconds, this rank's CPU seconds) of one step"""
        rt.role.barrier()
        c0 = time.process_time()
        wall = _timed(comm, lambda: step(prof))[1]
        return _over_groups(rt, wall, max), time.process_time() - c0

    first = timed(None)[0]  # first touch of memory
    times, cpus, sent, busiest, role_sent, rounds = [], [], [], [], [], 0
    for _ in range(max(args.steps, 1)):
        role0 = rt.role.bytes
        with comm.measure() as m:
            wall, cpu = timed(profile)
        times.append(wall)
        cpus.append(_over_groups(rt, comm.allreduce_sum(cpu), sum))
        role_sent.append(_over_groups(rt, comm.allreduce_sum(rt.role.bytes - role0), sum))
        sent.append(_over_groups(rt, comm.allreduce_sum(m.bytes_sent), sum))
        busiest.append(_over_groups(rt, comm.allreduce_max(m.bytes_sent), max))
        rounds = comm.allreduce_max(m.rounds - 1)  # less the allreduce of the time
    row = {
        "model": model.name,
        "input_shape": list(model.input_shape),
        "batch": batch,
        "private_seconds": float(numpy.median(times)),
        "first_seconds": first,
        "bytes_all_parties": int(numpy.median(sent)),
        "bytes_busiest_party": int(numpy.median(busiest)),
        "rounds": rounds,
        "steps": len(times),
        "cpu_seconds_all_ranks": float(numpy.median(cpus)),  # process CPU time of the step, summed
    }
    if rt.groups > 1:
        row.update(groups=rt.groups, role_bytes=int(numpy.median(role_sent)))
    if rt.rank == 0 and rt.role.root:
        plain = PlainModel(model, params)
        popt = SGD(plain.params, 0.01, momentum=0.9, spec=model)
        plain.loss_and_grads(x, y)
        t0 = time.perf_counter()
        plain.loss_and_grads(x, y)
        popt.step(plain.grads)
        row["plain_seconds"] = time.perf_counter() - t0
    return row, profile


def _group_projection_arguments(args):
    """``(K, role network)`` of ``bench training --groups K`` (``(None, None)`` without it),
    checked before the parties start."""
    from ..errors import MPCError
    from mpcgpu.reporting.groupmodel import parse_role_network

    k = getattr(args, "groups", None)
    if k is None:
        if getattr(args, "role_network", None):
            raise MPCError("--role-network needs --groups K (bench training)")
        return None, None
    if args.what != "training":
        return None, None  # (inference: not a projection of this module)
    if k < 1:
        raise MPCError(f"--groups {k}: give a positive number of groups")
    return int(k), parse_role_network(args.role_network)


def _print_group_projections(row, model, batch, k, role_net, networks):
    """``row["group_projections"]``: the global batch's step over ``k`` groups, as measured here
    and on each ``--network``; printed one line each."""
    from ..nn import spec as S
    from mpcgpu.reporting.groupmodel import project_groups

    specs = S.param_specs(model)
    trained = sum(int(numpy.prod(p.shape)) for p in specs if p.trainable)
    total = sum(int(numpy.prod(p.shape)) for p in specs)
    row["global_batch"] = batch
    row["group_projections"] = [
        project_groups(
            row["private_seconds"], row["rounds"], row["bytes_busiest_party"], k, trained, total, role_net, net
        )
        for net in [None] + list(networks)
    ]
    for p in row["group_projections"]:
        print(
            f"  {k} groups, global batch {batch} ({p['network']} between the parties): {p['seconds']:.3f} s/step = "
            f"group step {p['group_step_s']:.3f} + all-reduce {p['allreduce_s'] * 1e3:.2f} ms "
            f"({p['allreduce_bytes_per_rank'] / 1e6:.1f} MB per rank) + broadcast {p['bcast_s'] * 1e3:.2f} ms "
            f"({p['bcast_bytes_per_rank'] / 1e6:.1f} MB); {batch / p['seconds']:.1f} samples/s",
            flush=True,
        )


def project_row(row: dict, networks) -> list:
    """The row's projections onto ``networks`` (:func:`mpcgpu.reporting.netmodel.project`)."""
    from mpcgpu.reporting.netmodel import project

    return [project(row["private_seconds"], row["rounds"], row["bytes_busiest_party"], net) for net in networks or ()]


def _model(name):
    """A registered CNN or transformer name (``bert-base``, ``gpt2``, ``vit-b16``...), or a
    weights file (its own architecture: a layer tree or a graph)."""
    from ..nn import transformers
    from ..nn.weights import model_by_name_or_file

    if name in transformers.MODELS:
        cfg = transformers.get_config(name)
        if cfg.kind == "gpt2":  # PUMA's task: T tokens in, the next token's logits out
            return transformers.gpt2(cfg, last_only=True)
        return transformers.get_transformer(name)
    return model_by_name_or_file(name)


def _output_problem(out, plot) -> str | None:
    """Why rank 0 could not write the JSON or the PNG at the end (None if it can)."""
    from ..errors import MPCError
    from mpcgpu.util.results import check_writable

    try:
        check_writable(out, plot)
        if plot:
            from mpcgpu.reporting.plots import pyplot

            pyplot()  # the install hint when matplotlib is missing
    except MPCError as exc:
        return str(exc)
    return None


def run(args) -> int:
    import mpcgpu

    from mpcgpu.util import memstat
    from mpcgpu.reporting.groupmodel import slice_rows
    from mpcgpu.reporting.netmodel import parse_network
    from ..nn.dag import GraphModel

    # everything the user can get wrong is checked before the parties start working
    networks = [parse_network(t) for t in (getattr(args, "network", None) or [])]  # alike on every rank
    plot = getattr(args, "plot", None)
    out = args.json or f"bench_{args.what}.json"
    project_k, role_net = _group_projection_arguments(args)
    rt = mpcgpu.init(cli=cli_settings(args))
    if args.what == "inference" and (getattr(args, "groups", None) is not None or rt.groups > 1):
        return run_inference_groups(rt, args, networks, plot, out)
    if project_k is not None and rt.groups > 1:
        raise mpcgpu.MPCError(
            f"--groups {project_k} projects from one group of three (mpirun -n 3); under mpirun -n {3 * rt.groups} "
            f"bench training measures the {rt.groups} groups itself"
        )
    lead = rt.rank == 0 and rt.role.root  # group 0's party 0 prints and writes
    problem = _output_problem(out, plot) if rt.rank == 0 else None  # rank 0 writes the files
    problem = rt.comm.bcast_object(problem, root=0)
    if problem:
        raise mpcgpu.MPCError(f"party 0: {problem}")
    _warm_up(rt)
    training = args.what == "training"
    if args.models:
        names = [m.strip() for m in args.models.split(",") if m.strip()]
        default = (lambda n: dict(TRAINING).get(n, 128)) if training else (lambda n: 1)
        plan = [(n, args.batch or default(n)) for n in names]
    else:
        plan = (
            [(n, args.batch or b) for n, b in TRAINING]
            if training
            else [(n, args.batch or 1) for n in INFERENCE_MODELS]
        )
    peers = PEERS_TRAINING if training else PEERS
    if lead:
        print(f"mpcgpu bench {args.what}, {rt.describe()}", flush=True)
        for net in networks:
            print(f"  projected onto {net.describe()}: measured s + rounds x RTT + busiest party's bytes / bandwidth")
        if project_k is not None:
            print(
                f"  projected onto {project_k} groups of three: the step of one group on ceil(B/{project_k}) rows "
                f"(measured; batch below) + role all-reduce + group 0's broadcast over {role_net.describe()} "
                "(mpcgpu.reporting.groupmodel)"
            )
        print(
            f"{'model':<22} {'batch':>5} {'private s':>10} {'first s':>8} {'MB (3 parties)':>15} "
            f"{'rounds':>7} {'peak GB':>7} {'plain s':>9} {'ratio':>7}"
            + ("" if training else f" {'max |diff|':>11}")
            + "".join(f" {net.name[:12]:>12}" for net in networks),
            flush=True,
        )
    results = []
    for name, batch in plan:
        model = _model(name)
        memstat.reset_peak()
        if isinstance(model, GraphModel):  # its own peak: the private passes, not the weights' set-up
            if training:
                raise mpcgpu.MPCError(f"{name} is a graph model (a transformer): inference only")
            row, profile = _inference_graph(rt, model, args, batch)
        elif training and project_k is not None:
            row, profile = _training(rt, model, args, slice_rows(batch, project_k))
        else:
            row, profile = (_training if training else _inference)(rt, model, args, batch)
        row["peak_bytes_per_party"] = rt.comm.allgather_object(memstat.peak_bytes())
        if lead:
            row["ratio"] = row["private_seconds"] / row["plain_seconds"]
            row["peers"] = peers.get(name, {})
            row["projections"] = project_row(row, networks)
            print(
                f"{name:<22} {row['batch']:>5} {row['private_seconds']:>10.3f} {row['first_seconds']:>8.2f} "
                f"{row['bytes_all_parties'] / 1e6:>15.1f} "
                f"{row['rounds']:>7} {max(row['peak_bytes_per_party']) / 2**30:>7.2f} "
                f"{row['plain_seconds']:>9.4f} {row['ratio']:>7.0f}"
                + ("" if training else f" {row['max_abs_diff']:>11.2e}")
                + "".join(f" {p['seconds']:>11.3f}s" for p in row["projections"]),
                flush=True,
            )
            if project_k is not None:
                _print_group_projections(row, model, batch, project_k, role_net, networks)
            results.append(row)
        if profile is not None:
            profile.report(rt.comm)
    if lead:
        from mpcgpu.util.results import save_json

        summary = {
            "what": args.what,
            "device": rt.backend.describe(),
            "networks": [vars(net) for net in networks],
            "network_model": "measured + rounds * rtt + bytes_busiest_party / bandwidth (mpcgpu.reporting.netmodel)",
            "results": results,
        }
        save_json(out, summary)
        print(f"written {out}")
        if plot:
            from mpcgpu.reporting.plots import bench_figure

            print(f"written {bench_figure(summary, plot)}")
    return 0


# -- inference throughput on k groups of three (--groups) ------------------------------------


def _all_groups_start(rt):
    """Every rank of every group has arrived (the group, the role, the group again)."""
    rt.comm.barrier()
    rt.role.barrier()
    rt.comm.barrier()


def _group_timed(rt, fn):
    """``(fn(), seconds of this group's slowest party, bytes its three parties sent, the
    most bytes one party sent, rounds)``, every group started together."""
    comm = rt.comm
    _all_groups_start(rt)
    with comm.measure() as m:
        t0 = time.perf_counter()
        out = fn()
        elapsed = time.perf_counter() - t0
    sent, rounds = m.bytes_sent, m.rounds
    return out, comm.allreduce_max(elapsed), comm.allreduce_sum(sent), comm.allreduce_max(sent), rounds


def _inference_groups(rt, model, args, batch):
    """One row of ``bench inference --groups`` (at group 0's party 0; None elsewhere): the
    global batch of ``batch`` random images cut across the groups (:meth:`Place.share_of`),
    each group's private forward pass timed, ``--steps`` times after an untimed first."""
    from ..nn.plain import PlainModel
    from ..nn.private import PrivateModel, share_params, wants_compact
    from ..sharing.arithmetic import share

    role = rt.role
    rows = rt.place.share_of(batch)
    # the same random weights and batch in every group (seeded); each group's party 0 shares
    # its own slice (its data owner)
    params = bench_params(model, args.seed) if rt.rank == 0 else None
    xs = numpy.random.default_rng(args.seed).standard_normal((batch,) + tuple(model.input_shape))
    shared = share_params(model, params, src=0, compact=wants_compact(model))
    private = PrivateModel(model, shared, inference_only=True)
    sx = share(xs[rows.start : rows.stop] if rt.rank == 0 else None, src=0) if len(rows) else None

    def run():
        return private.forward(sx, exact=True) if sx is not None else None

    prepare_s = _group_timed(rt, private.prepare)[1]
    first = _group_timed(rt, run)[1]
    steps = []
    for _ in range(max(args.steps, 1)):
        logits, *figures = _group_timed(rt, run)
        steps.append(figures)
    revealed = logits.reveal(to=0) if logits is not None else numpy.zeros((0, model.num_classes))
    if rt.rank != 0:
        return None
    mine = {
        "images": len(rows),
        "times": [s[0] for s in steps],
        "bytes": steps[-1][1],
        "busiest": steps[-1][2],
        "rounds": steps[-1][3],
        "prepare": prepare_s,
        "first": first,
    }
    every = role.gather_object(mine)
    outs = role.gather(numpy.asarray(revealed, dtype=numpy.float64))
    if not role.root:
        return None
    # a step of the job lasts as long as its slowest group
    times = [max(g["times"][i] for g in every) for i in range(len(steps))]
    seconds = float(numpy.median(times))
    per_group = []
    for i, g in enumerate(every):
        t = float(numpy.median(g["times"]))
        per_group.append(
            {"group": i, "images": g["images"], "seconds": t, "images_per_second": g["images"] / t if t else 0.0}
        )
    row = {
        "model": model.name,
        "input_shape": list(model.input_shape),
        "batch": batch,
        "groups": rt.groups,
        "layout": rt.place.layout.kind,
        "private_seconds": seconds,
        "images_per_second": batch / seconds,
        "per_group": per_group,
        "first_seconds": max(g["first"] for g in every),
        "prepare_seconds": max(g["prepare"] for g in every),
        "bytes_all_parties": sum(g["bytes"] for g in every),
        "bytes_busiest_party": max(g["busiest"] for g in every),
        "rounds": max(g["rounds"] for g in every),
        "steps": len(times),
    }
    plain = PlainModel(model, params)
    plain.forward(xs, need_grad=False)
    t0 = time.perf_counter()
    ref = plain.forward(xs, need_grad=False)
    row["plain_seconds"] = time.perf_counter() - t0
    got = numpy.concatenate([o for i, o in enumerate(outs) if i == 0 or len(o)])
    row["max_abs_diff"] = float(numpy.abs(got - ref).max())
    return row


def run_inference_groups(rt, args, networks, plot, out) -> int:
    """``bench inference --groups``: the throughput of this launch's ``k`` groups (group 0's
    party 0 prints and writes the JSON)."""
    import mpcgpu

    from mpcgpu.util import memstat
    from ..nn.dag import GraphModel

    writer = rt.rank == 0 and rt.role.root
    wanted = getattr(args, "groups", None)
    problem = None
    if wanted and wanted != rt.groups:
        problem = (
            f"--groups {wanted}: this launch has {rt.groups} group{'s' if rt.groups > 1 else ''} of three "
            f"({3 * rt.groups} ranks); run it under mpirun -n {3 * wanted}"
        )
    elif plot:
        problem = "--plot draws the batch-1 table; bench inference --groups writes its rows to --json only"
    elif writer and _output_problem(out, None):
        problem = f"party 0: {_output_problem(out, None)}"
    problem = rt.role.bcast_object(rt.comm.bcast_object(problem, root=0))  # group 0's party 0 decides
    if problem:
        raise mpcgpu.MPCError(problem)
    _warm_up(rt)
    batch = args.batch or 64
    names = [m.strip() for m in (args.models or "lenet").split(",") if m.strip()]
    if writer:
        print(
            f"mpcgpu bench inference --groups: {rt.groups} group{'s' if rt.groups > 1 else ''} of three, a batch of "
            f"{batch} images cut across them, {rt.describe()}",
            flush=True,
        )
        for net in networks:
            print(f"  projected onto {net.describe()}: measured s + rounds x RTT + busiest party's bytes / bandwidth")
        print(
            f"{'model':<22} {'k':>3} {'batch':>5} {'per group':>10} {'private s':>10} {'images/s':>9} "
            f"{'per group/s':>12} {'MB (all)':>9} {'rounds':>7} {'max |diff|':>11}"
            + "".join(f" {net.name[:12]:>12}" for net in networks),
            flush=True,
        )
    results = []
    for name in names:
        model = _model(name)
        if isinstance(model, GraphModel):
            raise mpcgpu.MPCError(f"{name} is a graph model: bench inference --groups times layer models")
        memstat.reset_peak()
        row = _inference_groups(rt, model, args, batch)
        peaks = rt.comm.allgather_object(memstat.peak_bytes())
        if rt.rank == 0:
            every = rt.role.gather_object(peaks)
            if row is not None:
                row["peak_bytes_per_party"] = [max(p[i] for p in every) for i in range(3)]
        if row is None:
            continue
        row["projections"] = project_row(row, networks)
        print(
            f"{name:<22} {row['groups']:>3} {batch:>5} {'/'.join(str(g['images']) for g in row['per_group']):>10} "
            f"{row['private_seconds']:>10.3f} {row['images_per_second']:>9.1f} "
            f"{'/'.join(format(g['images_per_second'], '.1f') for g in row['per_group']):>12} "
            f"{row['bytes_all_parties'] / 1e6:>9.1f} {row['rounds']:>7} {row['max_abs_diff']:>11.2e}"
            + "".join(f" {p['seconds']:>11.3f}s" for p in row["projections"]),
            flush=True,
        )
        results.append(row)
    if writer:
        from mpcgpu.util.results import save_json

        summary = {
            "what": "inference",
            "mode": "groups",
            "groups": rt.groups,
            "layout": rt.place.layout.kind,
            "device": rt.backend.describe(),
            "networks": [vars(net) for net in networks],
            "network_model": "measured + rounds * rtt + bytes_busiest_party / bandwidth (mpcgpu.reporting.netmodel)",
            "results": results,
        }
        save_json(out, summary)
        print(f"written {out}")
    return 0
