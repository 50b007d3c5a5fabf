"""Exact products mod 2^64 with native integer kernels on the CPU (numba).

Where 64-bit integer multiplies are vector instructions (AVX-512: ``vpmullq``), a
plain blocked integer GEMM beats the float64 limb trick of :mod:`mpcgpu.ring` by
2-5x; elsewhere (AVX2) it loses.  :mod:`mpcgpu.ring` chooses per machine
(:func:`mpcgpu.ring.kernel`); this module only computes.

* :func:`gemm` -- ``A @ B mod 2^64`` for 2-D uint64 arrays, one compiled kernel
  (blocked over rows and the reduction; the inner loop runs along ``B``'s
  contiguous rows, where LLVM vectorises the multiply-add).  Exact by
  construction: uint64 arithmetic wraps.
* :func:`matmul`, :func:`conv2d`, :func:`conv2d_grad_input`,
  :func:`conv2d_grad_weight` -- the same contracts as their :mod:`mpcgpu.ring`
  namesakes, built from :func:`gemm` with an integer im2col / col2im.

NumPy arrays only (the GPU keeps the limbs).  ``available()`` says whether numba
imports; compiled kernels are cached on disk (``cache=True``).
"""
from __future__ import annotations

import numpy as np

from .geometry import conv_geometry

U64 = np.uint64
_KERNEL = None
_WHY = None
ROW_BLOCK, RED_BLOCK = 4, 128
IMAGE_BLOCK_BYTES = 64 * 2 ** 20


def _compile():
    global _KERNEL, _WHY
    if _KERNEL is not None or _WHY is not None:
        return _KERNEL
    try:
        import numba
    except Exception as exc:                      # ImportError, or a broken LLVM
        _WHY = f"numba is not available ({exc.__class__.__name__}: {exc})"
        return None

    @numba.njit(cache=True, boundscheck=False, nogil=True)
    def kernel(a, b, c):                          # c += a @ b, all uint64, C-contiguous
        m, k = a.shape
        n = b.shape[1]
        for i0 in range(0, m, ROW_BLOCK):
            i1 = min(i0 + ROW_BLOCK, m)
            for k0 in range(0, k, RED_BLOCK):
                k1 = min(k0 + RED_BLOCK, k)
                for i in range(i0, i1):
                    for kk in range(k0, k1):
                        aik = a[i, kk]
                        for j in range(n):
                            c[i, j] += aik * b[kk, j]
    _KERNEL = kernel
    return kernel


def available() -> bool:
    return _compile() is not None


def why_not() -> str | None:
    _compile()
    return _WHY


def gemm(a, b, out=None):
    """``a @ b mod 2^64`` for 2-D uint64 (or int64) arrays."""
    kernel = _compile()
    if kernel is None:
        raise RuntimeError(_WHY)
    a = np.ascontiguousarray(a).view(U64)
    b = np.ascontiguousarray(b).view(U64)
    if out is None:
        out = np.zeros((a.shape[0], b.shape[1]), dtype=U64)
    kernel(a, b, out)
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
    elif b2.ndim == 2:                            # fold a's batch into its rows: one GEMM
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


def _cols(x, g, cg, kh, kw, sh, sw, ph, pw, ho, wo):
    """im2col: (G, N*Ho*Wo, Cg*kh*kw) uint64 (a contiguous copy)."""
    n = x.shape[0]
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw))) if (ph or pw) else x
    s = xp.strides
    view = np.lib.stride_tricks.as_strided(
        xp, shape=(n, g, cg, kh, kw, ho, wo),
        strides=(s[0], cg * s[1], s[1], s[2], s[3], sh * s[2], sw * s[3]))
    return np.ascontiguousarray(view.transpose(1, 0, 5, 6, 2, 3, 4)).reshape(g, n * ho * wo, cg * kh * kw)


