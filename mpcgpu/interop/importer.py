"""Import a trained model (ONNX, or a PyTorch state dict) as an architecture and weights,
for a weights file that carries its own architecture (``mpcgpu-weights/2``), ready for
``mpcgpu share`` (the command line, `mpcgpu import`, lives in :mod:`mpcgpu.jobs.import_`)."""

from __future__ import annotations

import os

import numpy

from ..errors import MPCError


def parse_shape(text):
    """``"3,64,64"`` or ``"64x64"`` -> a tuple of positive ints (MPCError otherwise)."""
    try:
        vals = tuple(int(v) for v in str(text).replace("x", ",").split(",") if v.strip())
    except ValueError:
        vals = ()
    if not vals or any(v < 1 for v in vals):
        raise MPCError(f"cannot read the shape {text!r}: give positive integers such as 3,64,64")
    return vals


def check_against_onnxruntime(proto, model, params, *, samples: int = 2, seed: int = 0) -> float:
    """Largest difference between onnxruntime and the plaintext executor on random
    inputs, relative to the largest output (raises if onnxruntime is missing)."""
    import onnxruntime as ort

    from ..nn.plain import PlainModel, log_softmax, softmax
    from .safety import check_run_size

    check_run_size(model, samples)  # a bounded input and activations, before any is built
    x = numpy.random.default_rng(seed).standard_normal((samples,) + tuple(model.input_shape))
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = sess.run(None, {sess.get_inputs()[0].name: x.astype(numpy.float32)})[0].astype(numpy.float64)
    z = PlainModel(model, params).forward(x, need_grad=False)
    z = {"logits": lambda v: v, "softmax": softmax, "log_softmax": log_softmax}[model.output](z)
    if z.shape != ref.shape:
        raise MPCError(f"onnxruntime gives outputs of shape {ref.shape}, the imported network {z.shape}")
    return float(numpy.abs(z - ref).max() / max(1.0, numpy.abs(ref).max()))


def parse_input_shapes(items) -> dict:
    """``["input_ids=1,128", "attention_mask=1,128"]`` -> ``{name: shape}`` (full shapes,
    batch included; MPCError otherwise)."""
    out = {}
    for item in items or ():
        name, eq, shape = str(item).partition("=")
        if not eq or not name.strip():
            raise MPCError(f"cannot read the input shape {item!r}: give NAME=1,128 (batch included)")
        if name.strip() in out:
            raise MPCError(f"input {name.strip()!r}: two shapes given")
        out[name.strip()] = parse_shape(shape)
    return out


