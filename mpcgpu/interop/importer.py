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


#: the largest relative difference from onnxruntime (float32) accepted at import
CHECK_TOLERANCE = 1e-3


def import_model(path, *, arch=None, num_classes=None, input_size=None, input_shape=None, name=None, check=True):
    """``(Model, params, notes)`` from an ONNX file or a state dict; ``notes`` are lines
    for the user (renamed and dropped entries, the onnxruntime comparison)."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    notes = []
    if ext == ".onnx":
        if arch or num_classes or input_size:
            raise MPCError("--arch, --num-classes and --input-size apply to state dicts; an ONNX file has its own")
        from .onnx_import import import_onnx, load_onnx

        proto = load_onnx(path)
        model, params = import_onnx(
            proto, name=name or os.path.splitext(os.path.basename(path))[0], input_shape=input_shape
        )
        if check:
            try:
                diff = check_against_onnxruntime(proto, model, params)
            except ImportError:
                notes.append("onnxruntime is not installed: the imported network was not compared with it")
            else:
                if diff > CHECK_TOLERANCE:
                    raise MPCError(
                        f"the imported network differs from onnxruntime by {diff:.2e} (relative) on random "
                        "inputs: not written (please report this model)"
                    )
                notes.append(f"checked against onnxruntime on random inputs: max relative difference {diff:.1e}")
        return model, params, notes
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


__all__ = ["import_model", "check_against_onnxruntime", "parse_shape"]
