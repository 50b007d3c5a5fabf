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

Metadata: a shard stores in clear only what the servers need (format, shapes,
dtypes, scales, the applied normalisation, ``frac_bits``, set id, checksums,
the dataset or model name).  Of the input file's own attributes only an
allow-list is copied to the shards' ``/public`` group (:data:`PUBLIC_BY_DEFAULT`:
the input's format tag, the name, a dataset's ``num_classes``, and ``mean`` /
``std`` when they were applied to the images); every other root attribute and
every attribute of a weights file's ``/meta`` group (training recipe, seed,
accuracy, a dataset's seed or source path, ...) stays on the owner's machine
unless the owner names it with ``public_meta`` / ``--public-meta KEY`` (a root
attribute) or ``meta.KEY`` (an attribute of ``/meta``, stored in ``/public/meta``).
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
nowhere else, then delete them here.

What the servers learn: every file stores in clear the array names, shapes,
dtypes and scales, the normalisation applied to the images (mean, std), the
precision, the dataset or model name, a shard-set id, the time of the split and
checksums. Of INPUT's own attributes only these are copied (to the /public
group): its format tag, the name (a dataset's `name`, a model's `model`), a
dataset's `num_classes`, and `mean`/`std` if they were applied to the images.
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


def _fmt(f) -> str:
    v = f.attrs.get("format", "")
    return v.decode() if isinstance(v, bytes) else str(v)


#: attributes of the input copied to the shards' /public group without being named
#: (besides ``mean`` and ``std`` of a dataset whose images they normalise, and the
#: attribute the model name was taken from)
PUBLIC_BY_DEFAULT = {"dataset": ("format", "name", "num_classes"), "model": ("format", "model")}

#: the sub-group of a weights file whose attrs ``--public-meta meta.KEY`` names
META_GROUP = "meta"


def _input_metadata(f) -> tuple:
    """The input's metadata: ``(root attrs, {"meta": attrs of /meta})`` (the second
    empty when the file has no ``/meta`` group)."""
    attrs = {k: v for k, v in f.attrs.items()}
    groups = {}
    if META_GROUP in f and isinstance(f[META_GROUP], _h5py().Group):
        groups[META_GROUP] = {k: v for k, v in f[META_GROUP].attrs.items()}
    return attrs, groups


def parse_public_meta(values) -> list:
    """``--public-meta`` values -> attribute keys in order, without repeats.

    ``values``: None, one string, or a sequence of strings; each string may be a
    comma-separated list (``"classes,meta.dataset"``).
    """
    if values is None:
        return []
    if isinstance(values, (str, bytes)):
        values = [values]
    keys = []
    for value in values:
        value = value.decode() if isinstance(value, bytes) else str(value)
        for key in value.split(","):
            key = key.strip()
            if key and key not in keys:
                keys.append(key)
    return keys


