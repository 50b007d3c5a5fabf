"""Class-per-folder image trees (Tiny ImageNet, ImageNet) -> one dataset file.

    python -m datasets.imagefolder ROOT OUT.h5 --size 64            # ROOT/<class>/**/*.JPEG
    python -m datasets.imagefolder tiny-imagenet-200/val/images val.h5 --size 64 \
        --annotations tiny-imagenet-200/val/val_annotations.txt \
        --classes tiny-imagenet-200/wnids.txt
    python -m datasets.imagefolder imagenet/val val.h5 --size 224 --resize 256

Classes are the sorted sub-folders of ROOT, or the lines of ``--classes``
(first word of each line) to fix the index order across splits.  With
``--annotations`` (lines ``file<TAB>class...``, Tiny ImageNet's
``val_annotations.txt``) ROOT is a flat folder of images.

Each image is converted to RGB, its shorter side resized to ``--resize``
(default ``--size``) with bilinear filtering, and centre-cropped to
``size x size``.  Decoding JPEG/PNG needs Pillow (``pip install Pillow``; not
a dependency of mpcgpu).  Without Pillow only binary PPM/PGM (P6/P5, maxval
255) images that already have the target size can be read.

Normalisation: ``--stats imagenet`` (default: mean 0.485/0.456/0.406, std
0.229/0.224/0.225), ``--stats compute`` (statistics of the written images), or
explicit ``--mean``/``--std``.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from .common import DatasetError, DatasetWriter, channel_stats

IMAGE_EXTS = (".jpeg", ".jpg", ".png", ".bmp", ".ppm", ".pgm", ".webp", ".tif", ".tiff")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _pillow():
    try:
        from PIL import Image
    except ImportError:
        return None
    return Image


def read_netpbm(path) -> np.ndarray:
    """Binary PPM (P6) or PGM (P5) with maxval 255 -> H x W x 3 (or H x W) uint8."""
    with open(path, "rb") as f:
        data = f.read()
    magic = data[:2]
    if magic not in (b"P5", b"P6"):
        raise DatasetError(f"{path}: not a binary PPM/PGM file")
    fields, pos = [], 2
    while len(fields) < 3:
        while pos < len(data) and data[pos : pos + 1].isspace():
            pos += 1
        if data[pos : pos + 1] == b"#":
            while pos < len(data) and data[pos : pos + 1] not in (b"\n", b"\r"):
                pos += 1
            continue
        start = pos
        while pos < len(data) and data[pos : pos + 1].isdigit():
            pos += 1
        if start == pos:
            raise DatasetError(f"{path}: malformed PPM/PGM header")
        fields.append(int(data[start:pos]))
    w, h, maxval = fields
    if maxval != 255:
        raise DatasetError(f"{path}: only maxval 255 is supported")
    pos += 1  # the single whitespace after maxval
    c = 3 if magic == b"P6" else 1
    need = w * h * c
    if len(data) - pos < need:
        raise DatasetError(f"{path}: truncated image data")
    a = np.frombuffer(data, np.uint8, need, pos)
    return a.reshape(h, w, c) if c == 3 else a.reshape(h, w)


def load_image(path, size: int, resize: int | None = None, channels: int = 3) -> np.ndarray:
    """One image as uint8 C x size x size (shorter side -> resize, centre crop)."""
    resize = size if resize is None else resize
    Image = _pillow()
    if Image is not None:
        try:
            with Image.open(path) as im:
                im = im.convert("RGB" if channels == 3 else "L")
                w, h = im.size
                scale = resize / min(w, h)
                nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
                if (nw, nh) != (w, h):
                    im = im.resize((nw, nh), Image.BILINEAR)
                left, top = (nw - size) // 2, (nh - size) // 2
                a = np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)
        except OSError as e:
            raise DatasetError(f"{path}: cannot decode image ({e})") from None
    else:
        if not str(path).lower().endswith((".ppm", ".pgm")):
            raise DatasetError(
                f"{path}: decoding this image needs Pillow, which is not installed "
                f"(pip install Pillow); without it only PPM/PGM files of the target size work"
            )
        a = read_netpbm(path)
        if a.shape[:2] != (size, size) or resize != size:
            raise DatasetError(
                f"{path}: is {a.shape[1]}x{a.shape[0]}; resizing to {size}x{size} needs Pillow (pip install Pillow)"
            )
        if channels == 3 and a.ndim == 2:
            a = np.repeat(a[:, :, None], 3, axis=2)
        elif channels == 1 and a.ndim == 3:
            a = np.round(a @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)
    if a.ndim == 2:
        a = a[:, :, None]
    return np.ascontiguousarray(a.transpose(2, 0, 1))


def _is_image(name):
    return name.lower().endswith(IMAGE_EXTS)


def read_class_list(path) -> list:
    with open(path) as f:
        names = [line.split()[0] for line in f if line.strip()]
    if len(set(names)) != len(names):
        raise DatasetError(f"{path}: duplicate class names")
    return names


def scan(root, classes=None, annotations=None, limit_per_class=None):
    """([(path, label)], class_names) in a deterministic order."""
    if not os.path.isdir(root):
        raise DatasetError(f"image folder not found: {root}")
    items = []
    if annotations is not None:
        mapping = {}
        with open(annotations) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2:
                    mapping[parts[0]] = parts[1]
        if classes is None:
            classes = sorted(set(mapping.values()))
        index = {c: i for i, c in enumerate(classes)}
        per = {}
        for name in sorted(os.listdir(root)):
            if not _is_image(name):
                continue
            if name not in mapping:
                raise DatasetError(f"{annotations}: no class for {name}")
            if mapping[name] not in index:
                raise DatasetError(f"{name}: class {mapping[name]} not in the class list")
            lab = index[mapping[name]]
            if limit_per_class is None or per.get(lab, 0) < limit_per_class:
                per[lab] = per.get(lab, 0) + 1
                items.append((os.path.join(root, name), lab))
    else:
        if classes is None:
            classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
        if not classes:
            raise DatasetError(f"{root}: no class sub-folders")
        for lab, c in enumerate(classes):
            d = os.path.join(root, c)
            if not os.path.isdir(d):
                raise DatasetError(f"{root}: class folder {c} missing")
            files = []
            for dirpath, dirnames, filenames in os.walk(d):
                dirnames.sort()
                files += [os.path.join(dirpath, n) for n in sorted(filenames) if _is_image(n)]
            items += [(p, lab) for p in files[:limit_per_class]]
    if not items:
        raise DatasetError(f"{root}: no images found")
    return items, list(classes)


def convert_imagefolder(
    root,
    out_path,
    *,
    size: int,
    resize: int | None = None,
    channels: int = 3,
    classes=None,
    annotations=None,
    name=None,
    stats: str = "imagenet",
    mean=None,
    std=None,
    limit_per_class=None,
    log=None,
) -> str:
    if isinstance(classes, (str, os.PathLike)):
        classes = read_class_list(classes)
    items, classes = scan(root, classes, annotations, limit_per_class)
    if stats not in ("imagenet", "compute"):
        raise DatasetError(f"unknown stats {stats!r} (imagenet, compute)")
    compute = mean is None or std is None
    if compute and stats == "imagenet" and channels == 3:
        mean, std, compute = IMAGENET_MEAN, IMAGENET_STD, False
    if compute:  # placeholders, replaced by the statistics of the written images
        mean, std = (0.5,) * channels, (0.25,) * channels
    name = name or os.path.basename(os.path.normpath(str(root)))
    with DatasetWriter(
        out_path,
        len(items),
        (channels, size, size),
        name=name,
        mean=mean,
        std=std,
        num_classes=len(classes),
        classes=classes,
        source=f"image folder {root}",
    ) as w:
        chunk = 256
        for i in range(0, len(items), chunk):
            part = items[i : i + chunk]
            w.write(np.stack([load_image(p, size, resize, channels) for p, _ in part]), [lab for _, lab in part])
            if log:
                log(f"{min(i + chunk, len(items))}/{len(items)} images")
    if compute:
        import h5py

        with h5py.File(out_path, "r+") as f:
            m, s = channel_stats(f["images"])
            f.attrs["mean"], f.attrs["std"] = m, s
    return str(out_path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m datasets.imagefolder", description=__doc__.split("\n")[0])
    ap.add_argument("root")
    ap.add_argument("out")
    ap.add_argument("--size", type=int, required=True, help="output side, e.g. 64 or 224")
    ap.add_argument("--resize", type=int, help="shorter side before the centre crop")
    ap.add_argument("--channels", type=int, default=3, choices=[1, 3])
    ap.add_argument("--classes", help="file: one class (folder) name per line, in index order")
    ap.add_argument("--annotations", help="file<TAB>class lines for a flat folder")
    ap.add_argument("--name")
    ap.add_argument("--stats", default="imagenet", choices=["imagenet", "compute"])
    ap.add_argument("--mean", type=float, nargs="+")
    ap.add_argument("--std", type=float, nargs="+")
    ap.add_argument("--limit-per-class", type=int)
    a = ap.parse_args(argv)
    try:
        print(
            convert_imagefolder(
                a.root,
                a.out,
                size=a.size,
                resize=a.resize,
                channels=a.channels,
                classes=a.classes,
                annotations=a.annotations,
                name=a.name,
                stats=a.stats,
                mean=tuple(a.mean) if a.mean else None,
                std=tuple(a.std) if a.std else None,
                limit_per_class=a.limit_per_class,
                log=lambda m: print(m, file=sys.stderr),
            )
        )
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
