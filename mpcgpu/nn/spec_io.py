"""Architectures as versioned JSON: ``to_dict`` / ``from_dict``, ``to_json`` / ``from_json``.

A weights file (``mpcgpu-weights/2``) and the model shards made from it carry the
architecture of their network in this form, so the servers rebuild exactly the network
the owner had (any input size, class count or layer sequence), not only the registered
ones.

Format ``mpcgpu-spec/1`` (one JSON object)::

    {"format": "mpcgpu-spec/1", "name": "...", "input_shape": [C, H, W],
     "num_classes": K, "output": "logits" | "softmax" | "log_softmax",
     "description": "...", "net": LAYER}

    LAYER = {"type": "Conv2d", "in_ch": 3, "out_ch": 8, "kernel": [3, 3], "stride": [1, 1],
             "padding": [1, 1], "groups": 1, "bias": true}
          | {"type": "Linear", "in_f": .., "out_f": .., "bias": ..}
          | {"type": "ReLU"} | {"type": "Flatten"} | {"type": "Dropout", "p": 0.5}
          | {"type": "MaxPool2d" | "AvgPool2d", "kernel": [..], "stride": [..], "padding": [..]}
          | {"type": "AdaptiveAvgPool2d", "out_hw": [h, w]}
          | {"type": "BatchNorm2d", "channels": C, "eps": 1e-5, "momentum": 0.1}
          | {"type": "Sequential", "names": [...], "layers": [LAYER, ...]}
          | {"type": "Residual", "body": SEQ, "shortcut": SEQ | null, "relu": bool,
             "body_name": "", "shortcut_name": "downsample"}

A leaf's keys are its spec's dataclass fields, each read as the kind its layer type's
registration gives (:func:`mpcgpu.nn.layers.register`, ``json``): a new layer type is
read and written with no change here.

Reading is strict: an unknown format tag or layer type, a missing or unexpected key, a
value of the wrong type (a bool for an int, a string for a number, a non-finite float)
raises :class:`~mpcgpu.nn.spec.SpecError` naming the path of the offending layer, and
the rebuilt model is checked end to end (shapes through the network, output size =
``num_classes``).  Optional keys take the dataclass defaults.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re

from . import layers as L
from . import spec as S

FORMAT = "mpcgpu-spec/1"
#: the largest spec text accepted (a ResNet-152 is about 60 kB)
MAX_JSON_CHARS = 4 << 20
#: the deepest nesting of JSON arrays and objects accepted (a ResNet-152 nests 10 deep);
#: checked before parsing, so that a crafted spec cannot exhaust the parser's stack
MAX_JSON_DEPTH = 100
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_JSON_BRACKET = re.compile(r"[\[\]{}]")

#: kind of each leaf field: "pos" positive int, "int" int >= 0, "pair" int or [int, int],
#: "pair?" pair or null, "bool", "num" finite number -- given by each layer type's
#: registration (its ``json``, :func:`mpcgpu.nn.layers.register`)


def _leaf_type(name):
    """The registered layer type called ``name``, or None."""
    return L.by_name(name) if isinstance(name, str) else None


def _plain(v):
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    return v


def layer_to_dict(layer: S.Layer) -> dict:
    """One layer (and its children) as plain JSON-ready data."""
    if isinstance(layer, S.Sequential):
        return {"type": "Sequential", "names": list(layer.names), "layers": [layer_to_dict(c) for c in layer.layers]}
    if isinstance(layer, S.Residual):
        return {
            "type": "Residual",
            "body": layer_to_dict(layer.body),
            "shortcut": None if layer.shortcut is None else layer_to_dict(layer.shortcut),
            "relu": bool(layer.relu),
            "body_name": layer.body_name,
            "shortcut_name": layer.shortcut_name,
        }
    name = type(layer).__name__
    t = _leaf_type(name)
    if t is None or t.spec is not type(layer):
        raise S.SpecError(f"cannot serialise layer type {name}")
    out = {"type": name}
    for f in dataclasses.fields(layer):
        out[f.name] = _plain(getattr(layer, f.name))
    return out


def to_dict(model: S.Model) -> dict:
    """A :class:`~mpcgpu.nn.spec.Model` as a ``mpcgpu-spec/1`` dict."""
    if not isinstance(model, S.Model):
        raise S.SpecError(f"to_dict needs a Model, got {type(model).__name__}")
    return {
        "format": FORMAT,
        "name": model.name,
        "input_shape": list(model.input_shape),
        "num_classes": int(model.num_classes),
        "output": model.output,
        "description": model.description,
        "net": layer_to_dict(model.net),
    }


def to_json(model: S.Model) -> str:
    """Compact JSON text of :func:`to_dict` (stable: the same model gives the same text)."""
    return json.dumps(to_dict(model), separators=(",", ":"))


# ---------------------------------------------------------------------------- reading
def _fail(where: str, msg: str):
    raise S.SpecError(f"architecture spec, {where or 'net'}: {msg}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _value(kind: str, v, where: str, key: str):
    if kind == "pair?" and v is None:
        return None
    if kind in ("pair", "pair?"):
        if _is_int(v) and v >= 0:
            return v
        if isinstance(v, list) and len(v) == 2 and all(_is_int(x) and x >= 0 for x in v):
            return tuple(v)
        _fail(where, f"{key} must be an int >= 0 or a list of two, got {v!r}")
    if kind == "pos":
        if _is_int(v) and v >= 1:
            return v
        _fail(where, f"{key} must be a positive int, got {v!r}")
    if kind == "bool":
        if isinstance(v, bool):
            return v
        _fail(where, f"{key} must be true or false, got {v!r}")
    if kind == "num":
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            return float(v)
        _fail(where, f"{key} must be a finite number, got {v!r}")
    raise AssertionError(kind)  # pragma: no cover


def _keys(d, where, required, optional=()):
    if not isinstance(d, dict):
        _fail(where, f"expected an object, got {type(d).__name__}")
    missing = [k for k in required if k not in d]
    extra = [k for k in d if k not in required and k not in optional]
    if missing:
        _fail(where, f"missing {missing}")
    if extra:
        _fail(where, f"unexpected {extra}")


def layer_from_dict(d, where: str = "") -> S.Layer:
    """Rebuild one layer from :func:`layer_to_dict` data, strictly."""
    if not isinstance(d, dict) or "type" not in d:
        _fail(where, "a layer needs a 'type'")
    kind = d["type"]
    if kind == "Sequential":
        _keys(d, where, ("type", "layers"), ("names",))
        layers, names = d["layers"], d.get("names")
        if not isinstance(layers, list):
            _fail(where, "Sequential layers must be a list")
        if names is not None and (
            not isinstance(names, list) or len(names) != len(layers) or not all(isinstance(n, str) for n in names)
        ):
            _fail(where, "Sequential names must be a list of strings, one per layer")
        names = names or [str(i) for i in range(len(layers))]
        children = tuple(layer_from_dict(c, S.join_path(where, n)) for n, c in zip(names, layers))
        try:
            return S.Sequential(children, tuple(names))
        except S.SpecError as e:
            _fail(where, str(e))
    if kind == "Residual":
        _keys(d, where, ("type", "body"), ("shortcut", "relu", "body_name", "shortcut_name"))
        body_name, short_name = d.get("body_name", ""), d.get("shortcut_name", "downsample")
        if not isinstance(body_name, str) or not isinstance(short_name, str):
            _fail(where, "body_name and shortcut_name must be strings")
        body = layer_from_dict(d["body"], S.join_path(where, body_name))
        short = d.get("shortcut")
        short = None if short is None else layer_from_dict(short, S.join_path(where, short_name))
        relu = _value("bool", d.get("relu", False), where, "relu")
        try:
            return S.Residual(body, short, relu, body_name, short_name)
        except S.SpecError as e:
            _fail(where, str(e))
    t = _leaf_type(kind)
    if t is None:
        known = sorted(r.name for r in L.registered()) + ["Residual", "Sequential"]
        _fail(where, f"unknown layer type {kind!r} (known: {', '.join(known)})")
    cls = t.spec
    fields = dataclasses.fields(cls)
    required = ["type"] + [f.name for f in fields if f.default is dataclasses.MISSING]
    _keys(d, where, required, [f.name for f in fields])
    kwargs = {f.name: _value(t.json[f.name], d[f.name], where, f.name) for f in fields if f.name in d}
    try:
        return cls(**kwargs)
    except S.SpecError as e:
        _fail(where, str(e))
    except (TypeError, ValueError) as e:  # pragma: no cover - the checks above come first
        _fail(where, f"bad {kind}: {e}")


def from_dict(d) -> S.Model:
    """Rebuild a :class:`~mpcgpu.nn.spec.Model` from ``mpcgpu-spec/1`` data, strictly."""
    if not isinstance(d, dict):
        raise S.SpecError(f"architecture spec must be a JSON object, got {type(d).__name__}")
    fmt = d.get("format")
    if fmt != FORMAT:
        raise S.SpecError(f"architecture spec format {fmt!r} is not supported (this mpcgpu reads {FORMAT!r})")
    _keys(d, "model", ("format", "name", "input_shape", "num_classes", "net"), ("output", "description"))
    name, shape, k = d["name"], d["input_shape"], d["num_classes"]
    if not isinstance(name, str) or not name:
        _fail("model", f"name must be a non-empty string, got {name!r}")
    if not isinstance(shape, list) or len(shape) not in (1, 3) or not all(_is_int(v) and v >= 1 for v in shape):
        _fail("model", f"input_shape must be [C, H, W] or [F] of positive ints, got {shape!r}")
    if not _is_int(k) or k < 1:
        _fail("model", f"num_classes must be a positive int, got {k!r}")
    output = d.get("output", "logits")
    if output not in S.OUTPUTS:
        _fail("model", f"output must be one of {S.OUTPUTS}, got {output!r}")
    desc = d.get("description", "")
    if not isinstance(desc, str):
        _fail("model", "description must be a string")
    net = layer_from_dict(d["net"], "")
    if not isinstance(net, S.Sequential):
        _fail("model", "net must be a Sequential")
    return S.Model(name, tuple(shape), k, net, desc, output)


def from_json(text) -> S.Model:
    """:func:`from_dict` of JSON text (bytes are decoded as UTF-8)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    if not isinstance(text, str):
        raise S.SpecError(f"architecture spec must be JSON text, got {type(text).__name__}")
    if len(text) > MAX_JSON_CHARS:
        raise S.SpecError(f"architecture spec of {len(text)} characters is larger than {MAX_JSON_CHARS}")
    if _too_deep(text, MAX_JSON_DEPTH):
        raise S.SpecError(f"architecture spec nests arrays and objects more than {MAX_JSON_DEPTH} deep")
    try:
        data = json.loads(text)
    except ValueError as e:
        raise S.SpecError(f"architecture spec is not valid JSON: {e}") from None
    return from_dict(data)


def _too_deep(text: str, limit: int) -> bool:
    """Whether JSON ``text`` nests arrays and objects more than ``limit`` deep (brackets
    inside strings do not count); stops at the first level past ``limit``."""
    depth = 0
    for m in _JSON_BRACKET.finditer(_JSON_STRING.sub('""', text)):
        if m.group() in "[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


__all__ = ["FORMAT", "to_dict", "to_json", "from_dict", "from_json", "layer_to_dict", "layer_from_dict"]
