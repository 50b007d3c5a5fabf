"""MNIST IDX (gzip) -> dataset files ``mnist_train.h5`` and ``mnist_test.h5``.

    python -m datasets.mnist SRC_DIR OUT_DIR [--no-verify] [--only test]

SRC_DIR holds the four standard files (``train-images-idx3-ubyte.gz`` ...).
With their standard names they are checked against the published SHA-256
(``--no-verify`` skips that, e.g. for re-compressed copies).  Images are
stored uint8 N x 1 x 28 x 28, labels uint8, normalisation mean 0.1307, std 0.3081.
"""

from __future__ import annotations

import argparse
import os
import sys

from mpcgpu.assets.mnist_idx import IDXFormatError, MNIST_MEAN, MNIST_STD, load_mnist, read_idx, verify_sha256

from .common import write_dataset

SPLITS = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def convert_mnist(
    images_path, labels_path, out_path, *, name: str = "mnist", verify: bool = True, limit: int | None = None
) -> str:
    """Convert one IDX image/label pair to a dataset file; returns ``out_path``."""
    images, labels = load_mnist(images_path, labels_path, verify=verify)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    write_dataset(
        out_path,
        images,
        labels,
        name=name,
        mean=MNIST_MEAN,
        std=MNIST_STD,
        num_classes=10,
        classes=[str(d) for d in range(10)],
        source=f"{os.path.basename(str(images_path))}, "
        f"{os.path.basename(str(labels_path))} (MNIST, LeCun, Cortes, Burges; "
        f"CC BY-SA 3.0)",
    )
    return str(out_path)


def convert_dir(src_dir, out_dir, *, splits=("train", "test"), verify: bool = True) -> list:
    os.makedirs(out_dir, exist_ok=True)
    out = []
    for split in splits:
        img, lab = (os.path.join(src_dir, f) for f in SPLITS[split])
        out.append(
            convert_mnist(img, lab, os.path.join(out_dir, f"mnist_{split}.h5"), name=f"mnist-{split}", verify=verify)
        )
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m datasets.mnist", description=__doc__.split("\n")[0])
    ap.add_argument("src_dir")
    ap.add_argument("out_dir")
    ap.add_argument("--only", choices=sorted(SPLITS))
    ap.add_argument("--no-verify", action="store_true", help="skip the SHA-256 check")
    a = ap.parse_args(argv)
    try:
        for p in convert_dir(a.src_dir, a.out_dir, splits=[a.only] if a.only else list(SPLITS), verify=not a.no_verify):
            print(p)
    except (IDXFormatError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


__all__ = ["convert_mnist", "convert_dir", "read_idx", "verify_sha256", "SPLITS"]

if __name__ == "__main__":
    sys.exit(main())
