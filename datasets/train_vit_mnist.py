"""Train the small MNIST ViT shipped as ``mpcgpu/assets/vit_mnist.onnx`` (plaintext, torch).

    python -m datasets.train_vit_mnist [--mnist-dir DIR] [--out-dir mpcgpu/assets] [--epochs 15]

Needs torch (and onnxscript for the exporter); the package itself never does.  The four
standard MNIST IDX gzip files are read from ``--mnist-dir`` with the package's own reader
(checked against the published SHA-256).  Everything is seeded and runs on one thread, so
the same command writes the same weights on the same torch build.

**The network** (hand-written, no timm): a pre-norm ViT chosen for private inference.

* patches of 7 x 7 -> 16 tokens, cut by Reshape/Transpose and embedded by one MatMul
  (the same arithmetic as a stride-7 convolution, without a Conv node);
* hidden 64, 2 layers, 4 heads of 16, MLP 2x (128) with the erf GELU, LayerNorm
  before attention and MLP, a final LayerNorm;
* learned position embeddings added to the 16 patch tokens, and the class read from the
  **mean of the tokens** instead of a CLS token (no Expand/Concat of a secret parameter in
  the graph; one token fewer per attention row);
* input: one 1 x 28 x 28 image normalised as ``(pixel / 255 - 0.1307) / 0.3081`` (the
  normalisation is outside the graph, as for the LeNet asset); output: 10 logits.

The exported ONNX (``torch.onnx.export(..., dynamo=True, opset_version=18)``) has a symbolic
batch dimension ``batch`` (reshape targets hold -1; bind it when importing, the graph model
kind having static shapes).  Next to it
``vit_mnist.json`` records the plaintext test accuracy (computed by the exported graph's own
arithmetic in torch float32 and again in float64) and the training settings.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time

import numpy as np

# the package's IDX reader: no torchvision needed
from mpcgpu.assets.mnist_idx import MNIST_MEAN, MNIST_STD, load_mnist

DEFAULT_MNIST = "/work/shared/data/mnist"
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

#: the architecture (recorded in the JSON)
ARCH = dict(image=28, patch=7, hidden=64, layers=2, heads=4, mlp=128, classes=10, ln_eps=1e-5)


def normalise(images: np.ndarray) -> np.ndarray:
    """uint8 N x 1 x 28 x 28 -> float32, MNIST mean/std (the asset's input convention)."""
    return ((images.astype(np.float32) / 255.0 - MNIST_MEAN[0]) / MNIST_STD[0]).astype(np.float32)


def load_split(mnist_dir: str, split: str):
    img, lab = (os.path.join(mnist_dir, f) for f in FILES[split])
    images, labels = load_mnist(img, lab, verify=True)
    return images, labels.astype(np.int64)


def build_model(arch=ARCH):
    import torch
    from torch import nn

    a = dict(arch)
    d, h, p = a["hidden"], a["heads"], a["patch"]
    side = a["image"] // p
    n_tok = side * side

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(d, 3 * d)
            self.proj = nn.Linear(d, d)

        def forward(self, x):
            b, n, _ = x.shape
            # GPT-2's layout: one projection, split in three, heads by reshape/transpose
            q, k, v = self.qkv(x).split(d, dim=2)
            q = q.reshape(b, n, h, d // h).transpose(1, 2)
            kt = k.reshape(b, n, h, d // h).permute(0, 2, 3, 1)
            v = v.reshape(b, n, h, d // h).transpose(1, 2)
            att = (q @ kt) * (1.0 / math.sqrt(d // h))
            att = att.softmax(dim=-1)
            y = (att @ v).transpose(1, 2).reshape(b, n, d)
            return self.proj(y)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1 = nn.LayerNorm(d, eps=a["ln_eps"])
            self.attn = Attention()
            self.ln2 = nn.LayerNorm(d, eps=a["ln_eps"])
            self.fc1 = nn.Linear(d, a["mlp"])
            self.fc2 = nn.Linear(a["mlp"], d)

        def forward(self, x):
            x = x + self.attn(self.ln1(x))
            return x + self.fc2(nn.functional.gelu(self.fc1(self.ln2(x)), approximate="none"))

    class ViT(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(p * p, d)
            self.pos = nn.Parameter(torch.randn(1, n_tok, d) * 0.02)
            self.blocks = nn.ModuleList([Block() for _ in range(a["layers"])])
            self.ln = nn.LayerNorm(d, eps=a["ln_eps"])
            self.head = nn.Linear(d, a["classes"])

        def forward(self, x):
            b = x.shape[0]
            # (b, 1, 28, 28) -> (b, 4, 7, 4, 7) -> (b, 4, 4, 7, 7) -> (b, 16, 49): row-major patches
            t = x.reshape(b, side, p, side, p).permute(0, 1, 3, 2, 4).reshape(b, n_tok, p * p)
            t = self.embed(t) + self.pos
            for blk in self.blocks:
                t = blk(t)
            return self.head(self.ln(t).mean(dim=1))

    model = ViT()
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
    return model


def evaluate(model, x: np.ndarray, y: np.ndarray, batch: int = 1000) -> tuple[float, np.ndarray]:
    import torch

    preds = []
    model.eval()
    with torch.no_grad():
        for i in range(0, len(x), batch):
            preds.append(model(torch.from_numpy(x[i : i + batch])).argmax(-1).numpy())
    pred = np.concatenate(preds)
    return float((pred == y).mean()), pred


def augment(xb, gen, max_shift: int):
    """Random translation by up to ``max_shift`` pixels (zero = background after padding)."""
    import torch

    if max_shift <= 0:
        return xb
    n = xb.shape[0]
    bg = float((0.0 - MNIST_MEAN[0]) / MNIST_STD[0])
    pad = torch.nn.functional.pad(xb, (max_shift,) * 4, value=bg)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    out = torch.empty_like(xb)
    for sx in range(2 * max_shift + 1):
        for sy in range(2 * max_shift + 1):
            m = (dx == sx) & (dy == sy)
            if m.any():
                out[m] = pad[m, :, sy : sy + 28, sx : sx + 28]
    return out


def train(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    xtr, ytr = load_split(args.mnist_dir, "train")
    xte, yte = load_split(args.mnist_dir, "test")
    xtr, xte = normalise(xtr), normalise(xte)
    xtr_t, ytr_t = torch.from_numpy(xtr), torch.from_numpy(ytr)

    model = build_model()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = len(xtr) // args.batch_size
    total = steps_per_epoch * args.epochs
    warm = min(args.warmup, total)

    def lr_at(step):
        if step < warm:
            return args.lr * (step + 1) / warm
        return 0.5 * args.lr * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    t0, c0 = time.time(), time.process_time()
    step = 0
    log = []
    for ep in range(args.epochs):
        model.train()
        perm = torch.randperm(len(xtr), generator=gen)
        run_loss = 0.0
        for i in range(steps_per_epoch):
            idx = perm[i * args.batch_size : (i + 1) * args.batch_size]
            xb = augment(xtr_t[idx], gen, args.shift)
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            loss = torch.nn.functional.cross_entropy(model(xb), ytr_t[idx], label_smoothing=args.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            lv = float(loss.detach())
            run_loss = 0.98 * run_loss + 0.02 * lv if i else lv
            step += 1
        acc, _ = evaluate(model, xte, yte)
        log.append(
            {"epoch": ep + 1, "loss": round(run_loss, 4), "test_acc": acc, "seconds": round(time.time() - t0, 1)}
        )
        print(
            f"epoch {ep + 1}/{args.epochs}: running loss {run_loss:.4f}, test accuracy {acc:.4f}, "
            f"{time.time() - t0:.0f} s",
            flush=True,
        )
    train_s, cpu_s = time.time() - t0, time.process_time() - c0
    return {"model": model, "train_seconds": train_s, "train_cpu_seconds": cpu_s, "log": log, "xte": xte, "yte": yte}


def export(model, path: str):
    """Export with a symbolic batch dimension ``batch``: the exporter then writes ``-1`` in
    the reshape targets and no Shape plumbing, so the importer (or a user) binds the batch
    by setting the input's first dimension."""
    import torch

    model.eval()
    x = torch.zeros(2, 1, 28, 28)
    torch.onnx.export(
        model,
        (x,),
        path,
        dynamo=True,
        opset_version=18,
        input_names=["image"],
        output_names=["logits"],
        dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
    )
    # one self-contained file (the exporter may write weights next to it when large)
    import onnx

    proto = onnx.load(path)
    onnx.save_model(proto, path, save_as_external_data=False)
    data = path + ".data"
    if os.path.exists(data):
        os.remove(data)
    return proto


def onnx_accuracy(path: str, xte: np.ndarray, yte: np.ndarray) -> dict:
    """Accuracy of the exported file itself under onnxruntime, when installed."""
    try:
        import onnxruntime as ort
    except ImportError:
        return {}
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    pred = np.concatenate(
        [sess.run(None, {"image": xte[i : i + 1000]})[0].argmax(-1) for i in range(0, len(xte), 1000)]
    )
    return {"onnxruntime_test_accuracy": float((pred == yte).mean())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m datasets.train_vit_mnist", description=__doc__.split("\n")[0])
    ap.add_argument("--mnist-dir", default=DEFAULT_MNIST)
    ap.add_argument("--out-dir", default=os.path.join(os.path.dirname(__file__), "..", "mpcgpu", "assets"))
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--shift", type=int, default=1, help="random translation of training images, pixels")
    ap.add_argument("--label-smoothing", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)

    import torch

    res = train(a)
    model, xte, yte = res["model"], res["xte"], res["yte"]
    acc, pred = evaluate(model, xte, yte)
    # the same weights in float64 (what the plaintext reference of the private run computes)
    acc64, pred64 = evaluate(model.double(), xte.astype(np.float64), yte)
    model.float()
    os.makedirs(a.out_dir, exist_ok=True)
    onnx_path = os.path.join(a.out_dir, "vit_mnist.onnx")
    export(model, onnx_path)
    n_params = sum(int(p.numel()) for p in model.parameters())
    # the trained weights' fingerprint (float32 bytes in state-dict order): the same command
    # on the same torch build gives the same value (the ONNX bytes may differ in metadata)
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().contiguous().numpy().tobytes())
    meta = {
        "file": "vit_mnist.onnx",
        "test_accuracy": acc,
        "test_correct": int((pred == yte).sum()),
        "test_accuracy_float64": acc64,
        "float32_float64_prediction_agreement": float((pred == pred64).mean()),
        "test_images": int(len(yte)),
        **onnx_accuracy(onnx_path, xte, yte),
        "parameters": n_params,
        "weights_sha256": h.hexdigest(),
        "max_abs_weight": float(max(p.detach().abs().max() for p in model.parameters())),
        "onnx_bytes": os.path.getsize(onnx_path),
        "architecture": {
            **ARCH,
            "tokens": (ARCH["image"] // ARCH["patch"]) ** 2,
            "pool": "mean",
            "norm": "pre",
            "gelu": "erf",
            "patch_embedding": "reshape/transpose + linear",
        },
        "input": {"name": "image", "shape": ["batch", 1, 28, 28], "normalisation": "(pixel / 255 - 0.1307) / 0.3081"},
        "output": {"name": "logits", "shape": ["batch", 10]},
        "training": {
            "data": "MNIST train (60,000), test (10,000): original IDX gzip files",
            "epochs": a.epochs,
            "batch_size": a.batch_size,
            "optimizer": "AdamW",
            "lr": a.lr,
            "schedule": f"linear warm-up {a.warmup} steps, cosine to 0",
            "weight_decay": a.weight_decay,
            "augmentation": f"random shift up to {a.shift} px",
            "label_smoothing": a.label_smoothing,
            "seed": a.seed,
            "threads": a.threads,
            "seconds": round(res["train_seconds"], 1),
            "cpu_seconds": round(res["train_cpu_seconds"], 1),
            "torch": torch.__version__,
            "log": res["log"],
        },
        "export": "torch.onnx.export(model, x, path, dynamo=True, opset_version=18)",
        "command": "python -m datasets.train_vit_mnist " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    with open(os.path.join(a.out_dir, "vit_mnist.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    print(json.dumps({k: meta[k] for k in ("test_accuracy", "test_accuracy_float64", "parameters", "onnx_bytes")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
