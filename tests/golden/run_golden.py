"""Revealed ring words of LeNet and of a small residual network with batch norm, under the
test seed (run by tests/test_golden.py as ``mpiexec -n 3 python tests/golden/run_golden.py OUT``).

Every stage reveals its shares to all parties and rank 0 writes the SHA-256 of the revealed
uint64 words (and the words' count) per stage to OUT as JSON.  The stages cover inference with
an exact output, one training step (forward with batch statistics, backward, SGD with momentum)
and the weights after it, so a redesign that changes one drawn word, one exchange order or one
rounding changes a hash."""

import hashlib
import json
import sys

import numpy as np

import mpcgpu
from mpcgpu.nn import PrivateModel, PrivateSGD, init_params, share_params, train_step
from mpcgpu.nn.models import lenet
from mpcgpu.nn import spec as S
from mpcgpu.sharing.arithmetic import share


def residual_bn() -> S.Model:
    body = S.Sequential.named(
        ("conv1", S.Conv2d(8, 8, 3, padding=1, bias=False)),
        ("bn1", S.BatchNorm2d(8)),
        ("relu1", S.ReLU()),
        ("conv2", S.Conv2d(8, 16, 3, padding=1, bias=False)),
        ("bn2", S.BatchNorm2d(16)),
    )
    shortcut = S.Sequential((S.Conv2d(8, 16, 1, bias=False), S.BatchNorm2d(16)))
    net = S.Sequential.named(
        ("conv1", S.Conv2d(3, 8, 3, padding=1)),
        ("bn1", S.BatchNorm2d(8)),
        ("relu", S.ReLU()),
        ("block", S.Residual(body, shortcut, relu=True)),
        ("pool", S.MaxPool2d(2)),
        ("avgpool", S.AdaptiveAvgPool2d(1)),
        ("flatten", S.Flatten()),
        ("fc", S.Linear(16, 10)),
    )
    return S.Model("golden_residual_bn", (3, 8, 8), 10, net, "golden test net")


def words(share_obj) -> np.ndarray:
    """The revealed uint64 ring words of a share (to all three parties)."""
    return np.ascontiguousarray(share_obj.rt.backend.to_host(share_obj.reveal_raw()), dtype=np.uint64)


def digest(arr) -> dict:
    arr = np.ascontiguousarray(np.asarray(arr, dtype=np.uint64))
    return {"sha256": hashlib.sha256(arr.tobytes()).hexdigest(), "count": int(arr.size)}


def run(model: S.Model, batch: int, stages: dict, rng):
    params = init_params(model, rng)
    for name, p in params.items():  # batch-norm statistics away from 0 / 1
        if name.endswith("running_var"):
            params[name] = p + rng.uniform(0.5, 1.5, p.shape)
        elif name.endswith("running_mean"):
            params[name] = p + rng.normal(0, 0.1, p.shape)
    x = rng.normal(0, 1, (batch, *model.input_shape))
    y = rng.integers(0, model.num_classes, batch)
    rt = mpcgpu.init()
    shared = share_params(model, params if rt.rank == 0 else None, src=0)
    xs = share(x if rt.rank == 1 else None, src=1)
    ys = share(y if rt.rank == 2 else None, src=2, integer=True)
    pm = PrivateModel(model, shared)
    stages[f"{model.name}/infer_exact"] = digest(words(pm.forward(xs, exact=True)))
    stages[f"{model.name}/infer"] = digest(words(pm.forward(xs)))
    # clip=False: the update as pinned before the redesign (clipping, the default since issue 20,
    # adds a private comparison and so draws other words)
    opt = PrivateSGD(pm.params, pm.trainable(), lr=0.05, momentum=0.9, weight_decay=1e-4, clip=False)
    train_step(pm, opt, xs, ys, lr=0.05)
    for name in sorted(pm.params):
        stages[f"{model.name}/step1/{name}"] = digest(words(pm.params[name]))
    stages[f"{model.name}/after_step"] = digest(words(pm.forward(xs, exact=True)))


def main(out):
    rng = np.random.default_rng(20261207)
    stages: dict = {}
    run(lenet(), 3, stages, rng)
    run(residual_bn(), 2, stages, rng)
    if mpcgpu.init().rank == 0:
        with open(out, "w") as f:
            json.dump(stages, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    main(sys.argv[1])
