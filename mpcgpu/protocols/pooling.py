"""Average pooling of NCHW arithmetic shares (and the gradients for training).

A window sum is linear, hence local: each component is summed over the window
(wrap-around uint64 sums are exact mod 2^64).  Non-overlapping windows use one
reshape and sum; overlapping ones add ``kh*kw`` strided views (a loop over the
kernel offsets, never over pixels).  Everything runs on the runtime's array
module, NumPy or CuPy alike.

Dividing by the window size is a multiplication by a public real
(:func:`~mpcgpu.sharing.arithmetic.mul_public`), the only step with
communication: one truncation call of 2 rounds (0 when the divisor is 1).

* A power-of-two divisor (2x2, 4x4 windows) is an exact shift: one truncated
  element per output, error below 1 unit in the last place (``ulp = 2^-f``).
* Otherwise ``1/k`` is split into two integer factors of at most 15 bits (so
  that any encodable window sum times either stays below ``2^62``: no wrap
  anywhere in the range) truncated in the same call: two elements per output,
  error below 2 ulp plus ``2^-28`` relative, for every encodable input.

Padding follows PyTorch's defaults: zeros, and ``count_include_pad=True`` (the
divisor is always ``kh*kw``); ``count_include_pad=False`` divides each output by
the number of real input elements in its window (public integers).  Output
sizes round down (``ceil_mode`` is not supported).  Adaptive pooling uses
PyTorch's windows ``[floor(i*H/out), ceil((i+1)*H/out))`` for every size pair,
so it is exact wherever PyTorch's is (same divisors, same rounding bounds).
"""

from __future__ import annotations


import numpy  # public geometry only

from ..errors import ProtocolError
from mpcgpu.ring.geometry import pool_geometry, window_index, window_offsets
from ..sharing.arithmetic import ArithmeticShare, mul_public


# -- local window sums -------------------------------------------------------------------


def _window_sum(a, xp, kh, kw, sh, sw, ph, pw, ho, wo):
    """Sum of every (kh, kw) window of one padded component (uint64, wraps mod 2^64)."""
    if ph or pw:
        a = xp.pad(a, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    n, c = a.shape[:2]
    if (kh, kw) == (sh, sw):
        a = a[:, :, : ho * kh, : wo * kw]
        return a.reshape(n, c, ho, kh, wo, kw).sum(axis=(3, 5), dtype=a.dtype)
    acc = None
    for _, i, j in window_offsets(kh, kw):
        view = a[window_index(i, j, sh, sw, ho, wo)]
        acc = view.copy() if acc is None else acc + view
    return acc


def _window_scatter(g, xp, in_hw, kh, kw, sh, sw, ph, pw):
    """Adjoint of :func:`_window_sum`: add each output's value to every input of its window."""
    n, c, ho, wo = g.shape
    h, w = in_hw
    if (kh, kw) == (sh, sw) and not (ph or pw):
        full = xp.broadcast_to(g[:, :, :, None, :, None], (n, c, ho, kh, wo, kw))
        full = full.reshape(n, c, ho * kh, wo * kw)
        out = xp.zeros((n, c, h, w), dtype=g.dtype)
        out[:, :, : ho * kh, : wo * kw] = full
        return out
    acc = xp.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=g.dtype)
    for _, i, j in window_offsets(kh, kw):
        acc[window_index(i, j, sh, sw, ho, wo)] += g
    return xp.ascontiguousarray(acc[:, :, ph : ph + h, pw : pw + w])


def _window_counts(in_hw, kh, kw, sh, sw, ph, pw, ho, wo):
    """Number of real (non-padding) inputs in each window: a public host array (ho, wo)."""
    h, w = in_hw
    rows = numpy.arange(ho) * sh - ph
    cols = numpy.arange(wo) * sw - pw
    nr = numpy.minimum(rows + kh, h) - numpy.maximum(rows, 0)
    nc = numpy.minimum(cols + kw, w) - numpy.maximum(cols, 0)
    return numpy.outer(nr, nc).astype(numpy.int64)


# -- division by a public window size -------------------------------------------------------


