"""`mpcgpu import`: turn a trained model (ONNX, or a PyTorch state dict) into a weights file
that carries its own architecture (``mpcgpu-weights/2``), ready for ``mpcgpu share``."""

from __future__ import annotations

import os
import sys

import numpy

from ..errors import MPCError

SUMMARY = "import a trained model (ONNX, or a PyTorch state dict) as an mpcgpu weights file"
DESCRIPTION = """\
Convert a trained model into an mpcgpu weights file (HDF5, mpcgpu-weights/2) that
holds the network's architecture (layers, input size, class count, batch-norm eps)
next to its weights, so that `mpcgpu share`, `infer`, `train` and `bench` run it as
it is. Runs on the model owner's machine; needs no MPI and no PyTorch.

MODEL is one of
  model.onnx          an ONNX graph (export from PyTorch with torch.onnx.export in
                      eval mode). Operators: Conv, Gemm, MatMul(+Add), Relu, MaxPool,
                      AveragePool, GlobalAveragePool, BatchNormalization, Flatten,
                      Reshape (as a flatten), Add (residual blocks), Dropout, Identity,
                      and Softmax/LogSoftmax as the last node (recorded, see below).
                      Any other node is refused by name. The imported network is run
                      on random inputs against onnxruntime before the file is written.
  model.safetensors   a PyTorch state dict, matched to a zoo architecture (--arch) by
  model.pt / .pth     name; torchvision's names for AlexNet (alexnet_imagenet), VGG-16
                      (vgg16_imagenet) and ResNet (resnet50/101/152) match directly;
                      .pt needs PyTorch installed. num_batches_tracked is dropped;
                      other names are matched layer by layer in order (reported).

A final Softmax or LogSoftmax is not run privately (the servers compute logits); it is
recorded in the architecture so that an output stage can produce probabilities.

Examples:
  mpcgpu import lenet.onnx --out lenet.h5
  mpcgpu import resnet50_ft.safetensors --arch resnet50 --num-classes 10 --input-size 64 --out r50.h5
  mpcgpu share r50.h5 --out shards/
"""


def _shape(text):
    try:
        vals = tuple(int(v) for v in str(text).replace("x", ",").split(",") if v.strip())
    except ValueError:
        vals = ()
    if not vals or any(v < 1 for v in vals):
        raise MPCError(f"cannot read the shape {text!r}: give positive integers such as 3,64,64")
    return vals


def add_arguments(p):
    p.add_argument("model", metavar="MODEL", help="model.onnx, model.safetensors, or model.pt (with PyTorch)")
    p.add_argument("--out", "-o", required=True, metavar="WEIGHTS.h5", help="the weights file to write")
    p.add_argument("--arch", default=None, help="state dicts: the zoo architecture (e.g. resnet50, vgg16_imagenet)")
    p.add_argument("--num-classes", type=int, default=None, help="state dicts: classes of the final layer")
    p.add_argument("--input-size", default=None, metavar="H[xW]", help="state dicts: input height (and width), e.g. 64")
    p.add_argument(
        "--input-shape",
        default=None,
        metavar="C,H,W",
        help="ONNX: per-sample input shape, when the graph leaves it symbolic",
    )
    p.add_argument("--name", default=None, help="model name (default: MODEL's file name)")
    p.add_argument("--float64", action="store_true", help="store float64 (default float32, as trained)")
    p.add_argument("--no-check", action="store_true", help="ONNX: skip the comparison with onnxruntime")
    p.add_argument("--force", action="store_true", help="overwrite WEIGHTS.h5")


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

        size = None if input_size is None else _shape(input_size)
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


def run(args) -> int:
    from ..nn import spec as S
    from ..nn.weights import save_weights

    try:
        if os.path.exists(args.out) and not args.force:
            raise MPCError(f"{args.out} exists (use --force to overwrite)")
        model, params, notes = import_model(
            args.model,
            arch=args.arch,
            num_classes=args.num_classes,
            input_size=args.input_size,
            input_shape=None if args.input_shape is None else _shape(args.input_shape),
            name=args.name,
            check=not args.no_check,
        )
        save_weights(
            args.out,
            model.name,
            params,
            dtype=numpy.float64 if args.float64 else numpy.float32,
            meta={"imported_from": os.path.basename(args.model)},
            spec=model,
        )
    except (MPCError, OSError) as exc:
        print(f"mpcgpu import: error: {exc}", file=sys.stderr)
        return 1
    eps = sorted({float(layer.eps) for _, layer in S.walk(model) if isinstance(layer, S.BatchNorm2d)})
    print(
        f"imported {args.model}: model {model.name}, input {'x'.join(map(str, model.input_shape))}, "
        f"{model.num_classes} classes, {len(S.trace(model))} layers, {S.count_params(model):,} parameters"
    )
    if eps:
        print(f"  batch-norm eps: {', '.join(f'{e:g}' for e in eps)} (kept in the architecture)")
    if model.output != "logits":
        print(f"  final {model.output} recorded (the servers compute logits; an output stage applies it)")
    for line in notes[:20]:
        print(f"  {line}")
    if len(notes) > 20:
        print(f"  ... and {len(notes) - 20} more")
    print(f"written {args.out} (architecture and weights); next: mpcgpu share {args.out} --out DIR")
    return 0


__all__ = ["SUMMARY", "DESCRIPTION", "add_arguments", "run", "import_model", "check_against_onnxruntime"]
