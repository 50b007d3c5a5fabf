"""`mpcgpu demo`: the whole journey on one machine, with embedded real data.

1. the data owner converts the embedded MNIST test set (IDX) to HDF5 and splits it
   into three shards; the model owner splits the embedded trained LeNet;
2. three local MPI ranks privately classify the images (`mpcgpu infer`); only
   party 0, the result owner, learns the predicted labels;
3. the predictions are compared with the plaintext model's.
"""
from __future__ import annotations

import json
import os
import time

import numpy

SUMMARY = "install check and showcase: private LeNet on real MNIST, three local ranks"
DESCRIPTION = __doc__ + """
Example:
  mpcgpu demo                 # 1000 test images
  mpcgpu demo --images 10000  # the whole MNIST test set
"""


def add_arguments(p):
    p.add_argument("--images", type=int, default=1000, help="MNIST test images to classify (default 1000, max 10000)")
    p.add_argument("--batch-size", type=int, default=100, help="images per private forward pass (default 100)")
    p.add_argument("--workdir", default="mpcgpu-demo", help="where the HDF5 files and shards go (default ./mpcgpu-demo)")
    p.add_argument("--device", default=None, choices=("auto", "cpu", "cuda"), help="array back end of the three ranks")
    p.add_argument("--precision", type=int, default=16, help="fractional bits (default 16)")
    p.add_argument("--profile", action="store_true", help="per-layer time and communication")


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
    write_dataset(data_h5, imgs.reshape(-1, 1, 28, 28), labels, name="mnist-test", mean=mean, std=std,
                  num_classes=10, source="MNIST t10k (embedded)")
    shards = os.path.join(workdir, "shards")
    split_file(data_h5, shards, frac_bits=precision, overwrite=True, progress=False)
    split_file(lenet_weights_path(), shards, frac_bits=precision, overwrite=True, progress=False)
    x = normalise(imgs.reshape(-1, 1, 28, 28), mean, std)
    return (os.path.join(shards, "lenet_mnist"), os.path.join(shards, "mnist_test"), x, labels)


def run(args) -> int:
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
    cmd = ["infer", "--model", model_stem, "--data", data_stem, "--batch-size", str(args.batch_size),
           "--out", out, "--json", summary, "--precision", str(args.precision)]
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
