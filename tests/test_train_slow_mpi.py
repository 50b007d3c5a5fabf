"""AlexNet and VGG-16 (CIFAR-10 shapes, synthetic data) train privately in step with their
plaintext twins over 20 steps, a batch-norm variant included (issue 11).  Minutes each:
marked slow (``RUN_SLOW=1 bash tests/run.sh``, or ``-m slow``).
"""

import numpy as np
import pytest

from mpcgpu.jobs.bench import bench_params
from mpcgpu.nn.loss import cross_entropy, cross_entropy_grad, one_hot
from mpcgpu.nn.models import get_model
from mpcgpu.nn.optim import PrivateSGD
from mpcgpu.nn.plain import SGD, PlainModel, softmax_cross_entropy
from mpcgpu.nn.private import PrivateModel, share_params
from reference import enc, shared

pytestmark = [pytest.mark.mpi(min_size=3), pytest.mark.slow]
STEPS = 20


def synthetic(rng, batch, shape, classes):
    """Images with a class-dependent pattern (something to learn) plus noise."""
    labels = rng.integers(0, classes, batch)
    patterns = rng.standard_normal((classes,) + shape)
    x = 0.5 * patterns[labels] + rng.standard_normal((batch,) + shape)
    return enc(x), labels


@pytest.mark.parametrize(
    "name,batch,lr", [("alexnet_cifar10", 8, 0.01), ("vgg16_cifar10", 4, 0.005), ("vgg16_bn_cifar10", 4, 0.01)]
)
def test_twenty_steps_track_the_twin(rt, name, batch, lr):
    model = get_model(name)
    params = {k: enc(v) for k, v in bench_params(model, 1).items()}
    rng = np.random.default_rng(2)
    x, y = synthetic(rng, batch, model.input_shape, model.num_classes)
    pm = PrivateModel(model, share_params(model, params if rt.rank == 0 else None, src=0))
    opt = PrivateSGD(pm.params, pm.trainable(), lr=lr, momentum=0.9)
    plain = PlainModel(model, params)
    popt = SGD(plain.params, lr, momentum=0.9, spec=model)
    sx = shared(rt, x)
    oh = one_hot(shared(rt, y, integer=True), model.num_classes)
    losses, ref = [], []
    for _ in range(STEPS):
        logits = pm.forward(sx, train=True)
        losses.append(float(cross_entropy(logits, oh).reveal()))  # diagnostic reveal
        pm.set_params(opt.step(pm.backward(cross_entropy_grad(logits, oh)), batch))
        loss, d = softmax_cross_entropy(plain.forward(x, train=True), y)
        plain.backward(d)
        popt.step(plain.grads)
        ref.append(loss)
    losses, ref = np.array(losses), np.array(ref)
    assert ref[-1] < ref[0]  # the twin learns something
    assert np.all(np.abs(losses - ref) <= 0.05 * np.abs(ref) + 0.02), np.c_[losses, ref]
