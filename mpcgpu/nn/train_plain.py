"""Plaintext minibatch-SGD training of a model spec (the reference trainer).

    result = train("lenet", "mnist_train.h5", "mnist_test.h5", epochs=2)
    save_weights("lenet_mnist.h5", "lenet", result.params)

Data is a dataset file (``mpcgpu-dataset/1``, see ``mpcgpu.assets.dataset_h5``)
or ``(images, labels, mean, std)`` with uint8 N x C x H x W images.

Command line (set ``OPENBLAS_NUM_THREADS`` before starting: BLAS reads it once)::

    python -m mpcgpu.nn.train_plain --model lenet --train TRAIN.h5 --test TEST.h5 \
        --epochs 2 --batch-size 64 --lr 0.05 --out lenet_mnist.h5
    python -m mpcgpu.nn.train_plain --model lenet --mnist-dir DIR ...   # raw IDX files
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from ..assets.dataset_h5 import normalise, read_dataset
from . import spec as S
from .models import get_model
from .plain import SGD, PlainModel
from .schedule import SCHEDULES, epoch_batches, lr_at
from .weights import save_weights


@dataclass
class ArrayData:
    """uint8 images N x C x H x W with labels and per-channel normalisation."""

    images: np.ndarray
    labels: np.ndarray
    mean: tuple
    std: tuple
    name: str = "arrays"

    def __post_init__(self):
        self.labels = np.asarray(self.labels).astype(np.int64).reshape(-1)
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self):
        return len(self.labels)

    def batch(self, idx, dtype=np.float64):
        return normalise(self.images[idx], self.mean, self.std, dtype), self.labels[idx]


def load_data(src, limit: int | None = None) -> ArrayData:
    """A dataset file path, an ArrayData, or (images, labels, mean, std)."""
    if isinstance(src, ArrayData):
        d = src
    elif isinstance(src, (str, os.PathLike)):
        images, labels, info = read_dataset(src, 0, limit)
        return ArrayData(images, labels, tuple(info["mean"]), tuple(info["std"]), str(info.get("name", src)))
    else:
        images, labels, mean, std = src
        d = ArrayData(np.asarray(images), labels, tuple(np.ravel(mean)), tuple(np.ravel(std)))
    if limit is not None:
        d = ArrayData(d.images[:limit], d.labels[:limit], d.mean, d.std, d.name)
    return d


@dataclass
class TrainResult:
    params: dict
    test_accuracy: float | None
    train_seconds: float
    history: list = field(default_factory=list)  # (step, epoch, lr, mean loss, batch acc)


def evaluate(model: PlainModel, data: ArrayData, batch_size: int = 500) -> float:
    correct = 0
    for i in range(0, len(data), batch_size):
        x, y = data.batch(slice(i, i + batch_size), model.dtype)
        correct += int((model.predict(x, batch_size) == y).sum())
    return correct / max(1, len(data))


def train(
    model,
    train_data,
    test_data=None,
    *,
    epochs: float = 2,
    batch_size: int = 64,
    lr: float = 0.05,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    nesterov: bool = False,
    schedule: str = "cosine",
    warmup: int = 100,
    seed: int = 0,
    dtype=np.float32,
    params=None,
    log=print,
    log_every: int = 100,
    limit: int | None = None,
    on_step=None,
) -> TrainResult:
    """Train ``model`` (spec or registered name) with minibatch SGD; returns float64 params.

    ``epochs`` may be fractional.  Each epoch is a fresh permutation (seeded).
    ``on_step(step, loss)`` is called after every step (1-based).
    The learning rate warms up linearly for ``min(warmup, steps // 5)`` steps,
    then follows ``schedule``; batches and rates come from :mod:`mpcgpu.nn.schedule`,
    shared with private training.
    """
    spec = get_model(model) if isinstance(model, str) else model
    tr = load_data(train_data, limit)
    te = load_data(test_data) if test_data is not None else None
    if isinstance(spec, S.Model) and tuple(tr.images.shape[1:]) != spec.input_shape:
        raise S.SpecError(
            f"training images {tr.images.shape[1:]} do not fit model {spec.name} input {spec.input_shape}"
        )
    pm = PlainModel(spec, params, seed=seed, dtype=dtype)
    opt = SGD(pm.params, lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov, spec=spec)
    steps_per_epoch = len(tr) // batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"{len(tr)} training samples: fewer than one batch of {batch_size}")
    total = max(1, int(round(epochs * steps_per_epoch)))
    warmup = min(int(warmup), total // 5)  # never warm up for more than a fifth of the run
    log(
        f"training {getattr(spec, 'name', 'model')} on {tr.name}: {len(tr)} samples, "
        f"batch {batch_size}, {total} steps ({epochs} epochs), lr {lr} {schedule}, "
        f"momentum {momentum}, weight decay {weight_decay}, {np.dtype(dtype).name}"
    )
    hist, t0 = [], time.perf_counter()
    run_loss = run_acc = 0.0
    n_run = 0
    step = 0
    batches = None
    while step < total:
        k = step % steps_per_epoch
        if k == 0:
            batches = epoch_batches(len(tr), batch_size, seed, step // steps_per_epoch)
        idx = batches[k]
        x, y = tr.batch(idx, pm.dtype)
        opt.lr = lr_at(step, total, lr, schedule, warmup)
        loss, logits = pm.loss_and_grads(x, y)
        if not np.isfinite(loss):
            raise FloatingPointError(f"loss became {loss} at step {step}; lower the learning rate")
        opt.step(pm.grads)
        if on_step is not None:
            on_step(step + 1, loss)
        run_loss += loss
        run_acc += float((logits.argmax(1) == y).mean())
        n_run += 1
        step += 1
        if step % log_every == 0 or step == total:
            ep = step / steps_per_epoch
            hist.append((step, ep, opt.lr, run_loss / n_run, run_acc / n_run))
            log(
                f"step {step:6d}/{total} epoch {ep:5.2f} lr {opt.lr:.4f} "
                f"loss {run_loss / n_run:.4f} acc {run_acc / n_run:.4f} "
                f"({time.perf_counter() - t0:.0f} s)"
            )
            run_loss = run_acc = 0.0
            n_run = 0
    secs = time.perf_counter() - t0
    acc = None
    if te is not None:
        acc = evaluate(pm, te)
        log(f"test accuracy {acc:.4f} on {len(te)} samples ({secs:.0f} s training)")
    params = {k: np.asarray(v, dtype=np.float64) for k, v in pm.params.items()}
    return TrainResult(params, acc, secs, hist)


#: the settings of a private run (``mpcgpu train --json``: its ``settings``) that its plaintext
#: twin shares, so that both see the same batches with the same learning rates; the command
#: line below gives :func:`train` the arguments of these names (and records them with the weights)
TWIN_SETTINGS = ("batch_size", "lr", "momentum", "weight_decay", "schedule", "warmup", "seed")


def train_twin(model, settings: dict, train_data, test_data, params, **kw) -> TrainResult:
    """The float64 plaintext twin of a private run: :func:`train` from the same initial
    ``params`` with the run's :data:`TWIN_SETTINGS` (``kw``: epochs, limit, log, ...)."""
    return train(
        model, train_data, test_data, dtype=np.float64, params=params, **{k: settings[k] for k in TWIN_SETTINGS}, **kw
    )


def _mnist_dir(d):
    from ..assets.mnist_idx import MNIST_MEAN, MNIST_STD, load_mnist

    tri, trl = load_mnist(os.path.join(d, "train-images-idx3-ubyte.gz"), os.path.join(d, "train-labels-idx1-ubyte.gz"))
    tei, tel = load_mnist(os.path.join(d, "t10k-images-idx3-ubyte.gz"), os.path.join(d, "t10k-labels-idx1-ubyte.gz"))
    return (
        ArrayData(tri, trl, MNIST_MEAN, MNIST_STD, "mnist-train"),
        ArrayData(tei, tel, MNIST_MEAN, MNIST_STD, "mnist-test"),
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m mpcgpu.nn.train_plain", description="Plaintext SGD training of a registered model."
    )
    ap.add_argument("--model", required=True, help="registered model name, e.g. lenet")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--train", help="training dataset file (mpcgpu-dataset/1)")
    src.add_argument("--mnist-dir", help="directory with the four MNIST IDX .gz files")
    ap.add_argument("--test", help="test dataset file (with --train)")
    ap.add_argument("--epochs", type=float, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--weight-decay", type=float, default=5e-4)
    ap.add_argument("--schedule", default="cosine", choices=SCHEDULES)
    ap.add_argument("--warmup", type=int, default=100, help="linear warm-up steps")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, help="use only the first N training samples")
    ap.add_argument("--log-every", type=int, default=100)
    ap.add_argument("--out", help="write the weights here (mpcgpu-weights/1, float32)")
    a = ap.parse_args(argv)

    def log(msg):
        print(msg, flush=True)

    if a.mnist_dir:
        tr, te = _mnist_dir(a.mnist_dir)
    else:
        tr, te = a.train, a.test
    res = train(
        a.model,
        tr,
        te,
        epochs=a.epochs,
        **{k: getattr(a, k) for k in TWIN_SETTINGS},
        dtype=np.dtype(a.dtype),
        log=log,
        log_every=a.log_every,
        limit=a.limit,
    )
    if a.out:
        meta = {
            "epochs": a.epochs,
            **{k: getattr(a, k) for k in TWIN_SETTINGS},
            "train_dtype": a.dtype,
            "train_seconds": round(res.train_seconds, 1),
            "trainer": "mpcgpu.nn.train_plain",
        }
        if res.test_accuracy is not None:
            meta["test_accuracy"] = res.test_accuracy
        save_weights(a.out, get_model(a.model).name, res.params, meta=meta)
        log(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
