"""Data-parallel private training over two groups of three (six ranks, issue 22):

* the role all-reduce of the gradient shares reconstructs the sum of the two groups'
  gradients, word for word (the "done when" item);
* two groups training on the halves of each global batch follow the plaintext twin trained
  on the whole batch (dropout masks included), the loss goes down, and the two copies of
  the model and optimiser state stay identical word for word (hashes compared every step);
* with batch norm (statistics per group's slice) the copies stay identical too, and the
  running statistics are group 0's.

Run by tests/run.sh as ``mpiexec -n 6 ... --only-mpi tests/test_*_mpi6.py``; skipped elsewhere."""

import numpy as np
import pytest

from mpcgpu.errors import ProtocolError
from mpcgpu.nn import spec as S
from mpcgpu.nn.loss import cross_entropy_grad, one_hot
from mpcgpu.nn.optim import PrivateSGD
from mpcgpu.nn.plain import SGD, PlainModel, init_params, softmax_cross_entropy
from mpcgpu.nn.private import PrivateModel, share_params
from mpcgpu.nn.trainer import allreduce_grads, state_arrays, train_step
from reference import enc, shared

pytestmark = pytest.mark.mpi(min_size=6)
CLASSES = 4
SHAPE = (1, 8, 8)


def _world():
    from mpi4py import MPI

    return MPI.COMM_WORLD


def small_model(bn: bool, dropout: float = 0.0):
    """conv 3x3 (3 channels) [-> batch norm] -> ReLU -> max-pool 2 -> flatten [-> dropout] -> linear 27 -> 4."""
    layers = [("conv", S.Conv2d(1, 3, 3))]
    if bn:
        layers.append(("bn", S.BatchNorm2d(3)))
    layers += [("relu", S.ReLU()), ("pool", S.MaxPool2d(2)), ("flat", S.Flatten())]
    if dropout:
        layers.append(("drop", S.Dropout(dropout)))
    layers.append(("fc", S.Linear(27, CLASSES)))
    net = S.Sequential(tuple(layer for _, layer in layers), tuple(name for name, _ in layers))
    return S.Model("groups-small", SHAPE, CLASSES, net)


def synthetic(rng, batch):
    """Images with a class-dependent pattern (something to learn) plus noise, on the grid."""
    labels = rng.integers(0, CLASSES, batch)
    patterns = np.random.default_rng(0).standard_normal((CLASSES,) + SHAPE)
    return enc(patterns[labels] + 0.5 * rng.standard_normal((batch,) + SHAPE)), labels


def test_all_reduced_gradient_shares_reconstruct_the_sum_of_the_groups_gradients_word_for_word(rt6):
    rt = rt6
    model = small_model(bn=True)
    params = enc_params(init_params(model, rng=1))
    pm = PrivateModel(model, share_params(model, params if rt.rank == 0 else None, src=0))
    x, y = synthetic(np.random.default_rng(40 + rt.group), 4)  # each group its own samples
    logits = pm.forward(shared(rt, x), train=True)
    grads = pm.backward(cross_entropy_grad(logits, one_hot(shared(rt, y, integer=True), CLASSES)))
    own = {n: g.reveal_raw() for n, g in grads.items()}  # this group's gradient (test only)
    summed = allreduce_grads(grads, rt.role)
    assert sorted(summed) == sorted(grads)
    total = {n: g.reveal_raw() for n, g in summed.items()}
    everything = _world().allgather((rt.group, rt.rank, own))
    by_group = {g: o for g, p, o in everything if p == rt.rank}
    for name in grads:
        a, b = by_group[0][name], by_group[1][name]
        assert a.dtype == np.uint64 and not np.array_equal(a, b)  # the groups' gradients differ
        want = a + b  # uint64: wraps, the sum mod 2^64
        assert total[name].dtype == np.uint64
        assert np.array_equal(total[name], want), name
    # the components themselves were summed (not re-shared): each party's pair is the sum of its ranks'
    comps = _world().allgather((rt.group, rt.rank, {n: (g.first, g.second) for n, g in grads.items()}))
    mine = {g: c for g, p, c in comps if p == rt.rank}
    for name, g in summed.items():
        assert np.array_equal(g.first, mine[0][name][0] + mine[1][name][0])
        assert np.array_equal(g.second, mine[0][name][1] + mine[1][name][1])


