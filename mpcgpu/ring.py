"""Exact products in the ring Z_{2^64} on float64 GEMM kernels.

Share data are uint64 arrays (int64 is accepted and viewed as uint64); every
function here returns uint64 results equal to the integer product mod 2^64,
bit for bit, on NumPy and CuPy arrays alike (the array module comes from
:func:`mpcgpu.backend.array_module`; nothing moves between host and device).

* :func:`matmul` - ``a @ b`` with ``numpy.matmul`` semantics (1-D, 2-D,
  batched with broadcasting).
* :func:`conv2d` - NCHW input, OIHW weight, stride/padding/groups, the
  cross-correlation of ``torch.nn.functional.conv2d``.
* :func:`conv2d_grad_input`, :func:`conv2d_grad_weight` - its adjoints,
  for training.
* :func:`presplit` - split a fixed operand (weights) once; every function
  above accepts the result in place of the array.

Elementwise products need nothing from this module: ``a * b`` on uint64
arrays wraps mod 2^64 natively (NumPy and CuPy array arithmetic neither
saturates nor warns; keep to arrays, not NumPy scalars, which do warn).

How (see :mod:`mpcgpu.limbs`): both operands are cut into 3 balanced signed
digits of 22/22/20 bits (scheme ``W22``); the 6 digit products that can reach
the low 64 bits are grouped by shift into 3 float64 GEMMs (reductions K, 2K
and 3K: the work of 6 float64 GEMMs), converted back to integers, shifted
and added with wrap-around.  Every float64 partial sum is at most
``K * 2^43``, exact while the reduction ``K <= 1024 = 2^53 / 2^43``; longer
reductions are chunked (each chunk <= 1024) and the chunk results added in
uint64.  The bound is applied to the FULL reduction of each product: ``K``
for matmul, ``in_channels/groups * kh * kw`` for conv2d,
``out_channels/groups`` for the input gradient and ``N * Ho * Wo`` for the
weight gradient.  Scheme ``W16`` (4 digits of 16 bits, 10 products in 4
GEMMs, reduction <= 2^21 per chunk) is the fallback where a chunk cannot be
cut small enough along whole kernel windows or rows.
"""
from __future__ import annotations

import math

import numpy as np  # dtypes and constants only

from .backend import array_module
from .limbs import F64, U64, W16, W22, Scheme, chunking, contract, scheme_named, scratch, split

__all__ = ["matmul", "conv2d", "conv2d_grad_input", "conv2d_grad_weight", "presplit", "Presplit",
           "conv_output_size"]

DEFAULT_SCHEME = W22
"""Measured fastest at every size tried on CPU (see benchmarks/ring.py)."""


# --------------------------------------------------------------------------- operands

def _ring(a):
    """uint64 view of a ring array (uint64 or int64); anything else is a TypeError."""
    dt = getattr(a, "dtype", None)
    if dt == np.uint64:
        return a
    if dt == np.int64:
        return a.view(np.uint64)
    raise TypeError(f"ring arrays must be uint64 or int64, got {dt if dt is not None else type(a).__name__}")


class Presplit:
    """An operand whose digits are computed once and reused.

    Holds a reference to the (uint64) array and a cache of its split layouts,
    one per way it is used (matmul left/right, conv weight, transposed conv
    weight), each built on first use.  The array must not be modified
    afterwards.  Pass it to :func:`matmul`, :func:`conv2d` or
    :func:`conv2d_grad_input` in place of the array.
    """

    def __init__(self, array):
        self.array = _ring(array)
        self.reduce_len = None
        self._layouts = {}

    shape = property(lambda self: self.array.shape)
    ndim = property(lambda self: self.array.ndim)
    dtype = property(lambda self: self.array.dtype)

    def _layout(self, key, build):
        if key not in self._layouts:
            self._layouts[key] = build(self.array)
        return self._layouts[key]

    def __repr__(self):
        return f"Presplit(shape={self.shape}, layouts={len(self._layouts)})"


