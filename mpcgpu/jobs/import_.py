"""`mpcgpu import`: turn a trained model (ONNX, or a PyTorch state dict) into a weights file
that carries its own architecture (``mpcgpu-weights/2``), ready for ``mpcgpu share``.

The command line only; the work is :func:`mpcgpu.interop.importer.import_model`.
"""

from __future__ import annotations

import os
import sys

import numpy

from ..errors import MPCError
from ..interop.importer import import_model, parse_shape

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
            input_shape=None if args.input_shape is None else parse_shape(args.input_shape),
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
