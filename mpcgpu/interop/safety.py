"""Checks on a model file before anything in it is trusted: the owner's attack surface.

`mpcgpu import` reads files that someone else may have made (a model from a hub, a
colleague's export).  Reading one must not read other files of the owner's machine,
run code, or exhaust its memory:

* ONNX external data (large exports keep their weights in files next to the graph) is
  read only from inside the model's folder: every tensor's ``location`` must resolve,
  symbolic links followed, to a regular file inside that folder (no hard link to a file
  elsewhere, offsets inside the file), checked before any of it is read
  (:func:`load_onnx_checked`);
* the ``onnx`` package must be a release without the known path-traversal bugs of its
  own external-data loader (:data:`MIN_ONNX`), and ``torch`` one whose
  ``torch.load(weights_only=True)`` runs no code (:data:`MIN_TORCH`);
* the comparison with onnxruntime runs the graph on random inputs: their size, and that
  of the largest activation, are bounded first (:func:`check_run_size`).
"""

from __future__ import annotations

import os
import re

from ..errors import MPCError

#: onnx before 1.21.0 follows symbolic and hard links out of the model's folder when it
#: loads external data (CVE-2026-27489, CVE-2026-34446, CVE-2026-34447) and sets any
#: attribute an external-data entry names (CVE-2026-34445); 1.16.0 fixed "../" traversal
#: (CVE-2022-25882, CVE-2024-27318)
MIN_ONNX = (1, 21, 0)
#: torch.load(weights_only=True) could run code before 2.6.0 (CVE-2025-32434) and corrupt
#: memory on a crafted checkpoint before 2.10.0 (CVE-2026-24747)
MIN_TORCH = (2, 10, 0)
#: keys an external-data entry may have (the ONNX specification's)
EXTERNAL_KEYS = frozenset({"location", "offset", "length", "checksum", "basepath"})
#: the onnxruntime comparison: at most this many elements in the input batch and in
#: the largest activation of the batch (float64: 1 GiB)
MAX_RUN_ELEMENTS = 1 << 27
#: ... and per-sample input dimensions of at most this size each
MAX_INPUT_DIM = 1 << 16


class UnsafeModelError(MPCError, ValueError):
    """A model file asks for something that importing it must never do, or the package
    that would read it has known holes."""


def version_tuple(text) -> tuple:
    """``(major, minor, patch, final)`` of a version string such as ``"2.10.0+cu121"`` or
    ``"1.21.0rc2"``; ``final`` is 0 for a pre-release (which sorts before its release)."""
    m = re.match(r"\s*v?(\d+)\.(\d+)(?:\.(\d+))?(.*)$", str(text))
    if not m:
        raise UnsafeModelError(f"cannot read the version {text!r}")
    rest = m.group(4).lstrip(".").lower()
    final = 0 if re.match(r"(a|b|c|rc|alpha|beta|pre|preview|dev)", rest) else 1
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0), final


def _require(module, minimum: tuple, why: str, package: str):
    found = getattr(module, "__version__", None)
    if found is None or version_tuple(found) < minimum + (1,):
        need = ".".join(map(str, minimum))
        raise UnsafeModelError(
            f"{package} {found or '(unknown version)'} is installed; reading a model file needs {package} >= "
            f"{need} ({why}): pip install '{package}>={need}'"
        )


def check_onnx_version(onnx) -> None:
    """An :class:`UnsafeModelError` unless ``onnx`` is at least :data:`MIN_ONNX`."""
    _require(onnx, MIN_ONNX, "older releases read external data from outside the model's folder", "onnx")


def check_torch_version(torch) -> None:
    """An :class:`UnsafeModelError` unless ``torch`` is at least :data:`MIN_TORCH`."""
    _require(torch, MIN_TORCH, "older releases run code or corrupt memory in torch.load(weights_only=True)", "torch")


# -- ONNX external data ---------------------------------------------------------------------


def _graph_tensors(graph):
    """Every TensorProto of ``graph`` and its sub-graphs that a loader could fill."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        yield from _node_tensors(node)


def _node_tensors(node):
    for a in node.attribute:
        if a.HasField("t"):
            yield a.t
        yield from a.tensors
        if a.HasField("sparse_tensor"):
            yield a.sparse_tensor.values
            yield a.sparse_tensor.indices
        for sparse in a.sparse_tensors:
            yield sparse.values
            yield sparse.indices
        if a.HasField("g"):
            yield from _graph_tensors(a.g)
        for g in a.graphs:
            yield from _graph_tensors(g)


def model_tensors(proto):
    """Every tensor of a ModelProto: the graph's, its sub-graphs' and its functions'."""
    yield from _graph_tensors(proto.graph)
    for function in proto.functions:
        for node in function.node:
            yield from _node_tensors(node)


def _is_external(tensor) -> bool:
    return tensor.data_location == tensor.EXTERNAL or len(tensor.external_data) > 0


