"""Products: MatMul, Gemm, Conv.

Costs (per party; ``n`` output elements):

* ``pow2`` (our attribute, written by :mod:`mpcgpu.nn.dag_fuse`): the product times
  ``2^pow2``, folded into the truncation (free);
* a share times a public matrix (``x @ W``, ``W @ x``): local ring products of each component
  and one truncation (:func:`~mpcgpu.sharing.arithmetic.matmul_public`): 2 rounds, 16 bytes
  per output element;
* two shares (``Q K^T``, ``P V``, ``x @ W`` for a secret weight: batched with NumPy's matmul
  semantics, :func:`~mpcgpu.sharing.arithmetic.matmul`): the product fused with its
  truncation, 2 rounds, 64 bytes per output element for the three parties (an integer
  share, e.g. one-hot ids, times a real one: 1 round, 8 bytes, no truncation);
* Gemm: the product as above; ``alpha != 1`` folds into a public operand or costs one
  public product (2 rounds); ``C`` is added locally (``beta`` likewise);
* Conv (2-D, NCHW / OIHW, symmetric pads, dilation 1, groups): as a matrix product with a
  secret (:func:`~mpcgpu.sharing.arithmetic.conv2d`: 2 rounds, 64 B/elt in all) or public
  weight (2 rounds, 16 B/elt per party); the bias added locally.
"""

from __future__ import annotations

import numpy

from ...ring import products as ring
from ...sharing.arithmetic import _summand_product, conv2d, matmul, matmul_public, product_summand, zeros
from ...sharing.compact import CompactShare, held, matmul_transposed
from ..dag import register_op
from . import values as V
from ._common import P, S, ex


#: elements of a compact weight drawn at a time by :func:`matmul_rows`
ROW_BLOCK = 1 << 22


