"""Exact products in the ring Z_{2^64} on float64 GEMM kernels.

Share data are uint64 arrays (int64 is accepted and viewed as uint64); every
function here returns uint64 results equal to the integer product mod 2^64,
bit for bit, on NumPy and CuPy arrays alike (the array module comes from
:func:`mpcgpu.device.backend.array_module`; nothing moves between host and device).

* :func:`matmul` - ``a @ b`` with ``numpy.matmul`` semantics (1-D, 2-D,
  batched with broadcasting).
* :func:`conv2d` - NCHW input, OIHW weight, stride/padding/groups, the
  cross-correlation of ``torch.nn.functional.conv2d``.
* :func:`conv2d_grad_input`, :func:`conv2d_grad_weight` - its adjoints,
  for training.
* :func:`presplit` - split a fixed operand (weights) once; every function
  above accepts the result in place of the array.

Elementwise products need nothing from this module: ``a * b`` on uint64
arrays (0-d included) wraps mod 2^64 natively, without a warning, on NumPy
and CuPy.  Only NumPy *scalars* (``np.uint64(x) * np.uint64(y)``) warn on
overflow (the result is still the wrapped value).

How (see :mod:`mpcgpu.ring.limbs` for the schemes and their bounds): both operands
are cut into 3 balanced signed digits of 22/22/20 bits; the digit products
that reach the low 64 bits are computed as float64 GEMMs over digit "slabs"
concatenated along the reduction, converted back to integers (exact),
weighted and added with wrap-around.  The default scheme ``K22`` needs 5
products in 4 GEMMs (Karatsuba on the middle term; the work of 5 float64
GEMMs of the same shape): every float64 partial sum is at most ``K * 2^44``,
exact while the reduction ``K <= 512 = 2^53 / 2^44``.  ``W22`` (6 products
in 3 GEMMs, ``K <= 1024``) and ``W16`` (4 x 16-bit digits, 10 products in 4
GEMMs, ``K <= 2^21``) serve where a chunk must be longer (a kernel window or
an output row that cannot be cut).  Longer reductions are chunked and the
chunk results added in uint64.  The bound is applied to the FULL reduction
of each product: ``K`` for matmul, ``in_channels/groups * kh * kw`` for
conv2d, ``out_channels/groups`` for the input gradient and ``N * Ho * Wo``
for the weight gradient.

Scratch memory: on NumPy, split operands of one call live in reusable
scratch buffers (see :func:`mpcgpu.ring.limbs.scratch`; ``limbs.release_scratch()``
frees them); results and Presplit layouts never alias them.
"""

from __future__ import annotations

import math

import numpy as np  # dtypes and constants only

from mpcgpu.ring import choice as kernels, native
from mpcgpu.device.backend import array_module
from mpcgpu.ring.geometry import conv_geometry
from mpcgpu.ring.limbs import (
    F64,
    K22,
    U64,
    W16,
    W22,
    Scheme,
    _broadcast_shapes,
    chunking,
    contract,
    fused_steps,
    fused_steps_name,
    release_scratch,
    scheme_named,
    scratch,
    split,
)

__all__ = [
    "matmul",
    "conv2d",
    "conv2d_grad_input",
    "conv2d_grad_weight",
    "presplit",
    "Presplit",
    "kernel",
    "kernel_for",
]

DEFAULT_SCHEME = K22
"""5 products in 4 GEMMs; measured 5-12% faster than W22 (6 products in 3 GEMMs) on most
shapes here, never much slower; W16 (10 products) is slower everywhere."""


# --------------------------------------------------------------------------- kernel choice


def kernel() -> dict:
    """The kernels of CPU products in this process (:mod:`mpcgpu.ring.choice`): the float64 limbs
    or the native integer GEMM, chosen per shape class; ``{"kernel", "why", "grid"}``."""

    def limb_matmul(a, b):
        out = matmul(a, b, scheme=DEFAULT_SCHEME)
        release_scratch()
        return out

    return kernels.choice({"limbs": limb_matmul, "native": native.matmul}, limb_steps=fused_steps_name())


