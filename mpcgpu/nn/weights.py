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
"""

from __future__ import annotations

import datetime
import os
from typing import Mapping

import numpy as np

from mpcgpu.util.atomic import written_atomically
from ..errors import MPCError
from . import spec as S

FORMAT = "mpcgpu-weights/2"
#: the weights formats this version reads
READABLE = ("mpcgpu-weights/1", "mpcgpu-weights/2")


class WeightsError(MPCError, ValueError):
    """A weights file is missing, of another format, or does not match the model."""


def _resolve(spec):
    if spec is None or isinstance(spec, (S.Model, S.Layer)):
        return spec
    from .models import get_model

    return get_model(str(spec))


def save_weights(
    path, model_name: str, params: Mapping, *, dtype=np.float32, meta: Mapping | None = None, spec=None
) -> None:
    """Write ``params`` ({name: array}) as ``dtype``.  ``spec`` (a Model, layer or
    registered name; defaults to ``model_name`` if registered) is checked first; a
    Model's architecture is stored in the file (attr ``spec``), so that every later
    step runs exactly this network."""
    import h5py

    if spec is None:
        from .models import list_models

        if model_name in list_models():
            spec = model_name
    spec = _resolve(spec)
    if spec is not None:
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
        f.attrs["dtype"] = dtype.name
        f.attrs["param_count"] = int(sum(np.asarray(params[n]).size for n in names))
        g = f.create_group("params", track_order=True)
        for n in names:
            a = np.asarray(params[n])
            if not np.all(np.isfinite(a)):
                raise WeightsError(f"parameter {n} has non-finite values")
            g.create_dataset(n, data=a.astype(dtype))
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


def _architecture(name, stored, path) -> S.Model:
    from .models import SPEC_KEY, architecture

    try:
        return architecture(name, {SPEC_KEY: stored} if stored is not None else None)
    except S.SpecError as e:
        raise WeightsError(f"{path}: {e}") from None


def read_architecture(path) -> S.Model:
    """The architecture of a weights file: its stored spec, else its registered model name."""
    from mpcgpu.util.hdf5 import open_for_reading

    with open_for_reading(path, WeightsError, "weights file") as f:
        name, stored = _header(f, path)
    return _architecture(name, stored, path)


def model_by_name_or_file(arg: str) -> S.Model:
    """A registered model name, or the path of a weights file (its own architecture)."""
    if os.path.isfile(arg):
        return read_architecture(arg)
    from .models import get_model

    try:
        return get_model(arg)
    except S.SpecError as e:
        raise S.SpecError(f"{e}; or give the path of a weights file (mpcgpu import makes one)") from None


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
    "model_by_name_or_file",
    "read_meta",
]
