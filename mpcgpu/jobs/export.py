"""`mpcgpu export`: plaintext weights (e.g. revealed by train --reveal-to) to ONNX and
safetensors.  The command line only; the work is in :mod:`mpcgpu.interop.export`."""

from __future__ import annotations

import os
import sys

from ..errors import MPCError
from ..interop.export import OPSET, ExportError, export_checked_onnx, export_safetensors

SUMMARY = "export plaintext weights (e.g. revealed by train --reveal-to) to ONNX and safetensors"
DESCRIPTION = """\
Write a plaintext mpcgpu weights file -- e.g. STEM.weights.h5, the trained weights that
`mpcgpu train --out STEM --reveal-to P` revealed to their owner -- as

  --onnx FILE.onnx                 an ONNX graph (opset 17, float32, batch dimension N),
                                   runs in onnxruntime and anything that reads ONNX
  --safetensors FILE.safetensors   a state dict under the architecture's parameter names
                                   (torchvision's for the torchvision-shaped zoo models):
                                   model.load_state_dict(safetensors.torch.load_file(FILE))

A graph model (a transformer imported by `mpcgpu import`) is written as the ONNX graph
it is (opset 18, static shapes) and its parameters under their names.

Runs on the owner's machine (no MPI). With onnxruntime installed the ONNX file is run on
random inputs and compared with mpcgpu's plaintext executor before it is kept.

Example:
  mpcgpu export shards/lenet_private.weights.h5 --onnx lenet.onnx --safetensors lenet.safetensors
"""


def add_arguments(p):
    p.add_argument("weights", metavar="WEIGHTS.h5", help="plaintext weights file (mpcgpu-weights/1 or /2)")
    p.add_argument("--onnx", default=None, metavar="FILE.onnx", help="write an ONNX model")
    p.add_argument("--safetensors", default=None, metavar="FILE.safetensors", help="write a safetensors state dict")
    p.add_argument("--no-check", action="store_true", help="skip running the ONNX file in onnxruntime")
    p.add_argument("--force", action="store_true", help="overwrite existing output files")


def run(args) -> int:
    from ..nn.weights import load_weights, read_architecture

    try:
        outs = [p for p in (args.onnx, args.safetensors) if p]
        if not outs:
            raise ExportError("nothing to do: give --onnx FILE and/or --safetensors FILE")
        for p in outs:
            if os.path.exists(p) and not args.force:
                raise ExportError(f"{p} exists (use --force to overwrite)")
        if _holds_graph(args.weights):
            return _export_graph(args)
        model = read_architecture(args.weights)
        _, params = load_weights(args.weights, model)
        if args.onnx:
            note = export_checked_onnx(args.onnx, model, params, check=not args.no_check)
            print(f"written {args.onnx}: ONNX opset {OPSET}, input (N, {', '.join(map(str, model.input_shape))}){note}")
        if args.safetensors:
            export_safetensors(args.safetensors, model, params)
            print(f"written {args.safetensors}: {len(params)} float32 tensors of model {model.name}")
    except (MPCError, OSError) as exc:
        print(f"mpcgpu export: error: {exc}", file=sys.stderr)
        return 1
    return 0


def _holds_graph(path) -> bool:
    from ..nn import weights as W

    check = getattr(W, "is_graph_file", None)  # graph models' weights files (nn.weights)
    return bool(check is not None and os.path.isfile(path) and check(path))


def _export_graph(args) -> int:
    """A graph model's weights file (a transformer): ONNX by interop.onnx_graph, params as
    safetensors under their names."""
    from ..interop.export import export_graph_checked_onnx, export_graph_safetensors
    from ..nn.weights import load_graph

    g, params, consts = load_graph(args.weights)
    if args.onnx:
        note = export_graph_checked_onnx(args.onnx, g, params, consts, check=not args.no_check)
        shapes = ", ".join(f"{t.name} {'x'.join(map(str, t.shape))}" for t in g.inputs)
        print(f"written {args.onnx}: ONNX graph of {len(g.nodes)} nodes, inputs {shapes}{note}")
    if args.safetensors:
        export_graph_safetensors(args.safetensors, g, params)
        print(f"written {args.safetensors}: {len(params)} float32 tensors of graph model {g.name}")
    return 0