def kernel_for(batch: int, m: int, k: int, n: int) -> str:
    """``"limbs"`` or ``"native"``: the CPU kernel of a product of ``batch`` (M x K) @ (K x N)."""
    current = kernel()
    if not current.get("grid"):
        return current["kernel"]
    memo = current.setdefault("memo", {})
    shape = (batch, m, k, n)
    if shape not in memo:
        memo[shape] = kernels.kernel_for(current, *shape)
    return memo[shape]


def _native(xp, scheme, shape) -> bool:
    """Whether this product (``shape``: batch, M, K, N) goes to the native kernel (NumPy arrays,
    no scheme named)."""
    return scheme is None and getattr(xp, "__name__", "") == "numpy" and kernel_for(*shape) == "native"


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
    """An operand whose digit slabs are computed once and reused.

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


def presplit(a, reduce_len=None, *, side=None, groups=1):
    """Split a fixed operand (a weight) once; reuse it in many products.

    Without ``side``, a 4-D array is taken as an OIHW conv weight (for
    :func:`conv2d` with ``groups``; reduction ``in_channels/groups * kh * kw``)
    and any other array as the right operand of matmul; ``side`` names the
    matmul operand ("right": ``x @ a``, reduction ``a.shape[-2]``; "left":
    ``a @ x``, reduction ``a.shape[-1]``).  That layout is built now
    (chunked so that the float64 sums stay within 2^53 for that reduction);
    other uses (e.g. the weight in :func:`conv2d_grad_input`) build and cache
    theirs on first use.  ``reduce_len``, if given, must equal the reduction
    of the declared use (a guard against splitting for the wrong product).
    """
    p = Presplit(a)
    xp = array_module(p.array)
    sc = DEFAULT_SCHEME
    conv = side is None and p.ndim == 4
    side = side or "right"
    if conv:
        o, cg, kh, kw = p.shape
        k = cg * kh * kw
    elif side in ("left", "right"):
        k = p.shape[-1] if side == "left" or p.ndim == 1 else p.shape[-2]
    else:
        raise ValueError(f"side must be 'left' or 'right', not {side!r}")
    if reduce_len is not None and int(reduce_len) != k:
        raise ValueError(f"presplit: reduce_len={reduce_len} but the declared use reduces over {k}")
    p.reduce_len = k
    if conv:
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
    """``a`` (..., M, K) -> float64 (..., nc, M, S*kc): per chunk the scheme's S left slabs.

    ``nc * kc >= K`` (zero padded).  ``persist=False`` puts the result in
    scratch memory (valid until the next product).
    """
    *batch, m, _ = a.shape
    d = len(scheme.left)
    fused = fused_steps(xp)
    if fused is not None:
        buf = _buffer(xp, "left", (*batch, nc, m, d * kc), persist)
        fused.split_rows(
            xp.ascontiguousarray(a).reshape(-1, m, a.shape[-1]), buf.reshape(-1, nc, m, d * kc), kc, scheme, "left"
        )
        return buf
    src = xp.moveaxis(_pad_axis(xp, a, -1, nc * kc).reshape(*batch, m, nc, kc), -2, -3)
    buf = _buffer(xp, "left", (*batch, nc, m, d, kc), persist)
    split(xp, src, xp.moveaxis(buf, -2, 0), scheme, "left")
    return buf.reshape(*batch, nc, m, d * kc)


def split_right(xp, b, scheme: Scheme, nc: int, kc: int, persist=True):
    """``b`` (..., K, N) -> float64 (..., nc, S*kc, N): per chunk the scheme's S right slabs."""
    *batch, _, n = b.shape
    d = len(scheme.right)
    fused = fused_steps(xp)
    if fused is not None:
        buf = _buffer(xp, "right", (*batch, nc, d * kc, n), persist)
        fused.split_cols(
            xp.ascontiguousarray(b).reshape(-1, b.shape[-2], n), buf.reshape(-1, nc, d * kc, n), kc, scheme, "right"
        )
        return buf
    src = _pad_axis(xp, b, -2, nc * kc).reshape(*batch, nc, kc, n)
    buf = _buffer(xp, "right", (*batch, nc, d, kc, n), persist)
    split(xp, src, xp.moveaxis(buf, -3, 0), scheme, "right")
    return buf.reshape(*batch, nc, d * kc, n)


