"""`mpcgpu demo`: the whole journey on one machine, with embedded real data.

1. the data owner converts the embedded MNIST test set (IDX) to HDF5 and splits it
   into three shards; the model owner splits the embedded trained LeNet;
2. three local MPI ranks privately classify the images (`mpcgpu infer`); only
   party 0, the result owner, learns the predicted labels;
3. the predictions are compared with the plaintext model's.

With ``--train``: the three servers instead TRAIN a LeNet privately (`mpcgpu train`)
on the first ``--train-images`` of the embedded images and test it on the last
1000; a plaintext twin is trained alongside from the same initial weights, in the
same sample order, and both test accuracies are printed.
"""

from __future__ import annotations

import json
import os
import time

import numpy

SUMMARY = "install check and showcase: private LeNet on real MNIST, three local ranks"
DESCRIPTION = (
    __doc__
    + """
Example:
  mpcgpu demo                 # 1000 test images
  mpcgpu demo --images 10000  # the whole MNIST test set
  mpcgpu demo --train         # private training of LeNet on 4000 images (a few minutes)
"""
)


def add_arguments(p):
    p.add_argument("--images", type=int, default=1000, help="MNIST test images to classify (default 1000, max 10000)")
    p.add_argument(
        "--batch-size", type=int, default=None, help="images per private pass (default 100; with --train 128)"
    )
    p.add_argument(
        "--workdir", default="mpcgpu-demo", help="where the HDF5 files and shards go (default ./mpcgpu-demo)"
    )
    p.add_argument("--device", default=None, choices=("auto", "cpu", "cuda"), help="array back end of the three ranks")
    p.add_argument("--precision", type=int, default=16, help="fractional bits (default 16)")
    p.add_argument("--profile", action="store_true", help="per-layer time and communication")
    p.add_argument("--train", action="store_true", help="private training instead of inference (see above)")
    p.add_argument("--train-images", type=int, default=4000, help="--train: training images (default 4000)")
    p.add_argument("--epochs", type=int, default=1, help="--train: epochs (default 1)")


def prepare(workdir: str, images: int, precision: int):
    """Owner side: dataset HDF5 + shards, model shards.  Returns (model stem, data stem, x, labels)."""
    from ..assets import lenet_weights_path, mnist_test_idx_paths
    from ..assets.dataset_h5 import normalise, write_dataset
    from ..assets.mnist_idx import load_mnist
    from ..data.split import split_file

    os.makedirs(workdir, exist_ok=True)
    imgs_gz, labels_gz = mnist_test_idx_paths()
    imgs, labels = load_mnist(imgs_gz, labels_gz, verify=True)
    imgs, labels = imgs[:images], labels[:images]
    mean, std = (0.1307,), (0.3081,)
    data_h5 = os.path.join(workdir, "mnist_test.h5")
    write_dataset(
        data_h5,
        imgs.reshape(-1, 1, 28, 28),
        labels,
        name="mnist-test",
        mean=mean,
        std=std,
        num_classes=10,
        source="MNIST t10k (embedded)",
    )
    shards = os.path.join(workdir, "shards")
    split_file(data_h5, shards, frac_bits=precision, overwrite=True, progress=False)
    split_file(lenet_weights_path(), shards, frac_bits=precision, overwrite=True, progress=False)
    x = normalise(imgs.reshape(-1, 1, 28, 28), mean, std)
    return (os.path.join(shards, "lenet_mnist"), os.path.join(shards, "mnist_test"), x, labels)


def run(args) -> int:
    if args.train:
        return run_training(args)
    from ..assets import lenet_weights_path
    from ..nn.models import get_model
    from ..nn.plain import PlainModel
    from ..nn.weights import load_weights
    from .launcher import run_three

    n = max(1, min(args.images, 10000))
    print(f"[owners] preparing {n} MNIST test images and the trained LeNet in {args.workdir}/ ...", flush=True)
    model_stem, data_stem, x, labels = prepare(args.workdir, n, args.precision)
    name, params = load_weights(lenet_weights_path())
    plain = PlainModel(get_model(name), params)
    t = time.perf_counter()
    plain_pred = plain.predict(x)
    plain_s = time.perf_counter() - t
    out = os.path.join(args.workdir, "private_predictions.npy")
    summary = os.path.join(args.workdir, "private_summary.json")
    if os.path.exists(out):
        os.remove(out)
    print("[servers] three MPI ranks, each with its own shards:", flush=True)
    cmd = [
        "infer",
        "--model",
        model_stem,
        "--data",
        data_stem,
        "--batch-size",
        str(args.batch_size or 100),
        "--out",
        out,
        "--json",
        summary,
        "--precision",
        str(args.precision),
        "--warm-up",
    ]
    if args.profile:
        cmd.append("--profile")
    rc = run_three(cmd, device=args.device)
    if rc != 0 or not os.path.exists(out):
        print(f"mpcgpu demo: the private run failed (exit {rc})")
        return rc or 1
    private_pred = numpy.load(out)
    with open(summary) as fh:
        info = json.load(fh)
    agree = int((private_pred == plain_pred).sum())
    acc_private = float((private_pred == labels).mean())
    acc_plain = float((plain_pred == labels).mean())
    print()
    print(f"{'':<26}{'private (3 parties)':>22}{'plaintext NumPy':>18}")
    print(f"{'accuracy':<26}{100 * acc_private:>21.2f}%{100 * acc_plain:>17.2f}%")
    print(f"{'time':<26}{info['seconds']:>20.2f} s{plain_s:>16.3f} s")
    print(f"{'communication':<26}{info['bytes_all_parties'] / 1e6:>19.1f} MB{'-':>18}")
    print(f"private predictions equal to plaintext: {agree}/{n}")
    return 0 if agree >= 0.99 * n else 1


