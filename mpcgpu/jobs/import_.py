"""`mpcgpu import`: turn a trained model (ONNX, or a PyTorch state dict) into a weights file
that carries its own architecture (``mpcgpu-weights/2``), ready for ``mpcgpu share``.

The command line only; the work is :func:`mpcgpu.interop.importer.import_model`.
"""

from __future__ import annotations

import os
import sys

import numpy

from ..errors import MPCError
from ..interop.importer import import_model, parse_input_shapes, parse_shape

SUMMARY = "import a trained model (ONNX, or a PyTorch state dict) as an mpcgpu weights file"
DESCRIPTION = """\
Convert a trained model into an mpcgpu weights file (HDF5, mpcgpu-weights/2) that
holds the network's architecture (layers, input size, class count, batch-norm eps)
next to its weights, so that `mpcgpu share`, `infer`, `train` and `bench` run it as
it is. Runs on the model owner's machine; needs no MPI and no PyTorch.

MODEL is one of
  model.onnx          an ONNX graph (export from PyTorch with torch.onnx.export in
                      eval mode). Read first as a network of layers: Conv, Gemm,
                      MatMul(+Add), Relu, MaxPool, AveragePool, GlobalAveragePool,
                      BatchNormalization, Flatten, Reshape (as a flatten), Add (residual
                      blocks), Dropout, Identity, and Softmax/LogSoftmax as the last node
                      (recorded, see below). A graph that is not such a chain (several
                      inputs, attention, LayerNormalization...) is read as a graph model
                      (transformers: BERT, GPT-2, ViT exported with torch.onnx.export(...,
                      dynamo=True, opset_version=18)): MatMul, Gemm, Conv, Add, Sub, Mul,
                      Div, Pow, Sqrt, ReduceMean, Erf, Tanh, Softmax, LayerNormalization,
                      Gelu, Transpose, Reshape, Split, Concat, Slice, Gather, Unsqueeze,
                      Squeeze, and the public plumbing around masks and positions (Shape,
                      ConstantOfShape, Expand, Equal, Cast, And, Where, GatherElements,
                      GatherND, IsNaN), folded at import where constant. Any other node
                      is refused by name (every such node in one error). The imported
                      network is run on random inputs against onnxruntime before the
                      file is written.
  model.safetensors   a PyTorch state dict, matched to a zoo architecture (--arch) by
  model.pt / .pth     name; torchvision's names for AlexNet (alexnet_imagenet), VGG-16
                      (vgg16_imagenet) and ResNet (resnet50/101/152) match directly;
                      .pt needs PyTorch installed. num_batches_tracked is dropped;
                      other names are matched layer by layer in order (reported).

A final Softmax or LogSoftmax is not run privately (the servers compute logits); it is
recorded in the architecture so that an output stage can produce probabilities.

Graph models: the shapes are static, batch included; a symbolic dimension needs
--input-shape NAME=1,128 for its input (once per input). input_ids, pixel_values and any
other input are the data owner's secret; attention_mask, token_type_ids and position_ids
are public (known to the servers) unless --secret-input NAME says otherwise
(--public-input NAME the other way). Float initializers are the model owner's secret
weights; integer ones, scalars and masks (0 / -inf) are public constants of the graph.

Examples:
  mpcgpu import lenet.onnx --out lenet.h5
  mpcgpu import bert.onnx --input-shape input_ids=1,128 --input-shape attention_mask=1,128 --out bert.h5
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
        action="append",
        default=None,
        metavar="C,H,W|NAME=SHAPE",
        help="ONNX, when the graph leaves a shape symbolic: the per-sample input shape of a "
        "network of layers (3,32,32), or NAME=1,128 for a graph model's input NAME (batch "
        "included; once per input)",
    )
    p.add_argument(
        "--public-input",
        action="append",
        default=None,
        metavar="NAME",
        help="graph models: the input NAME is public (known to the servers), e.g. a mask",
    )
    p.add_argument(
        "--secret-input",
        action="append",
        default=None,
        metavar="NAME",
        help="graph models: the input NAME is secret (default for all but attention_mask, "
        "token_type_ids, position_ids)",
    )
    p.add_argument(
        "--task",
        default=None,
        choices=("hidden", "logits", "lm"),
        help="graph models: what the outputs are (default: guessed)",
    )
    p.add_argument(
        "--as-graph",
        action="store_true",
        help="ONNX: import as a graph model without trying a network of layers first",
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
        shapes = list(args.input_shape or ())
        named = [v for v in shapes if "=" in v]
        bare = [v for v in shapes if "=" not in v]
        if len(bare) > 1 or (bare and named):
            raise MPCError("give one per-sample --input-shape C,H,W, or NAME=SHAPE for each input of a graph")
        result = import_model(
            args.model,
            arch=args.arch,
            num_classes=args.num_classes,
            input_size=args.input_size,
            input_shape=parse_shape(bare[0]) if bare else None,
            input_shapes=parse_input_shapes(named) or None,
            public_inputs=args.public_input,
            secret_inputs=args.secret_input,
            task=args.task,
            graph=True if args.as_graph else None,
            name=args.name,
            check=not args.no_check,
        )
        if len(result) == 4:
            return _save_graph(args, *result)
        model, params, notes = result
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


def _save_graph(args, g, params, consts, notes) -> int:
    """Write a graph model (its JSON, params and public consts) to the weights file."""
    import inspect

    from ..nn.weights import save_weights

    if "consts" not in inspect.signature(save_weights).parameters:
        raise MPCError("this build cannot write graph models to a weights file yet (nn.weights has no consts)")
    save_weights(
        args.out,
        g.name,
        params,
        dtype=numpy.float64 if args.float64 else numpy.float32,
        meta={"imported_from": os.path.basename(args.model)},
        spec=g,
        consts=consts,
    )
    shapes = ", ".join(f"{t.name} {'x'.join(map(str, t.shape))} ({t.role})" for t in g.inputs)
    print(
        f"imported {args.model}: graph model {g.name}, inputs {shapes}, {len(g.nodes)} nodes, "
        f"{g.count_params():,} parameters, {len(g.consts)} public constants, task {g.task}"
    )
    for line in notes[:20]:
        print(f"  {line}")
    if len(notes) > 20:
        print(f"  ... and {len(notes) - 20} more")
    print(f"written {args.out} (graph and weights); next: mpcgpu share {args.out} --out DIR")
    return 0
