"""Data shipped inside the package: the MNIST test set (IDX gzip), trained LeNet weights and
a small trained ViT (ONNX).

    images_gz, labels_gz = mnist_test_idx_paths()
    weights_h5 = lenet_weights_path()
    vit_onnx, vit_json = vit_mnist_paths()

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


def vit_mnist_paths() -> tuple[str, str]:
    """Paths of the embedded MNIST ViT (ONNX, opset 18, symbolic batch) and of its record
    (JSON: plaintext test accuracy, architecture, training settings), written by
    ``python -m datasets.train_vit_mnist``."""
    return _existing(_HERE / "vit_mnist.onnx"), _existing(_HERE / "vit_mnist.json")


__all__ = ["mnist_test_idx_paths", "lenet_weights_path", "vit_mnist_paths"]
