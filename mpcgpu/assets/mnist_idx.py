"""MNIST IDX files (optionally gzip-compressed) to NumPy arrays.

IDX: 2 zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
0x0D float32, 0x0E float64), the number of dimensions, then one big-endian
uint32 per dimension and the data, big-endian, C order.

    images, labels = load_mnist(images_path, labels_path)   # N x 1 x 28 x 28 uint8, N uint8
    arr = read_idx(path)                                    # any IDX array
    verify_sha256(path)                                     # for the standard file names
"""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib

import numpy as np

from ..errors import MPCError


class IDXFormatError(MPCError, ValueError):
    """An IDX file is malformed, truncated, or fails its published checksum."""


_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

#: SHA-256 and size of the original MNIST distribution files (see assets/mnist/README.md).
KNOWN_FILES = {
    "train-images-idx3-ubyte.gz": ("440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609", 9912422),
    "train-labels-idx1-ubyte.gz": ("3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c", 28881),
    "t10k-images-idx3-ubyte.gz": ("8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6", 1648877),
    "t10k-labels-idx1-ubyte.gz": ("f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6", 4542),
}

#: Per-channel normalisation conventionally used for MNIST (training-set statistics).
MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)


def sha256_of(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_sha256(path, required: bool = False) -> bool:
    """Check a file named like a standard MNIST file against its published SHA-256.

    Returns True if checked and matching, False if the name is not a standard
    one (an error then if ``required``); raises ``IDXFormatError`` on a mismatch.
    """
    base = os.path.basename(str(path))
    if base not in KNOWN_FILES:
        if required:
            raise IDXFormatError(f"{path}: not a standard MNIST file name, cannot verify")
        return False
    want, size = KNOWN_FILES[base]
    got = sha256_of(path)
    if got != want:
        raise IDXFormatError(
            f"{path}: SHA-256 {got} does not match the published {want} "
            f"(expected {size} bytes, file has {os.path.getsize(path)})"
        )
    return True


def _read_bytes(path) -> bytes:
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise IDXFormatError(f"{path}: corrupt or truncated gzip data ({e})") from None
    return raw


def parse_idx(data: bytes, where: str = "IDX data") -> np.ndarray:
    """Parse the bytes of an uncompressed IDX file into a native-endian array."""
    if len(data) < 4:
        raise IDXFormatError(f"{where}: too short for an IDX header ({len(data)} bytes)")
    if data[0] != 0 or data[1] != 0:
        raise IDXFormatError(f"{where}: bad magic {data[:4].hex()} (expected 0000tt nn)")
    code, ndim = data[2], data[3]
    if code not in _TYPES:
        raise IDXFormatError(f"{where}: unknown IDX type code 0x{code:02x}")
    if ndim == 0:
        raise IDXFormatError(f"{where}: IDX with zero dimensions")
    head = 4 + 4 * ndim
    if len(data) < head:
        raise IDXFormatError(f"{where}: truncated header")
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, 4))
    dt = np.dtype(_TYPES[code])
    need = head + int(np.prod(dims, dtype=np.int64)) * dt.itemsize
    if len(data) < need:
        raise IDXFormatError(f"{where}: truncated: dims {dims} need {need} bytes, file has {len(data)}")
    if len(data) > need:
        raise IDXFormatError(f"{where}: {len(data) - need} trailing bytes after dims {dims}")
    arr = np.frombuffer(data, dt, offset=head).reshape(dims)
    return arr.astype(dt.newbyteorder("="))


def read_idx(path) -> np.ndarray:
    """Read an IDX file, gzip-compressed or not."""
    return parse_idx(_read_bytes(path), str(path))


def load_mnist(images_path, labels_path, verify: bool = True):
    """MNIST images (N, 1, 28, 28) uint8 and labels (N,) uint8, checked for consistency.

    With ``verify``, files with a standard MNIST name are checked against their SHA-256.
    """
    if verify:
        verify_sha256(images_path)
        verify_sha256(labels_path)
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise IDXFormatError(f"{images_path}: expected N x H x W uint8 images, got {images.shape} {images.dtype}")
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise IDXFormatError(f"{labels_path}: expected N uint8 labels, got {labels.shape} {labels.dtype}")
    if len(images) != len(labels):
        raise IDXFormatError(f"{len(images)} images but {len(labels)} labels")
    if len(labels) and labels.max() > 9:
        raise IDXFormatError(f"{labels_path}: label {labels.max()} outside 0..9")
    return np.ascontiguousarray(images[:, None]), labels


__all__ = [
    "IDXFormatError",
    "KNOWN_FILES",
    "MNIST_MEAN",
    "MNIST_STD",
    "sha256_of",
    "verify_sha256",
    "parse_idx",
    "read_idx",
    "load_mnist",
]