def _divide(s: ArithmeticShare, divisor) -> ArithmeticShare:
    """``s / divisor`` for a public positive integer (or integer array broadcast over the
    trailing axes): see the module docstring; 0 rounds when the divisor is 1."""
    divisor = numpy.asarray(divisor, dtype=numpy.int64)
    if (divisor < 1).any():
        raise ProtocolError("pooling divisors must be positive")
    if (divisor == 1).all():
        return s
    return mul_public(s, 1.0 / (int(divisor) if divisor.ndim == 0 else divisor))


# -- average pooling -----------------------------------------------------------------------


def avg_pool2d(x: ArithmeticShare, kernel, stride=None, padding=0, count_include_pad: bool = True) -> ArithmeticShare:
    """Average pooling of an NCHW share, PyTorch semantics (zero padding, output size
    rounded down, ``count_include_pad=True`` by default: the divisor is ``kh*kw``).

    Cost: 2 rounds (one truncation call of 1 element per output for a power-of-two
    window, 2 otherwise; 0 rounds for a 1x1 kernel).  Accuracy: below 1 ulp for
    power-of-two windows, else below 2 ulp + ``2^-28`` relative (module docstring).
    """
    kh, kw, sh, sw, ph, pw, ho, wo = pool_geometry(x.shape, kernel, stride, padding, "average pooling", ProtocolError)
    xp = x.xp
    geo = (kh, kw, sh, sw, ph, pw, ho, wo)
    total = ArithmeticShare(_window_sum(x.first, xp, *geo), _window_sum(x.second, xp, *geo), x.scale, x.rt)
    if count_include_pad or not (ph or pw):
        return _divide(total, kh * kw)
    return _divide(total, _window_counts(x.shape[2:], *geo))


def avg_pool2d_backward(
    grad: ArithmeticShare, input_shape, kernel, stride=None, padding=0, count_include_pad: bool = True
) -> ArithmeticShare:
    """Gradient of :func:`avg_pool2d` w.r.t. its input: each output gradient divided by its
    divisor and spread over its window.  The division costs as in :func:`avg_pool2d`; the
    scatter-add is local."""
    input_shape = tuple(input_shape)
    kh, kw, sh, sw, ph, pw, ho, wo = pool_geometry(
        input_shape, kernel, stride, padding, "average pooling", ProtocolError
    )
    if tuple(grad.shape) != (*input_shape[:2], ho, wo):
        raise ProtocolError(
            f"gradient shape {grad.shape} does not match the pooling output {(*input_shape[:2], ho, wo)}"
        )
    if count_include_pad or not (ph or pw):
        g = _divide(grad, kh * kw)
    else:
        g = _divide(grad, _window_counts(input_shape[2:], kh, kw, sh, sw, ph, pw, ho, wo))
    xp = grad.xp
    geo = (input_shape[2:], kh, kw, sh, sw, ph, pw)
    return ArithmeticShare(_window_scatter(g.first, xp, *geo), _window_scatter(g.second, xp, *geo), grad.scale, grad.rt)


# -- adaptive average pooling ----------------------------------------------------------------


def _pair_or_none(v):
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ProtocolError(f"output_size must be an int or a pair, got {v}")
        return tuple(None if a is None else int(a) for a in v)
    return int(v), int(v)


