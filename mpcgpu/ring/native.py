"""Exact products mod 2^64 with native integer kernels on the CPU (numba).

Where 64-bit integer multiplies are vector instructions (AVX-512: ``vpmullq``), an
integer GEMM comes within 1.5x of a float64 one and beats the limb trick of
:mod:`mpcgpu.ring.limbs` by 3x; elsewhere it depends on the shape (on an Intel Xeon with slow
``vpmullq`` it wins on tall and skinny products and loses at 1024^3).  :mod:`mpcgpu.ring.choice`
chooses per machine and product shape class; this module only computes.

* :func:`gemm_nt` -- ``A @ B^T mod 2^64`` given ``B^T``: 4 x 4 tiles of dot products of
  contiguous rows (the sixteen sums stay in registers, LLVM vectorises the loop over the
  reduction: 8 loads, 16 ``vpmullq``, 16 ``vpaddq`` per step), in blocks: the reduction
  cut evenly into pieces of at most RED_BLOCK words, ``B^T`` into blocks of rows of at
  most BLOCK_BYTES that stay in L2 while every row of ``A`` passes them (revision 2
  streamed all of ``B^T`` from L3 for every four rows of ``A``).  :func:`gemm` --
  ``A @ B``: the same on a transposed view as it is, else on blocks of ``B`` transposed
  one at a time into a buffer (no transposed copy of ``B``: NumPy's took 3.5 ms at
  1024^2 and 115 ms for 25088 x 512), or for fewer than MIN_ROWS_TO_PACK rows of ``A`` a
  row-update kernel that reads ``B`` as it is.  Exact by construction: uint64 arithmetic
  wraps, and every block adds into the same words.
* :func:`matmul`, :func:`conv2d`, :func:`conv2d_grad_input`,
  :func:`conv2d_grad_weight` -- the same contracts as their :mod:`mpcgpu.ring.products`
  namesakes, built from :func:`gemm_nt` with an integer im2col (laid out so that no
  operand needs a transpose) / col2im.

NumPy arrays only (the GPU keeps the limbs).  ``available()`` says whether numba
imports; compiled kernels are cached on disk (``cache=True``).
"""

from __future__ import annotations

import numpy as np

from mpcgpu.ring.geometry import conv_geometry

U64 = np.uint64
#: bumped whenever the kernels change (part of the calibration cache key)
REVISION = 3
#: longest reduction block of the dot-product kernel (a reduction is cut evenly into blocks)
RED_BLOCK = 1024
#: bytes of B^T per block of the dot-product kernel (the rows of a reduction block that stay
#: in L2 while every row of A passes them; 1 MiB of L2 here: 768 KiB measured better than
#: 512 KiB on 784 x 1152 x 128, as good at 1024^3)
BLOCK_BYTES = 768 * 1024
#: below this many rows of A, a B that is not already transposed is used as it is (the
#: row-update kernel) rather than packed block by block for the dot-product kernel (row
#: updates win up to 4 rows, packing from 8, for k x n = 1024 x 1024 and 25088 x 512)
MIN_ROWS_TO_PACK = 6
#: images per im2col block: bounds its memory
IMAGE_BLOCK_BYTES = 64 * 2**20
#: output rows per im2col block of an image whose im2col exceeds IMAGE_BLOCK_BYTES (VGG-16's
#: 64-channel layers at 224 x 224: 231 MB whole; blocks of 16 MB measured as fast or faster)
ROW_BLOCK_BYTES = 16 * 2**20
_KERNELS = None
_WHY = None


def numba_jit():
    """``(jit, None)`` with mpcgpu's numba decorator (compiled once, cached on disk, no
    bounds checks, GIL released), or ``(None, why)`` where numba does not import."""
    try:
        import numba
    except Exception as exc:  # ImportError, or a broken LLVM
        return None, f"numba is not available ({exc.__class__.__name__}: {exc})"
    return numba.njit(cache=True, boundscheck=False, nogil=True), None


