"""Full-size Hugging Face transformers for tests/test_fidelity_slow_mpi.py (needs torch and
transformers; imported only by that test, after its importorskips).

Each model is built from its default ``transformers`` configuration with the library's own
random initialisation under a fixed torch seed, exported the way users export them
(``torch.onnx.export(model, args, path, dynamo=True, opset_version=18)``, weights inlined:
the three models are below ONNX's 2 GB protobuf limit), and run once in onnxruntime (float32)
for the reference outputs."""

from __future__ import annotations

import gc
import os

import numpy as np

SEED = 0

#: name -> (tokens or image side, input names)
CASES = {
    "bert": 128,
    "gpt2": 32,
    "vit": 224,
}


def build(which, *, wte_std=None, init_std=None):
    """``(model, args: dict of numpy inputs)`` of one full-size model in eval mode."""
    import torch
    import transformers as T

    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    if which == "bert":
        model = T.BertModel(T.BertConfig())
        n = CASES["bert"]
        args = {
            "input_ids": rng.integers(0, model.config.vocab_size, (1, n)).astype(np.int64),
            "attention_mask": np.ones((1, n), np.int64),
        }
    elif which == "gpt2":
        cfg = T.GPT2Config(use_cache=False)
        if init_std is not None:
            cfg.initializer_range = init_std
        model = T.GPT2LMHeadModel(cfg)
        if wte_std is not None:  # the tied token table at a larger scale (see the generation test)
            g = torch.Generator().manual_seed(SEED + 1)
            with torch.no_grad():
                w = model.transformer.wte.weight
                w.copy_(wte_std * torch.randn(w.shape, generator=g))
        args = {"input_ids": rng.integers(0, model.config.vocab_size, (1, CASES["gpt2"])).astype(np.int64)}
    elif which == "vit":
        model = T.ViTForImageClassification(T.ViTConfig(num_labels=1000))
        s = CASES["vit"]
        args = {"pixel_values": rng.standard_normal((1, 3, s, s)).astype(np.float32)}
    else:
        raise ValueError(which)
    return model.eval(), args


def export(which, folder) -> tuple:
    """``(path, args, reference outputs {name: float64 array})``: the model exported to
    ``folder/which.onnx`` and run by onnxruntime (the torch model freed before returning)."""
    import onnxruntime as ort
    import torch

    model, args = build(which)
    path = os.path.join(folder, f"{which}.onnx")
    targs = tuple(torch.from_numpy(v) for v in args.values())
    with torch.no_grad():
        torch.onnx.export(
            model, targs, path, input_names=list(args), dynamo=True, opset_version=18, external_data=False
        )
    del model, targs
    gc.collect()
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    outs = sess.run(names, {i.name: args[i.name] for i in sess.get_inputs()})
    ref = {n: np.asarray(o, dtype=np.float64) for n, o in zip(names, outs)}
    del sess
    gc.collect()
    return path, args, ref