def presplit(a, reduce_len=None, *, side="right", groups=1):
    """Split a fixed operand (a weight) once; reuse it in many products.

    A 4-D array is taken as an OIHW conv weight (for :func:`conv2d` with
    ``groups``; reduction ``in_channels/groups * kh * kw``); any other array as
    a matmul operand on ``side`` ("right": ``x @ a``, reduction ``a.shape[-2]``;
    "left": ``a @ x``, reduction ``a.shape[-1]``).  That layout is built now
    (chunked so that the float64 sums stay within 2^53 for that reduction);
    other uses (e.g. the weight in :func:`conv2d_grad_input`) build and cache
    theirs on first use.  ``reduce_len``, if given, must equal the reduction
    of the declared use (a guard against splitting for the wrong product).
    """
    p = Presplit(a)
    xp = array_module(p.array)
    sc = DEFAULT_SCHEME
    if p.ndim == 4:
        o, cg, kh, kw = p.shape
        k = cg * kh * kw
    elif side in ("left", "right"):
        k = p.shape[-1] if side == "left" or p.ndim == 1 else p.shape[-2]
    else:
        raise ValueError(f"side must be 'left' or 'right', not {side!r}")
    if reduce_len is not None and int(reduce_len) != k:
        raise ValueError(f"presplit: reduce_len={reduce_len} but the declared use reduces over {k}")
    p.reduce_len = k
    if p.ndim == 4:
        _conv_weight_layout(xp, p, groups, *_conv_chunks(cg, kh * kw, sc))
    else:
        _matrix_layout(xp, p, side, sc, *chunking(k, sc.kmax))
    return p


def _raw(a):
    return a.array if isinstance(a, Presplit) else _ring(a)


def _cached(op, key, build):
    """Layout of operand ``op`` (array or Presplit) from ``build(array, persist)``.

    A Presplit's layouts are built in their own memory and cached; a plain
    array's in reusable scratch memory (valid until the next product).
    """
    if isinstance(op, Presplit):
        return op._layout(key, lambda arr: build(arr, True))
    return build(_ring(op), False)


# --------------------------------------------------------------------------- matrix layouts

def _pad_axis(xp, a, axis, length):
    """``a`` zero-padded at the end of ``axis`` to ``length`` (``a`` itself if already that long)."""
    axis %= a.ndim
    if a.shape[axis] == length:
        return a
    shape = list(a.shape)
    shape[axis] = length
    out = xp.zeros(shape, dtype=a.dtype)
    out[(slice(None),) * axis + (slice(0, a.shape[axis]),)] = a
    return out


def _buffer(xp, role, shape, persist):
    return xp.empty(shape, dtype=F64) if persist else scratch(xp, role, shape)


def split_left(xp, a, scheme: Scheme, nc: int, kc: int, persist=True):
    """``a`` (..., M, K) -> float64 (..., nc, M, D*kc): per chunk ``[d_0 | ... | d_{D-1}]``.

    ``persist=False`` puts the result in scratch memory (valid until the next product).
    """
    *batch, m, _ = a.shape
    d = scheme.digits
    src = xp.moveaxis(_pad_axis(xp, a, -1, nc * kc).reshape(*batch, m, nc, kc), -2, -3)
    buf = _buffer(xp, "left", (*batch, nc, m, d, kc), persist)
    split(xp, src, xp.moveaxis(buf, -2, 0), scheme)
    return buf.reshape(*batch, nc, m, d * kc)


def split_right(xp, b, scheme: Scheme, nc: int, kc: int, persist=True):
    """``b`` (..., K, N) -> float64 (..., nc, D*kc, N): per chunk ``[e_{D-1}; ... ; e_0]``."""
    *batch, _, n = b.shape
    d = scheme.digits
    src = _pad_axis(xp, b, -2, nc * kc).reshape(*batch, nc, kc, n)
    buf = _buffer(xp, "right", (*batch, nc, d, kc, n), persist)
    split(xp, src, xp.moveaxis(buf, -3, 0)[::-1], scheme)
    return buf.reshape(*batch, nc, d * kc, n)


def _matrix_layout(xp, op, side, scheme, nc, kc):
    def build(arr, persist):
        if side == "left":
            return split_left(xp, arr if arr.ndim > 1 else arr[None, :], scheme, nc, kc, persist)
        return split_right(xp, arr if arr.ndim > 1 else arr[:, None], scheme, nc, kc, persist)
    return _cached(op, (side, scheme.name, nc, kc), build)


# --------------------------------------------------------------------------- matmul

def _broadcast(s, t):
    n = max(len(s), len(t))
    s, t = (1,) * (n - len(s)) + tuple(s), (1,) * (n - len(t)) + tuple(t)
    out = []
    for i, j in zip(s, t):
        if i != j and 1 not in (i, j):
            raise ValueError(f"batch shapes {s} and {t} do not broadcast")
        out.append(j if i == 1 else i)
    return tuple(out)