def enc_params(params):
    return {k: enc(v) for k, v in params.items()}


def test_two_groups_train_like_one_global_batch_and_stay_identical(rt6):
    rt = rt6
    batch, lr, steps = 8, 0.1, 4
    model = small_model(bn=False, dropout=0.25)
    params = enc_params(init_params(model, rng=2))
    pm = PrivateModel(model, share_params(model, params if rt.rank == 0 else None, src=0), dropout_seed=5)
    opt = PrivateSGD(pm.params, pm.trainable(), lr=lr, momentum=0.9)
    plain = PlainModel(model, params, seed=5)
    popt = SGD(plain.params, lr, momentum=0.9, spec=model)
    part = rt.place.share_of(batch)
    assert len(part) == batch // 2 and part.start == 4 * rt.group
    rng = np.random.default_rng(9)  # the same global batches on every rank
    losses, ref = [], []
    for step in range(steps):
        x, y = synthetic(rng, batch)
        pm.batch_part = (batch, part.start)  # the global batch's dropout masks (as the Trainer sets it)
        sx = shared(rt, x[part.start : part.stop])
        sy = shared(rt, y[part.start : part.stop], integer=True)
        result = train_step(pm, opt, sx, sy, lr, reveal_loss_to=0, batch_size=batch)
        loss, d = softmax_cross_entropy(plain.forward(x, train=True), y)
        plain.backward(d)
        popt.step(plain.grads)
        if rt.rank == 0:
            losses.append(result.loss)
            ref.append(loss)
        else:
            assert result.loss is None
        rt.role.agree(state_arrays(pm, opt), f"the state after step {step + 1}")  # identical copies
    assert opt.steps == steps
    if rt.rank == 0:
        losses, ref = np.array(losses), np.array(ref)
        assert ref[-1] < ref[0] and losses[-1] < losses[0]  # both learn
        assert np.all(np.abs(losses - ref) <= 0.02 * ref + 0.01), np.c_[losses, ref]
    for name in pm.trainable():
        w, r, w0 = pm.params[name].reveal(), plain.params[name], params[name]
        assert np.linalg.norm(w - r) <= 0.05 * np.linalg.norm(r - w0) + 8 * 2.0**-16 * np.sqrt(w.size), name


def test_with_batch_norm_the_copies_stay_identical_and_hold_group_0s_running_statistics(rt6):
    rt = rt6
    batch, lr = 6, 0.05
    model = small_model(bn=True)
    params = enc_params(init_params(model, rng=3))
    pm = PrivateModel(model, share_params(model, params if rt.rank == 0 else None, src=0))
    opt = PrivateSGD(pm.params, pm.trainable(), lr=lr, momentum=0.9)
    part = rt.place.share_of(batch)
    rng = np.random.default_rng(11)
    for step in range(2):
        x, y = synthetic(rng, batch)
        sx = shared(rt, x[part.start : part.stop])
        sy = shared(rt, y[part.start : part.stop], integer=True)
        before = pm.params["bn.running_mean"].reveal_raw()
        train_step(pm, opt, sx, sy, lr, batch_size=batch)
        rt.role.agree(state_arrays(pm, opt), f"the state after step {step + 1}")
    # the running statistics moved (by group 0's slice) and are the same on every rank
    mean = pm.params["bn.running_mean"].reveal()
    assert not np.array_equal(pm.params["bn.running_mean"].reveal_raw(), before)
    seen = _world().allgather((rt.group, rt.rank, mean))
    assert all(np.array_equal(m, seen[0][2]) for _, _, m in seen)
    # a copy that drifts is caught by the hash check (what a checkpoint runs first)
    drift = state_arrays(pm, opt)
    if rt.group == 1:
        drift[0] = drift[0] + np.uint64(1)
    with pytest.raises(ProtocolError, match="group 1 differs from group 0"):
        rt.role.agree(drift, "a drifted state")