def _compile():
    """The three compiled kernels ``(nt, nn, nn_packed)``, or None (``_WHY`` says why)."""
    global _KERNELS, _WHY
    if _KERNELS is not None or _WHY is not None:
        return _KERNELS
    jit, _WHY = numba_jit()
    if jit is None:
        return None

    # Loops index row slices with ``range(length)`` so that numba emits no negative-index
    # fix-up, which would keep LLVM from vectorising (64-bit multiplies: ``vpmullq``).

    # the unrolled 4 x 4 tile reads best one row of the tile per line
    # fmt: off
    @jit
    def tiles(a, ka, bt, jb, kb, w, c, cj, nb):
        """``c[:, cj:cj+nb] += a[:, ka:ka+w] @ bt[jb:jb+nb, kb:kb+w].T``: every sum a dot
        product of two contiguous rows, in 4 x 4 tiles (8 row loads feed 16 multiply-adds,
        the sums stay in registers), the last rows and columns in 4 x 1, 1 x 4, 1 x 1."""
        m = a.shape[0]
        m4, n4 = m - m % 4, nb - nb % 4
        for i in range(0, m4, 4):
            a0 = a[i, ka:ka + w]; a1 = a[i + 1, ka:ka + w]; a2 = a[i + 2, ka:ka + w]; a3 = a[i + 3, ka:ka + w]  # noqa: E702
            for j in range(0, n4, 4):
                b0 = bt[jb + j, kb:kb + w]; b1 = bt[jb + j + 1, kb:kb + w]  # noqa: E702
                b2 = bt[jb + j + 2, kb:kb + w]; b3 = bt[jb + j + 3, kb:kb + w]  # noqa: E702
                s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = U64(0)
                s20 = s21 = s22 = s23 = s30 = s31 = s32 = s33 = U64(0)
                for t in range(w):
                    y0 = b0[t]; y1 = b1[t]; y2 = b2[t]; y3 = b3[t]  # noqa: E702
                    x0 = a0[t]; x1 = a1[t]; x2 = a2[t]; x3 = a3[t]  # noqa: E702
                    s00 += x0 * y0; s01 += x0 * y1; s02 += x0 * y2; s03 += x0 * y3  # noqa: E702
                    s10 += x1 * y0; s11 += x1 * y1; s12 += x1 * y2; s13 += x1 * y3  # noqa: E702
                    s20 += x2 * y0; s21 += x2 * y1; s22 += x2 * y2; s23 += x2 * y3  # noqa: E702
                    s30 += x3 * y0; s31 += x3 * y1; s32 += x3 * y2; s33 += x3 * y3  # noqa: E702
                q = cj + j
                c[i, q] += s00; c[i, q + 1] += s01; c[i, q + 2] += s02; c[i, q + 3] += s03  # noqa: E702
                c[i + 1, q] += s10; c[i + 1, q + 1] += s11; c[i + 1, q + 2] += s12; c[i + 1, q + 3] += s13  # noqa: E702
                c[i + 2, q] += s20; c[i + 2, q + 1] += s21; c[i + 2, q + 2] += s22; c[i + 2, q + 3] += s23  # noqa: E702
                c[i + 3, q] += s30; c[i + 3, q + 1] += s31; c[i + 3, q + 2] += s32; c[i + 3, q + 3] += s33  # noqa: E702
            for j in range(n4, nb):                      # the last columns: 4 x 1
                b0 = bt[jb + j, kb:kb + w]
                s0 = s1 = s2 = s3 = U64(0)
                for t in range(w):
                    y = b0[t]
                    s0 += a0[t] * y; s1 += a1[t] * y; s2 += a2[t] * y; s3 += a3[t] * y  # noqa: E702
                q = cj + j
                c[i, q] += s0; c[i + 1, q] += s1; c[i + 2, q] += s2; c[i + 3, q] += s3  # noqa: E702
        for i in range(m4, m):                           # the last rows: 1 x 4, then 1 x 1
            a0 = a[i, ka:ka + w]
            for j in range(0, n4, 4):
                b0 = bt[jb + j, kb:kb + w]; b1 = bt[jb + j + 1, kb:kb + w]  # noqa: E702
                b2 = bt[jb + j + 2, kb:kb + w]; b3 = bt[jb + j + 3, kb:kb + w]  # noqa: E702
                s0 = s1 = s2 = s3 = U64(0)
                for t in range(w):
                    x = a0[t]
                    s0 += x * b0[t]; s1 += x * b1[t]; s2 += x * b2[t]; s3 += x * b3[t]  # noqa: E702
                q = cj + j
                c[i, q] += s0; c[i, q + 1] += s1; c[i, q + 2] += s2; c[i, q + 3] += s3  # noqa: E702
            for j in range(n4, nb):
                b0 = bt[jb + j, kb:kb + w]
                s = U64(0)
                for t in range(w):
                    s += a0[t] * b0[t]
                c[i, cj + j] += s

    @jit
    def blocking(k, n, red_block, block_bytes):
        """``(w, nb)``: reduction blocks of ``w`` words (``k`` cut evenly into pieces of at
        most ``red_block``, rounded up to a multiple of 8) and ``nb`` rows of B^T per block
        (``n`` cut evenly, a multiple of 4) so that a block of B^T (``nb * w`` words) fits
        in ``block_bytes``."""
        w = -(-k // max(1, -(-k // red_block)))
        w = -(-w // 8) * 8
        nb = max(4, block_bytes // (8 * w))
        nb = -(-n // max(1, -(-n // nb)))
        return w, -(-nb // 4) * 4

    @jit
    def nt(a, bt, c, red_block, block_bytes):
        """``c += a @ bt.T`` in blocks along the reduction and of the rows of ``bt``
        (:func:`blocking`): a block of ``bt`` stays in L2 while all rows of ``a`` pass it."""
        k = a.shape[1]
        n = bt.shape[0]
        w, nb = blocking(k, n, red_block, block_bytes)
        for k0 in range(0, k, w):
            for j0 in range(0, n, nb):
                tiles(a, k0, bt, j0, k0, min(w, k - k0), c, j0, min(nb, n - j0))

    @jit
    def pack(b, k0, w, j0, nb, buf):
        """``buf[:nb, :w] = b[k0:k0+w, j0:j0+nb].T`` (one block of B^T, written in L2)."""
        for t in range(w):
            row = b[k0 + t, j0:j0 + nb]
            for j in range(nb):
                buf[j, t] = row[j]

    @jit
    def nn_packed(a, b, c, red_block, block_bytes):
        """``c += a @ b`` as :func:`nt` computes it, each block of B transposed into a
        buffer first (no transposed copy of the whole of B)."""
        k = a.shape[1]
        n = b.shape[1]
        w, nb = blocking(k, n, red_block, block_bytes)
        # rows w + 8 words apart: with w a multiple of 512, rows 4 KiB apart fall into one L1
        # set and the transposing writes evict each other (packing took 3x longer)
        buf = np.empty((nb, w + 8), dtype=U64)
        for k0 in range(0, k, w):
            wk = min(w, k - k0)
            for j0 in range(0, n, nb):
                nj = min(nb, n - j0)
                pack(b, k0, wk, j0, nj, buf)
                tiles(a, k0, buf, 0, 0, wk, c, j0, nj)

    @jit
    def nn(a, b, c):
        """``c += a @ b`` as row updates ``c[i] += a[i, k] * b[k]``, two rows of C and two
        of B per pass (for few rows of A, where transposing B would cost more)."""
        m, k = a.shape
        n = b.shape[1]
        k2 = k - k % 2
        for i in range(0, m - m % 2, 2):
            c0 = c[i]; c1 = c[i + 1]  # noqa: E702
            for kk in range(0, k2, 2):
                x00 = a[i, kk]; x01 = a[i, kk + 1]; x10 = a[i + 1, kk]; x11 = a[i + 1, kk + 1]  # noqa: E702
                b0 = b[kk]; b1 = b[kk + 1]  # noqa: E702
                for j in range(n):
                    y0 = b0[j]; y1 = b1[j]  # noqa: E702
                    c0[j] += x00 * y0 + x01 * y1
                    c1[j] += x10 * y0 + x11 * y1
            if k2 < k:
                x0 = a[i, k2]; x1 = a[i + 1, k2]; b0 = b[k2]  # noqa: E702
                for j in range(n):
                    c0[j] += x0 * b0[j]
                    c1[j] += x1 * b0[j]
        if m % 2:
            i = m - 1
            c0 = c[i]
            for kk in range(k):
                x0 = a[i, kk]; b0 = b[kk]  # noqa: E702
                for j in range(n):
                    c0[j] += x0 * b0[j]

    # fmt: on
    _KERNELS = (nt, nn, nn_packed)
    return _KERNELS


def available() -> bool:
    return _compile() is not None


def why_not() -> str | None:
    _compile()
    return _WHY


def _kernels():
    kernels = _compile()
    if kernels is None:
        raise RuntimeError(_WHY)
    return kernels


def gemm_nt(a, bt, out=None):
    """``a @ bt.T mod 2^64`` for 2-D uint64 (or int64) arrays (``bt`` holds B's columns as
    rows: the layout of a weight matrix ``(out, in)``)."""
    return _apply(0, a, bt, bt.shape[0], out)


def gemm(a, b, out=None):
    """``a @ b mod 2^64`` for 2-D uint64 (or int64) arrays: the dot-product kernel on ``B^T``
    when ``b`` is a transposed view, else on blocks of ``B`` transposed one at a time into a
    buffer, or, for fewer than :data:`MIN_ROWS_TO_PACK` rows of ``a``, the row-update
    kernel (which reads ``B`` as it is)."""
    if b.T.flags.c_contiguous:
        return gemm_nt(a, b.T, out)
    return _apply(2 if a.shape[0] >= MIN_ROWS_TO_PACK else 1, a, b, b.shape[1], out)


def _apply(which, a, b, n, out):
    """Kernel ``which`` (0: ``nt``, 1: ``nn``, 2: ``nn_packed``) into ``out`` (zeros of ``(rows of a, n)``)."""
    a = np.ascontiguousarray(a).view(U64)
    b = np.ascontiguousarray(b).view(U64)
    if out is None:
        out = np.zeros((a.shape[0], n), dtype=U64)
    kernel = _kernels()[which]
    if which == 1:
        kernel(a, b, out)
    else:
        kernel(a, b, out, RED_BLOCK, BLOCK_BYTES)
    return out


def matmul(a, b):
    """``numpy.matmul`` semantics (1-D, 2-D, batched with broadcasting), exact mod 2^64."""
    a, b = np.asarray(a).view(U64), np.asarray(b).view(U64)
    vec_a, vec_b = a.ndim == 1, b.ndim == 1
    a2 = a[None, :] if vec_a else a
    b2 = b[:, None] if vec_b else b
    if a2.shape[-1] != b2.shape[-2]:
        raise ValueError(f"matmul: reduction lengths differ: {a.shape} @ {b.shape}")
    batch = np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
    if not batch:
        out = gemm(a2, b2)
    elif b2.ndim == 2:  # fold a's batch into its rows: one GEMM
        out = gemm(a2.reshape(-1, a2.shape[-1]), b2).reshape(*a2.shape[:-1], b2.shape[-1])
        out = np.broadcast_to(out, batch + out.shape[-2:])
    else:
        ab = np.broadcast_to(a2, batch + a2.shape[-2:]).reshape(-1, *a2.shape[-2:])
        bb = np.broadcast_to(b2, batch + b2.shape[-2:]).reshape(-1, *b2.shape[-2:])
        out = np.stack([gemm(x, y) for x, y in zip(ab, bb)]).reshape(batch + (a2.shape[-2], b2.shape[-1]))
    if vec_a:
        out = out[..., 0, :]
    if vec_b:
        out = out[..., 0]
    return np.ascontiguousarray(out) if out.ndim else out.copy()


# -- convolutions ------------------------------------------------------------------------


def _geometry(x_shape, w_shape, stride, padding, groups):
    p = conv_geometry(x_shape, w_shape, stride, padding, groups, ValueError)
    return tuple(p[k] for k in ("n", "c", "h", "w", "o", "cg", "kh", "kw", "sh", "sw", "ph", "pw", "g", "ho", "wo"))


def _cols(x, g, cg, kh, kw, sh, sw, ph, pw, ho, wo, transposed=False):
    """im2col: (G, N*Ho*Wo, Cg*kh*kw) uint64, or (G, Cg*kh*kw, N*Ho*Wo) ``transposed``
    (a contiguous copy either way)."""
    n = x.shape[0]
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw))) if (ph or pw) else x
    s = xp.strides
    view = np.lib.stride_tricks.as_strided(
        xp, shape=(n, g, cg, kh, kw, ho, wo), strides=(s[0], cg * s[1], s[1], s[2], s[3], sh * s[2], sw * s[3])
    )
    if transposed:
        return np.ascontiguousarray(view.transpose(1, 2, 3, 4, 0, 5, 6)).reshape(g, cg * kh * kw, n * ho * wo)
    return np.ascontiguousarray(view.transpose(1, 0, 5, 6, 2, 3, 4)).reshape(g, n * ho * wo, cg * kh * kw)


def _blocks(n, per_image):
    nb = max(1, IMAGE_BLOCK_BYTES // max(1, per_image))
    return [(a, min(n, a + nb)) for a in range(0, n, nb)]


def conv2d(x, w, stride=1, padding=0, groups=1):
    """Integer cross-correlation (N, C, H, W) x (O, C/g, kh, kw) -> (N, O, Ho, Wo) mod 2^64."""
    x, w = np.asarray(x).view(U64), np.asarray(w).view(U64)
    n, c, h, wd, o, cg, kh, kw, sh, sw, ph, pw, g, ho, wo = _geometry(x.shape, w.shape, stride, padding, groups)
    og, k = o // g, cg * kh * kw
    wg = np.ascontiguousarray(w.reshape(g, og, k))  # (G, O/g, K): B^T already
    out = np.empty((n, o, ho, wo), dtype=U64)
    if g * ho * wo * k * 8 > IMAGE_BLOCK_BYTES:  # one image's im2col is large: blocks of rows
        xpad = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw))) if (ph or pw) else x
        rows = max(1, ROW_BLOCK_BYTES // (g * wo * k * 8))
        for i in range(n):
            for r0 in range(0, ho, rows):
                r1 = min(ho, r0 + rows)
                part = xpad[i : i + 1, :, r0 * sh : (r1 - 1) * sh + kh]
                cols = _cols(part, g, cg, kh, kw, sh, sw, 0, 0, r1 - r0, wo)
                res = np.stack([gemm_nt(cols[j], wg[j]) for j in range(g)])  # (G, rows*Wo, O/g)
                out[i, :, r0:r1] = res.reshape(g, r1 - r0, wo, og).transpose(0, 3, 1, 2).reshape(o, r1 - r0, wo)
        return out
    for a, b in _blocks(n, g * ho * wo * k * 8):
        cols = _cols(x[a:b], g, cg, kh, kw, sh, sw, ph, pw, ho, wo)
        res = np.stack([gemm_nt(cols[i], wg[i]) for i in range(g)])  # (G, nb*Ho*Wo, O/g)
        out[a:b] = res.reshape(g, b - a, ho, wo, og).transpose(1, 0, 4, 2, 3).reshape(b - a, o, ho, wo)
    return out


def conv2d_grad_weight(x, grad_out, weight_shape, stride=1, padding=0, groups=1):
    """``dw = grad_out^T @ im2col(x)`` per group, mod 2^64 (uint64, ``weight_shape``)."""
    x, gy = np.asarray(x).view(U64), np.asarray(grad_out).view(U64)
    n, c, h, wd, o, cg, kh, kw, sh, sw, ph, pw, g, ho, wo = _geometry(
        x.shape, tuple(weight_shape), stride, padding, groups
    )
    if tuple(gy.shape) != (n, o, ho, wo):
        raise ValueError(f"conv2d_grad_weight: grad_out has shape {gy.shape}, expected {(n, o, ho, wo)}")
    og, k = o // g, cg * kh * kw
    dw = np.zeros((g, og, k), dtype=U64)
    for a, b in _blocks(n, g * ho * wo * k * 8):
        cols_t = _cols(x[a:b], g, cg, kh, kw, sh, sw, ph, pw, ho, wo, transposed=True)  # (G, K, M)
        gyt = np.ascontiguousarray(gy[a:b].reshape(b - a, g, og, ho * wo).transpose(1, 2, 0, 3)).reshape(
            g, og, (b - a) * ho * wo
        )  # (G, O/g, M)
        for i in range(g):
            gemm_nt(gyt[i], cols_t[i], out=dw[i])
    return dw.reshape(tuple(weight_shape))


def conv2d_grad_input(grad_out, w, input_shape, stride=1, padding=0, groups=1):
    """The transposed convolution: ``col2im(grad_out @ W)`` per group, mod 2^64."""
    gy, w = np.asarray(grad_out).view(U64), np.asarray(w).view(U64)
    n, c, h, wd, o, cg, kh, kw, sh, sw, ph, pw, g, ho, wo = _geometry(
        tuple(input_shape), w.shape, stride, padding, groups
    )
    if tuple(gy.shape) != (n, o, ho, wo):
        raise ValueError(f"conv2d_grad_input: grad_out has shape {gy.shape}, expected {(n, o, ho, wo)}")
    og, k = o // g, cg * kh * kw
    wgt = np.ascontiguousarray(w.reshape(g, og, k).transpose(0, 2, 1))  # (G, K, O/g): B^T
    dx = np.zeros((n, g, cg, h + 2 * ph, wd + 2 * pw), dtype=U64)
    for a, b in _blocks(n, g * ho * wo * k * 8):
        m = b - a
        rows = np.ascontiguousarray(gy[a:b].reshape(m, g, og, ho * wo).transpose(1, 0, 3, 2)).reshape(
            g, m * ho * wo, og
        )  # (G, M, O/g)
        cols = np.stack([gemm_nt(rows[i], wgt[i]) for i in range(g)])  # (G, M, K)
        cols = cols.reshape(g, m, ho, wo, cg, kh, kw)
        tgt_all = dx[a:b]
        for i in range(kh):  # col2im: wrapping adds
            for j in range(kw):
                tgt = tgt_all[:, :, :, i : i + (ho - 1) * sh + 1 : sh, j : j + (wo - 1) * sw + 1 : sw]
                np.add(tgt, cols[:, :, :, :, :, i, j].transpose(1, 0, 4, 2, 3), out=tgt)
    dx = dx[:, :, :, ph : ph + h, pw : pw + wd]
    return np.ascontiguousarray(dx).reshape(n, c, h, wd)


__all__ = [
    "numba_jit",
    "available",
    "why_not",
    "gemm",
    "gemm_nt",
    "matmul",
    "conv2d",
    "conv2d_grad_input",
    "conv2d_grad_weight",
]
