"""The command-line options of the channels, shared by every job that computes
(infer, train, bench): one helper adds them, one collects the command line's settings
(:func:`cli_settings`, for ``mpcgpu.init(cli=...)``), one turns them into a ChannelConfig."""

from __future__ import annotations

from mpcgpu.comm.channels import DEFAULT_PEER_TIMEOUT, INSECURE_ENV, KEY_ENV, PARTIES_ENV, TIMEOUT_ENV, ChannelConfig


def add_channel_arguments(p):
    g = p.add_argument_group(
        "channels between the parties",
        "By default every message is encrypted (AES-256-GCM). With a parties file the channels are "
        "also authenticated (needed when the parties run on different hosts); without one the keys "
        "are ephemeral (one machine only). See `mpcgpu keygen --help`.",
    )
    g.add_argument(
        "--key",
        default=None,
        metavar="FILE",
        help=f"this party's private key (made by `mpcgpu keygen`; may contain {{party}}; env {KEY_ENV})",
    )
    g.add_argument(
        "--parties",
        default=None,
        metavar="FILE",
        help=f"the parties file listing the three public keys (env {PARTIES_ENV})",
    )
    g.add_argument(
        "--insecure-channels",
        action="store_true",
        default=None,
        help=f"send every message in clear (trusted network only; env {INSECURE_ENV}=1)",
    )
    g.add_argument(
        "--peer-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help=f"abort when a party is silent this long (default {DEFAULT_PEER_TIMEOUT:g}; 0: wait for ever; "
        f"env {TIMEOUT_ENV})",
    )

    r = p.add_argument_group(
        "more than three ranks",
        "`mpirun -n 3k` runs k groups of three parties: each organisation contributes k ranks, the "
        "work is split across the groups, and the ranks of one party combine only their own shares.",
    )
    r.add_argument(
        "--layout",
        default=None,
        choices=("block", "cyclic"),
        help="which rank plays which party (block, the default: ranks [pk, pk+k) play party p, one "
        "organisation's node per party under SLURM; cyclic: rank r plays party r %% 3, one machine; "
        "env MPCGPU_LAYOUT)",
    )


def add_shard_job_arguments(p):
    """The options of a job that computes on shards and reports as it goes (infer, generate):
    progress, shard verification, back end, fixed-point bits, then the channels and layout."""
    p.add_argument("--no-progress", action="store_true", help="no progress line")
    p.add_argument("--no-verify", action="store_true", help="skip re-hashing the shard files (large sets)")
    p.add_argument(
        "--device",
        default=None,
        choices=("auto", "cpu", "cuda"),
        help="array back end (default: MPCGPU_DEVICE or auto)",
    )
    p.add_argument("--precision", type=int, default=None, help="fractional bits (default: the shards')")
    add_channel_arguments(p)


#: command-line options (argparse destinations) that are settings (mpcgpu.settings)
CLI_SETTINGS = ("device", "key", "parties", "insecure_channels", "peer_timeout", "layout")


def cli_settings(args) -> dict:
    """The settings a job's command line gives (``{name: value}``; options not given left out),
    for ``mpcgpu.init(cli=...)`` / :func:`mpcgpu.settings.resolve`."""
    return {n: getattr(args, n) for n in CLI_SETTINGS if getattr(args, n, None) is not None}


def channel_config(args, env=None) -> ChannelConfig:
    """The channel configuration of a job's arguments (over the environment: the settings
    resolved from the command line and ``env``, default the process's environment)."""
    from ..settings import resolve

    return ChannelConfig.from_settings(resolve(cli=cli_settings(args), env=env))