def _adaptive_windows(size: int, out: int):
    """PyTorch's adaptive windows along one axis: ``[floor(i*size/out), ceil((i+1)*size/out))``."""
    if out < 1:
        raise ProtocolError(f"adaptive pooling output sizes must be positive, got {out}")
    return [((i * size) // out, -((-(i + 1) * size) // out)) for i in range(out)]


def _axis_sum(a, xp, axis: int, size: int, out: int):
    """Window sums of one component along ``axis`` (local, exact mod 2^64)."""
    if size % out == 0:  # equal windows of k: reshape + sum
        k = size // out
        if k == 1:
            return a
        shape = list(a.shape)
        shape[axis : axis + 1] = [out, k]
        return a.reshape(shape).sum(axis=axis + 1, dtype=a.dtype)
    if out % size == 0:  # every window is one input: repeat
        return xp.repeat(a, out // size, axis=axis)
    index = [slice(None)] * a.ndim
    parts = []
    for s, e in _adaptive_windows(size, out):  # a loop over output rows, not pixels
        index[axis] = slice(s, e)
        parts.append(a[tuple(index)].sum(axis=axis, keepdims=True, dtype=a.dtype))
    return xp.concatenate(parts, axis=axis)


def _axis_spread(g, xp, axis: int, size: int, out: int):
    """Adjoint of :func:`_axis_sum`: each window's value added to all of its inputs."""
    if size % out == 0:
        return xp.repeat(g, size // out, axis=axis)
    if out % size == 0:
        shape = list(g.shape)
        shape[axis : axis + 1] = [size, out // size]
        return g.reshape(shape).sum(axis=axis + 1, dtype=g.dtype)
    shape = list(g.shape)
    shape[axis] = size
    acc = xp.zeros(shape, dtype=g.dtype)
    src, dst = [slice(None)] * g.ndim, [slice(None)] * g.ndim
    for i, (s, e) in enumerate(_adaptive_windows(size, out)):
        src[axis], dst[axis] = slice(i, i + 1), slice(s, e)
        acc[tuple(dst)] += g[tuple(src)]
    return acc


def _adaptive_divisor(in_hw, out_hw):
    """The window sizes: an int when all windows are equal, else a public (oh, ow) array."""
    counts = [numpy.array([e - s for s, e in _adaptive_windows(size, out)]) for size, out in zip(in_hw, out_hw)]
    grid = numpy.outer(counts[0], counts[1]).astype(numpy.int64)
    return int(grid.flat[0]) if (grid == grid.flat[0]).all() else grid


def _adaptive_out(in_hw, output_size):
    oh, ow = _pair_or_none(output_size)
    out = (in_hw[0] if oh is None else oh), (in_hw[1] if ow is None else ow)
    if min(out) < 1:
        raise ProtocolError(f"adaptive pooling output sizes must be positive, got {output_size}")
    return out


def adaptive_avg_pool2d(x: ArithmeticShare, output_size) -> ArithmeticShare:
    """Adaptive average pooling of an NCHW share to ``output_size`` (int or pair; ``None``
    keeps an axis), exactly PyTorch's windows ``[floor(i*H/out), ceil((i+1)*H/out))``.

    When ``H`` is a multiple of the output this is ``avg_pool2d`` with kernel = stride =
    ``H/out`` (ResNet's 7x7 -> 1x1, VGG's 14x14 -> 7x7, AlexNet's 12x12 -> 6x6); when the
    output is a multiple of ``H`` each value is repeated (VGG's 7x7 head on a 1x1 CIFAR
    map); otherwise windows of two sizes (AlexNet's 13x13 -> 6x6) are summed window by
    window and divided by their public sizes.

    Cost: the division of :func:`avg_pool2d` (2 rounds); 0 rounds when every window
    holds one element.  Accuracy as for :func:`avg_pool2d`.
    """
    if x.ndim != 4:
        raise ProtocolError(f"adaptive_avg_pool2d needs an NCHW share, got shape {x.shape}")
    in_hw = x.shape[2:]
    oh, ow = _adaptive_out(in_hw, output_size)
    xp = x.xp
    comps = []
    for a in (x.first, x.second):
        a = _axis_sum(a, xp, 2, in_hw[0], oh)
        comps.append(_axis_sum(a, xp, 3, in_hw[1], ow))
    total = ArithmeticShare(comps[0], comps[1], x.scale, x.rt)
    return _divide(total, _adaptive_divisor(in_hw, (oh, ow)))


def adaptive_avg_pool2d_backward(grad: ArithmeticShare, input_shape) -> ArithmeticShare:
    """Gradient of :func:`adaptive_avg_pool2d` w.r.t. its NCHW input: each output gradient
    divided by its window size and spread over its window: the division of
    :func:`avg_pool2d` (0 rounds if every window holds one element)."""
    input_shape = tuple(input_shape)
    in_hw = input_shape[2:]
    oh, ow = grad.shape[2:]
    g = _divide(grad, _adaptive_divisor(in_hw, (oh, ow)))
    xp = grad.xp
    comps = []
    for a in (g.first, g.second):
        a = _axis_spread(a, xp, 2, in_hw[0], oh)
        comps.append(xp.ascontiguousarray(_axis_spread(a, xp, 3, in_hw[1], ow)))
    return ArithmeticShare(comps[0], comps[1], grad.scale, grad.rt)
