"""The plaintext dataset file (HDF5), ``format = "mpcgpu-dataset/1"``.

Layout::

    /images   uint8, N x C x H x W, contiguous (not chunked, not compressed)
    /labels   int64 (or uint8), N, class indices in [0, num_classes)
    root attrs:
      format         "mpcgpu-dataset/1"
      name           e.g. "mnist-test", "cifar10-train", "synthetic-lenet"
      num_classes    int
      mean, std      float64[C]: a model sees x = (pixel / 255 - mean[c]) / std[c]
      normalisation  "x = (pixel / 255 - mean[c]) / std[c]" (human-readable reminder)
      classes        optional, string[num_classes]: class names in index order
      source         optional, where the data came from

Readers encode images to real values with :func:`normalise` so that the
plaintext reference and the private side see the same numbers.
"""

from __future__ import annotations

import os

import numpy as np

from mpcgpu.util.atomic import written_atomically
from ..errors import MPCError

FORMAT = "mpcgpu-dataset/1"
NORMALISATION = "x = (pixel / 255 - mean[c]) / std[c]"


class DatasetError(MPCError, ValueError):
    """A dataset file is missing, malformed or of another format."""


def write_dataset(
    path,
    images,
    labels,
    *,
    name: str,
    mean,
    std,
    num_classes: int | None = None,
    classes=None,
    source: str | None = None,
    attrs: dict | None = None,
) -> None:
    """Write a complete dataset file atomically (``path`` appears only when complete)."""
    import h5py

    images = np.asarray(images)
    labels = np.asarray(labels)
    _check_arrays(images, labels, mean, std, num_classes)
    with written_atomically(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("images", data=np.ascontiguousarray(images, dtype=np.uint8))
        f.create_dataset("labels", data=labels.astype(np.uint8 if labels.dtype == np.uint8 else np.int64))
        _write_attrs(
            f,
            images.shape[1],
            name=name,
            mean=mean,
            std=std,
            num_classes=num_classes if num_classes is not None else (int(labels.max()) + 1 if labels.size else 0),
            classes=classes,
            source=source,
            attrs=attrs,
        )


class DatasetWriter:
    """Streamed writing for large sets: ``with DatasetWriter(path, n, (C,H,W), ...) as w:
    w.write(images, labels)`` repeatedly; the file appears only when all N rows are written."""

    def __init__(
        self,
        path,
        n: int,
        image_shape,
        *,
        name: str,
        mean,
        std,
        num_classes: int,
        classes=None,
        source=None,
        attrs=None,
    ):
        import h5py

        self.path, self.n, self.pos = path, int(n), 0
        self.tmp = f"{path}.tmp{os.getpid()}"
        self.f = h5py.File(self.tmp, "w")
        c = int(image_shape[0])
        self.images = self.f.create_dataset("images", (self.n,) + tuple(image_shape), np.uint8)
        self.labels = self.f.create_dataset("labels", (self.n,), np.int64)
        _write_attrs(
            self.f,
            c,
            name=name,
            mean=mean,
            std=std,
            num_classes=num_classes,
            classes=classes,
            source=source,
            attrs=attrs,
        )

    def write(self, images, labels):
        k = len(images)
        if len(labels) != k or self.pos + k > self.n:
            raise DatasetError("DatasetWriter: batch does not fit")
        self.images[self.pos : self.pos + k] = np.asarray(images, dtype=np.uint8)
        self.labels[self.pos : self.pos + k] = np.asarray(labels, dtype=np.int64)
        self.pos += k

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.f.close()
        if exc_type is None and self.pos != self.n:
            os.remove(self.tmp)
            raise DatasetError(f"DatasetWriter: wrote {self.pos} of {self.n} rows")
        if exc_type is None:
            os.replace(self.tmp, self.path)
        elif os.path.exists(self.tmp):
            os.remove(self.tmp)
        return False


def _check_arrays(images, labels, mean, std, num_classes):
    if images.ndim != 4 or images.dtype != np.uint8:
        raise DatasetError(f"images must be uint8 N x C x H x W, got {images.shape} {images.dtype}")
    if labels.ndim != 1 or len(labels) != len(images) or labels.dtype.kind not in "iu":
        raise DatasetError(f"labels must be {len(images)} integers, got {labels.shape} {labels.dtype}")
    c = images.shape[1]
    if len(np.ravel(mean)) != c or len(np.ravel(std)) != c:
        raise DatasetError(f"mean/std need one value per channel ({c})")
    if labels.size and (labels.min() < 0 or (num_classes is not None and labels.max() >= num_classes)):
        raise DatasetError(f"labels outside [0, {num_classes})")


def _write_attrs(f, c, *, name, mean, std, num_classes, classes, source, attrs):
    mean = np.asarray(mean, dtype=np.float64).reshape(-1)
    std = np.asarray(std, dtype=np.float64).reshape(-1)
    if len(mean) != c or len(std) != c or np.any(std <= 0):
        raise DatasetError(f"mean/std need {c} values, std > 0")
    f.attrs["format"] = FORMAT
    f.attrs["name"] = str(name)
    f.attrs["num_classes"] = int(num_classes)
    f.attrs["mean"] = mean
    f.attrs["std"] = std
    f.attrs["normalisation"] = NORMALISATION
    if classes is not None:
        f.attrs["classes"] = np.array([str(c) for c in classes], dtype=object)
    if source is not None:
        f.attrs["source"] = str(source)
    for k, v in (attrs or {}).items():
        f.attrs[str(k)] = v


def _s(v):
    return v.decode() if isinstance(v, bytes) else v


def dataset_info(path) -> dict:
    """Root attributes and shapes of a dataset file (checks the format)."""
    from mpcgpu.util.hdf5 import open_for_reading

    with open_for_reading(path, DatasetError, "dataset file") as f:
        if _s(f.attrs.get("format")) != FORMAT:
            raise DatasetError(f"{path}: format {_s(f.attrs.get('format'))!r}, expected {FORMAT!r}")
        if "images" not in f or "labels" not in f:
            raise DatasetError(f"{path}: needs datasets /images and /labels")
        info = {k: _s(v) for k, v in f.attrs.items()}
        if "classes" in info:
            info["classes"] = [_s(c) for c in info["classes"]]
        info["n"] = int(f["images"].shape[0])
        info["image_shape"] = tuple(int(d) for d in f["images"].shape[1:])
        if f["labels"].shape != (info["n"],):
            raise DatasetError(f"{path}: {info['n']} images but labels of shape {f['labels'].shape}")
    return info


def read_dataset(path, start: int = 0, stop: int | None = None):
    """(images uint8 N x C x H x W, labels int64, info) for rows [start, stop)."""
    import h5py

    info = dataset_info(path)
    with h5py.File(path, "r") as f:
        images = f["images"][start:stop]
        labels = f["labels"][start:stop].astype(np.int64)
    return images, labels, info


def normalise(images, mean, std, dtype=np.float64):
    """uint8 N x C x H x W -> real values ``(pixel / 255 - mean[c]) / std[c]``."""
    mean = np.asarray(mean, dtype=np.float64).reshape(1, -1, 1, 1)
    std = np.asarray(std, dtype=np.float64).reshape(1, -1, 1, 1)
    return ((np.asarray(images, dtype=np.float64) / 255.0 - mean) / std).astype(dtype, copy=False)


__all__ = [
    "FORMAT",
    "NORMALISATION",
    "DatasetError",
    "write_dataset",
    "DatasetWriter",
    "dataset_info",
    "read_dataset",
    "normalise",
]
