"""Plaintext model weights in HDF5.

Layout (``format = "mpcgpu-weights/2"``; ``/1`` files, without ``spec``, are still read)::

    /                      attrs: format = "mpcgpu-weights/2"
                                  model  = model name (registered, e.g. "lenet", or any
                                           name of an imported network)
                                  spec   = the architecture, ``mpcgpu-spec/1`` JSON
                                           (:mod:`mpcgpu.nn.spec_io`); optional in /2,
                                           absent in /1: then ``model`` must be registered
                                  dtype  = "float32" | "float64" (of every parameter)
                                  param_count = number of stored scalars
    /params/<name>         one contiguous, uncompressed dataset per parameter, named by
                           its dotted spec name ("features.0.weight",
                           "layer1.0.bn1.running_var"), shape as in
                           ``mpcgpu.nn.spec.param_shapes``; stored in spec order
                           (the group tracks creation order)
    /meta                  group; attrs: free-form scalars/strings, e.g. dataset,
                           test_accuracy, epochs, created (ISO time), software

BatchNorm buffers (``running_mean``, ``running_var``) are stored like weights.
Loading checks the format and, given a spec, that the names and shapes match
exactly (``WeightsError`` lists every missing, unexpected or mis-shaped array).

A **graph model** (:class:`mpcgpu.nn.dag.GraphModel`: transformers, imported ONNX graphs)
is stored the same way, with ``spec`` holding its ``mpcgpu-graph/1`` JSON, its
parameters under ``/params`` (``dtype``) and one more group::

    /consts/<name>         its public constants (reshape targets, scalar factors, masks,
                           position ids), stored as they are: float64, int64 or bool
                           (a mask's -inf included), shape as in the graph

:func:`read_architecture` gives the :class:`GraphModel` of such a file, :func:`load_graph`
the graph, its parameters and its constants.
"""

from __future__ import annotations

import datetime
import os
from typing import Mapping

import numpy as np

from mpcgpu.util.atomic import written_atomically
from ..errors import MPCError
from . import dag
from . import spec as S

FORMAT = "mpcgpu-weights/2"
#: the weights formats this version reads
READABLE = ("mpcgpu-weights/1", "mpcgpu-weights/2")


class WeightsError(MPCError, ValueError):
    """A weights file is missing, of another format, or does not match the model."""


#: the storage dtype of a graph's constants, by their TensorInfo dtype
CONST_DTYPES = {"float": np.float64, "int": np.int64, "bool": np.bool_}


def _resolve(spec):
    if spec is None or isinstance(spec, (S.Model, S.Layer, dag.GraphModel)):
        return spec
    from .models import get_model

    return get_model(str(spec))


def check_graph_arrays(g: "dag.GraphModel", params: Mapping, consts: Mapping | None, where: str) -> None:
    """The parameters and constants of graph ``g`` against its tensors: names, shapes,
    finite float parameters, constants of the graph's dtype (``consts=None``: not
    checked).  A :class:`WeightsError` lists every problem."""
    problems = []
    groups = [("parameter", g.params, params)] + ([("const", g.consts, consts)] if consts is not None else [])
    for kind, infos, values in groups:
        want = {t.name: t for t in infos}
        missing = [n for n in want if n not in values]
        extra = [n for n in values if n not in want]
        if missing:
            problems.append(f"missing {kind}s {missing[:10]}{' ...' if len(missing) > 10 else ''}")
        if extra:
            problems.append(f"unexpected {kind}s {extra[:10]}{' ...' if len(extra) > 10 else ''}")
        for n, t in want.items():
            if n not in values:
                continue
            a = values[n]  # an array, or an HDF5 dataset (read only for the finiteness check)
            if not hasattr(a, "shape") or not hasattr(a, "dtype"):
                a = np.asarray(a)
            if tuple(a.shape) != t.shape:
                problems.append(f"{kind} {n}: expected shape {t.shape}, got {tuple(a.shape)}")
            elif kind == "parameter":
                if a.dtype.kind != "f":
                    problems.append(f"parameter {n}: not floating point ({a.dtype})")
                elif not np.all(np.isfinite(np.asarray(a[()]))):
                    problems.append(f"parameter {n} has non-finite values")
            else:
                ok = {"float": "f", "int": "iu", "bool": "b"}[t.dtype]
                if a.dtype.kind not in ok:
                    problems.append(f"const {n}: expected {t.dtype}, got {a.dtype}")
    if problems:
        raise WeightsError(f"{where}: the arrays do not match graph {g.name}: " + "; ".join(problems))


