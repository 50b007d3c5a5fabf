"""The `mpcgpu` command line: one subcommand per job.

Each subcommand lives in the module that holds its work; that module provides
``SUMMARY`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
This file only wires them together, so it stays small and knows nothing of
protocols.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import MPCError

#: subcommand -> module implementing it
COMMANDS = {
    "share": "mpcgpu.jobs.share",
    "infer": "mpcgpu.jobs.infer",
    "generate": "mpcgpu.jobs.generate",
    "train": "mpcgpu.jobs.train",
    "bench": "mpcgpu.jobs.bench",
    "plot": "mpcgpu.jobs.plot",
    "demo": "mpcgpu.jobs.demo",
    "info": "mpcgpu.jobs.info",
    "import": "mpcgpu.jobs.import_",
    "export": "mpcgpu.jobs.export",
    "keygen": "mpcgpu.jobs.keygen",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mpcgpu",
        description="Private inference and training of CNNs by secure three-party computation. "
        "Jobs that compute (infer, train, bench) run on three MPI ranks: "
        "`mpirun -n 3 mpcgpu infer ...`. `mpcgpu demo` launches the three ranks itself.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, modname in COMMANDS.items():
        try:
            mod = importlib.import_module(modname)
        except ImportError as exc:  # a subcommand whose module is missing is reported, not fatal
            p = sub.add_parser(name, help=f"(unavailable: {exc})")
            p.set_defaults(_run=None, _why=str(exc))
            continue
        p = sub.add_parser(
            name,
            help=mod.SUMMARY,
            description=getattr(mod, "DESCRIPTION", mod.SUMMARY),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    if args._run is None:
        print(f"mpcgpu {args.command}: unavailable ({args._why})", file=sys.stderr)
        return 2
    try:
        return int(args._run(args) or 0)
    except MPCError as exc:
        from . import runtime

        if runtime.is_initialised():
            raise  # the runtime's excepthook prints it and aborts the three ranks together
        # no parties yet (share, info, wrong rank count): the line in one write (print() writes the
        # newline apart, and the three ranks' lines interleaved)
        sys.stderr.write(f"mpcgpu error: {exc}\n")
        sys.stderr.flush()
        return 1


if __name__ == "__main__":
    sys.exit(main())
