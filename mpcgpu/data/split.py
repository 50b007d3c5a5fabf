"""The share step: split one plaintext HDF5 file into three shard files.

Runs on the data or model owner's machine, in one process, without MPI.
Every array is encoded into ``Z_{2^64}`` (fixed point with ``frac_bits``
fractional bits, or as plain integers for labels), range-checked, and split
into three uniformly random components; party ``i``'s file
``<out>/<stem>.party<i>.h5`` holds only ``(x_i, x_{i+1})`` (schema:
:mod:`mpcgpu.data.shards`).

Inputs:
* dataset (``format = "mpcgpu-dataset/1"``): ``images`` (uint8, N x C x H x W)
  are normalised to ``(pixel/255 - mean[c]) / std[c]`` (file attrs ``mean``,
  ``std``) and encoded with ``frac_bits``; ``labels`` (integers) with scale 0.
* model (``format = "mpcgpu-weights/1"``): every dataset under ``/params``
  (name = its path below ``/params``, e.g. ``features.0.weight``); floats with
  ``frac_bits``, integers with scale 0.
The input file's attrs are public metadata and are copied to every shard.
"""
from __future__ import annotations

import os
import sys

import numpy

from ..encoding import DEFAULT_FRAC_BITS
from ..hdf5 import open_for_reading
from ..errors import MPCError, ShardError
from .shards import ArraySpec, ShardSet, write_shard_set

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
nowhere else, then delete them here. Public metadata (dataset or model name,
shapes, normalisation, precision, a shard-set id and checksums) is stored in
clear in every file.

