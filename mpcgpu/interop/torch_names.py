"""PyTorch state dicts: read them (safetensors; ``.pt`` when torch is installed) and match
their names to a zoo architecture.

The zoo's parameter names already are torchvision's for the torchvision-shaped models
(``resnet50`` ... : ``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer1.0.downsample.0``,
``fc``; ``alexnet_imagenet`` and ``vgg16_imagenet``: ``features.N``, ``classifier.N``), so a
torchvision state dict matches name for name once PyTorch's bookkeeping is dropped.
Matching, in this order:

1. a common ``module.`` prefix (DataParallel) is removed; ``num_batches_tracked`` (a
   training counter, not a parameter) is dropped;
2. names equal to the spec's are taken as they are;
3. a layer name that lacks the spec's one-element ``Sequential`` index is aliased
   (a bare ``classifier.weight`` -> ``classifier.0.weight``);
4. if names still differ, layers are matched by order: the state dict's layers (in
   their stored order for ``.pt``, in natural name order -- ``conv2`` before ``conv10``
   -- for safetensors, whose keys are sorted) against the spec's layers in execution
   order, each with the same local names (``weight``, ``bias``, ...) and shapes.

Anything left over is an error listing every unmatched name and shape.  Every mapping
that was not the identity is reported, so the owner sees what went where.
"""

from __future__ import annotations

import os
import re

import numpy

from ..errors import MPCError
from ..nn import spec as S


class StateDictError(MPCError, ValueError):
    """A state dict cannot be read or does not match the architecture."""


def read_state_dict(path) -> tuple[dict, bool]:
    """``({name: float64 array}, ordered)`` from ``.safetensors`` or ``.pt``/``.pth``;
    ``ordered`` tells whether the names are in the model's registration order."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise StateDictError(f"{path}: no such file")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".safetensors":
        try:
            from safetensors import safe_open
        except ImportError:  # pragma: no cover - in the onnx/test extras
            raise StateDictError("reading safetensors needs: pip install 'mpcgpu[onnx]'") from None
        try:
            with safe_open(path, framework="np") as f:
                out = {k: numpy.asarray(f.get_tensor(k)) for k in f.keys()}
        except Exception as e:
            raise StateDictError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from None
        return out, False
    if ext in (".pt", ".pth"):
        try:
            import torch
        except ImportError:
            raise StateDictError(
                f"{path}: reading a .pt state dict needs PyTorch; without it, save the state dict as "
                "safetensors (safetensors.torch.save_file(model.state_dict(), 'model.safetensors')) "
                "or export the model to ONNX"
            ) from None
        from .safety import check_torch_version

        check_torch_version(torch)  # weights_only=True runs no code only in recent releases
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise StateDictError(f"{path}: not a loadable state dict ({type(e).__name__}: {e})") from None
        if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict):
            raise StateDictError(f"{path}: holds a {type(obj).__name__}, not a state dict")
        out = {}
        for k, v in obj.items():
            if not hasattr(v, "detach"):
                raise StateDictError(f"{path}: entry {k!r} is not a tensor")
            out[str(k)] = v.detach().cpu().double().numpy() if v.is_floating_point() else v.cpu().numpy()
        return out, True
    raise StateDictError(f"{path}: unknown state dict type {ext!r} (use .safetensors, or .pt with PyTorch)")


def safetensors_spec(path):
    """The architecture ``mpcgpu export`` stored in a safetensors file's metadata, or None."""
    from safetensors import safe_open

    from ..nn.spec_io import from_json

    with safe_open(os.fspath(path), framework="np") as f:
        text = (f.metadata() or {}).get("mpcgpu-spec")
    return None if text is None else from_json(text)


def _natural(name: str):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def _layers(names) -> list:
    """Names grouped by layer prefix, in the given order: [(prefix, [local, ...])]."""
    groups, index = [], {}
    for n in names:
        prefix, _, local = n.rpartition(".")
        if prefix not in index:
            index[prefix] = len(groups)
            groups.append((prefix, []))
        groups[index[prefix]][1].append(local)
    return groups


