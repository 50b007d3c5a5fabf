"""Bring your own model: import ONNX graphs and PyTorch state dicts, export trained weights.

* :mod:`.onnx_import`: an ONNX graph -> architecture spec + weights (no PyTorch needed);
* :mod:`.torch_names`: a PyTorch state dict (safetensors, or ``.pt`` with torch) matched
  by name to a zoo architecture, torchvision's names for AlexNet, VGG and ResNet;
* :mod:`.importer`: either of them, checked against onnxruntime;
* :mod:`.export`: weights (revealed to their owner) -> safetensors and ONNX.

The ``mpcgpu import`` and ``mpcgpu export`` command lines live in :mod:`mpcgpu.jobs.import_`
and :mod:`mpcgpu.jobs.export`.
"""