def select_public(
    attrs: dict, groups: dict | None = None, *, default=(), public_meta=None, where: str = "the input"
) -> tuple:
    """Choose the public metadata: ``(public, withheld)``.

    ``attrs`` are the input's root attrs, ``groups`` its sub-groups' attrs
    (``{"meta": {...}}`` for a weights file).  ``public`` holds the root attrs
    listed in ``default`` and every attribute named in ``public_meta`` (``KEY``: a
    root attr; ``GROUP.KEY``, e.g. ``meta.dataset``: an attr of that sub-group,
    kept under ``public[GROUP]``).  ``withheld`` lists the names of all other
    attributes (``GROUP.KEY`` for sub-groups), in input order.  Naming an
    attribute the input does not have raises :class:`ShardError`.
    """
    groups = groups or {}
    named_root, named_sub, missing = [], {}, []
    for key in parse_public_meta(public_meta):
        if key in attrs:
            named_root.append(key)
            continue
        group, dot, sub = key.partition(".")
        if dot and group in groups and sub in groups[group]:
            named_sub.setdefault(group, []).append(sub)
        elif key in groups:
            raise ShardError(
                f"--public-meta {key!r} names the group /{key}, not an attribute: name its "
                f"attributes one by one as {key}.KEY (it has: "
                f"{', '.join(groups[key]) or 'none'})"
            )
        else:
            missing.append(key)
    if missing:
        have = [f"root: {', '.join(attrs) or 'none'}"]
        for group, sub_attrs in groups.items():
            have.append(f"/{group}: " + (", ".join(f"{group}.{k}" for k in sub_attrs) or "none"))
        raise ShardError(
            f"--public-meta names {'an attribute' if len(missing) == 1 else 'attributes'} "
            f"that {where} does not have: {', '.join(repr(k) for k in missing)} "
            f"(its attributes are {'; '.join(have)})"
        )
    public = {k: v for k, v in attrs.items() if k in default or k in named_root}
    withheld = [k for k in attrs if k not in public]
    for group, sub_attrs in groups.items():
        chosen = named_sub.get(group, [])
        if chosen:
            if group in public:
                raise ShardError(
                    f"cannot publish both the attribute {group!r} and attributes of the "
                    f"group /{group}: they would share one name in /public"
                )
            public[group] = {k: v for k, v in sub_attrs.items() if k in chosen}
        withheld += [f"{group}.{k}" for k in sub_attrs if k not in chosen]
    return public, withheld


def _str_attr(f, key, default=""):
    v = f.attrs.get(key, default)
    return v.decode() if isinstance(v, bytes) else str(v)


def detect_kind(f) -> str:
    """ "dataset" or "model" from the format tag (or, without one, from the contents)."""
    fmt = _fmt(f)
    if fmt.startswith("mpcgpu-dataset/"):
        if fmt != "mpcgpu-dataset/1":
            raise ShardError(f"{f.filename}: unsupported dataset format {fmt!r} (this mpcgpu reads mpcgpu-dataset/1)")
        return "dataset"
    if fmt.startswith("mpcgpu-weights/"):
        if fmt != "mpcgpu-weights/1":
            raise ShardError(f"{f.filename}: unsupported weights format {fmt!r} (this mpcgpu reads mpcgpu-weights/1)")
        return "model"
    if fmt.startswith("mpcgpu-shard/"):
        raise ShardError(f"{f.filename} is already a shard file; split the plaintext file instead")
    if "images" in f:
        return "dataset"
    if "params" in f:
        return "model"
    raise ShardError(
        f"{f.filename}: cannot tell whether this is a dataset or a model (format tag "
        f"{fmt or '(none)'!r}, no 'images' dataset, no 'params' group); pass --kind"
    )


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


#: the fewest significant bits an encoded ``running_var + eps`` may keep
BN_MIN_BITS = 4
#: the inverse square root's limits on a domain (see mpcgpu.protocols.approx)
BN_MAX_HI, BN_MAX_SPAN = 2.0**20, 2.0**24