The servers read them with e.g. `mpirun -n 3 mpcgpu infer --data DIR/STEM ...`:
each rank opens DIR/STEM.party<rank>.h5, checks it, and all three check that
their files come from the same split.
"""


def _fmt(f) -> str:
    v = f.attrs.get("format", "")
    return v.decode() if isinstance(v, bytes) else str(v)


def _public(f) -> dict:
    """The input's public metadata: root attrs, and the attrs of a ``/meta`` group
    (weights files) as ``{"meta": {...}}``."""
    public = {k: v for k, v in f.attrs.items()}
    if "meta" in f and isinstance(f["meta"], _h5py().Group) and len(f["meta"].attrs):
        public["meta"] = {k: v for k, v in f["meta"].attrs.items()}
    return public


def _str_attr(f, key, default=""):
    v = f.attrs.get(key, default)
    return v.decode() if isinstance(v, bytes) else str(v)


def detect_kind(f) -> str:
    """"dataset" or "model" from the format tag (or, without one, from the contents)."""
    fmt = _fmt(f)
    if fmt.startswith("mpcgpu-dataset/"):
        if fmt != "mpcgpu-dataset/1":
            raise ShardError(f"{f.filename}: unsupported dataset format {fmt!r} (this mpcgpu reads "
                             "mpcgpu-dataset/1)")
        return "dataset"
    if fmt.startswith("mpcgpu-weights/"):
        if fmt != "mpcgpu-weights/1":
            raise ShardError(f"{f.filename}: unsupported weights format {fmt!r} (this mpcgpu reads "
                             "mpcgpu-weights/1)")
        return "model"
    if fmt.startswith("mpcgpu-shard/"):
        raise ShardError(f"{f.filename} is already a shard file; split the plaintext file instead")
    if "images" in f:
        return "dataset"
    if "params" in f:
        return "model"
    raise ShardError(f"{f.filename}: cannot tell whether this is a dataset or a model (format tag "
                     f"{fmt or '(none)'!r}, no 'images' dataset, no 'params' group); pass --kind")


def _dataset_arrays(f, frac_bits: int, limit: int | None) -> list:
    h5py = _h5py()
    if "images" not in f or not isinstance(f["images"], h5py.Dataset):
        raise ShardError(f"{f.filename}: a dataset file needs an 'images' dataset")
    images = f["images"]
    rows = None if limit is None else int(limit)
    if rows is not None and rows < 1:
        raise ShardError("--limit must be at least 1")
    arrays = []
    if images.dtype.kind in "ui":
        has_mean, has_std = "mean" in f.attrs, "std" in f.attrs
        if has_mean != has_std:
            raise ShardError(f"{f.filename}: normalisation needs both 'mean' and 'std' attrs")
        mean = numpy.asarray(f.attrs["mean"], numpy.float64) if has_mean else numpy.zeros(1)
        std = numpy.asarray(f.attrs["std"], numpy.float64) if has_std else numpy.ones(1)
        arrays.append(ArraySpec("images", images, frac_bits, "normalise", mean, std, rows))
    else:  # already real values
        arrays.append(ArraySpec("images", images, frac_bits, rows=rows))
    if "labels" in f:
        labels = f["labels"]
        if labels.shape[:1] != images.shape[:1]:
            raise ShardError(f"{f.filename}: {images.shape[0]} images but {labels.shape[0]} labels")
        scale = 0 if labels.dtype.kind in "biu" else frac_bits
        arrays.append(ArraySpec("labels", labels, scale, rows=rows))
    return arrays


def _model_arrays(f, frac_bits: int) -> list:
    h5py = _h5py()
    if "params" not in f or not isinstance(f["params"], h5py.Group):
        raise ShardError(f"{f.filename}: a model file needs a '/params' group")
    arrays = []

    def walk(group, prefix):  # group order: creation order where the writer tracked it
        for key in group.keys():
            obj = group[key]
            if isinstance(obj, h5py.Group):
                walk(obj, f"{prefix}{key}/")
            elif isinstance(obj, h5py.Dataset):
                scale = 0 if obj.dtype.kind in "biu" else frac_bits
                arrays.append(ArraySpec(prefix + key, obj, scale))

    walk(f["params"], "")
    if not arrays:
        raise ShardError(f"{f.filename}: '/params' holds no arrays")
    return arrays


def _h5py():
    import h5py
    return h5py


def default_stem(path: str) -> str:
    base = os.path.basename(os.fspath(path))
    for ext in (".h5", ".hdf5", ".hdf"):
        if base.lower().endswith(ext):
            return base[: -len(ext)]
    return base


def split_file(input_path, out_dir, *, frac_bits: int = DEFAULT_FRAC_BITS, kind: str = "auto",
               limit: int | None = None, stem: str | None = None, overwrite: bool = False,
               progress: bool | None = None) -> ShardSet:
    """Split a plaintext dataset or model file into ``<out_dir>/<stem>.party{0,1,2}.h5``.

    ``kind``: "auto" (from the format tag), "dataset" or "model".  ``limit``: share
    only the first N rows of a dataset.  ``stem`` defaults to the input's file name
    without extension.  Returns the :class:`~mpcgpu.data.shards.ShardSet` written.
    """
    input_path = os.fspath(input_path)
    with open_for_reading(input_path, ShardError, "input file") as f:
        detected = detect_kind(f) if kind == "auto" else kind
        if detected not in ("dataset", "model"):
            raise ShardError(f"--kind must be auto, dataset or model, not {kind!r}")
        if detected == "dataset":
            arrays = _dataset_arrays(f, frac_bits, limit)
            name = _str_attr(f, "name", default_stem(input_path))
        else:
            if limit is not None:
                raise ShardError("--limit applies to datasets only, not to model weights")
            arrays = _model_arrays(f, frac_bits)
            name = _str_attr(f, "model", _str_attr(f, "name", default_stem(input_path)))
        return write_shard_set(out_dir, stem or default_stem(input_path), arrays, kind=detected,
                               frac_bits=frac_bits, name=name, source_format=_fmt(f) or "unknown",
                               public=_public(f), overwrite=overwrite, progress=progress)


def split_arrays(out_dir, stem: str, arrays: dict, *, kind: str, frac_bits: int = DEFAULT_FRAC_BITS,
                 name: str = "", public: dict | None = None, scales: dict | None = None,
                 overwrite: bool = False, progress: bool | None = None) -> ShardSet:
    """Split in-memory arrays ``{name: array}``: floats with ``frac_bits``, integers with
    scale 0 unless ``scales[name]`` says otherwise."""
    specs = []
    for key, value in arrays.items():
        value = numpy.asarray(value)
        default = 0 if value.dtype.kind in "biu" else frac_bits
        specs.append(ArraySpec(key, value, int((scales or {}).get(key, default))))
    return write_shard_set(out_dir, stem, specs, kind=kind, frac_bits=frac_bits, name=name,
                           source_format="arrays", public=public, overwrite=overwrite,
                           progress=progress)


def human_size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024.0
    return f"{n} B"


# ---------------------------------------------------------------------------------------
# command line: `mpcgpu share`
# ---------------------------------------------------------------------------------------

def add_arguments(parser):
    parser.add_argument("input", metavar="INPUT.h5",
                        help="plaintext dataset (mpcgpu-dataset/1) or model weights (mpcgpu-weights/1)")
    parser.add_argument("--out", "-o", required=True, metavar="DIR",
                        help="directory for the three shard files (created if missing)")
    parser.add_argument("--precision", type=int, default=DEFAULT_FRAC_BITS, metavar="F",
                        help="fractional bits of the fixed-point encoding (default %(default)s); "
                             "the servers must run with the same value")
    parser.add_argument("--kind", choices=("auto", "dataset", "model"), default="auto",
                        help="what INPUT holds (default: from its format tag)")
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help="share only the first N examples of a dataset")
    parser.add_argument("--stem", default=None,
                        help="file name stem of the shards (default: INPUT's name without .h5)")
    parser.add_argument("--force", action="store_true", help="overwrite existing shard files")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress line")


def run(args) -> int:
    try:
        result = split_file(args.input, args.out, frac_bits=args.precision, kind=args.kind,
                            limit=args.limit, stem=args.stem, overwrite=args.force,
                            progress=False if args.quiet else None)
    except MPCError as exc:
        print(f"mpcgpu share: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"mpcgpu share: error: cannot write the shards: {exc}", file=sys.stderr)
        return 1
    print(f"shared {result.kind} {args.input} with {result.frac_bits} fractional bits")
    for name, a in result.arrays.items():
        shape = "x".join(str(s) for s in a["shape"]) or "scalar"
        print(f"  {name}: {shape} {a['dtype']} (scale {a['scale']})")
    print(f"shard set {result.set_id}")
    for i, (path, size) in enumerate(zip(result.paths, result.sizes)):
        print(f"  {path}  {human_size(size):>10}  -> server {i} only")
    print("Copy each file to its own server and nowhere else; any two files together reveal the data.")
    return 0
