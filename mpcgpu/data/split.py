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
* token dataset (``format = "mpcgpu-tokens/1"``, :mod:`mpcgpu.data.tokens`): the ids
  become one-hot integer shares ``input_ids`` (N x T x vocab), labels integer shares;
  the attention masks are copied in clear to every party's file (``/consts``).
* model (``format = "mpcgpu-weights/2"`` or ``/1``): every dataset under ``/params``
  (name = its path below ``/params``, e.g. ``features.0.weight``); floats with
  ``frac_bits``, integers with scale 0.  When the architecture is known (the file's
  ``spec``, or a registered model name) the arrays are checked against it first --
  names, shapes, float dtypes, finite values -- and a mismatch is refused here, before
  any shard is written; the architecture is copied to the shards (``/public`` ``spec``).
  A graph model (``spec`` in ``mpcgpu-graph/1``, :mod:`mpcgpu.nn.dag`): its ``/params``
  are checked against the graph and shared as above; its public constants (``/consts``)
  are checked and copied in clear to every party's file (``/consts``).

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

import numpy

from mpcgpu.ring.encoding import DEFAULT_FRAC_BITS
from mpcgpu.util.hdf5 import open_for_reading
from ..errors import ShardError
from .shards import ArraySpec, ShardSet, write_shard_set


def _fmt(f) -> str:
    v = f.attrs.get("format", "")
    return v.decode() if isinstance(v, bytes) else str(v)


#: attributes of the input copied to the shards' /public group without being named
#: (besides ``mean`` and ``std`` of a dataset whose images they normalise, and the
#: attribute the model name was taken from); a model's ``spec`` is its architecture,
#: which the servers need to run it
PUBLIC_BY_DEFAULT = {"dataset": ("format", "name", "num_classes"), "model": ("format", "model", "spec")}
#: the weights formats the share step reads (:mod:`mpcgpu.nn.weights`)
WEIGHTS_FORMATS = ("mpcgpu-weights/1", "mpcgpu-weights/2")

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
    if fmt.startswith("mpcgpu-tokens/"):
        from .tokens import FORMAT as TOKENS

        if fmt != TOKENS:
            raise ShardError(f"{f.filename}: unsupported token format {fmt!r} (this mpcgpu reads {TOKENS})")
        return "dataset"
    if fmt.startswith("mpcgpu-dataset/"):
        if fmt != "mpcgpu-dataset/1":
            raise ShardError(f"{f.filename}: unsupported dataset format {fmt!r} (this mpcgpu reads mpcgpu-dataset/1)")
        return "dataset"
    if fmt.startswith("mpcgpu-weights/"):
        if fmt not in WEIGHTS_FORMATS:
            raise ShardError(
                f"{f.filename}: unsupported weights format {fmt!r} (this mpcgpu reads {', '.join(WEIGHTS_FORMATS)})"
            )
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


def model_architecture(f, name: str):
    """The architecture a weights file is checked against: its stored spec (``/2``), else
    the registered model ``name``; None for a ``/1`` file of an unregistered name (its
    arrays are shared as they are, unchecked)."""
    from ..nn.models import SPEC_KEY, architecture, list_models
    from ..nn.spec import SpecError

    stored = f.attrs.get(SPEC_KEY)
    if isinstance(stored, bytes):
        stored = stored.decode()
    from ..nn.dag import GraphError, from_json, is_graph_json

    if is_graph_json(stored):
        try:
            return from_json(stored)
        except GraphError as e:
            raise ShardError(f"{f.filename}: {e}") from None
    registered = name.strip().lower().replace("-", "_") in list_models()
    if stored is None and not registered:
        return None
    try:
        return architecture(name, {SPEC_KEY: stored} if stored is not None else None)
    except SpecError as e:
        raise ShardError(f"{f.filename}: {e}") from None