def save_weights(
    path,
    model_name: str,
    params: Mapping,
    *,
    dtype=np.float32,
    meta: Mapping | None = None,
    spec=None,
    consts: Mapping | None = None,
) -> None:
    """Write ``params`` ({name: array}) as ``dtype``.  ``spec`` (a Model, layer or
    registered name; defaults to ``model_name`` if registered) is checked first; a
    Model's architecture is stored in the file (attr ``spec``), so that every later
    step runs exactly this network.  A :class:`~mpcgpu.nn.dag.GraphModel` ``spec`` needs
    its public ``consts`` ({name: array}) too, stored under ``/consts`` as they are."""
    import h5py

    if spec is None:
        from .models import list_models

        if model_name in list_models():
            spec = model_name
    spec = _resolve(spec)
    graph = isinstance(spec, dag.GraphModel)
    if graph:
        if consts is None:
            raise WeightsError(f"graph model {spec.name}: give its consts (public constants) too")
        check_graph_arrays(spec, params, consts, str(path))
        names = [p.name for p in spec.params]
    elif consts is not None:
        raise WeightsError("consts belong to graph models only")
    elif spec is not None:
        try:
            S.check_params(spec, params)
        except S.ParamMismatchError as e:
            raise WeightsError(str(e)) from None
        names = list(S.param_shapes(spec))
    else:
        names = list(params)
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise WeightsError(f"weights are stored as float32 or float64, not {dtype}")
    # the owner's plaintext model (or weights revealed to one party): mode 0600
    with written_atomically(path, private=True) as tmp, h5py.File(tmp, "w", track_order=True) as f:
        f.attrs["format"] = FORMAT
        f.attrs["model"] = str(model_name)
        if isinstance(spec, S.Model):
            from .models import SPEC_KEY
            from .spec_io import to_json

            f.attrs[SPEC_KEY] = to_json(spec)
        elif graph:
            from .models import SPEC_KEY

            f.attrs[SPEC_KEY] = dag.to_json(spec)
        f.attrs["dtype"] = dtype.name
        f.attrs["param_count"] = int(sum(np.asarray(params[n]).size for n in names))
        g = f.create_group("params", track_order=True)
        for n in names:
            a = np.asarray(params[n])
            if not np.all(np.isfinite(a)):
                raise WeightsError(f"parameter {n} has non-finite values")
            g.create_dataset(n, data=a.astype(dtype))
        if graph:
            c = f.create_group("consts", track_order=True)
            for t in spec.consts:
                c.create_dataset(t.name, data=np.asarray(consts[t.name]).astype(CONST_DTYPES[t.dtype]))
        m = f.create_group("meta")
        m.attrs["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        for k, v in (meta or {}).items():
            m.attrs[str(k)] = v


def load_weights(path, spec=None, *, dtype=np.float64) -> tuple[str, dict]:
    """Read a weights file: ``(model_name, {name: array as dtype})``.

    With ``spec`` (a Model, layer or registered name, or ``True`` for the
    file's own architecture: its stored spec, else its registered model name) the
    names and shapes are checked exactly.
    """
    from mpcgpu.util.hdf5 import open_for_reading

    with open_for_reading(path, WeightsError, "weights file") as f:
        name, stored = _header(f, path)
        if "params" not in f:
            raise WeightsError(f"{path}: no /params group")
        params = {k: np.asarray(d[()], dtype=dtype) for k, d in f["params"].items()}
    if spec is True:
        spec = _architecture(name, stored, path)
    spec = _resolve(spec)
    if isinstance(spec, dag.GraphModel):
        check_graph_arrays(spec, params, None, f"weights in {path}")
        return name, {p.name: params[p.name] for p in spec.params}
    if spec is not None:
        try:
            S.check_params(spec, params, what=f"weights in {path}")
        except S.ParamMismatchError as e:
            raise WeightsError(str(e)) from None
        params = {k: params[k] for k in S.param_shapes(spec)}
    return name, params


def _header(f, path) -> tuple:
    """``(model name, stored spec JSON or None)`` of an open weights file; checks the format."""
    fmt = f.attrs.get("format")
    if isinstance(fmt, bytes):
        fmt = fmt.decode()
    if fmt not in READABLE:
        raise WeightsError(f"{path}: format {fmt!r}, expected one of {READABLE}")
    name = f.attrs.get("model", "")
    name = name.decode() if isinstance(name, bytes) else str(name)
    from .models import SPEC_KEY

    stored = f.attrs.get(SPEC_KEY) if fmt != READABLE[0] else None
    if isinstance(stored, bytes):
        stored = stored.decode()
    return name, stored


def load_graph(path, *, dtype=np.float64) -> tuple:
    """A graph model's weights file: ``(GraphModel, params, consts)``, checked against the
    graph (params as ``dtype``, consts as stored: float64 / int64 / bool)."""
    from mpcgpu.util.hdf5 import open_for_reading

    with open_for_reading(path, WeightsError, "weights file") as f:
        name, stored = _header(f, path)
        if not dag.is_graph_json(stored):
            raise WeightsError(f"{path}: model {name!r} is not a graph model (no mpcgpu-graph/1 spec)")
        g = _architecture(name, stored, path)
        if "params" not in f:
            raise WeightsError(f"{path}: no /params group")
        params = {k: np.asarray(d[()], dtype=dtype) for k, d in f["params"].items()}
        consts = {k: np.asarray(d[()]) for k, d in f["consts"].items()} if "consts" in f else {}
    check_graph_arrays(g, params, consts, path)
    consts = {t.name: np.asarray(consts[t.name], CONST_DTYPES[t.dtype]) for t in g.consts}
    from .transformers import remember_consts

    remember_consts(g, consts)
    return g, {p.name: params[p.name] for p in g.params}, consts


def stored_architecture(name: str, public=None):
    """The architecture a weights file's attrs or a model shard's ``/public`` carry: a
    :class:`~mpcgpu.nn.dag.GraphModel` for an ``mpcgpu-graph/1`` spec, else
    :func:`mpcgpu.nn.models.architecture` (an ``mpcgpu-spec/1`` tree or a registered name)."""
    from .models import SPEC_KEY, architecture

    text = (public or {}).get(SPEC_KEY)
    if dag.is_graph_json(text):
        return dag.from_json(text)
    return architecture(name, public)


def is_graph_file(path) -> bool:
    """Whether the weights file ``path`` holds a graph model."""
    from mpcgpu.util.hdf5 import open_for_reading

    with open_for_reading(path, WeightsError, "weights file") as f:
        return dag.is_graph_json(_header(f, path)[1])


def _architecture(name, stored, path):
    from .models import SPEC_KEY

    if dag.is_graph_json(stored):
        try:
            return dag.from_json(stored)
        except dag.GraphError as e:
            raise WeightsError(f"{path}: {e}") from None
    from .models import architecture

    try:
        return architecture(name, {SPEC_KEY: stored} if stored is not None else None)
    except S.SpecError as e:
        raise WeightsError(f"{path}: {e}") from None


def read_architecture(path):
    """The architecture of a weights file: its stored spec (a :class:`~mpcgpu.nn.dag.GraphModel`
    for a graph model), else its registered model name."""
    from mpcgpu.util.hdf5 import open_for_reading

    with open_for_reading(path, WeightsError, "weights file") as f:
        name, stored = _header(f, path)
        arch = _architecture(name, stored, path)
        if isinstance(arch, dag.GraphModel):  # its consts too (transformers.graph_consts)
            from .transformers import remember_consts

            consts = {k: np.asarray(d[()]) for k, d in f["consts"].items()} if "consts" in f else {}
            try:
                remember_consts(arch, {c.name: consts[c.name].astype(CONST_DTYPES[c.dtype]) for c in arch.consts})
            except KeyError as e:
                raise WeightsError(f"{path}: graph {arch.name}: no value for const {e}") from None
    return arch


def model_by_name_or_file(arg: str):
    """A registered model name, the name of a transformer built by mpcgpu
    (:data:`mpcgpu.nn.transformers.MODELS`: ``bert-base``, ``gpt2``, ``vit-b16``...; a
    :class:`~mpcgpu.nn.dag.GraphModel`), or the path of a weights file (its own
    architecture)."""
    if os.path.isfile(arg):
        return read_architecture(arg)
    from .models import get_model

    try:
        return get_model(arg)
    except S.SpecError as e:
        from . import transformers

        if arg.strip().lower().replace("_", "-") in transformers.MODELS:
            return transformers.get_transformer(arg)
        raise S.SpecError(
            f"{e}; or a transformer ({', '.join(transformers.MODELS)}); "
            "or give the path of a weights file (mpcgpu import makes one)"
        ) from None


def read_meta(path) -> dict:
    """The attrs of ``/meta`` (and the root) as a plain dict."""
    import h5py

    with h5py.File(path, "r") as f:
        out = {k: _plain(v) for k, v in f.attrs.items()}
        if "meta" in f:
            out.update({k: _plain(v) for k, v in f["meta"].attrs.items()})
    return out


def _plain(v):
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.generic):
        return v.item()
    return v


__all__ = [
    "FORMAT",
    "READABLE",
    "WeightsError",
    "save_weights",
    "load_weights",
    "read_architecture",
    "load_graph",
    "stored_architecture",
    "is_graph_file",
    "check_graph_arrays",
    "model_by_name_or_file",
    "read_meta",
]