TEST_IMAGES = 1000


def run_training(args) -> int:
    """Private LeNet training on embedded MNIST next to its plaintext twin."""
    from ..assets import mnist_test_idx_paths
    from ..assets.dataset_h5 import write_dataset
    from ..assets.mnist_idx import MNIST_MEAN, MNIST_STD, load_mnist
    from ..data.split import split_file
    from ..nn.models import get_model
    from ..nn.plain import init_params
    from ..nn.train_plain import train_twin
    from .launcher import run_three

    batch = args.batch_size or 128
    n = max(batch, min(args.train_images, 10000 - TEST_IMAGES))
    os.makedirs(args.workdir, exist_ok=True)
    print(
        f"[owners] {n} training and {TEST_IMAGES} test images of the embedded MNIST set, shared in {args.workdir}/ ...",
        flush=True,
    )
    imgs, labels = load_mnist(*mnist_test_idx_paths(), verify=True)
    imgs = imgs.reshape(-1, 1, 28, 28)
    paths = {}
    for part, sl in (("train", slice(0, n)), ("test", slice(10000 - TEST_IMAGES, 10000))):
        paths[part] = os.path.join(args.workdir, f"mnist_{part}.h5")
        write_dataset(
            paths[part],
            imgs[sl],
            labels[sl],
            name=f"mnist-{part}",
            mean=MNIST_MEAN,
            std=MNIST_STD,
            num_classes=10,
            source="MNIST t10k (embedded)",
        )
        split_file(
            paths[part], os.path.join(args.workdir, "shards"), frac_bits=args.precision, overwrite=True, progress=False
        )
    summary = os.path.join(args.workdir, "train_summary.json")
    settings = dict(
        batch_size=batch, lr=0.05, momentum=0.9, weight_decay=0.0, schedule="cosine", warmup=100, seed=0, init_seed=0
    )
    cmd = [
        "train",
        "--model",
        "lenet",
        "--init-seed",
        str(settings["init_seed"]),
        "--data",
        os.path.join(args.workdir, "shards", "mnist_train"),
        "--test-data",
        os.path.join(args.workdir, "shards", "mnist_test"),
        "--epochs",
        str(args.epochs),
        "--batch-size",
        str(settings["batch_size"]),
        "--lr",
        str(settings["lr"]),
        "--momentum",
        str(settings["momentum"]),
        "--weight-decay",
        str(settings["weight_decay"]),
        "--schedule",
        settings["schedule"],
        "--warmup",
        str(settings["warmup"]),
        "--seed",
        str(settings["seed"]),
        "--precision",
        str(args.precision),
        "--json",
        summary,
    ]
    print("[servers] three MPI ranks train LeNet privately (`mpcgpu train`):", flush=True)
    if os.path.exists(summary):
        os.remove(summary)
    rc = run_three(cmd, device=args.device)
    if rc != 0 or not os.path.exists(summary):
        print(f"mpcgpu demo: the private training failed (exit {rc})")
        return rc or 1
    with open(summary) as fh:
        info = json.load(fh)
    print("[check] the plaintext twin: same initial weights, sample order and schedule ...", flush=True)
    spec = get_model("lenet")
    twin = train_twin(
        spec,
        settings,
        paths["train"],
        paths["test"],
        init_params(spec, rng=settings["init_seed"]),
        epochs=args.epochs,
        log=lambda m: None,
    )
    steps = info["steps"]
    step_s = float(numpy.mean([s["seconds"] for s in steps])) if steps else float("nan")
    step_mb = float(numpy.mean([s["bytes"] for s in steps])) / 1e6 if steps else float("nan")
    print()
    print(f"{'':<26}{'private (3 parties)':>22}{'plaintext twin':>18}")
    print(f"{'test accuracy':<26}{100 * info['test_accuracy']:>21.2f}%{100 * twin.test_accuracy:>17.2f}%")
    print(f"{'time per step':<26}{step_s:>20.2f} s{twin.train_seconds / max(len(steps), 1):>16.3f} s")
    print(f"{'communication per step':<26}{step_mb:>19.1f} MB{'-':>18}")
    gap = abs(info["test_accuracy"] - twin.test_accuracy)
    print(f"accuracy gap private vs plaintext: {100 * gap:.2f} points over {len(steps)} steps")
    return 0 if gap <= 0.05 else 1
