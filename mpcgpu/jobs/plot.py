"""`mpcgpu plot`: PNG figures of saved results (no MPI, no parties)."""

from __future__ import annotations

SUMMARY = "draw a saved bench or training JSON as PNG (needs matplotlib: pip install 'mpcgpu[plots]')"
DESCRIPTION = """\
Draws a result saved as JSON by another subcommand:
  * `mpcgpu bench ... --json B.json`: seconds per model, measured here and projected onto
    each --network given to the bench, next to the peers' published figures (log scale);
  * `mpcgpu train ... --json T.json`: training loss (or seconds) per step and test
    accuracy per epoch.
The kind is recognised from the file. matplotlib is an optional extra:
pip install 'mpcgpu[plots]'.

Example:
  mpcgpu plot bench_inference.json -o bench.png
"""


def add_arguments(p):
    p.add_argument("json", metavar="FILE.json", help="a JSON written by `mpcgpu bench` or `mpcgpu train --json`")
    p.add_argument("-o", "--out", default=None, metavar="FILE.png", help="output PNG (default: FILE.png)")


def run(args) -> int:
    from mpcgpu.reporting.plots import plot_file

    png = plot_file(args.json, args.out)
    print(f"written {png}")
    return 0
