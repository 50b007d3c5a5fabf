"""Shared helpers of the converters: the dataset file layout lives in the installed
package (``mpcgpu.assets.dataset_h5``) so that the runtime CLI can read it too."""

from __future__ import annotations

from mpcgpu.assets.dataset_h5 import (
    FORMAT,
    NORMALISATION,
    DatasetError,
    DatasetWriter,
    dataset_info,
    normalise,
    read_dataset,
    write_dataset,
)

__all__ = [
    "FORMAT",
    "NORMALISATION",
    "DatasetError",
    "DatasetWriter",
    "dataset_info",
    "normalise",
    "read_dataset",
    "write_dataset",
    "channel_stats",
]


def channel_stats(images, chunk: int = 4096):
    """Per-channel mean and std of uint8 N x C x H x W images on the [0, 1] scale."""
    import numpy as np

    n, c = images.shape[:2]
    s = np.zeros(c)
    s2 = np.zeros(c)
    cnt = 0
    for i in range(0, n, chunk):
        b = np.asarray(images[i : i + chunk], dtype=np.float64) / 255.0
        s += b.sum(axis=(0, 2, 3))
        s2 += (b * b).sum(axis=(0, 2, 3))
        cnt += b.shape[0] * b.shape[2] * b.shape[3]
    mean = s / cnt
    return mean, np.sqrt(np.maximum(s2 / cnt - mean * mean, 1e-12))