def check_model_arrays(arrays, model, where: str) -> None:
    """Names, shapes, dtypes and values of a model's arrays against its architecture, on
    the owner's machine, before anything is written: every problem is listed at once
    (missing, unexpected such as PyTorch's ``num_batches_tracked``, mis-shaped,
    non-float, NaN or Inf)."""
    from ..nn import spec as S

    expected = S.param_shapes(model)
    have = {a.name: a for a in arrays}
    problems = []
    missing = [n for n in expected if n not in have]
    if missing:
        problems.append(f"missing {missing}")
    extra = [n for n in have if n not in expected]
    if extra:
        hint = (
            " (num_batches_tracked is a PyTorch training counter, not a parameter: drop it, "
            "or use `mpcgpu import`, which does)"
            if any(n.endswith("num_batches_tracked") for n in extra)
            else ""
        )
        problems.append(f"unexpected {extra}{hint}")
    wrong = [
        f"{n}: expected {expected[n]}, got {have[n].shape}"
        for n in expected
        if n in have and tuple(have[n].shape) != tuple(expected[n])
    ]
    if wrong:
        problems.append("wrong shape: " + "; ".join(wrong))
    kinds = [f"{n}: {have[n].dtype}" for n in expected if n in have and have[n].dtype.kind != "f"]
    if kinds:
        problems.append("not floating point: " + "; ".join(kinds))
    if not problems:
        bad = []
        for n in expected:
            v = numpy.asarray(have[n].source[()])
            if not numpy.isfinite(v).all():
                bad.append(f"{n} ({int(numpy.isnan(v).sum())} NaN, {int(numpy.isinf(v).sum())} Inf)")
        if bad:
            problems.append("non-finite values in " + ", ".join(bad))
    if problems:
        raise ShardError(
            f"{where}: the weights do not match the architecture of model {model.name}: "
            + ". ".join(problems)
            + ". Nothing was written."
        )


def bn_var_domain(arrays, model_name, frac_bits: int, where: str):
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
    from ..nn import spec as S

    try:
        if not isinstance(model_name, S.Model):
            from ..nn.models import get_model

            model_name = get_model(model_name)
        for path, layer in S.walk(model_name):
            if isinstance(layer, S.BatchNorm2d):
                eps[S.join_path(path, "running_var")] = float(layer.eps)
    except S.SpecError:
        pass  # no architecture known: PyTorch's default eps
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
        default, model, consts = list(PUBLIC_BY_DEFAULT[detected]), None, None
        if detected == "dataset" and _fmt(f).startswith("mpcgpu-tokens/"):
            from .tokens import share_arrays

            arrays, consts, extra = share_arrays(f, limit)
            name = _str_attr(f, "name", default_stem(input_path))
            default += list(extra)
        elif detected == "dataset":
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
            model = model_architecture(f, name)
            if _is_graph(model):
                consts = _graph_arrays(f, model, arrays, input_path)
            elif model is not None:
                check_model_arrays(arrays, model, input_path)
        public, withheld = select_public(attrs, groups, default=default, public_meta=public_meta, where=input_path)
        if detected == "model" and _is_graph(model):
            from ..nn.dag import to_json as graph_json

            public["spec"] = graph_json(model)  # the servers cannot run the graph without it
        elif detected == "model":
            if model is not None and "spec" in public:  # a stored architecture, checked, canonical form
                from ..nn.spec_io import to_json

                public["spec"] = to_json(model)
            domain = bn_var_domain(arrays, model if model is not None else name, frac_bits, input_path)
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
            consts=consts,
        )
    result.withheld = withheld
    result.consts = consts or {}
    return result


def _is_graph(model) -> bool:
    from ..nn.dag import GraphModel

    return isinstance(model, GraphModel)


def _graph_arrays(f, g, arrays, where) -> dict:
    """A graph model's input checked before anything is written: its parameters (names,
    shapes, float, finite) and its public constants (``/consts``, also the graph's
    dtypes); returns the constants as the graph's dtypes."""
    from ..nn.weights import CONST_DTYPES, WeightsError, check_graph_arrays

    h5py = _h5py()
    params = {a.name: a.source for a in arrays}
    consts = {}
    if "consts" in f and isinstance(f["consts"], h5py.Group):
        consts = {k: numpy.asarray(d[()]) for k, d in f["consts"].items() if isinstance(d, h5py.Dataset)}
    try:
        check_graph_arrays(g, params, consts, where)
    except WeightsError as e:
        raise ShardError(f"{e}. Nothing was written.") from None
    return {t.name: numpy.asarray(consts[t.name], CONST_DTYPES[t.dtype]) for t in g.consts}


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
# what a shard stores in clear (the command line, `mpcgpu share`, lives in mpcgpu.jobs.share)
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