def _matrix_layout(xp, op, side, scheme, nc, kc):
    def build(arr, persist):
        if side == "left":
            return split_left(xp, arr if arr.ndim > 1 else arr[None, :], scheme, nc, kc, persist)
        return split_right(xp, arr if arr.ndim > 1 else arr[:, None], scheme, nc, kc, persist)

    return _cached(op, (side, scheme.name, nc, kc), build)


# --------------------------------------------------------------------------- matmul

INTEGER_FALLBACK = True
"""NumPy only: let tiny and matrix-vector products use NumPy's integer matmul."""
INTEGER_MACS = 2**18
"""... namely products of at most this many multiply-adds (and the skinny ones below)."""


def _integer_is_faster(xp, a, b, macs, out_shape):
    """NumPy's (non-BLAS, wrapping) integer matmul wins on tiny products, where the ~80 us
    of Python overhead of the limb path dominate, and on matrix-vector shapes whose
    large operand would have to be split first (measured; see benchmarks/ring.py)."""
    if not INTEGER_FALLBACK or getattr(xp, "__name__", "") != "numpy":
        return False  # on a GPU the float64 path always wins
    if macs <= INTEGER_MACS:
        return True
    skinny = len(out_shape) < 2 or min(out_shape[-2:]) <= 2
    return skinny and not isinstance(a, Presplit) and not isinstance(b, Presplit)


def matmul(a, b, *, scheme=None):
    """``a @ b mod 2^64`` (uint64), with the shapes and broadcasting of ``numpy.matmul``.

    Either operand may be a :class:`Presplit`.  Exactness: the reduction
    ``K = a.shape[-1]`` is cut into chunks of at most 512, each computed by 4
    GEMMs whose float64 partial sums stay within ``512 * 2^44 = 2^53``
    (``scheme="W22"``: 3 GEMMs, chunks <= 1024, ``1024 * 2^43``; ``"W16"``: 4
    GEMMs, chunks <= 2^21, ``2^21 * 2^32``).  With
    ``scheme=None`` on NumPy, tiny and matrix-vector products use NumPy's
    integer matmul instead (exact as well, and faster there); naming a
    scheme always takes the float64 path.
    """
    ra, rb = _raw(a), _raw(b)
    xp = array_module(ra, rb)
    if ra.ndim == 0 or rb.ndim == 0:
        raise ValueError("matmul: operands must have at least one dimension (use * for scalars)")
    k = ra.shape[-1]
    kb = rb.shape[-2] if rb.ndim > 1 else rb.shape[0]
    if k != kb:
        raise ValueError(f"matmul: reduction lengths differ: {ra.shape} @ {rb.shape}")
    m_shape = ra.shape[:-1]  # () for 1-D a
    n_shape = rb.shape[-1:] if rb.ndim > 1 else ()
    batch = _broadcast_shapes(ra.shape[:-2], rb.shape[:-2])
    out_shape = batch + m_shape[-1:] + n_shape
    if k == 0 or 0 in out_shape:
        return xp.zeros(out_shape, dtype=U64)
    if _native(xp, scheme, (math.prod(batch) if rb.ndim > 2 else 1, math.prod(m_shape), k, math.prod(n_shape))):
        return native.matmul(ra, rb)
    if scheme is None and _integer_is_faster(xp, a, b, math.prod(out_shape) * k, out_shape):
        return xp.matmul(ra, rb)  # NumPy's integer matmul wraps mod 2^64: exact
    scheme = scheme_named(scheme or DEFAULT_SCHEME)
    nc, kc = chunking(k, scheme.kmax)
    if rb.ndim <= 2 and ra.ndim > 2 and not isinstance(a, Presplit):
        a = ra.reshape(-1, k)  # fold a's batch into M: one large GEMM per group
    left = _matrix_layout(xp, a, "left", scheme, nc, kc)
    right = _matrix_layout(xp, b, "right", scheme, nc, kc)
    return contract(xp, left, right, scheme, kc).reshape(out_shape)


