"""Average and adaptive average pooling on three real MPI ranks (issue 5).

References are plain loops over output positions in NumPy, written from PyTorch's
definitions (zero padding, ``count_include_pad``, adaptive windows
``[floor(i*H/out), ceil((i+1)*H/out))``), independent of the code under test.
"""

import numpy as np
import pytest

from mpcgpu.errors import ProtocolError
from mpcgpu.protocols import pooling
from reference import enc, shared

pytestmark = pytest.mark.mpi(min_size=3)
F = 16
ULP = 2.0**-F


def avg_pool_ref(x, k, s, p, count_include_pad=True):
    kh, kw = (k, k) if np.isscalar(k) else k
    sh, sw = (s, s) if np.isscalar(s) else s
    ph, pw = (p, p) if np.isscalar(p) else p
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    ones = np.pad(np.ones((h, w)), ((ph, ph), (pw, pw)))
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    out = np.zeros((n, c, ho, wo))
    for i in range(ho):
        for j in range(wo):
            win = xp[:, :, i * sh : i * sh + kh, j * sw : j * sw + kw]
            count = kh * kw if count_include_pad else ones[i * sh : i * sh + kh, j * sw : j * sw + kw].sum()
            out[:, :, i, j] = win.sum(axis=(2, 3)) / count
    return out


def adaptive_ref(x, out_hw):
    n, c, h, w = x.shape
    oh, ow = out_hw
    out = np.zeros((n, c, oh, ow))
    for i in range(oh):
        r0, r1 = (i * h) // oh, -((-(i + 1) * h) // oh)
        for j in range(ow):
            c0, c1 = (j * w) // ow, -((-(j + 1) * w) // ow)
            out[:, :, i, j] = x[:, :, r0:r1, c0:c1].mean(axis=(2, 3))
    return out


def check(rt, got, ref, x, divisor_is_power_of_two):
    """Below 1 ulp for shifts; below 2 ulp + 2^-28 relative otherwise (two truncated parts)."""
    err = np.abs(got - ref) / ULP
    bound = 1.0 if divisor_is_power_of_two else 2.0 + np.abs(ref) / ULP * 2.0**-28
    assert (err < bound).all(), (err.max(), np.max(err - bound))


def division_bytes(outputs, kk):
    """Bytes per party of the division: a truncation (16 bytes per element and party) of one
    element per output for a power-of-two divisor, two otherwise, none for 1."""
    return 0 if kk == 1 else 16 * outputs * (1 if kk & (kk - 1) == 0 else 2)


CASES = [  # (input shape, kernel, stride, padding): LeNet/AlexNet/VGG/ResNet-style windows
    ((4, 3, 32, 32), 2, 2, 0),
    ((2, 8, 15, 15), 2, 2, 0),  # odd size: the last row/column is dropped (floor)
    ((2, 5, 16, 16), 3, 2, 0),
    ((2, 5, 16, 16), 3, 2, 1),
    ((2, 4, 13, 13), 3, 1, 1),
    ((1, 2, 9, 12), (3, 2), (2, 1), (1, 0)),
    ((3, 4, 8, 8), 4, 4, 0),
    ((2, 3, 5, 5), 1, 1, 0),
]


@pytest.mark.parametrize("shape,k,s,p", CASES)
def test_avg_pool2d_matches_numpy(rt, seeded, shape, k, s, p):
    x = enc(seeded.uniform(-20, 20, shape))
    sx = shared(rt, x)
    with rt.comm.measure() as m:
        y = pooling.avg_pool2d(sx, k, s, p)
    kk = np.prod((k, k) if np.isscalar(k) else k)
    ref = avg_pool_ref(x, k, s, p)
    assert y.shape == ref.shape and y.scale == F
    assert m.rounds == (0 if kk == 1 else 2)
    assert m.bytes_sent == division_bytes(ref.size, kk)
    check(rt, y.reveal(), ref, x, kk & (kk - 1) == 0)
    # the method on the share gives the same result
    assert y.shape == sx.avg_pool2d(k, s, p).shape


def test_avg_pool2d_count_include_pad_false(rt, seeded):
    x = enc(seeded.uniform(-20, 20, (2, 3, 11, 11)))
    y = pooling.avg_pool2d(shared(rt, x), 3, 2, 1, count_include_pad=False)
    ref = avg_pool_ref(x, 3, 2, 1, count_include_pad=False)
    check(rt, y.reveal(), ref, x, False)
    y = pooling.avg_pool2d(shared(rt, x), 3, 2, 1)  # PyTorch's default
    check(rt, y.reveal(), avg_pool_ref(x, 3, 2, 1), x, False)