def match_state_dict(model: S.Model, state: dict, *, ordered: bool = True) -> tuple[dict, list, list]:
    """``(params, renamed, dropped)``: ``params`` by the spec's names (float64),
    ``renamed`` the ``(from, to)`` pairs that were not the identity, ``dropped`` the names
    left out (``num_batches_tracked``).  Raises :class:`StateDictError` listing every
    problem: unmatched names, shapes, non-float or non-finite arrays."""
    state = dict(state)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    dropped = [k for k in state if k.rsplit(".", 1)[-1] == "num_batches_tracked"]
    for k in dropped:
        del state[k]
    expected = S.param_shapes(model)
    mapping = {k: k for k in state if k in expected}
    # aliases: "X.weight" for the spec's "X.0.weight" when X is a one-layer Sequential
    taken = set(mapping.values())
    for k in state:
        if k in mapping:
            continue
        prefix, _, local = k.rpartition(".")
        alias = S.join_path(f"{prefix}.0" if prefix else "0", local)
        if (
            alias in expected
            and alias not in taken
            and S.join_path(f"{prefix}.1" if prefix else "1", local) not in expected
        ):
            mapping[k] = alias
            taken.add(alias)
    if len(mapping) != len(state) or len(taken) != len(expected):
        mapping = _by_order(model, state, ordered) or mapping
    problems = []
    unmatched = [k for k in state if k not in mapping]
    missing = [n for n in expected if n not in set(mapping.values())]
    if unmatched:
        problems.append(
            "names not in the architecture: " + ", ".join(f"{k} {tuple(state[k].shape)}" for k in unmatched)
        )
    if missing:
        problems.append("architecture arrays not found: " + ", ".join(f"{n} {expected[n]}" for n in missing))
    params = {}
    for k, n in mapping.items():
        a = numpy.asarray(state[k])
        if tuple(a.shape) != tuple(expected[n]):
            problems.append(f"{k}: shape {tuple(a.shape)}, the architecture's {n} has {expected[n]}")
        elif a.dtype.kind != "f":
            problems.append(f"{k}: dtype {a.dtype}, expected floating point")
        elif not numpy.isfinite(a).all():
            problems.append(f"{k}: {int(numpy.isnan(a).sum())} NaN and {int(numpy.isinf(a).sum())} Inf values")
        else:
            params[n] = a.astype(numpy.float64)
    if problems:
        raise StateDictError(f"the state dict does not match model {model.name}:\n  " + "\n  ".join(problems))
    renamed = [(k, n) for k, n in mapping.items() if k != n]
    return {n: params[n] for n in expected}, renamed, dropped


def _by_order(model, state, ordered) -> dict | None:
    """Layer-by-layer matching in execution order (None if the layers do not line up)."""
    names = list(state) if ordered else sorted(state, key=_natural)
    mine = _layers(names)
    theirs = _layers(p.name for p in S.param_specs(model))
    if len(mine) != len(theirs):
        return None
    mapping = {}
    for (pa, la), (pb, lb) in zip(mine, theirs):
        if sorted(la) != sorted(lb):
            return None
        for local in la:
            a, b = S.join_path(pa, local), S.join_path(pb, local)
            if tuple(numpy.shape(state[a])) != tuple(S.param_shapes(model)[b]):
                return None
            mapping[a] = b
    return mapping


def zoo_model(arch: str, *, num_classes: int | None = None, input_size=None, name: str | None = None) -> S.Model:
    """A zoo architecture with another class count (the last Linear) and input size
    (``H`` or ``(H, W)``; ResNets take any size whose last feature map is at least 1x1)."""
    from ..nn import models

    base = models.get_model(arch)
    shape = base.input_shape
    if input_size is not None:
        hw = (int(input_size), int(input_size)) if numpy.ndim(input_size) == 0 else tuple(int(v) for v in input_size)
        shape = (shape[0],) + hw
    k = base.num_classes if num_classes is None else int(num_classes)
    net = _with_classes(base.net, k)
    try:
        return S.Model(name or base.name, shape, k, net, base.description + f" ({k} classes, input {shape})")
    except S.SpecError as e:
        raise StateDictError(f"{arch} at input {shape} with {k} classes: {e}") from None


def _with_classes(seq: S.Sequential, k: int) -> S.Sequential:
    layers = list(seq.layers)
    for i in range(len(layers) - 1, -1, -1):
        child = layers[i]
        if isinstance(child, S.Linear):
            layers[i] = S.Linear(child.in_f, k, child.bias)
            return S.Sequential(tuple(layers), seq.names)
        if isinstance(child, S.Sequential) and any(isinstance(c, S.Linear) for _, c in S.walk(child)):
            layers[i] = _with_classes(child, k)
            return S.Sequential(tuple(layers), seq.names)
    raise StateDictError("the architecture has no final Linear layer to resize")


def import_state_dict(path, arch: str, *, num_classes=None, input_size=None, name=None) -> tuple:
    """``(Model, params, renamed, dropped)`` of a state dict file matched to ``arch``."""
    state, ordered = read_state_dict(path)
    if arch is None:  # a file written by `mpcgpu export` carries its architecture
        model = safetensors_spec(path) if str(path).lower().endswith(".safetensors") else None
        if model is None:
            from ..nn.models import list_models

            raise StateDictError(
                f"{path}: a state dict needs --arch, the zoo architecture it belongs to ({', '.join(list_models())})"
            )
        if num_classes is not None or input_size is not None:
            raise StateDictError(f"{path} carries its architecture: --num-classes and --input-size do not apply")
        if name:
            import dataclasses

            model = dataclasses.replace(model, name=name)
    else:
        model = zoo_model(arch, num_classes=num_classes, input_size=input_size, name=name)
    params, renamed, dropped = match_state_dict(model, state, ordered=ordered)
    return model, params, renamed, dropped


__all__ = [
    "StateDictError",
    "read_state_dict",
    "match_state_dict",
    "zoo_model",
    "import_state_dict",
    "safetensors_spec",
]
