"""Every value revealed as a real is exactly rounded (issue 20, point 2), on three ranks.

A tracer records, in order, every truncation (``prob``: the default MSB-corrected one or
ABY3; ``exact``: an exact floor -- ``round_exact``, the ``"exact"`` mode of the layers after
the last product) and every reveal of a real (scale > 0), with their element counts.  For
every output path -- ``infer --output logits | probs | topk``, the heads of every zoo model
and of the ONNX test graphs, heads that end after their last product (global average pool,
flatten, an unfolded batch norm, a residual block), ``train --reveal-to`` (weights and
batch-norm statistics) and the revealed loss -- the revealed elements come out of an exact
rounding with no probabilistic truncation after it.  And the exact logits of a conv .
global average pool . flatten head are identical across passes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile

import numpy as np
import pytest

import mpcgpu.protocols.rounding as rounding_mod
import mpcgpu.sharing.arithmetic as arith
from mpcgpu.nn import spec as S
from mpcgpu.nn.models import get_model, list_models
from mpcgpu.nn.plain import PlainModel, init_params
from mpcgpu.nn.private import PrivateModel, share_params
from mpcgpu.sharing.arithmetic import ArithmeticShare, share

pytestmark = pytest.mark.mpi(min_size=3)


class Tracer:
    """``events``: ``("prob" | "exact" | "reveal", elements)`` in the order they happen."""

    def __init__(self, monkeypatch):
        self.events = []
        msb_in_arith = arith.msb_corrected
        msb_in_rounding = rounding_mod.msb_corrected
        aby3 = arith.aby3
        reveal = ArithmeticShare.reveal

        def arith_msb(rt, shape, bits, **kw):
            if kw.get("mode", "prob") == "prob":
                self.events.append(("prob", int(np.prod(shape))))
            return msb_in_arith(rt, shape, bits, **kw)

        def rounding_msb(rt, shape, bits, **kw):
            assert kw.get("keep")
            self.events.append(("exact", int(np.prod(shape))))
            return msb_in_rounding(rt, shape, bits, **kw)

        def arith_aby3(rt, first, second, bits):
            self.events.append(("prob", first.size))
            return aby3(rt, first, second, bits)

        def traced_reveal(share_obj, to=None):
            if share_obj.scale > 0:
                self.events.append(("reveal", share_obj.size))
            return reveal(share_obj, to)

        monkeypatch.setattr(arith, "msb_corrected", arith_msb)
        monkeypatch.setattr(rounding_mod, "msb_corrected", rounding_msb)
        monkeypatch.setattr(arith, "aby3", arith_aby3)
        monkeypatch.setattr(ArithmeticShare, "reveal", traced_reveal)

    def clear(self):
        self.events.clear()

    def check_reveals(self, equal=True):
        """Every reveal of a real is preceded by an exact rounding of at least (``equal``:
        exactly) as many elements, with no probabilistic truncation between them; returns
        the number of elements revealed."""
        revealed = 0
        for i, (kind, n) in enumerate(self.events):
            if kind != "reveal":
                continue
            before = self.events[:i]
            since = [e for e in before[::-1] if e[0] != "reveal"]
            assert since, "a real revealed without any rounding"
            last_kind, last_n = since[0]
            assert last_kind == "exact", f"the value revealed ({n} elements) was last truncated probabilistically"
            assert last_n == n if equal else last_n >= n, (last_n, n)
            revealed += n
        return revealed


@pytest.fixture
def tracer(monkeypatch):
    return Tracer(monkeypatch)


def _has_relu(layer) -> bool:
    return isinstance(layer, S.ReLU) or any(
        isinstance(node, S.ReLU) or (isinstance(node, S.Residual) and node.relu) for _, node in S.walk(layer)
    )


def head_of(seq, in_shape):
    """The layers of ``seq`` after its last ReLU (recursively), and their input shape."""
    kids = seq.children()
    shapes = [tuple(in_shape)]
    for _, child in kids:
        shapes.append(tuple(S.output_shape(child, shapes[-1])))
    with_relu = [i for i, (_, c) in enumerate(kids) if _has_relu(c)]
    if not with_relu:
        return [c for _, c in kids], shapes[0]
    i = with_relu[-1]
    rest = [c for _, c in kids[i + 1 :]]
    if isinstance(kids[i][1], S.Sequential):
        inner, shape = head_of(kids[i][1], shapes[i])
        return inner + rest, shape
    return rest, shapes[i + 1]


def _zoo_heads():
    seen, out = set(), []
    for name in list_models():
        model = get_model(name)
        layers, shape = head_of(model.net, model.input_shape)
        key = (repr(layers), shape)
        if key not in seen:
            seen.add(key)
            out.append((name, layers, shape, model.num_classes))
    return out


def _run_exact(rt, model, batch, seed=3):
    rng = np.random.default_rng(seed)
    params = init_params(model, rng)
    x = rng.normal(0, 1, (batch,) + tuple(model.input_shape))
    pm = PrivateModel(model, share_params(model, params if rt.rank == 0 else None))
    xs = share(x if rt.rank == 0 else None, src=0)
    return pm, xs, PlainModel(model, params).forward(x, need_grad=False)


@pytest.mark.parametrize("name,layers,shape,classes", _zoo_heads(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_zoo_head_reveals_exactly_rounded_logits(rt, tracer, name, layers, shape, classes):
    model = S.Model(f"{name}_head", shape, classes, S.Sequential(tuple(layers)))
    pm, xs, ref = _run_exact(rt, model, 2)
    tracer.clear()
    got = pm.forward(xs, exact=True).reveal()
    assert tracer.check_reveals() == 2 * classes
    assert np.abs(got - ref).max() < 1e-3 * max(1.0, np.abs(ref).max())


def gap_head(channels=6, hw=4, bn=False, pool=None):
    """conv . ReLU . conv [. ReLU . batch norm (not folded)] . global average pool . flatten:
    an imported network may end so (no final Linear)."""
    pairs = [
        ("conv1", S.Conv2d(3, 8, 3, padding=1)),
        ("relu1", S.ReLU()),
        ("conv2", S.Conv2d(8, channels, 3, padding=1)),
    ]
    if bn:
        pairs += [("relu2", S.ReLU()), ("bn", S.BatchNorm2d(channels))]
    pairs += [("gap", pool or S.AdaptiveAvgPool2d(1)), ("flatten", S.Flatten())]
    return S.Model("gap_head", (3, hw, hw), channels, S.Sequential.named(*pairs))


def residual_tail():
    """A network whose last product is inside a residual block: stem conv, a block with a
    1x1-conv shortcut and its ReLU, global average pool, flatten."""
    body = S.Sequential.named(("conv", S.Conv2d(4, 5, 3, padding=1)), ("relu", S.ReLU()), ("conv2", S.Conv2d(5, 5, 1)))
    block = S.Residual(body, S.Sequential((S.Conv2d(4, 5, 1),)), relu=True)
    net = S.Sequential.named(
        ("stem", S.Conv2d(3, 4, 3, padding=1)), ("block", block), ("gap", S.AdaptiveAvgPool2d(1)), ("flat", S.Flatten())
    )
    return S.Model("residual_tail", (3, 4, 4), 5, net)


@pytest.mark.parametrize(
    "make,equal",
    [
        (gap_head, True),
        (lambda: gap_head(bn=True), True),
        (lambda: gap_head(hw=3), False),  # 1/9: two integer factors, two exact roundings each
        (lambda: gap_head(hw=2, pool=S.AvgPool2d(2)), True),
        (residual_tail, True),
    ],
    ids=["conv-gap", "conv-relu-bn-gap", "gap-3x3", "avgpool", "residual"],
)
def test_heads_after_the_last_product_are_exactly_rounded(rt, tracer, make, equal):
    model = make()
    pm, xs, ref = _run_exact(rt, model, 3)
    tracer.clear()
    got = pm.forward(xs, exact=True).reveal()
    assert tracer.check_reveals(equal=equal) == got.size
    assert np.abs(got - ref).max() < 1e-3 * max(1.0, np.abs(ref).max())


def test_exact_logits_of_a_conv_gap_flatten_head_are_identical_across_passes(rt):
    """The head alone (its input shared directly): the exact logits are a function of the
    input; in a deeper network they also depend on the inner probabilistic truncations
    (docs/design.md, "What a truncation leaks")."""
    net = S.Sequential.named(
        ("conv", S.Conv2d(3, 10, 3, padding=1)), ("gap", S.AdaptiveAvgPool2d(1)), ("flat", S.Flatten())
    )
    model = S.Model("conv_gap_flatten", (3, 4, 4), 10, net)
    pm, xs, _ = _run_exact(rt, model, 64, seed=5)
    first = pm.forward(xs, exact=True).reveal_raw()
    second = pm.forward(xs, exact=True).reveal_raw()
    assert first.size == 640
    differ = int(np.count_nonzero(first != second))
    assert differ == 0, f"{differ}/{first.size} exact logits differ between two passes"


@pytest.mark.parametrize("stem", ["chain", "residual"])
def test_onnx_graphs_reveal_exactly_rounded_logits(rt, tracer, stem):
    pytest.importorskip("onnx")
    import onnx_graphs
    from mpcgpu.interop.onnx_import import import_onnx

    make = {"chain": onnx_graphs.chain_net, "residual": onnx_graphs.residual_net}[stem]
    model, params = import_onnx(make(), name=stem)
    rng = np.random.default_rng(2)
    x = rng.normal(0, 1, (3,) + tuple(model.input_shape))
    pm = PrivateModel(model, share_params(model, params if rt.rank == 0 else None))
    xs = share(x if rt.rank == 0 else None, src=0)
    tracer.clear()
    got = pm.forward(xs, exact=True).reveal()
    assert tracer.check_reveals() == got.size == 3 * model.num_classes


class FakeData:
    """The part of a dataset shard set that ``infer.classify`` reads: this rank's components."""

    def __init__(self, xs):
        self.xs, self.arrays = xs, {"images": None}

    def info(self, name):
        return argparse.Namespace(scale=self.xs.scale)

    def batches(self, names, batch_size, stop):
        for lo in range(0, stop, batch_size):
            yield (self.xs.first[lo : lo + batch_size], self.xs.second[lo : lo + batch_size])