def bn_var_domain(arrays, model_name: str, frac_bits: int, where: str):
    """The public domain ``[lo, hi]`` (powers of two) of every batch norm's
    ``running_var + eps`` of a model, checked on the owner's plaintext: finite, positive,
    representable with ``frac_bits`` fractional bits to ``BN_MIN_BITS`` bits at least, and
    within what the private inverse square root accepts.  None for a model without batch
    norms.  The executor computes ``1/sqrt(running_var + eps)`` on this domain, so a value
    outside it could never reach the servers (ShardError here instead)."""
    import numpy

    variances = [a for a in arrays if a.name.endswith("running_var")]
    if not variances:
        return None
    eps = {}
    try:
        from ..nn import spec as S
        from ..nn.models import get_model

        for path, layer in S.walk(get_model(model_name)):
            if isinstance(layer, S.BatchNorm2d):
                eps[S.join_path(path, "running_var")] = float(layer.eps)
    except Exception:
        pass  # not a registered model: PyTorch's default eps
    lo, hi = numpy.inf, 0.0
    for a in variances:
        v = numpy.asarray(a.source[()], dtype=numpy.float64) + eps.get(a.name, 1e-5)
        if not numpy.isfinite(v).all() or (v <= 0).any():
            raise ShardError(f"{where}: batch norm {a.name} + eps is not finite and positive")
        lo, hi = min(lo, float(v.min())), max(hi, float(v.max()))
    lo2 = 2.0 ** numpy.floor(numpy.log2(lo))
    hi2 = 2.0 ** numpy.ceil(numpy.log2(hi))
    if lo * 2.0**frac_bits < 2.0**BN_MIN_BITS:
        need = int(numpy.ceil(BN_MIN_BITS - numpy.log2(lo)))
        raise ShardError(
            f"{where}: a batch norm's running_var + eps is {lo:.3g}, below what {frac_bits} "
            f"fractional bits represent accurately; share with --precision {need} or more"
        )
    if hi2 >= BN_MAX_HI or hi2 / lo2 > BN_MAX_SPAN:
        raise ShardError(
            f"{where}: batch norm running_var + eps spans [{lo:.3g}, {hi:.3g}], outside what the "
            f"private inverse square root handles (below 2^20, a ratio below 2^24)"
        )
    return [float(lo2), float(hi2)]


def _h5py():
    import h5py

    return h5py


def default_stem(path: str) -> str:
    base = os.path.basename(os.fspath(path))
    for ext in (".h5", ".hdf5", ".hdf"):
        if base.lower().endswith(ext):
            return base[: -len(ext)]
    return base


def split_file(
    input_path,
    out_dir,
    *,
    frac_bits: int = DEFAULT_FRAC_BITS,
    kind: str = "auto",
    limit: int | None = None,
    stem: str | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
    public_meta=None,
) -> ShardSet:
    """Split a plaintext dataset or model file into ``<out_dir>/<stem>.party{0,1,2}.h5``.

    ``kind``: "auto" (from the format tag), "dataset" or "model".  ``limit``: share
    only the first N rows of a dataset.  ``stem`` defaults to the input's file name
    without extension.  ``public_meta``: further attributes of the input to publish
    (a key, a comma-separated string or a list; ``KEY`` for a root attribute,
    ``meta.KEY`` for one of a weights file's ``/meta``); all others except the
    allow-list :data:`PUBLIC_BY_DEFAULT` stay private.  Returns the
    :class:`~mpcgpu.data.shards.ShardSet` written (``public``: what was published,
    ``withheld``: the names of the attributes kept private).
    """
    input_path = os.fspath(input_path)
    with open_for_reading(input_path, ShardError, "input file") as f:
        detected = detect_kind(f) if kind == "auto" else kind
        if detected not in ("dataset", "model"):
            raise ShardError(f"--kind must be auto, dataset or model, not {kind!r}")
        attrs, groups = _input_metadata(f)
        default = list(PUBLIC_BY_DEFAULT[detected])
        if detected == "dataset":
            arrays = _dataset_arrays(f, frac_bits, limit)
            name = _str_attr(f, "name", default_stem(input_path))
            if arrays[0].transform == "normalise":  # applied: stored per array anyway
                default += [k for k in ("mean", "std") if k in attrs]
        else:
            if limit is not None:
                raise ShardError("--limit applies to datasets only, not to model weights")
            arrays = _model_arrays(f, frac_bits)
            name = _str_attr(f, "model", _str_attr(f, "name", default_stem(input_path)))
            if "model" not in attrs:
                default.append("name")  # the model name was taken from it
        public, withheld = select_public(attrs, groups, default=default, public_meta=public_meta, where=input_path)
        if detected == "model":
            domain = bn_var_domain(arrays, name, frac_bits, input_path)
            if domain is not None:
                public["bn_var_domain"] = domain
        result = write_shard_set(
            out_dir,
            stem or default_stem(input_path),
            arrays,
            kind=detected,
            frac_bits=frac_bits,
            name=name,
            source_format=_fmt(f) or "unknown",
            public=public,
            overwrite=overwrite,
            progress=progress,
        )
    result.withheld = withheld
    return result


