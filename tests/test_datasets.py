"""Dataset converters and the embedded assets: round trips on tiny synthetic
files, bad-file errors, the embedded MNIST test set."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import sys
import tarfile

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datasets import cifar10, imagefolder, mnist, synthetic  # noqa: E402
from datasets.common import (
    DatasetError,
    DatasetWriter,
    channel_stats,
    dataset_info,  # noqa: E402
    normalise,
    read_dataset,
    write_dataset,
)
from mpcgpu.assets import lenet_weights_path, mnist_test_idx_paths  # noqa: E402
from mpcgpu.assets.mnist_idx import (
    IDXFormatError,
    load_mnist,
    parse_idx,
    read_idx,  # noqa: E402
    verify_sha256,
)

RNG = np.random.default_rng(7)


def idx_bytes(arr: np.ndarray, code: int) -> bytes:
    be = arr.astype(arr.dtype.newbyteorder(">"))
    return bytes([0, 0, code, arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape) + be.tobytes()


def write_idx(path, arr, code=0x08, gz=True):
    data = idx_bytes(arr, code)
    with open(path, "wb") as f:
        f.write(gzip.compress(data) if gz else data)
    return path


# ------------------------------------------------------------------ IDX


@pytest.mark.parametrize("gz", [True, False])
def test_idx_roundtrip(tmp_path, gz):
    im = RNG.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    lb = RNG.integers(0, 10, 5).astype(np.uint8)
    ip = write_idx(tmp_path / "im.idx", im, gz=gz)
    lp = write_idx(tmp_path / "lb.idx", lb, gz=gz)
    images, labels = load_mnist(ip, lp)
    assert images.shape == (5, 1, 28, 28) and images.dtype == np.uint8
    np.testing.assert_array_equal(images[:, 0], im)
    np.testing.assert_array_equal(labels, lb)


@pytest.mark.parametrize(
    "dtype,code", [(np.int16, 0x0B), (np.int32, 0x0C), (np.float32, 0x0D), (np.float64, 0x0E), (np.int8, 0x09)]
)
def test_idx_other_types(dtype, code):
    a = (RNG.standard_normal((3, 4)) * 100).astype(dtype)
    back = parse_idx(idx_bytes(a, code))
    assert back.dtype == np.dtype(dtype) and back.dtype.isnative
    np.testing.assert_array_equal(back, a)


def test_idx_errors(tmp_path):
    good = idx_bytes(RNG.integers(0, 256, (2, 3, 3), dtype=np.uint8), 0x08)
    with pytest.raises(IDXFormatError, match="magic"):
        parse_idx(b"\x01" + good[1:])
    with pytest.raises(IDXFormatError, match="type code"):
        parse_idx(good[:2] + b"\x07" + good[3:])
    with pytest.raises(IDXFormatError, match="truncated"):
        parse_idx(good[:-1])
    with pytest.raises(IDXFormatError, match="truncated header"):
        parse_idx(good[:9])
    with pytest.raises(IDXFormatError, match="trailing"):
        parse_idx(good + b"\0")
    with pytest.raises(IDXFormatError, match="too short"):
        parse_idx(b"\0\0")
    p = tmp_path / "cut.gz"
    p.write_bytes(gzip.compress(good)[:-12])
    with pytest.raises(IDXFormatError, match="gzip"):
        read_idx(p)
    ip = write_idx(tmp_path / "im", RNG.integers(0, 256, (3, 4, 4), dtype=np.uint8))
    lp = write_idx(tmp_path / "lb", np.arange(2, dtype=np.uint8))
    with pytest.raises(IDXFormatError, match="3 images but 2 labels"):
        load_mnist(ip, lp)
    lp = write_idx(tmp_path / "lb3", np.array([1, 2, 12], dtype=np.uint8))
    with pytest.raises(IDXFormatError, match="outside"):
        load_mnist(ip, lp)
    lp = write_idx(tmp_path / "lbf", np.zeros(3, np.float32), code=0x0D)
    with pytest.raises(IDXFormatError, match="uint8 labels"):
        load_mnist(ip, lp)


def test_checksums(tmp_path):
    ip, lp = mnist_test_idx_paths()
    assert verify_sha256(ip) and verify_sha256(lp)
    fake = tmp_path / "t10k-labels-idx1-ubyte.gz"
    write_idx(fake, np.zeros(3, np.uint8))
    with pytest.raises(IDXFormatError, match="SHA-256"):
        verify_sha256(fake)
    with pytest.raises(IDXFormatError, match="SHA-256"):
        load_mnist(ip, fake)
    with pytest.raises(IDXFormatError, match="10000 images but 3 labels"):
        load_mnist(ip, fake, verify=False)
    assert verify_sha256(tmp_path / "other.gz") is False
    with pytest.raises(IDXFormatError, match="standard"):
        verify_sha256(tmp_path / "other.gz", required=True)


def test_embedded_mnist_test_set():
    ip, lp = mnist_test_idx_paths()
    images, labels = load_mnist(ip, lp)
    assert images.shape == (10000, 1, 28, 28) and labels.shape == (10000,)
    assert labels[0] == 7
    np.testing.assert_array_equal(np.bincount(labels), [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])
    assert os.path.isfile(lenet_weights_path())


# ------------------------------------------------------------------ MNIST converter


def test_mnist_converter(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    data = {}
    for split, (fi, fl) in mnist.SPLITS.items():
        n = 7 if split == "train" else 4
        im = RNG.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        lb = RNG.integers(0, 10, n).astype(np.uint8)
        write_idx(src / fi, im)
        write_idx(src / fl, lb)
        data[split] = (im, lb)
    # Standard names with non-standard content: the checksum check refuses...
    with pytest.raises(IDXFormatError, match="SHA-256"):
        mnist.convert_dir(src, tmp_path / "out")
    assert mnist.main([str(src), str(tmp_path / "out")]) == 1
    # ...unless told not to verify.
    outs = mnist.convert_dir(src, tmp_path / "out", verify=False)
    for split, path in zip(mnist.SPLITS, outs):
        images, labels, info = read_dataset(path)
        np.testing.assert_array_equal(images[:, 0], data[split][0])
        np.testing.assert_array_equal(labels, data[split][1])
        assert info["format"] == "mpcgpu-dataset/1" and info["name"] == f"mnist-{split}"
        assert info["num_classes"] == 10 and info["image_shape"] == (1, 28, 28)
        np.testing.assert_allclose(info["mean"], [0.1307])
        np.testing.assert_allclose(info["std"], [0.3081])
        import h5py

        with h5py.File(path) as f:
            assert f["images"].chunks is None and f["images"].compression is None
            assert f["images"].dtype == np.uint8


def test_mnist_converter_on_embedded_files(tmp_path):
    ip, lp = mnist_test_idx_paths()
    out = mnist.convert_mnist(ip, lp, tmp_path / "t.h5", name="mnist-test", limit=100)
    images, labels, info = read_dataset(out, 10, 20)
    ref_i, ref_l = load_mnist(ip, lp)
    np.testing.assert_array_equal(images, ref_i[10:20])
    np.testing.assert_array_equal(labels, ref_l[10:20])
    x = normalise(images, info["mean"], info["std"])
    np.testing.assert_allclose(x, (images / 255.0 - 0.1307) / 0.3081)


# ------------------------------------------------------------------ CIFAR-10


def make_cifar_dir(d, n_per_batch=3, str_keys=False):
    d.mkdir(parents=True)
    batches = {}
    for name in cifar10.TRAIN_BATCHES + (cifar10.TEST_BATCH,):
        data = RNG.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in RNG.integers(0, 10, n_per_batch)]
        k = (lambda s: s) if str_keys else (lambda s: s.encode())
        obj = {
            k("batch_label"): k(name),
            k("labels"): labels,
            k("data"): data,
            k("filenames"): [k(f"img{i}.png") for i in range(n_per_batch)],
        }
        (d / name).write_bytes(pickle.dumps(obj, protocol=2))
        batches[name] = (data, labels)
    meta = {b"label_names": [c.encode() for c in cifar10.DEFAULT_CLASSES], b"num_vis": 3072}
    (d / cifar10.META).write_bytes(pickle.dumps(meta, protocol=2))
    return batches


@pytest.mark.parametrize("as_tar,str_keys", [(False, False), (True, False), (False, True)])
def test_cifar10_converter(tmp_path, as_tar, str_keys):
    d = tmp_path / "cifar-10-batches-py"
    batches = make_cifar_dir(d, str_keys=str_keys)
    src = d
    if as_tar:
        src = tmp_path / "cifar-10-python.tar.gz"
        with tarfile.open(src, "w:gz") as t:
            t.add(d, arcname="cifar-10-batches-py")
    train_p, test_p = cifar10.convert_cifar10(src, tmp_path / "out")
    im, lb, info = read_dataset(train_p)
    assert im.shape == (15, 3, 32, 32) and info["num_classes"] == 10
    data1, labels1 = batches["data_batch_1"]
    # channel c, row r, column k of image i is data[i, 1024 c + 32 r + k]
    assert im[1, 2, 5, 7] == data1[1, 2 * 1024 + 5 * 32 + 7]
    np.testing.assert_array_equal(lb[:3], labels1)
    np.testing.assert_array_equal(im[12:], batches["data_batch_5"][0].reshape(3, 3, 32, 32))
    tim, tlb, tinfo = read_dataset(test_p)
    np.testing.assert_array_equal(tim, batches["test_batch"][0].reshape(3, 3, 32, 32))
    assert tinfo["classes"] == list(cifar10.DEFAULT_CLASSES)
    mean, std = channel_stats(im)
    np.testing.assert_allclose(info["mean"], mean)
    np.testing.assert_allclose(tinfo["std"], std)
    np.testing.assert_allclose(mean, (im / 255.0).mean(axis=(0, 2, 3)))


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_cifar10_errors(tmp_path):
    d = tmp_path / "c"
    make_cifar_dir(d)
    (d / "data_batch_3").write_bytes(pickle.dumps({b"data": _Evil(), b"labels": []}))
    with pytest.raises(DatasetError, match="refusing"):
        cifar10.load_cifar10(d)
    (d / "data_batch_3").unlink()
    with pytest.raises(DatasetError, match="missing data_batch_3"):
        cifar10.load_cifar10(d)
    (d / "data_batch_3").write_bytes(
        pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, protocol=2)
    )
    with pytest.raises(DatasetError, match="3072"):
        cifar10.load_cifar10(d)
    (d / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="pickle"):
        cifar10.load_cifar10(d)
    with pytest.raises(DatasetError, match="not found"):
        cifar10.load_cifar10(tmp_path / "nothing")
    (tmp_path / "bad.tar.gz").write_bytes(b"not a tar")
    with pytest.raises(DatasetError, match="tar"):
        cifar10.load_cifar10(tmp_path / "bad.tar.gz")
    assert cifar10.main([str(tmp_path / "nothing"), str(tmp_path / "o")]) == 1


# ------------------------------------------------------------------ image folders


def write_ppm(path, img):
    h, w = img.shape[:2]
    if img.ndim == 3:
        path.write_bytes(b"P6\n# test\n%d %d\n255\n" % (w, h) + img.tobytes())
    else:
        path.write_bytes(b"P5\n%d %d\n255\n" % (w, h) + img.tobytes())


def test_imagefolder_ppm_tree(tmp_path):
    root = tmp_path / "train"
    imgs = {}
    for c, cls in enumerate(["n01", "n02", "n03"]):
        sub = root / cls / "images"
        sub.mkdir(parents=True)
        for i in range(2 + c):
            a = RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            write_ppm(sub / f"{cls}_{i}.ppm", a)
            imgs[(cls, i)] = a
    (root / "n02" / "n02_boxes.txt").write_text("ignored\n")
    out = imagefolder.convert_imagefolder(root, tmp_path / "t.h5", size=8, stats="compute")
    im, lb, info = read_dataset(out)
    assert im.shape == (9, 3, 8, 8) and list(lb) == [0, 0, 1, 1, 1, 2, 2, 2, 2]
    np.testing.assert_array_equal(im[2], imgs[("n02", 0)].transpose(2, 0, 1))
    assert info["classes"] == ["n01", "n02", "n03"] and info["num_classes"] == 3
    np.testing.assert_allclose(info["mean"], (im / 255.0).mean(axis=(0, 2, 3)))
    # Flat folder with annotations and a fixed class order (Tiny ImageNet's val layout).
    flat = tmp_path / "val" / "images"
    flat.mkdir(parents=True)
    g = RNG.integers(0, 256, (8, 8), dtype=np.uint8)
    write_ppm(flat / "val_0.ppm", g)
    write_ppm(flat / "val_1.ppm", imgs[("n01", 0)])
    (tmp_path / "ann.txt").write_text("val_0.ppm\tn03\t0\t0\t8\t8\nval_1.ppm\tn01\t1\t1\t5\t5\n")
    (tmp_path / "wnids.txt").write_text("n01\nn02\nn03\n")
    out = imagefolder.convert_imagefolder(
        flat, tmp_path / "v.h5", size=8, classes=str(tmp_path / "wnids.txt"), annotations=tmp_path / "ann.txt"
    )
    im, lb, info = read_dataset(out)
    assert list(lb) == [2, 0]
    np.testing.assert_array_equal(im[0], np.stack([g] * 3))
    np.testing.assert_allclose(info["mean"], imagefolder.IMAGENET_MEAN)


def test_imagefolder_errors(tmp_path):
    root = tmp_path / "r"
    (root / "a").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no images"):
        imagefolder.scan(root)
    write_ppm(root / "a" / "x.ppm", np.zeros((6, 6, 3), np.uint8))
    has_pil = imagefolder._pillow() is not None
    if not has_pil:
        with pytest.raises(DatasetError, match="Pillow"):
            imagefolder.convert_imagefolder(root, tmp_path / "o.h5", size=8)
        (root / "a" / "y.JPEG").write_bytes(b"\xff\xd8")
        with pytest.raises(DatasetError, match="pip install Pillow"):
            imagefolder.load_image(root / "a" / "y.JPEG", 6)
    assert not os.path.exists(tmp_path / "o.h5")
    (root / "a" / "z.ppm").write_bytes(b"P6\n6 6\n255\n" + b"\0" * 10)
    with pytest.raises(DatasetError, match="truncated"):
        imagefolder.read_netpbm(root / "a" / "z.ppm")
    with pytest.raises(DatasetError, match="not found"):
        imagefolder.scan(tmp_path / "none")


@pytest.mark.skipif(imagefolder._pillow() is None, reason="Pillow not installed")
def test_imagefolder_pillow_resize(tmp_path):  # pragma: no cover - Pillow optional
    from PIL import Image

    root = tmp_path / "r" / "c0"
    root.mkdir(parents=True)
    Image.fromarray(RNG.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(root / "a.png")
    out = imagefolder.convert_imagefolder(tmp_path / "r", tmp_path / "o.h5", size=16, resize=20)
    im, _, _ = read_dataset(out)
    assert im.shape == (1, 3, 16, 16)


# ------------------------------------------------------------------ synthetic, layout


def test_synthetic(tmp_path):
    p = synthetic.make_synthetic(tmp_path / "s.h5", model="alexnet_cifar10", n=10, seed=3)
    im, lb, info = read_dataset(p)
    assert im.shape == (10, 3, 32, 32) and lb.max() < 10 and info["num_classes"] == 10
    p2 = synthetic.make_synthetic(tmp_path / "s2.h5", model="alexnet_cifar10", n=10, seed=3)
    np.testing.assert_array_equal(read_dataset(p2)[0], im)
    p3 = synthetic.make_synthetic(tmp_path / "s3.h5", shape=(1, 5, 5), num_classes=200, n=3)
    assert dataset_info(p3)["image_shape"] == (1, 5, 5)
    a, b = synthetic.synthetic_arrays((3, 4, 4), 6, 7)
    assert a.shape == (6, 3, 4, 4) and b.max() < 7


def test_dataset_layout_errors(tmp_path):
    im = np.zeros((3, 1, 2, 2), np.uint8)
    with pytest.raises(DatasetError, match="uint8"):
        write_dataset(tmp_path / "a.h5", im.astype(np.float32), [0, 1, 2], name="x", mean=[0], std=[1])
    with pytest.raises(DatasetError, match="labels"):
        write_dataset(tmp_path / "a.h5", im, [0, 1], name="x", mean=[0], std=[1])
    with pytest.raises(DatasetError, match="per channel"):
        write_dataset(tmp_path / "a.h5", im, [0, 1, 2], name="x", mean=[0, 0], std=[1, 1])
    with pytest.raises(DatasetError, match="outside"):
        write_dataset(tmp_path / "a.h5", im, [0, 1, 5], name="x", mean=[0], std=[1], num_classes=3)
    assert not os.path.exists(tmp_path / "a.h5")
    with pytest.raises(DatasetError, match="wrote 1 of 3"):
        with DatasetWriter(tmp_path / "b.h5", 3, (1, 2, 2), name="b", mean=[0], std=[1], num_classes=2) as w:
            w.write(im[:1], [0])
    assert not os.path.exists(tmp_path / "b.h5")
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p or p.endswith(".partial")]
    import h5py

    with h5py.File(tmp_path / "c.h5", "w") as f:
        f.attrs["format"] = "mpcgpu-weights/1"
    with pytest.raises(DatasetError, match="format"):
        read_dataset(tmp_path / "c.h5")
    with pytest.raises(DatasetError, match="not found"):
        dataset_info(tmp_path / "none.h5")
