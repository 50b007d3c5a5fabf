"""`mpcgpu share`: split a plaintext dataset or model (HDF5) into three shard files.

The command line only; the work is :func:`mpcgpu.data.split.split_file`.
"""

from __future__ import annotations

import sys

from ..data.split import clear_attributes, human_size, show_value, split_file
from mpcgpu.ring.encoding import DEFAULT_FRAC_BITS
from ..errors import MPCError

SUMMARY = "split a plaintext dataset or model (HDF5) into three shard files, one per server"

DESCRIPTION = """\
Secret-share a plaintext HDF5 file for the three servers (run this on the data or
model owner's machine; it needs no MPI and no GPU).

Every array is encoded as fixed point with --precision fractional bits (labels and
other integers as plain integers) and split into three random components
x = x0 + x1 + x2 (mod 2^64). Three files are written:

  DIR/STEM.party0.h5  -> server 0 only   (holds components x0, x1)
  DIR/STEM.party1.h5  -> server 1 only   (holds components x1, x2)
  DIR/STEM.party2.h5  -> server 2 only   (holds components x2, x0)

Any two files together reveal the data: copy each file to its own server and
nowhere else, then delete them here.

What the servers learn: every file stores in clear the array names, shapes,
dtypes and scales, the normalisation applied to the images (mean, std), the
precision, the dataset or model name, a shard-set id, the time of the split and
checksums. Of INPUT's own attributes only these are copied (to the /public
group): its format tag, the name (a dataset's `name`, a model's `model`), a
model's architecture (`spec`: layers, input size, class count; the servers need
it), a dataset's `num_classes`, and `mean`/`std` if they were applied to the images.

A graph model (a transformer: `spec` in mpcgpu-graph/1) is shared the same way;
its public constants (/consts: reshape targets, scalar factors, attention masks,
position ids) are copied in clear to every shard file, and its parameters and
constants are checked against the graph first.

A model is checked against its architecture before anything is written: every
array name, shape and dtype must match, no NaN or Inf (a PyTorch state dict with
`num_batches_tracked` or other names is refused here; `mpcgpu import` converts it).
Everything else stays private -- a weights file's /meta group (training recipe,
seed, accuracy, ...), a dataset's seed, source path, statistics, class names --
unless you name it:

  --public-meta KEY        publish the root attribute KEY of INPUT
                           (e.g. --public-meta classes)
  --public-meta meta.KEY   publish the attribute KEY of INPUT's /meta group
                           (weights files; stored in /public/meta), e.g.
                           --public-meta meta.dataset,meta.test_accuracy

--public-meta can be repeated and takes comma-separated lists; naming an
attribute INPUT does not have is an error. The command prints every public
attribute with its value and the names of the attributes it kept private.

The servers read them with e.g. `mpirun -n 3 mpcgpu infer --data DIR/STEM ...`:
each rank opens DIR/STEM.party<rank>.h5, checks it, and all three check that
their files come from the same split.
"""


def add_arguments(parser):
    parser.add_argument(
        "input",
        metavar="INPUT.h5",
        help="plaintext dataset (mpcgpu-dataset/1) or model weights (mpcgpu-weights/2 or /1)",
    )
    parser.add_argument(
        "--out", "-o", required=True, metavar="DIR", help="directory for the three shard files (created if missing)"
    )
    parser.add_argument(
        "--precision",
        type=int,
        default=DEFAULT_FRAC_BITS,
        metavar="F",
        help="fractional bits of the fixed-point encoding (default %(default)s); "
        "the servers must run with the same value",
    )
    parser.add_argument(
        "--kind",
        choices=("auto", "dataset", "model"),
        default="auto",
        help="what INPUT holds (default: from its format tag)",
    )
    parser.add_argument(
        "--limit", type=int, default=None, metavar="N", help="share only the first N examples of a dataset"
    )
    parser.add_argument("--stem", default=None, help="file name stem of the shards (default: INPUT's name without .h5)")
    parser.add_argument(
        "--public-meta",
        action="append",
        default=None,
        metavar="KEY",
        help="also publish this attribute of INPUT (KEY: a root attribute; meta.KEY: "
        "one of a weights file's /meta group); repeatable, comma-separated "
        "lists allowed; everything not named stays private",
    )
    parser.add_argument("--force", action="store_true", help="overwrite existing shard files")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress line")


def run(args) -> int:
    try:
        result = split_file(
            args.input,
            args.out,
            frac_bits=args.precision,
            kind=args.kind,
            limit=args.limit,
            stem=args.stem,
            overwrite=args.force,
            progress=False if args.quiet else None,
            public_meta=getattr(args, "public_meta", None),
        )
    except MPCError as exc:
        print(f"mpcgpu share: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"mpcgpu share: error: cannot write the shards: {exc}", file=sys.stderr)
        return 1
    print(f"shared {result.kind} {args.input} with {result.frac_bits} fractional bits")
    root, arrays = clear_attributes(result.paths[0])
    for name, a in result.arrays.items():
        shape = "x".join(str(s) for s in a["shape"]) or "scalar"
        extra = ""
        if arrays.get(name, {}).get("transform") == "normalise":
            extra = (
                f", normalised with mean {show_value(arrays[name].get('mean'))}, "
                f"std {show_value(arrays[name].get('std'))}"
            )
        print(f"  {name}: {shape} {a['dtype']} (scale {a['scale']}{extra})")
    print("public (in clear in every shard file: each server learns this):")
    for key, value in root:
        print(f"  {key} = {show_value(value)}")
    consts = result.consts if getattr(result, "consts", None) else {}
    if consts:
        names = ", ".join(consts) if len(consts) <= 8 else ", ".join(list(consts)[:8]) + f" ... ({len(consts)} in all)"
        print(f"  public arrays (a graph's consts, a token set's masks), in clear in every shard: {names}")
    print(
        "  and per array: the name, shape, dtype, scale and normalisation listed above, and checksums of the components"
    )
    withheld = ", ".join(result.withheld) if result.withheld else "none"
    print(f"kept private (attributes of {args.input} not copied to the shards): {withheld}")
    print(f"shard set {result.set_id}")
    for i, (path, size) in enumerate(zip(result.paths, result.sizes)):
        print(f"  {path}  {human_size(size):>10}  -> server {i} only")
    print("Copy each file to its own server and nowhere else; any two files together reveal the data.")
    return 0