def _blocks(n, per_image):
    nb = max(1, IMAGE_BLOCK_BYTES // max(1, per_image))
    return [(a, min(n, a + nb)) for a in range(0, n, nb)]


def conv2d(x, w, stride=1, padding=0, groups=1):
    """Integer cross-correlation (N, C, H, W) x (O, C/g, kh, kw) -> (N, O, Ho, Wo) mod 2^64."""
    x, w = np.asarray(x).view(U64), np.asarray(w).view(U64)
    n, c, h, wd, o, cg, kh, kw, sh, sw, ph, pw, g, ho, wo = _geometry(x.shape, w.shape, stride, padding, groups)
    og, k = o // g, cg * kh * kw
    wt = np.ascontiguousarray(w.reshape(g, og, k).transpose(0, 2, 1))      # (G, K, O/g)
    out = np.empty((n, o, ho, wo), dtype=U64)
    for a, b in _blocks(n, g * ho * wo * k * 8):
        cols = _cols(x[a:b], g, cg, kh, kw, sh, sw, ph, pw, ho, wo)
        res = np.stack([gemm(cols[i], wt[i]) for i in range(g)])           # (G, nb*Ho*Wo, O/g)
        out[a:b] = res.reshape(g, b - a, ho, wo, og).transpose(1, 0, 4, 2, 3).reshape(b - a, o, ho, wo)
    return out


def conv2d_grad_weight(x, grad_out, weight_shape, stride=1, padding=0, groups=1):
    """``dw = grad_out^T @ im2col(x)`` per group, mod 2^64 (uint64, ``weight_shape``)."""
    x, gy = np.asarray(x).view(U64), np.asarray(grad_out).view(U64)
    n, c, h, wd, o, cg, kh, kw, sh, sw, ph, pw, g, ho, wo = _geometry(x.shape, tuple(weight_shape), stride,
                                                                     padding, groups)
    if tuple(gy.shape) != (n, o, ho, wo):
        raise ValueError(f"conv2d_grad_weight: grad_out has shape {gy.shape}, expected {(n, o, ho, wo)}")
    og, k = o // g, cg * kh * kw
    dw = np.zeros((g, og, k), dtype=U64)
    for a, b in _blocks(n, g * ho * wo * k * 8):
        cols = _cols(x[a:b], g, cg, kh, kw, sh, sw, ph, pw, ho, wo)      # (G, M, K)
        gyt = np.ascontiguousarray(gy[a:b].reshape(b - a, g, og, ho * wo).transpose(1, 2, 0, 3)).reshape(
            g, og, (b - a) * ho * wo)                                     # (G, O/g, M)
        for i in range(g):
            gemm(gyt[i], cols[i], out=dw[i])
    return dw.reshape(tuple(weight_shape))


def conv2d_grad_input(grad_out, w, input_shape, stride=1, padding=0, groups=1):
    """The transposed convolution: ``col2im(grad_out @ W)`` per group, mod 2^64."""
    gy, w = np.asarray(grad_out).view(U64), np.asarray(w).view(U64)
    n, c, h, wd, o, cg, kh, kw, sh, sw, ph, pw, g, ho, wo = _geometry(tuple(input_shape), w.shape, stride,
                                                                     padding, groups)
    if tuple(gy.shape) != (n, o, ho, wo):
        raise ValueError(f"conv2d_grad_input: grad_out has shape {gy.shape}, expected {(n, o, ho, wo)}")
    og, k = o // g, cg * kh * kw
    wg = np.ascontiguousarray(w.reshape(g, og, k))                         # (G, O/g, K)
    dx = np.zeros((n, g, cg, h + 2 * ph, wd + 2 * pw), dtype=U64)
    for a, b in _blocks(n, g * ho * wo * k * 8):
        m = b - a
        rows = np.ascontiguousarray(gy[a:b].reshape(m, g, og, ho * wo).transpose(1, 0, 3, 2)).reshape(
            g, m * ho * wo, og)                                           # (G, M, O/g)
        cols = np.stack([gemm(rows[i], wg[i]) for i in range(g)])          # (G, M, K)
        cols = cols.reshape(g, m, ho, wo, cg, kh, kw)
        tgt_all = dx[a:b]
        for i in range(kh):                                               # col2im: wrapping adds
            for j in range(kw):
                tgt = tgt_all[:, :, :, i:i + (ho - 1) * sh + 1:sh, j:j + (wo - 1) * sw + 1:sw]
                np.add(tgt, cols[:, :, :, :, :, i, j].transpose(1, 0, 4, 2, 3), out=tgt)
    dx = dx[:, :, :, ph:ph + h, pw:pw + wd]
    return np.ascontiguousarray(dx).reshape(n, c, h, wd)


__all__ = ["available", "why_not", "gemm", "matmul", "conv2d", "conv2d_grad_input", "conv2d_grad_weight"]
