"""Random images of a model's input shape with random labels (for timing only).

    python -m datasets.synthetic --model alexnet_cifar10 -n 256 OUT.h5 [--seed 0]

Pixels are uniform uint8, labels uniform in [0, num_classes); normalisation
mean 0.5, std 0.25 per channel.  Not useful for accuracy.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from .common import DatasetWriter


def synthetic_arrays(shape, n: int, num_classes: int, seed: int = 0):
    """(uint8 images n x C x H x W, int64 labels) from a seeded generator."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n,) + tuple(shape), dtype=np.uint8)
    labels = rng.integers(0, num_classes, size=n, dtype=np.int64)
    return images, labels


def make_synthetic(
    out_path, *, model: str | None = None, shape=None, num_classes=None, n: int = 128, seed: int = 0
) -> str:
    """Write a synthetic set for a registered model (or an explicit shape and class count)."""
    if model is not None:
        from mpcgpu.nn.models import get_model

        m = get_model(model)
        shape, num_classes = m.input_shape, m.num_classes
        name = f"synthetic-{m.name}"
    else:
        if shape is None or num_classes is None:
            raise ValueError("give a model name, or shape and num_classes")
        name = "synthetic-" + "x".join(map(str, shape))
    c = int(shape[0])
    rng = np.random.default_rng(seed)
    with DatasetWriter(
        out_path,
        n,
        shape,
        name=name,
        mean=(0.5,) * c,
        std=(0.25,) * c,
        num_classes=int(num_classes),
        source=f"uniform random, seed {seed}",
    ) as w:
        chunk = max(1, (64 << 20) // int(np.prod(shape)))
        for i in range(0, n, chunk):
            k = min(chunk, n - i)
            w.write(
                rng.integers(0, 256, size=(k,) + tuple(shape), dtype=np.uint8),
                rng.integers(0, int(num_classes), size=k, dtype=np.int64),
            )
    return str(out_path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m datasets.synthetic", description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--model", help="registered model name (gives shape and classes)")
    ap.add_argument("--shape", type=int, nargs=3, metavar=("C", "H", "W"))
    ap.add_argument("--num-classes", type=int)
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    print(make_synthetic(a.out, model=a.model, shape=a.shape, num_classes=a.num_classes, n=a.n, seed=a.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
