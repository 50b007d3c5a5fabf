"""CIFAR-10 "python version" -> ``cifar10_train.h5`` (50000) and ``cifar10_test.h5`` (10000).

    python -m datasets.cifar10 SRC OUT_DIR

SRC is ``cifar-10-python.tar.gz`` or its extracted ``cifar-10-batches-py``
directory (``data_batch_1`` .. ``data_batch_5``, ``test_batch``,
``batches.meta``).  Images are stored uint8 N x 3 x 32 x 32 (the batches'
row layout: 1024 red, 1024 green, 1024 blue values, each row-major), labels
int64.  The normalisation mean/std are the per-channel statistics of the
training set (about 0.4914/0.4822/0.4465 and 0.2470/0.2435/0.2616), written
to both files.

The batches are Python pickles.  They are read with an unpickler that only
admits the few NumPy globals needed to rebuild arrays, so a tampered file
cannot run code.
"""

from __future__ import annotations

import argparse
import io
import os
import pickle
import sys
import tarfile

import numpy as np

from .common import DatasetError, channel_stats, write_dataset

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META = "batches.meta"
DEFAULT_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _ALLOWED:
            raise DatasetError(f"CIFAR batch refers to {module}.{name}: refusing to unpickle")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module[len("numpy.core.") :]
        return super().find_class(module, name)


def load_batch_bytes(raw: bytes, where: str = "CIFAR batch") -> dict:
    """Unpickle one batch (bytes or str keys accepted) into a dict with str keys."""
    try:
        d = _SafeUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except DatasetError:
        raise
    except Exception as e:
        raise DatasetError(f"{where}: not a readable CIFAR pickle ({type(e).__name__}: {e})") from None
    if not isinstance(d, dict):
        raise DatasetError(f"{where}: expected a dict, got {type(d).__name__}")
    return {(k.decode("latin1") if isinstance(k, bytes) else str(k)): v for k, v in d.items()}


def batch_arrays(d: dict, where: str = "CIFAR batch"):
    """(images N x 3 x 32 x 32 uint8, labels int64) of an unpickled batch."""
    if "data" not in d or "labels" not in d:
        raise DatasetError(f"{where}: needs 'data' and 'labels' entries, has {sorted(d)}")
    data = np.asarray(d["data"])
    labels = np.asarray(d["labels"], dtype=np.int64).reshape(-1)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DatasetError(f"{where}: data must be N x 3072 uint8, got {data.shape} {data.dtype}")
    if len(labels) != len(data):
        raise DatasetError(f"{where}: {len(data)} images but {len(labels)} labels")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DatasetError(f"{where}: labels outside 0..9")
    return np.ascontiguousarray(data.reshape(-1, 3, 32, 32)), labels


class _Source:
    """Files of the batches directory, from a directory or a tar(.gz) archive."""

    def __init__(self, src):
        self.src = str(src)
        self.tar = None
        if os.path.isdir(self.src):
            sub = os.path.join(self.src, "cifar-10-batches-py")
            self.dir = sub if os.path.isdir(sub) else self.src
        elif os.path.isfile(self.src):
            try:
                self.tar = tarfile.open(self.src, "r:*")
            except (tarfile.TarError, OSError) as e:
                raise DatasetError(f"{self.src}: not a readable tar archive ({e})") from None
            self.members = {os.path.basename(m.name): m for m in self.tar.getmembers() if m.isfile()}
        else:
            raise DatasetError(f"CIFAR-10 source not found: {self.src}")

    def read(self, name, required=True):
        if self.tar is None:
            p = os.path.join(self.dir, name)
            if not os.path.isfile(p):
                if required:
                    raise DatasetError(f"{self.dir}: missing {name}")
                return None
            with open(p, "rb") as f:
                return f.read()
        m = self.members.get(name)
        if m is None:
            if required:
                raise DatasetError(f"{self.src}: archive has no {name}")
            return None
        try:
            return self.tar.extractfile(m).read()
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DatasetError(f"{self.src}: cannot read {name} ({e})") from None

    def close(self):
        if self.tar is not None:
            self.tar.close()


def load_cifar10(src):
    """((train_images, train_labels), (test_images, test_labels), class_names)."""
    s = _Source(src)
    try:

        def load(names):
            parts = [batch_arrays(load_batch_bytes(s.read(n), n), n) for n in names]
            return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

        train, test = load(TRAIN_BATCHES), load((TEST_BATCH,))
        meta = s.read(META, required=False)
        classes = DEFAULT_CLASSES
        if meta is not None:
            names = load_batch_bytes(meta, META).get("label_names")
            if names is not None:
                classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    finally:
        s.close()
    return train, test, classes


def convert_cifar10(src, out_dir) -> list:
    (tri, trl), (tei, tel), classes = load_cifar10(src)
    mean, std = channel_stats(tri)
    os.makedirs(out_dir, exist_ok=True)
    out = []
    for split, (im, lb) in (("train", (tri, trl)), ("test", (tei, tel))):
        p = os.path.join(out_dir, f"cifar10_{split}.h5")
        write_dataset(
            p,
            im,
            lb,
            name=f"cifar10-{split}",
            mean=mean,
            std=std,
            num_classes=10,
            classes=classes,
            source=f"CIFAR-10 python version ({os.path.basename(str(src))})",
        )
        out.append(p)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m datasets.cifar10", description=__doc__.split("\n")[0])
    ap.add_argument("src", help="cifar-10-python.tar.gz or cifar-10-batches-py/")
    ap.add_argument("out_dir")
    a = ap.parse_args(argv)
    try:
        for p in convert_cifar10(a.src, a.out_dir):
            print(p)
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