def matmul(a, b, *, scheme=None):
    """``a @ b mod 2^64`` (uint64), with the shapes and broadcasting of ``numpy.matmul``.

    Either operand may be a :class:`Presplit`.  Exactness: 3 GEMMs per chunk
    of the reduction ``K = a.shape[-1]``; chunks of at most 1024 keep every
    float64 partial sum within ``1024 * 2^43 = 2^53`` (scheme ``W22``; ``W16``:
    4 GEMMs, chunks up to 2^21, sums within ``2^21 * 2^32``).
    """
    ra, rb = _raw(a), _raw(b)
    xp = array_module(ra, rb)
    if ra.ndim == 0 or rb.ndim == 0:
        raise ValueError("matmul: operands must have at least one dimension (use * for scalars)")
    k = ra.shape[-1]
    kb = rb.shape[-2] if rb.ndim > 1 else rb.shape[0]
    if k != kb:
        raise ValueError(f"matmul: reduction lengths differ: {ra.shape} @ {rb.shape}")
    m_shape = ra.shape[:-1]                  # () for 1-D a
    n_shape = rb.shape[-1:] if rb.ndim > 1 else ()
    batch = _broadcast(ra.shape[:-2], rb.shape[:-2])
    out_shape = batch + m_shape[-1:] + n_shape
    if k == 0 or 0 in out_shape:
        return xp.zeros(out_shape, dtype=U64)
    scheme = scheme_named(scheme or DEFAULT_SCHEME)
    nc, kc = chunking(k, scheme.kmax)
    if rb.ndim <= 2 and ra.ndim > 2 and not isinstance(a, Presplit):
        a = ra.reshape(-1, k)               # fold a's batch into M: one large GEMM per group
    left = _matrix_layout(xp, a, "left", scheme, nc, kc)
    right = _matrix_layout(xp, b, "right", scheme, nc, kc)
    return contract(xp, left, right, scheme, kc).reshape(out_shape)


# --------------------------------------------------------------------------- convolutions

def _pair(v, name):
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{name} must be an int or a pair, got {v!r}")
        p = (int(v[0]), int(v[1]))
    else:
        p = (int(v), int(v))
    return p


def conv_output_size(size, kernel, stride, padding):
    return (size + 2 * padding - kernel) // stride + 1


def _conv_geometry(x_shape, w_shape, stride, padding, groups):
    n, c, h, w = x_shape
    o, cg, kh, kw = w_shape
    sh, sw = _pair(stride, "stride")
    ph, pw = _pair(padding, "padding")
    g = int(groups)
    if g < 1 or c != g * cg or o % g:
        raise ValueError(f"conv2d: input channels {c} / weight {tuple(w_shape)} do not match groups={g}")
    if min(sh, sw) < 1 or min(ph, pw) < 0:
        raise ValueError("conv2d: stride must be >= 1 and padding >= 0")
    ho, wo = conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)
    if ho < 1 or wo < 1:
        raise ValueError(f"conv2d: kernel {kh}x{kw} larger than padded input {h + 2 * ph}x{w + 2 * pw}")
    return dict(n=n, c=c, h=h, w=w, o=o, cg=cg, og=o // g, kh=kh, kw=kw, sh=sh, sw=sw,
                ph=ph, pw=pw, g=g, ho=ho, wo=wo)