def check_external_data(proto, folder) -> int:
    """Check every external-data reference of ``proto`` against ``folder`` (the model's
    folder) without reading any of the data; returns how many tensors refer to one.

    A ``location`` must be a relative path that resolves (symbolic links followed) to a
    regular file inside ``folder``, with one link only (a hard link may be a file from
    anywhere), and ``offset`` / ``length`` must lie inside it."""
    base = os.path.realpath(os.fspath(folder))
    count = 0
    for tensor in model_tensors(proto):
        if not _is_external(tensor):
            continue
        count += 1
        name = tensor.name or "(unnamed)"
        entries = {}
        for entry in tensor.external_data:
            if entry.key not in EXTERNAL_KEYS:
                raise UnsafeModelError(
                    f"tensor {name!r}: unknown external-data key {entry.key[:80]!r} "
                    f"(allowed: {', '.join(sorted(EXTERNAL_KEYS))})"
                )
            if entry.key in entries:
                raise UnsafeModelError(f"tensor {name!r}: external-data key {entry.key!r} given twice")
            entries[entry.key] = entry.value
        location = entries.get("location", "")
        if not location or "\0" in location:
            raise UnsafeModelError(f"tensor {name!r}: external data without a valid location")
        if os.path.isabs(location) or location.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", location):
            raise UnsafeModelError(
                f"tensor {name!r}: external data at the absolute path {location!r}; only files inside "
                f"the model's folder {base} are read"
            )
        target = os.path.realpath(os.path.join(base, location))
        if os.path.commonpath([base, target]) != base or target == base:
            raise UnsafeModelError(
                f"tensor {name!r}: external data {location!r} resolves to {target}, outside the model's "
                f"folder {base}; only files inside it are read"
            )
        try:
            st = os.stat(target)
        except OSError as exc:
            raise UnsafeModelError(f"tensor {name!r}: external data file {location!r}: {exc.strerror}") from None
        if not os.path.isfile(target):
            raise UnsafeModelError(f"tensor {name!r}: external data {location!r} is not a regular file")
        if st.st_nlink > 1:
            raise UnsafeModelError(
                f"tensor {name!r}: external data file {location!r} has {st.st_nlink} hard links (it may be a "
                "file from elsewhere); copy it into the model's folder"
            )
        try:
            offset = int(entries.get("offset", 0) or 0)
            length = int(entries["length"]) if entries.get("length") not in (None, "") else st.st_size - offset
        except ValueError:
            raise UnsafeModelError(f"tensor {name!r}: external-data offset or length is not an integer") from None
        if offset < 0 or length < 0 or offset + length > st.st_size:
            raise UnsafeModelError(
                f"tensor {name!r}: external data {location!r} at offset {offset}, length {length} is outside "
                f"the file ({st.st_size} bytes)"
            )
    return count


def check_no_external_data(proto) -> None:
    """A ModelProto handed over in memory must hold its data: onnx would read an external
    reference relative to the current directory, with no folder to keep it inside."""
    for tensor in model_tensors(proto):
        if _is_external(tensor):
            raise UnsafeModelError(
                f"tensor {tensor.name or '(unnamed)'!r} refers to external data; import the model from "
                "its file (load_onnx / mpcgpu import PATH), which reads it only from the model's folder"
            )


def load_onnx_checked(onnx, path):
    """The ModelProto of ``path`` with its external data, read only after
    :func:`check_external_data` passed (``onnx``: the module, already version-checked)."""
    from onnx import external_data_helper

    path = os.fspath(path)
    proto = onnx.load(path, load_external_data=False)
    folder = os.path.dirname(os.path.abspath(path))
    if check_external_data(proto, folder):
        external_data_helper.load_external_data_for_model(proto, folder)
    return proto


# -- the onnxruntime comparison ------------------------------------------------------------------


def check_run_size(model, samples: int) -> None:
    """Before running ``model`` (a :class:`~mpcgpu.nn.spec.Model`) on ``samples`` random
    inputs: the per-sample input shape has 1 to 3 dimensions of at most
    :data:`MAX_INPUT_DIM`, and neither the input batch nor the largest activation has
    more than :data:`MAX_RUN_ELEMENTS` elements."""
    from ..nn import spec as S

    shape = tuple(int(d) for d in model.input_shape)
    if not 1 <= len(shape) <= 3 or any(d < 1 or d > MAX_INPUT_DIM for d in shape):
        raise UnsafeModelError(
            f"the graph's input shape {list(shape)} per sample is not one this importer runs "
            f"(1 to 3 dimensions of 1 to {MAX_INPUT_DIM}); skip the comparison with --no-check"
        )
    largest, where = 1, "the input"
    for d in shape:
        largest *= d
    for entry in S.trace(model):
        n = 1
        for d in entry.out_shape:
            n *= int(d)
        if n > largest:
            largest, where = n, f"the output of {entry.path or 'a layer'}"
    if largest * samples > MAX_RUN_ELEMENTS:
        raise UnsafeModelError(
            f"comparing with onnxruntime would hold {largest * samples:,} values in {where} "
            f"({samples} samples of input {list(shape)}), more than {MAX_RUN_ELEMENTS:,}; "
            "skip the comparison with --no-check"
        )


__all__ = [
    "MIN_ONNX",
    "MIN_TORCH",
    "MAX_RUN_ELEMENTS",
    "MAX_INPUT_DIM",
    "UnsafeModelError",
    "version_tuple",
    "check_onnx_version",
    "check_torch_version",
    "model_tensors",
    "check_external_data",
    "check_no_external_data",
    "load_onnx_checked",
    "check_run_size",
]
