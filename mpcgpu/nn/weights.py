"""Plaintext model weights in HDF5.

Layout (``format = "mpcgpu-weights/1"``)::

    /                      attrs: format = "mpcgpu-weights/1"
                                  model  = registered model name (e.g. "lenet")
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

from ..errors import MPCError
from . import spec as S

FORMAT = "mpcgpu-weights/1"


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
    registered name; defaults to ``model_name`` if registered) is checked first."""
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
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with h5py.File(tmp, "w", track_order=True) as f:
            f.attrs["format"] = FORMAT
            f.attrs["model"] = str(model_name)
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
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_weights(path, spec=None, *, dtype=np.float64) -> tuple[str, dict]:
    """Read a weights file: ``(model_name, {name: array as dtype})``.

    With ``spec`` (a Model, layer or registered name, or ``True`` for the
    file's own model name) the names and shapes are checked exactly.
    """
    from ..hdf5 import open_for_reading

    with open_for_reading(path, WeightsError, "weights file") as f:
        fmt = f.attrs.get("format")
        if isinstance(fmt, bytes):
            fmt = fmt.decode()
        if fmt != FORMAT:
            raise WeightsError(f"{path}: format {fmt!r}, expected {FORMAT!r}")
        name = f.attrs.get("model", "")
        name = name.decode() if isinstance(name, bytes) else str(name)
        if "params" not in f:
            raise WeightsError(f"{path}: no /params group")
        params = {k: np.asarray(d[()], dtype=dtype) for k, d in f["params"].items()}
    if spec is True:
        spec = name
    spec = _resolve(spec)
    if spec is not None:
        try:
            S.check_params(spec, params, what=f"weights in {path}")
        except S.ParamMismatchError as e:
            raise WeightsError(str(e)) from None
        params = {k: params[k] for k in S.param_shapes(spec)}
    return name, params


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


__all__ = ["FORMAT", "WeightsError", "save_weights", "load_weights", "read_meta"]