ADAPTIVE = [  # (input H, W) -> output: ResNet (7->1, 4->1), AlexNet (6->6, 12->6, 13->6),
    ((7, 7), (1, 1)),  # VGG (14->7, 7->7, 1->7 on CIFAR), mixed cases
    ((4, 4), 1),
    ((6, 6), (6, 6)),
    ((12, 12), 6),
    ((13, 13), (6, 6)),
    ((14, 14), 7),
    ((7, 7), 7),
    ((1, 1), (7, 7)),
    ((2, 3), (4, 6)),
    ((8, 5), (2, None)),
]


@pytest.mark.parametrize("hw,out", ADAPTIVE)
def test_adaptive_avg_pool2d_matches_numpy(rt, seeded, hw, out):
    x = enc(seeded.uniform(-20, 20, (3, 4, *hw)))
    with rt.comm.measure() as m:
        y = shared(rt, x).adaptive_avg_pool2d(out)
    oh, ow = (out, out) if np.isscalar(out) else out
    oh, ow = oh or hw[0], ow or hw[1]
    ref = adaptive_ref(x, (oh, ow))
    assert y.shape == ref.shape
    rows = {-((-(i + 1) * hw[0]) // oh) - (i * hw[0]) // oh for i in range(oh)}
    cols = {-((-(j + 1) * hw[1]) // ow) - (j * hw[1]) // ow for j in range(ow)}
    sizes = {a * b for a in rows for b in cols}
    # 2 rounds for sharing + 2 for the division (none when every window holds one value)
    assert m.rounds == 2 + (0 if sizes == {1} else 2)
    size = next(iter(sizes))
    check(rt, y.reveal(), ref, x, len(sizes) == 1 and size & (size - 1) == 0)


def test_pooling_backward_is_the_adjoint(rt, seeded):
    """<pool(x), g> == <x, pool_backward(g)> for every pooling (checked on revealed values)."""
    x = enc(seeded.uniform(-4, 4, (2, 3, 13, 13)))
    sx = shared(rt, x)
    for fwd, bwd in [
        (lambda s: pooling.avg_pool2d(s, 3, 2, 1), lambda g: pooling.avg_pool2d_backward(g, x.shape, 3, 2, 1)),
        (lambda s: pooling.avg_pool2d(s, 2, 2, 0), lambda g: pooling.avg_pool2d_backward(g, x.shape, 2, 2, 0)),
        (
            lambda s: pooling.avg_pool2d(s, 3, 2, 1, count_include_pad=False),
            lambda g: pooling.avg_pool2d_backward(g, x.shape, 3, 2, 1, count_include_pad=False),
        ),
        (lambda s: pooling.adaptive_avg_pool2d(s, 6), lambda g: pooling.adaptive_avg_pool2d_backward(g, x.shape)),
        (lambda s: pooling.adaptive_avg_pool2d(s, 1), lambda g: pooling.adaptive_avg_pool2d_backward(g, x.shape)),
    ]:
        y = fwd(sx).reveal()
        g = enc(seeded.uniform(-1, 1, y.shape))
        with rt.comm.measure() as m:
            gx = bwd(shared(rt, g))
        assert m.rounds == 4  # share (2) + division (2)
        gx = gx.reveal()
        assert gx.shape == x.shape
        np.testing.assert_allclose((y * g).sum(), (x * gx).sum(), rtol=1e-4, atol=1e-2)
    # repetition (1x1 -> 7x7) backward sums the copies, with no communication
    x1 = enc(seeded.uniform(-4, 4, (2, 3, 1, 1)))
    g = enc(seeded.uniform(-1, 1, (2, 3, 7, 7)))
    sg = shared(rt, g)
    with rt.comm.measure() as m:
        gx = pooling.adaptive_avg_pool2d_backward(sg, x1.shape)
    assert m.rounds == 0
    np.testing.assert_allclose(gx.reveal(), g.sum(axis=(2, 3), keepdims=True), atol=ULP)


def test_pooling_errors(rt, seeded):
    s = shared(rt, enc(seeded.uniform(-1, 1, (1, 2, 6, 6))))
    with pytest.raises(ProtocolError, match="NCHW"):
        pooling.avg_pool2d(s.reshape(2, 6, 6), 2)
    with pytest.raises(ProtocolError, match="padding"):
        pooling.avg_pool2d(s, 2, 2, 2)
    with pytest.raises(ProtocolError, match="does not fit"):
        pooling.avg_pool2d(s, 7)
    with pytest.raises(ProtocolError, match="positive"):
        pooling.adaptive_avg_pool2d(s, 0)
