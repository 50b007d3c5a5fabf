"""`mpcgpu info`: what this installation can do (back ends, MPI, models)."""

from __future__ import annotations

SUMMARY = "show versions, back ends, MPI library, the resolved settings and the registered models"


def add_arguments(p):
    p.add_argument("--device", default=None, choices=("auto", "cpu", "cuda", "strict"))


def run(args) -> int:
    import numpy
    import mpcgpu
    from .. import settings

    print(f"mpcgpu {mpcgpu.__version__}, numpy {numpy.__version__}")
    problems = []  # what a job started from this environment (and --device) would use
    current = settings.resolve(cli={"device": args.device}, problems=problems)
    for exc in problems:
        print(f"settings: {exc} (a job would stop here; shown below as the default)")
    print("settings (name, variable, value, where from):")
    print(current.describe())
    previous = settings.activate(current)  # what follows (ring kernel, compact weights) uses them
    try:
        return _report(args, current)
    finally:
        settings.activate(previous)


def _report(args, current) -> int:
    from mpcgpu.device.backend import Backend
    from ..errors import BackendError, MPCError
    from ..nn.models import get_model, list_models
    from ..nn.spec import count_params

    try:
        from mpcgpu.comm.transport import mpi_library_version

        print(f"MPI: {mpi_library_version()} (mpi4py)")
    except Exception as exc:  # pragma: no cover
        print(f"MPI: unavailable ({exc})")
    try:
        print(f"back end: {Backend(current.device).describe()}")
    except BackendError as exc:
        print(f"back end: {exc}")
    try:  # what a job started from this environment would use (--key/--parties/--insecure-channels)
        from mpcgpu.comm.channels import ChannelConfig

        from mpcgpu.comm.channels import load_parties

        config = ChannelConfig.from_settings(current)
        print(config.describe())
        if config.parties:
            load_parties(config.parties)  # a missing or malformed parties file is reported here
    except MPCError as exc:
        print(f"channels: {exc}")
    from .. import kernelsets

    try:  # first: the chosen set's limb steps take part in the ring kernels' calibration
        print(kernelsets.describe(Backend(current.device, node_rank=current.local_rank), current.kernels))
    except MPCError as exc:
        print(f"protocol kernels: {exc}")
    from mpcgpu.ring import choice as ring_choice, threads
    from mpcgpu.ring.products import kernel

    threads.apply(3, current.threads)  # calibrated as a rank of a local 3-rank run would be
    for line in ring_choice.describe(kernel()):
        print(line)
    cores = threads.cores_here()
    alone = threads.describe(
        {
            "threads": threads.threads_per_rank(1, cores, current.threads),
            "ranks_here": 1,
            "cores": cores,
            "forced": current.threads,
        }
    )
    local = threads.describe(
        {
            "threads": threads.threads_per_rank(3, cores, current.threads),
            "ranks_here": 3,
            "cores": cores,
            "forced": current.threads,
        }
    )
    print(f"threads (BLAS, numba): {local} in a local 3-rank run; {alone} for a party on its own machine")
    from ..nn import private

    choice = {None: "auto", False: "0", True: "1"}[current.compact_weights]
    policy = {"0": "never", "1": "always"}.get(choice, f"models of {private.COMPACT_MODEL_MIN:,} parameters or more")
    print(
        f"inference weights: compact ({policy}; {private.COMPACT_ENV}={choice}): one component of a large "
        "weight held, the other drawn from the PRG (or read from the shard) where it is used"
    )
    print("models:")
    for name in list_models():
        m = get_model(name)
        compact = " (compact weights)" if private.wants_compact(m, current) else ""
        print(f"  {name:<24} input {m.input_shape}, {m.num_classes} classes, {count_params(m):,} parameters{compact}")
    return 0