def _random_feeds(g, seed):
    """Inputs for a graph model: token ids below the vocabulary of the table they index,
    an attention mask of ones with some trailing padding, other ints 0, floats normal."""
    rng = numpy.random.default_rng(seed)
    vocab = {}
    shapes = {**g.param_shapes(), **g.const_shapes()}
    for n in g.nodes:
        if n.op == "Gather" and len(n.inputs) > 1 and n.inputs[0] in shapes and shapes[n.inputs[0]]:
            vocab.setdefault(n.inputs[1], shapes[n.inputs[0]][0])
    feeds = {}
    for t in g.inputs:
        if t.dtype == "float":
            feeds[t.name] = rng.standard_normal(t.shape)
        elif t.dtype == "bool":
            feeds[t.name] = numpy.ones(t.shape, bool)
        elif t.name == "attention_mask" and t.shape:
            m = numpy.ones(t.shape, numpy.int64)
            m[..., max(1, t.shape[-1] - t.shape[-1] // 4) :] = 0
            feeds[t.name] = m
        elif t.name in vocab:
            feeds[t.name] = rng.integers(0, vocab[t.name], t.shape).astype(numpy.int64)
        else:
            feeds[t.name] = numpy.zeros(t.shape, numpy.int64)
    return feeds


def check_graph_against_onnxruntime(proto, g, params, consts, *, seed: int = 0) -> float:
    """Largest difference between onnxruntime (the original file, float32) and the plaintext
    executor of graph models on random inputs, relative to the largest output (ImportError if
    onnxruntime or the executor is missing)."""
    import onnxruntime as ort

    from ..nn.dag_run import run_plain

    from .safety import MAX_RUN_ELEMENTS

    size = sum(t.size for t in g.inputs)
    if size > MAX_RUN_ELEMENTS:
        raise MPCError(
            f"the graph's inputs have {size:,} elements, too many to compare with onnxruntime at import "
            "(--no-check skips the comparison)"
        )
    feeds = _random_feeds(g, seed)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    types = {i.name: i.type for i in sess.get_inputs()}
    ort_feeds = {}
    for k, v in feeds.items():
        ty = types.get(k, "")
        ort_feeds[k] = v.astype(numpy.float32 if "float" in ty else numpy.int32 if "int32" in ty else v.dtype)
    refs = sess.run(None, ort_feeds)
    got = run_plain(g, params, consts, feeds)
    worst = 0.0
    for name, ref in zip(g.outputs, refs):
        z, ref = numpy.asarray(got[name], numpy.float64), numpy.asarray(ref, numpy.float64)
        if z.shape != ref.shape:
            raise MPCError(f"output {name}: onnxruntime gives shape {ref.shape}, the imported graph {z.shape}")
        worst = max(worst, float(numpy.abs(z - ref).max(initial=0.0) / max(1.0, numpy.abs(ref).max(initial=0.0))))
    return worst


#: the largest relative difference from onnxruntime (float32) accepted at import
CHECK_TOLERANCE = 1e-3


def _check_graph(proto, g, params, consts, notes):
    try:
        diff = check_graph_against_onnxruntime(proto, g, params, consts)
    except ImportError as e:
        notes.append(f"the imported graph was not compared with onnxruntime ({e})")
        return
    if diff > CHECK_TOLERANCE:
        raise MPCError(
            f"the imported graph differs from onnxruntime by {diff:.2e} (relative) on random "
            "inputs: not written (please report this model)"
        )
    notes.append(f"checked against onnxruntime on random inputs: max relative difference {diff:.1e}")


#: operators no network of layers has and every exported transformer has: a file with one
#: of them goes straight to the graph importer (no layer-chain attempt that loads every
#: weight first)
GRAPH_MARKERS = ("LayerNormalization", "Gelu", "IsNaN", "Split", "GatherND", "GatherElements")


def import_model(
    path,
    *,
    arch=None,
    num_classes=None,
    input_size=None,
    input_shape=None,
    input_shapes=None,
    public_inputs=None,
    secret_inputs=None,
    task=None,
    graph=None,
    name=None,
    check=True,
):
    """Import a model file.  Returns ``(Model, params, notes)`` for a network of layers (a
    chain of layers and residual blocks: CNNs, state dicts) and ``(GraphModel, params,
    consts, notes)`` for a graph model (:mod:`mpcgpu.nn.dag`: transformers);
    ``notes`` are lines for the user (renamed and dropped entries, the onnxruntime
    comparison).

    An ONNX file becomes a graph model when ``graph=True``; with ``graph=None`` (auto) it is
    first read as a chain of layers (:mod:`.onnx_import`) and, if that refuses it (several
    inputs, attention, LayerNormalization, an operator no layer has...), as a graph
    (:mod:`.onnx_graph`); if both refuse, the error gives both reasons.  ``input_shape``:
    the per-sample shape of a layer network's input; ``input_shapes``: ``{name: full
    shape}`` of a graph's inputs; ``public_inputs`` / ``secret_inputs`` / ``task``: see
    :func:`.onnx_graph.import_graph`."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    notes = []
    if ext == ".onnx":
        if arch or num_classes or input_size:
            raise MPCError("--arch, --num-classes and --input-size apply to state dicts; an ONNX file has its own")
        from ..nn.dag import GraphError
        from .onnx_import import ModelImportError, import_onnx, load_onnx

        proto = load_onnx(path)
        name = name or os.path.splitext(os.path.basename(path))[0]
        graph_args = (input_shapes, public_inputs, secret_inputs, task)
        chain_error = None
        if graph is None and (
            any(a for a in graph_args)
            or len(_data_inputs(proto)) > 1
            or any(n.op_type in GRAPH_MARKERS for n in proto.graph.node)
        ):
            graph = True  # options only a graph model has, several inputs, transformer operators
        if not graph:
            try:
                model, params = import_onnx(proto, name=name, input_shape=input_shape)
            except ModelImportError as e:
                if graph is False:
                    raise
                chain_error = e
            else:
                if check:
                    _check_chain(proto, model, params, notes)
                return model, params, notes
        if input_shape is not None:
            raise MPCError("a graph model's input shapes are given by name: --input-shape NAME=1,128 (batch included)")
        from .onnx_graph import import_graph

        try:
            g, params, consts, gnotes = import_graph(
                proto,
                name,
                input_shapes=input_shapes,
                public_inputs=public_inputs,
                secret_inputs=secret_inputs,
                task=task,
            )
        except GraphError as e:
            if chain_error is None or len(_data_inputs(proto)) > 1:
                raise
            raise ModelImportError(f"{chain_error}\nnor as a graph model: {e}") from None
        if chain_error is not None:
            lines = [ln.strip() for ln in str(chain_error).strip().splitlines()]
            first = lines[1] if len(lines) > 1 and lines[0].startswith("cannot import") else lines[0]
            more = len(lines) - 3 if len(lines) > 3 and lines[0].startswith("cannot import") else 0
            notes.append(
                f"imported as a graph model (not a chain of layers: {first[:160]}"
                + (f" and {more} more" if more > 0 else "")
                + ")"
            )
        notes.extend(gnotes)
        if check:
            _check_graph(proto, g, params, consts, notes)
        return g, params, consts, notes
    if ext in (".safetensors", ".pt", ".pth"):
        if input_shape is not None:
            raise MPCError("--input-shape applies to ONNX; for a state dict use --input-size")
        from .torch_names import import_state_dict

        size = None if input_size is None else parse_shape(input_size)
        if size is not None and len(size) == 1:
            size = size[0]
        model, params, renamed, dropped = import_state_dict(
            path, arch, num_classes=num_classes, input_size=size, name=name
        )
        if dropped:
            notes.append(f"dropped {len(dropped)} PyTorch counters (num_batches_tracked)")
        for a, b in renamed:
            notes.append(f"renamed {a} -> {b}")
        return model, params, notes
    raise MPCError(f"{path}: unknown model type {ext!r} (.onnx, .safetensors, .pt or .pth)")


def _data_inputs(proto) -> list:
    inits = {i.name for i in proto.graph.initializer}
    return [v.name for v in proto.graph.input if v.name not in inits]


def _check_chain(proto, model, params, notes):
    try:
        diff = check_against_onnxruntime(proto, model, params)
    except ImportError:
        notes.append("onnxruntime is not installed: the imported network was not compared with it")
        return
    if diff > CHECK_TOLERANCE:
        raise MPCError(
            f"the imported network differs from onnxruntime by {diff:.2e} (relative) on random "
            "inputs: not written (please report this model)"
        )
    notes.append(f"checked against onnxruntime on random inputs: max relative difference {diff:.1e}")


__all__ = [
    "import_model",
    "check_against_onnxruntime",
    "check_graph_against_onnxruntime",
    "parse_shape",
    "parse_input_shapes",
    "CHECK_TOLERANCE",
]