# --------------------------------------------------------------------------- convolutions


def _conv_geometry(x_shape, w_shape, stride, padding, groups):
    return conv_geometry(x_shape, w_shape, stride, padding, groups, ValueError)


def _dims(p, n):
    return (n,) + tuple(p[k] for k in ("g", "cg", "og", "kh", "kw", "ho", "wo"))


def _fit(scheme, need, what):
    """``scheme``, or the first of W22, W16 whose chunks may be ``need`` long."""
    for sc in (scheme, W22, W16):
        if sc.kmax >= need:
            return sc
    raise ValueError(f"{what} {need} exceeds the exact bound {W16.kmax} of the widest chunk")


def _conv_chunks(cg, window, scheme):
    """Chunk the conv reduction ``cg * window`` along whole channels -> (scheme, nc, cc, kc)."""
    scheme = _fit(scheme, window, "conv2d: kernel window")
    nc, cc = chunking(cg, scheme.kmax // window)
    return scheme, nc, cc, cc * window


def _conv_weight_layout(xp, w, groups, scheme, nc, cc, kc):
    o, cg, kh, kw = w.shape
    g = groups

    def build(arr, persist):
        return split_left(xp, arr.reshape(g, o // g, cg * kh * kw), scheme, nc, kc, persist)

    return _cached(w, ("conv", scheme.name, g, nc, kc), build)


def _digit_image(xp, x5, scheme, side, shape, pad):
    """The ``side`` slabs of ``x5`` (N, G, Cg, H, W): float64 (n_slabs, *shape), placed at
    offset ``pad`` with zeros around (scratch memory)."""
    img = scratch(xp, "image", (len(scheme.slabs(side)),) + tuple(shape))
    img.fill(0)
    n, g, cg, h, w = x5.shape
    ph, pw = pad
    split(xp, x5, img[:, :n, :, :cg, ph : ph + h, pw : pw + w], scheme, side)
    return img


def _windows(xp, img, shape, steps):
    """``as_strided`` view of ``img`` with element steps ``steps`` (one per axis of ``shape``)."""
    item = img.itemsize
    return xp.lib.stride_tricks.as_strided(img, shape=shape, strides=tuple(s * item for s in steps))


BLOCK_BYTES = 64 * 2**20
"""Images are processed in blocks whose float64 im2col stays near this size (bounded memory)."""


def _image_blocks(n, per_image, multiple=1):
    """``[(start, stop)]`` image blocks of ~BLOCK_BYTES (block sizes a multiple of ``multiple``)."""
    nb = max(1, BLOCK_BYTES // max(1, per_image)) // multiple * multiple
    nb = min(n, max(nb, multiple))
    return [(a, min(n, a + nb)) for a in range(0, n, nb)]


def _weight_operand(w, n_blocks):
    """A raw weight used by several blocks is split once (a private Presplit)."""
    return w if n_blocks == 1 or isinstance(w, Presplit) else Presplit(w)


def conv2d(x, w, stride=1, padding=0, groups=1, *, scheme=None):
    """Integer cross-correlation ``conv2d(x, w) mod 2^64`` (uint64, shape (N, O, Ho, Wo)).

    ``x``: (N, C, H, W); ``w``: (O, C/groups, kh, kw), array or :class:`Presplit`.
    im2col on the digits of ``x`` (split once, then gathered), 4 GEMMs per
    reduction chunk (batched over groups).  Exactness: the reduction
    ``C/groups * kh * kw`` is cut along whole channels into chunks of at most
    512 (or 1024 / 2^21 with W22 / W16 when one window is longer), so every
    float64 partial sum is within 2^53.  Images go in blocks of bounded memory.
    """
    rx = _ring(x)
    xp = array_module(rx, _raw(w))
    p = _conv_geometry(rx.shape, w.shape, stride, padding, groups)
    if _native(xp, scheme, (p["g"], p["n"] * p["ho"] * p["wo"], p["cg"] * p["kh"] * p["kw"], p["og"])):
        return native.conv2d(rx, _raw(w), stride, padding, groups)
    sc, nc, cc, kc = _conv_chunks(p["cg"], p["kh"] * p["kw"], scheme_named(scheme or DEFAULT_SCHEME))
    per_image = len(sc.right) * nc * kc * p["g"] * p["ho"] * p["wo"] * 8
    if per_image > BLOCK_BYTES and p["ho"] > 1:  # one image's im2col is large: blocks of rows
        left = _conv_weight_layout(xp, _weight_operand(w, 2), p["g"], sc, nc, cc, kc)
        return _conv2d_rows(xp, rx, left, p, sc, nc, cc, kc, max(1, BLOCK_BYTES * p["ho"] // per_image))
    blocks = _image_blocks(p["n"], per_image)
    left = _conv_weight_layout(xp, _weight_operand(w, len(blocks)), p["g"], sc, nc, cc, kc)
    if len(blocks) == 1:
        return _conv2d_block(xp, rx, left, p, sc, nc, cc, kc)
    out = xp.empty((p["n"], p["o"], p["ho"], p["wo"]), dtype=U64)
    for a, b in blocks:
        out[a:b] = _conv2d_block(xp, rx[a:b], left, p, sc, nc, cc, kc)
    return out


def _conv2d_rows(xp, x, left, p, sc, nc, cc, kc, rows):
    """:func:`conv2d` image by image, ``rows`` output rows at a time: each block is the
    convolution (without padding) of the input rows it reads from the zero-padded image."""
    ph, pw, sh, kh, ho = p["ph"], p["pw"], p["sh"], p["kh"], p["ho"]
    xpad = xp.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw))) if (ph or pw) else x
    q = dict(p, n=1, ph=0, pw=0, w=p["w"] + 2 * pw)
    out = xp.empty((p["n"], p["o"], ho, p["wo"]), dtype=U64)
    for i in range(p["n"]):
        for r0 in range(0, ho, rows):
            r1 = min(ho, r0 + rows)
            part = xpad[i : i + 1, :, r0 * sh : (r1 - 1) * sh + kh]
            q.update(h=part.shape[2], ho=r1 - r0)
            out[i : i + 1, :, r0:r1] = _conv2d_block(xp, xp.ascontiguousarray(part), left, q, sc, nc, cc, kc)
    return out


def _conv2d_block(xp, x, left, p, sc, nc, cc, kc):
    n = x.shape[0]
    g, og, kh, kw, ho, wo, d = p["g"], p["og"], p["kh"], p["kw"], p["ho"], p["wo"], len(sc.right)
    hp, wp = p["h"] + 2 * p["ph"], p["w"] + 2 * p["pw"]
    img = _digit_image(
        xp, x.reshape(n, g, p["cg"], p["h"], p["w"]), sc, "right", (n, g, nc * cc, hp, wp), (p["ph"], p["pw"])
    )
    s = [st // 8 for st in img.strides]
    view = _windows(
        xp, img, (d, n, g, nc, cc, kh, kw, ho, wo), (s[0], s[1], s[2], cc * s[3], s[3], wp, 1, p["sh"] * wp, p["sw"])
    )
    cols = scratch(xp, "cols", (g, nc, d, cc, kh, kw, n, ho, wo))
    cols[...] = view.transpose(2, 3, 0, 4, 5, 6, 1, 7, 8)
    out = contract(xp, left, cols.reshape(g, nc, d * kc, n * ho * wo), sc, kc)
    out = out.reshape(g * og, n, ho, wo)
    return out.reshape(1, g * og, ho, wo) if n == 1 else xp.ascontiguousarray(out.transpose(1, 0, 2, 3))


def conv2d_grad_input(grad_out, w, input_shape, stride=1, padding=0, groups=1, *, scheme=None):
    """Gradient of :func:`conv2d` w.r.t. its input (the transposed convolution), mod 2^64.

    ``grad_out``: (N, O, Ho, Wo); ``w``: (O, C/groups, kh, kw) (array or
    :class:`Presplit`); returns uint64 ``input_shape`` = (N, C, H, W):
    ``dx[n,c,y,x] = sum grad_out[n,o,i,j] w[o,c',y-i*sh+ph,x-j*sw+pw]``.
    Computed as ``W^T @ grad_out`` per group (4 GEMMs per chunk, reduction
    ``O/groups`` chunked at 512, so float64 sums stay within 2^53) followed
    by an integer col2im (wrapping uint64 adds).
    """
    gy = _ring(grad_out)
    xp = array_module(gy, _raw(w))
    p = _conv_geometry(tuple(input_shape), w.shape, stride, padding, groups)
    if _native(xp, scheme, (p["g"], p["n"] * p["ho"] * p["wo"], p["og"], p["cg"] * p["kh"] * p["kw"])):
        return native.conv2d_grad_input(gy, _raw(w), input_shape, stride, padding, groups)
    n, g, og, ho, wo = p["n"], p["g"], p["og"], p["ho"], p["wo"]
    if tuple(gy.shape) != (n, p["o"], ho, wo):
        raise ValueError(f"conv2d_grad_input: grad_out has shape {gy.shape}, expected {(n, p['o'], ho, wo)}")
    sc = scheme_named(scheme or DEFAULT_SCHEME)
    nc, kc = chunking(og, sc.kmax)
    k = p["cg"] * p["kh"] * p["kw"]
    blocks = _image_blocks(n, (len(sc.right) * nc * kc + 3 * k) * g * ho * wo * 8)

    def build(arr, persist):  # W^T per group: (G, K, O/groups), reduction O/groups
        return split_left(xp, arr.reshape(g, og, k).swapaxes(-1, -2), sc, nc, kc, persist)

    left = _cached(_weight_operand(w, len(blocks)), ("convT", sc.name, g, nc, kc), build)
    if len(blocks) == 1:
        return _grad_input_block(xp, gy, left, p, sc, nc, kc)
    dx = xp.empty((n, p["c"], p["h"], p["w"]), dtype=U64)
    for a, b in blocks:
        dx[a:b] = _grad_input_block(xp, gy[a:b], left, p, sc, nc, kc)
    return dx


def _grad_input_block(xp, gy, left, p, sc, nc, kc):
    n, g, cg, og, kh, kw, ho, wo = _dims(p, gy.shape[0])
    ph, pw, sh, sw = p["ph"], p["pw"], p["sh"], p["sw"]
    rhs = gy.reshape(n, g, og, ho * wo).transpose(1, 2, 0, 3).reshape(g, og, n * ho * wo)
    cols = contract(xp, left, split_right(xp, rhs, sc, nc, kc, persist=False), sc, kc)
    cols = cols.reshape(g, cg, kh, kw, n, ho, wo)
    dx = xp.zeros((n, g, cg, p["h"] + 2 * ph, p["w"] + 2 * pw), dtype=U64)
    for i in range(kh):  # col2im: wrapping integer adds
        for j in range(kw):
            tgt = dx[:, :, :, i : i + (ho - 1) * sh + 1 : sh, j : j + (wo - 1) * sw + 1 : sw]
            xp.add(tgt, cols[:, :, i, j].transpose(2, 0, 1, 3, 4), out=tgt)
    dx = dx[:, :, :, ph : ph + p["h"], pw : pw + p["w"]]
    return xp.ascontiguousarray(dx).reshape(n, p["c"], p["h"], p["w"])


def _row_chunks(n, ho, wo, kmax):
    """Chunk the reduction over (images, output rows, columns): -> (nN, nb, nH, hb) or None."""
    if ho * wo <= kmax:  # whole images per chunk
        nn_, nb = chunking(n, kmax // (ho * wo))
        return nn_, nb, 1, ho
    if wo > kmax:
        return None
    nh, hb = chunking(ho, kmax // wo)  # one image, hb rows per chunk
    return n, 1, nh, hb


def conv2d_grad_weight(x, grad_out, weight_shape, stride=1, padding=0, groups=1, *, scheme=None):
    """Gradient of :func:`conv2d` w.r.t. its weight, mod 2^64 (uint64, ``weight_shape``).

    ``dw[o,c,i,j] = sum_{n,y,x} grad_out[n,o,y,x] xpad[n, c'', y*sh+i, x*sw+j]``:
    per group ``cols @ grad_out^T`` with the reduction ``N*Ho*Wo`` cut into
    chunks of whole images (or of output rows) of at most 512 elements
    (4 GEMMs each; every float64 partial sum within 2^53; W22 / W16 when one
    output row is longer), chunk results added in uint64.
    """
    rx, gy = _ring(x), _ring(grad_out)
    xp = array_module(rx, gy)
    p = _conv_geometry(rx.shape, tuple(weight_shape), stride, padding, groups)
    if _native(xp, scheme, (p["g"], p["og"], p["n"] * p["ho"] * p["wo"], p["cg"] * p["kh"] * p["kw"])):
        return native.conv2d_grad_weight(rx, gy, weight_shape, stride, padding, groups)
    n, g, ho, wo = p["n"], p["g"], p["ho"], p["wo"]
    if tuple(gy.shape) != (n, p["o"], ho, wo):
        raise ValueError(f"conv2d_grad_weight: grad_out has shape {gy.shape}, expected {(n, p['o'], ho, wo)}")
    sc = _fit(scheme_named(scheme or DEFAULT_SCHEME), wo, "conv2d_grad_weight: output width")
    per_chunk = max(1, sc.kmax // (ho * wo))  # images per reduction chunk
    k = p["cg"] * p["kh"] * p["kw"]
    dw = None
    for a, b in _image_blocks(n, len(sc.left) * (k + p["og"]) * g * ho * wo * 8, per_chunk):
        part = _grad_weight_block(xp, rx[a:b], gy[a:b], p, sc)
        dw = part if dw is None else xp.add(dw, part, out=dw)
    return xp.ascontiguousarray(dw.transpose(0, 2, 1)).reshape(tuple(weight_shape))


def _grad_weight_block(xp, x, gy, p, sc):
    """(G, K, O/groups) weight gradient of one block of images."""
    n, g, cg, og, kh, kw, ho, wo = _dims(p, x.shape[0])
    nn_, nb, nh, hb = _row_chunks(n, ho, wo, sc.kmax)
    dl, dr, kc, k = len(sc.left), len(sc.right), nb * hb * wo, cg * kh * kw
    sh, sw, ph, pw = p["sh"], p["sw"], p["ph"], p["pw"]
    # left: cols (K, N*Ho*Wo) per group, gathered from the digits of x
    hx, wx = max(p["h"] + 2 * ph, (nh * hb - 1) * sh + kh), p["w"] + 2 * pw
    img = _digit_image(xp, x.reshape(n, g, cg, p["h"], p["w"]), sc, "left", (nn_ * nb, g, cg, hx, wx), (ph, pw))
    s = [st // 8 for st in img.strides]
    view = _windows(
        xp,
        img,
        (dl, nn_, nb, g, cg, kh, kw, nh, hb, wo),
        (s[0], nb * s[1], s[1], s[2], s[3], wx, 1, hb * sh * wx, sh * wx, sw),
    )
    cols = scratch(xp, "cols", (g, nn_, nh, cg, kh, kw, dl, nb, hb, wo))
    cols[...] = view.transpose(3, 1, 7, 4, 5, 6, 0, 2, 8, 9)
    left = cols.reshape(g, nn_ * nh, k, dl * kc)
    # right: grad_out^T (N*Ho*Wo, O/groups) per group, zero-padded to whole chunks
    gyp = _pad_axis(xp, _pad_axis(xp, gy, 0, nn_ * nb), 2, nh * hb)
    src = gyp.reshape(nn_, nb, g, og, nh, hb, wo).transpose(2, 0, 4, 1, 5, 6, 3)
    rbuf = scratch(xp, "right", (g, nn_, nh, dr, nb, hb, wo, og))
    split(xp, src, xp.moveaxis(rbuf, 3, 0), sc, "right")
    return contract(xp, left, rbuf.reshape(g, nn_ * nh, dr * kc, og), sc, kc)