def matmul_rows(x, w: CompactShare, trunc=None, extra_bits: int = 0):
    """``x @ w`` for a compact 2-D weight ``w`` of shape ``(k, n)`` (a ``(in, out)`` matrix,
    an embedding table read by one-hot rows): ``w``'s rows drawn in blocks of about
    :data:`ROW_BLOCK` elements, this party's summand of the product accumulated over the
    blocks of the reduction (the product is bilinear), then one resharing or truncation:
    the rounds and bytes of :func:`~mpcgpu.sharing.arithmetic.matmul`, and ``w`` never
    exists whole (GPT-2's 50257 x 768 table: 620 MB less per party)."""
    k, n = (int(d) for d in w.shape)
    step = max(1, ROW_BLOCK // max(n, 1))
    summand = None
    for lo in range(0, k, step):
        hi = min(k, lo + step)
        blk = w.rows(lo, hi)
        part = product_summand(x.rt, x.first[..., lo:hi], x.second[..., lo:hi], blk.first, blk.second, ring.matmul)
        del blk
        summand = part if summand is None else summand + part
    return _summand_product(x.rt, summand, x.scale + w.scale, trunc, *_bits(x, w, extra_bits))


def _bits(x, y, extra_bits):
    """``(bits, out_scale)`` of a product's truncation that also divides by ``2^extra_bits``."""
    f = x.rt.frac_bits
    if not extra_bits:
        return None, None
    return x.scale + y.scale - f + extra_bits, f


def _share(node, v, what):
    if isinstance(v, (V.MaskedShare, V.OneHotShare)):
        node.fail(f"{what} is a {V.kind(v)}, which a product cannot take")
    return held(v)


def _product(node, a, b, j: int = 0):
    """``a @ b * 2^-j`` for values of which at least one is secret (``j``: the ``pow2``
    attribute of a fused MatMul, :mod:`mpcgpu.nn.dag_fuse`: folded into a public operand, or
    into the truncation of a product of two real shares: free either way)."""
    if V.is_public(b):
        return matmul_public(_share(node, a, "the left operand"), V.public(b).astype(numpy.float64) * 2.0**-j)
    if V.is_public(a):
        pub = V.public(a).astype(numpy.float64) * 2.0**-j
        return matmul_public(_share(node, b, "the right operand"), pub, left=True)
    left = _share(node, a, "the left operand")
    if not (isinstance(b, CompactShare) and b.ndim == 2):  # a 2-D compact weight is read by rows
        b = _share(node, b, "the right operand")
    f = left.rt.frac_bits
    if j and not (left.scale == f and b.scale == f):
        return V.mul_public(_product(node, left, b), numpy.float64(2.0**-j))
    if isinstance(b, CompactShare):
        return matmul_rows(left, b, extra_bits=j)
    right = b
    if j:
        summand = product_summand(left.rt, left.first, left.second, right.first, right.second, ring.matmul)
        return _summand_product(left.rt, summand, left.scale + right.scale, None, *_bits(left, right, j))
    return matmul(left, right)


def matmul_private(ctx, node, args):
    return [_product(node, *args, j=-int(node.attr("pow2", 0)))]


def matmul_plain(node, args):
    y = numpy.matmul(args[0], args[1])
    return [y * 2.0 ** int(node.attr("pow2", 0)) if node.attr("pow2") else y]


def _t(v):
    """The transpose of a 2-D value (local on a share)."""
    if V.is_public(v):
        return V.public(v).T
    return _share(None, v, "").T


def gemm_plain(node, args):
    a, b = args[0], args[1]
    c = args[2] if len(args) > 2 else None
    a = a.T if int(node.attr("transA", 0)) else a
    b = b.T if int(node.attr("transB", 0)) else b
    y = float(node.attr("alpha", 1.0)) * (a @ b)
    if c is not None:
        y = y + float(node.attr("beta", 1.0)) * c
    return [y]


def gemm_private(ctx, node, args):
    a, b = args[0], args[1]
    c = args[2] if len(args) > 2 else None
    for v, what in ((a, "A"), (b, "B")):
        if isinstance(v, (V.MaskedShare, V.OneHotShare)):
            node.fail(f"{what} is a {V.kind(v)}, which a product cannot take")
    if int(node.attr("transA", 0)):
        a = _t(a)
    transposed = None  # a compact (out, in) weight read transposed block by block
    if int(node.attr("transB", 0)):
        if isinstance(b, CompactShare) and b.ndim == 2 and not V.is_public(a):
            transposed = b
        else:
            b = _t(b)
    alpha, beta = float(node.attr("alpha", 1.0)), float(node.attr("beta", 1.0))
    if alpha != 1.0 and V.is_public(b):
        b, alpha = V.public(b) * alpha, 1.0
    elif alpha != 1.0 and V.is_public(a):
        a, alpha = V.public(a) * alpha, 1.0
    y = matmul_transposed(held(a), transposed) if transposed is not None else _product(node, a, b)
    if alpha != 1.0:
        y = V.mul_public(y, numpy.float64(alpha))
    if c is None:
        return [y]
    if V.is_public(c):
        return [V.add_public(y, V.public(c) * beta)]
    c = _share(node, c, "C")
    return [y + (c if beta == 1.0 else V.mul_public(c, numpy.float64(beta)))]


def _conv_geometry(node, w_shape):
    if node.attr("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
        node.fail("auto_pad is not supported (give explicit pads)")
    if len(w_shape) != 4:
        node.fail(f"only 2-D convolutions are supported, weight shape {tuple(w_shape)}")
    if any(int(d) != 1 for d in node.attr("dilations", [1, 1])):
        node.fail("dilations other than 1 are not supported")
    ks = node.attr("kernel_shape")
    if ks is not None and tuple(int(k) for k in ks) != tuple(w_shape[2:]):
        node.fail(f"kernel_shape {ks} differs from the weight's {tuple(w_shape[2:])}")
    sh, sw = (int(s) for s in node.attr("strides", [1, 1]))
    pads = [int(p) for p in node.attr("pads", [0, 0, 0, 0])]
    if pads[0] != pads[2] or pads[1] != pads[3]:
        node.fail(f"asymmetric pads {pads} are not supported")
    return (sh, sw), (pads[0], pads[1]), int(node.attr("group", 1))


def conv_plain(node, args):
    x, w = args[0], args[1]
    b = args[2] if len(args) > 2 else None
    (sh, sw), (ph, pw), groups = _conv_geometry(node, w.shape)
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    xp = numpy.pad(x.astype(numpy.float64), ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    ho, wo = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
    out = numpy.zeros((n, o, ho, wo))
    og = o // groups
    for g in range(groups):
        xs, ws = xp[:, g * cg : (g + 1) * cg], w[g * og : (g + 1) * og]
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, :, i : i + sh * ho : sh, j : j + sw * wo : sw]
                out[:, g * og : (g + 1) * og] += numpy.einsum("nchw,oc->nohw", patch, ws[:, :, i, j])
    if b is not None:
        out = out + b.reshape(1, -1, 1, 1)
    return [out]


def conv_private(ctx, node, args):
    x, w = args[0], args[1]
    b = args[2] if len(args) > 2 else None
    stride, padding, groups = _conv_geometry(node, V.shape_of(w))
    if V.is_public(x):
        xs = V.add_public(zeros(V.shape_of(x), rt=ctx.rt), V.public(x).astype(numpy.float64))
    else:
        xs = _share(node, x, "the input")
    wv = V.public(w).astype(numpy.float64) if V.is_public(w) else _share(node, w, "the weight")
    y = conv2d(xs, wv, stride=stride, padding=padding, groups=groups)
    if b is None:
        return [y]
    if V.is_public(b):
        return [V.add_public(y, V.public(b).reshape(1, -1, 1, 1))]
    return [y + _share(node, b, "the bias").reshape(1, -1, 1, 1)]


register_op(
    "MatMul",
    plain=matmul_plain,
    private=matmul_private,
    examples=[
        ex("MatMul", [S("x", (1, 3, 4)), P("w", (4, 5))]),
        ex("MatMul", [S("x", (1, 3, 4)), S("w", (4, 5))]),
        ex("MatMul", [S("q", (1, 2, 3, 4)), S("k", (1, 2, 4, 3))]),
        ex("MatMul", [P("a", (2, 3)), S("x", (2, 3, 2))]),
        ex("MatMul", [S("q", (1, 2, 3, 4)), S("k", (1, 2, 4, 3))], attrs={"pow2": -3}),
        ex("MatMul", [S("x", (3, 4)), P("w", (4, 2))], attrs={"pow2": -1}),
    ],
    doc="share x public: 2 rounds, 16 B/out elt; share x share (batched): 2 rounds, 64 B/out elt (3 parties)",
)
register_op(
    "Gemm",
    plain=gemm_plain,
    private=gemm_private,
    examples=[
        ex("Gemm", [S("a", (3, 4)), S("b", (4, 5))]),
        ex("Gemm", [S("a", (3, 4)), S("b", (5, 4)), S("c", (5,))], attrs={"transB": 1}),
        ex(
            "Gemm",
            [S("a", (4, 3)), P("b", (4, 5)), P("c", (3, 5))],
            attrs={"transA": 1, "alpha": 0.5, "beta": 2.0},
        ),
    ],
    doc="as MatMul; alpha != 1 on two shares: 2 rounds more",
)
register_op(
    "Conv",
    plain=conv_plain,
    private=conv_private,
    examples=[
        ex(
            "Conv",
            [S("x", (1, 3, 8, 8)), S("w", (4, 3, 4, 4)), S("b", (4,))],
            attrs={"kernel_shape": [4, 4], "strides": [4, 4]},
        ),
        ex("Conv", [S("x", (1, 2, 5, 5)), P("w", (2, 1, 3, 3))], attrs={"pads": [1, 1, 1, 1], "group": 2}),
    ],
    doc="2 rounds; secret weight 64 B/out elt (3 parties), public weight 16 B/out elt per party",
)