@pytest.mark.parametrize("output", ["logits", "probs", "topk:3"])
def test_infer_outputs_reveal_exactly_rounded_values(rt, tracer, output):
    from mpcgpu.jobs.infer import classify, parse_output

    model = gap_head(channels=10)  # a head without a final Linear
    pm, xs, ref = _run_exact(rt, model, 4)
    tracer.clear()
    arrays, _ = classify(rt, pm, FakeData(xs), 4, 2, parse_output(output), owner=0)
    revealed = tracer.check_reveals(equal=False)
    assert revealed == (4 * 10 if output != "topk:3" else 4 * 3)
    if rt.rank == 0:
        key = {"logits": "logits", "probs": "probs", "topk:3": "scores"}[output]
        assert arrays[key].shape[0] == 4


def bn_net():
    net = S.Sequential.named(
        ("conv", S.Conv2d(2, 4, 3, padding=1)),
        ("bn", S.BatchNorm2d(4)),
        ("relu", S.ReLU()),
        ("gap", S.AdaptiveAvgPool2d(1)),
        ("flat", S.Flatten()),
        ("fc", S.Linear(4, 3)),
    )
    return S.Model("bn_net", (2, 4, 4), 3, net)


@pytest.mark.parametrize("reveal_to", [None, 1])
def test_train_reveal_to_and_the_loss_are_exactly_rounded(rt, tracer, reveal_to):
    """The last training step (loss revealed) and ``mpcgpu train``'s output stage with
    ``--reveal-to``: every revealed weight and batch-norm statistic, and the loss, come out
    of an exact rounding.  Without ``--reveal-to`` the statistics are updated as before
    (probabilistically) and nothing of them is revealed."""
    from mpcgpu.jobs.train import _write_outputs
    from mpcgpu.nn import PrivateSGD, train_step

    model = bn_net()
    rng = np.random.default_rng(4)
    params = init_params(model, rng)
    pm = PrivateModel(model, share_params(model, params if rt.rank == 0 else None))
    pm.exact_running = reveal_to is not None  # what `mpcgpu train` sets
    opt = PrivateSGD(pm.params, pm.trainable(), lr=0.05, momentum=0.9)
    x = rng.normal(0, 1, (4, 2, 4, 4))
    y = rng.integers(0, 3, 4)
    xs = share(x if rt.rank == 0 else None, src=0)
    ys = share(y if rt.rank == 0 else None, src=0, integer=True)
    work = rt.comm.bcast_object(tempfile.mkdtemp(prefix="mpcgpu-reveal-") if rt.rank == 0 else None)
    try:
        tracer.clear()
        train_step(pm, opt, xs, ys, lr=0.05, reveal_loss_to=0)
        stats = sum(pm.params[n].size for n in pm.params if n.endswith(("running_mean", "running_var")))
        exact_in_step = sum(n for k, n in tracer.events if k == "exact")
        assert exact_in_step == 1 + (stats if reveal_to is not None else 0)  # the loss, the statistics
        if reveal_to is None:
            return
        args = argparse.Namespace(out=os.path.join(work, "trained"), reveal_to=reveal_to)
        _write_outputs(rt, args, pm, dict(pm.params, **opt.weights(exact=True)), "run")  # Trainer.trained_params
        revealed = [n for k, n in tracer.events if k == "reveal"]
        exact = [n for k, n in tracer.events if k == "exact"]
        total = sum(p.size for p in S.param_specs(model))
        assert sum(revealed) == 1 + total  # the loss, every parameter
        assert sum(exact) == sum(revealed)  # each one through exactly one exact rounding
    finally:
        rt.comm.barrier()
        if rt.rank == 0:
            shutil.rmtree(work, ignore_errors=True)
