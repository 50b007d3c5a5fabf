"""Data shipped inside the package: the MNIST test set (IDX gzip) and trained LeNet weights.

    images_gz, labels_gz = mnist_test_idx_paths()
    weights_h5 = lenet_weights_path()

Also home of the small readers the installed CLI needs: ``mnist_idx`` (IDX ->
arrays) and ``dataset_h5`` (the plaintext dataset HDF5 layout).  Attribution
and checksums: ``README.md`` here and in ``mnist/``.
"""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent


def _existing(p: Path) -> str:
    if not p.is_file():
        raise FileNotFoundError(f"embedded asset missing: {p} (broken installation?)")
    return str(p)


def mnist_test_idx_paths() -> tuple[str, str]:
    """Paths of the embedded MNIST test images and labels (t10k, IDX gzip)."""
    return (
        _existing(_HERE / "mnist" / "t10k-images-idx3-ubyte.gz"),
        _existing(_HERE / "mnist" / "t10k-labels-idx1-ubyte.gz"),
    )


def lenet_weights_path() -> str:
    """Path of the embedded LeNet-on-MNIST weights (mpcgpu-weights/1, float32)."""
    return _existing(_HERE / "lenet_mnist.h5")


__all__ = ["mnist_test_idx_paths", "lenet_weights_path"]