def split_arrays(
    out_dir,
    stem: str,
    arrays: dict,
    *,
    kind: str,
    frac_bits: int = DEFAULT_FRAC_BITS,
    name: str = "",
    public: dict | None = None,
    scales: dict | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
    public_meta=None,
) -> ShardSet:
    """Split in-memory arrays ``{name: array}``: floats with ``frac_bits``, integers with
    scale 0 unless ``scales[name]`` says otherwise.

    ``public``: the metadata of the arrays, as a file's attrs would be (a dict value
    stands for a sub-group, e.g. ``{"meta": {...}}``).  As in :func:`split_file`,
    only the keys of :data:`PUBLIC_BY_DEFAULT` and those named in ``public_meta``
    (``KEY``, ``meta.KEY``) are written; the rest is reported in ``withheld``.
    """
    if kind not in PUBLIC_BY_DEFAULT:
        raise ShardError(f"shard kind must be one of {tuple(PUBLIC_BY_DEFAULT)}, got {kind!r}")
    meta = dict(public or {})
    groups = {k: dict(v) for k, v in meta.items() if isinstance(v, dict)}
    attrs = {k: v for k, v in meta.items() if not isinstance(v, dict)}
    default = list(PUBLIC_BY_DEFAULT[kind])
    if kind == "model" and "model" not in attrs:
        default.append("name")
    chosen, withheld = select_public(attrs, groups, default=default, public_meta=public_meta, where="the metadata")
    specs = []
    for key, value in arrays.items():
        value = numpy.asarray(value)
        default = 0 if value.dtype.kind in "biu" else frac_bits
        specs.append(ArraySpec(key, value, int((scales or {}).get(key, default))))
    result = write_shard_set(
        out_dir,
        stem,
        specs,
        kind=kind,
        frac_bits=frac_bits,
        name=name,
        source_format="arrays",
        public=chosen,
        overwrite=overwrite,
        progress=progress,
    )
    result.withheld = withheld
    return result


def human_size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024.0
    return f"{n} B"


# ---------------------------------------------------------------------------------------
# command line: `mpcgpu share`
# ---------------------------------------------------------------------------------------


def show_value(value, limit: int = 72) -> str:
    """A metadata value for the terminal: ``repr`` of its plain form, cut at ``limit`` chars."""
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    elif isinstance(value, numpy.ndarray):
        value = [v.decode(errors="replace") if isinstance(v, bytes) else v for v in value.tolist()]
    elif isinstance(value, numpy.generic):
        value = value.item()
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def clear_attributes(path) -> tuple:
    """What one shard file stores in clear, read back from it: ``(entries, arrays)``.

    ``entries``: ``(key, value)`` for every root attribute except ``party`` and
    ``parties``, then every attribute of ``/public`` (``public/KEY``) and of its
    sub-groups (``public/GROUP/KEY``); ``arrays``: ``{name: attrs}`` of each array.
    """
    h5py = _h5py()
    entries, arrays = [], {}
    with h5py.File(path, "r") as f:
        entries += [(k, v) for k, v in f.attrs.items() if k not in ("party", "parties")]
        if "public" in f:
            pub = f["public"]
            entries += [(f"public/{k}", v) for k, v in pub.attrs.items()]
            for group, sub in pub.items():
                entries += [(f"public/{group}/{k}", v) for k, v in sub.attrs.items()]

        def visit(name, obj):
            if isinstance(obj, h5py.Group) and "shape" in obj.attrs:
                arrays[name] = dict(obj.attrs.items())

        if "arrays" in f:
            f["arrays"].visititems(visit)
    return entries, arrays


def add_arguments(parser):
    parser.add_argument(
        "input", metavar="INPUT.h5", help="plaintext dataset (mpcgpu-dataset/1) or model weights (mpcgpu-weights/1)"
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