def _conv_chunks(cg, window, scheme):
    """Chunk the conv reduction ``cg * window`` along whole channels -> (scheme, nc, cc, kc)."""
    if window > scheme.kmax:
        scheme = W16
        if window > scheme.kmax:
            raise ValueError(f"conv2d: kernel window {window} exceeds the exact bound {scheme.kmax}")
    nc, cc = chunking(cg, scheme.kmax // window)
    return scheme, nc, cc, cc * window


def _conv_weight_layout(xp, w, groups, scheme, nc, cc, kc):
    o, cg, kh, kw = w.shape
    g = groups
    build = lambda arr, persist: split_left(xp, arr.reshape(g, o // g, cg * kh * kw), scheme, nc, kc, persist)  # noqa: E731,E501
    return _cached(w, ("conv", scheme.name, g, nc, kc), build)


def _digit_image(xp, x5, scheme, reverse, shape, pad):
    """Digits of ``x5`` (N, G, Cg, H, W) as float64 (D, *shape) placed at offset ``pad``, zeros around.

    ``reverse`` stores digit ``i`` at position ``D-1-i`` (right-operand order).
    """
    d = scheme.digits
    img = scratch(xp, "image", (d,) + tuple(shape))
    img.fill(0)
    n, g, cg, h, w = x5.shape
    ph, pw = pad
    dst = img[:, :n, :, :cg, ph:ph + h, pw:pw + w]
    split(xp, x5, dst[::-1] if reverse else dst, scheme)
    return img


def _windows(xp, img, shape, steps):
    """``as_strided`` view of ``img`` (contiguous) with element steps ``steps`` (one per axis of ``shape``)."""
    item = img.itemsize
    return xp.lib.stride_tricks.as_strided(img, shape=shape, strides=tuple(s * item for s in steps))


def conv2d(x, w, stride=1, padding=0, groups=1, *, scheme=None):
    """Integer cross-correlation ``conv2d(x, w) mod 2^64`` (uint64, shape (N, O, Ho, Wo)).

    ``x``: (N, C, H, W); ``w``: (O, C/groups, kh, kw), array or :class:`Presplit`.
    im2col on the digits of ``x`` (split once, then gathered), 3 GEMMs per
    group and reduction chunk.  Exactness: the reduction ``C/groups * kh * kw``
    is cut along whole channels into chunks of at most 1024, so every float64
    partial sum is within 2^53.
    """
    rx = _ring(x)
    xp = array_module(rx, _raw(w))
    p = _conv_geometry(rx.shape, w.shape, stride, padding, groups)
    n, g, cg, og, kh, kw, ho, wo = (p[k] for k in ("n", "g", "cg", "og", "kh", "kw", "ho", "wo"))
    sc, nc, cc, kc = _conv_chunks(cg, kh * kw, scheme_named(scheme or DEFAULT_SCHEME))
    d = sc.digits
    hp, wp = p["h"] + 2 * p["ph"], p["w"] + 2 * p["pw"]
    img = _digit_image(xp, rx.reshape(n, g, cg, p["h"], p["w"]), sc, True,
                       (n, g, nc * cc, hp, wp), (p["ph"], p["pw"]))
    sd, sn, sg, sc_ = img.strides[0] // 8, img.strides[1] // 8, img.strides[2] // 8, hp * wp
    view = _windows(xp, img, (d, n, g, nc, cc, kh, kw, ho, wo),
                    (sd, sn, sg, cc * sc_, sc_, wp, 1, p["sh"] * wp, p["sw"]))
    cols = scratch(xp, "cols", (g, nc, d, cc, kh, kw, n, ho, wo))
    cols[...] = view.transpose(2, 3, 0, 4, 5, 6, 1, 7, 8)
    right = cols.reshape(g, nc, d * kc, n * ho * wo)
    left = _conv_weight_layout(xp, w, g, sc, nc, cc, kc)
    out = contract(xp, left, right, sc, kc).reshape(g, og, n, ho, wo)
    if n == 1:
        return out.reshape(1, p["o"], ho, wo)
    return xp.ascontiguousarray(out.transpose(2, 0, 1, 3, 4)).reshape(n, p["o"], ho, wo)


def conv2d_grad_input(grad_out, w, input_shape, stride=1, padding=0, groups=1, *, scheme=None):
    """Gradient of :func:`conv2d` w.r.t. its input (the transposed convolution), mod 2^64.

    ``grad_out``: (N, O, Ho, Wo); ``w``: (O, C/groups, kh, kw) (array or
    :class:`Presplit`); returns uint64 ``input_shape`` = (N, C, H, W):
    ``dx[n,c,y,x] = sum grad_out[n,o,i,j] w[o,c',y-i*sh+ph,x-j*sw+pw]``.
    Computed as ``W^T @ grad_out`` per group (3 GEMMs per chunk, reduction
    ``O/groups`` chunked at 1024) followed by an integer col2im (wrapping adds).
    """
    gy = _ring(grad_out)
    xp = array_module(gy, _raw(w))
    p = _conv_geometry(tuple(input_shape), w.shape, stride, padding, groups)
    n, g, cg, og, kh, kw, ho, wo = (p[k] for k in ("n", "g", "cg", "og", "kh", "kw", "ho", "wo"))
    if tuple(gy.shape) != (n, p["o"], ho, wo):
        raise ValueError(f"conv2d_grad_input: grad_out has shape {gy.shape}, expected {(n, p['o'], ho, wo)}")
    sc = scheme_named(scheme or DEFAULT_SCHEME)
    nc, kc = chunking(og, sc.kmax)
    k = cg * kh * kw
    left = _cached(w, ("convT", sc.name, g, nc, kc),
                   lambda arr, persist: split_left(xp, arr.reshape(g, og, k).swapaxes(-1, -2), sc, nc, kc, persist))
    rhs = gy.reshape(n, g, og, ho * wo).transpose(1, 2, 0, 3).reshape(g, og, n * ho * wo)
    cols = contract(xp, left, split_right(xp, rhs, sc, nc, kc, persist=False), sc, kc)
    cols = cols.reshape(g, cg, kh, kw, n, ho, wo)
    ph, pw, sh, sw = p["ph"], p["pw"], p["sh"], p["sw"]
    dx = xp.zeros((n, g, cg, p["h"] + 2 * ph, p["w"] + 2 * pw), dtype=U64)
    for i in range(kh):
        for j in range(kw):
            tgt = dx[:, :, :, i:i + (ho - 1) * sh + 1:sh, j:j + (wo - 1) * sw + 1:sw]
            xp.add(tgt, cols[:, :, i, j].transpose(2, 0, 1, 3, 4), out=tgt)
    dx = dx[:, :, :, ph:ph + p["h"], pw:pw + p["w"]]
    return xp.ascontiguousarray(dx).reshape(n, p["c"], p["h"], p["w"])


def _row_chunks(n, ho, wo, kmax):
    """Chunk the reduction over (images, output rows, columns): -> (nN, nb, nH, hb) or None."""
    if ho * wo <= kmax:                      # whole images per chunk
        nn_, nb = chunking(n, kmax // (ho * wo))
        return nn_, nb, 1, ho
    if wo > kmax:
        return None
    nh, hb = chunking(ho, kmax // wo)        # one image, hb rows per chunk
    return n, 1, nh, hb


def conv2d_grad_weight(x, grad_out, weight_shape, stride=1, padding=0, groups=1, *, scheme=None):
    """Gradient of :func:`conv2d` w.r.t. its weight, mod 2^64 (uint64, ``weight_shape``).

    ``dw[o,c,i,j] = sum_{n,y,x} grad_out[n,o,y,x] xpad[n, c'', y*sh+i, x*sw+j]``:
    per group ``cols @ grad_out^T`` with the reduction ``N*Ho*Wo`` cut into
    chunks of whole images (or of output rows) of at most 1024 elements
    (3 GEMMs each; every float64 partial sum within 2^53).
    """
    rx, gy = _ring(x), _ring(grad_out)
    xp = array_module(rx, gy)
    p = _conv_geometry(rx.shape, tuple(weight_shape), stride, padding, groups)
    n, g, cg, og, kh, kw, ho, wo = (p[k] for k in ("n", "g", "cg", "og", "kh", "kw", "ho", "wo"))
    if tuple(gy.shape) != (n, p["o"], ho, wo):
        raise ValueError(f"conv2d_grad_weight: grad_out has shape {gy.shape}, expected {(n, p['o'], ho, wo)}")
    sc = scheme_named(scheme or DEFAULT_SCHEME)
    chunks = _row_chunks(n, ho, wo, sc.kmax)
    if chunks is None:
        sc, chunks = W16, _row_chunks(n, ho, wo, W16.kmax)
        if chunks is None:
            raise ValueError(f"conv2d_grad_weight: output width {wo} exceeds the exact bound")
    nn_, nb, nh, hb = chunks
    d, kc, k = sc.digits, nb * hb * wo, cg * kh * kw
    sh, sw, ph, pw = p["sh"], p["sw"], p["ph"], p["pw"]
    # left: cols (K, N*Ho*Wo) per group, gathered from the digits of x
    hx, wx = max(p["h"] + 2 * ph, (nh * hb - 1) * sh + kh), p["w"] + 2 * pw
    img = _digit_image(xp, rx.reshape(n, g, cg, p["h"], p["w"]), sc, False,
                       (nn_ * nb, g, cg, hx, wx), (ph, pw))
    s = [st // 8 for st in img.strides]
    view = _windows(xp, img, (d, nn_, nb, g, cg, kh, kw, nh, hb, wo),
                    (s[0], nb * s[1], s[1], s[2], s[3], wx, 1, hb * sh * wx, sh * wx, sw))
    cols = scratch(xp, "cols", (g, nn_, nh, cg, kh, kw, d, nb, hb, wo))
    cols[...] = view.transpose(3, 1, 7, 4, 5, 6, 0, 2, 8, 9)
    left = cols.reshape(g, nn_ * nh, k, d * kc)
    # right: grad_out^T (N*Ho*Wo, O/groups) per group, zero-padded to whole chunks
    gyp = _pad_axis(xp, _pad_axis(xp, gy, 0, nn_ * nb), 2, nh * hb)
    src = gyp.reshape(nn_, nb, g, og, nh, hb, wo).transpose(2, 0, 4, 1, 5, 6, 3)
    rbuf = scratch(xp, "right", (g, nn_, nh, d, nb, hb, wo, og))
    split(xp, src, xp.moveaxis(rbuf, 3, 0)[::-1], sc)
    right = rbuf.reshape(g, nn_ * nh, d * kc, og)
    dw = contract(xp, left, right, sc, kc)                      # (G, K, Og)
    return xp.ascontiguousarray(dw.transpose(0, 2, 1)).reshape(tuple(weight_shape))
