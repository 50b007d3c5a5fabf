"""Plaintext float64 convolution by im2col + one GEMM (the fair NumPy baseline)."""

import numpy as np


def conv_plain(x, w, padding=0, stride=1):
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    ho = (h + 2 * padding - kh) // stride + 1
    wo = (wd + 2 * padding - kw) // stride + 1
    s = xp.strides
    cols = np.lib.stride_tricks.as_strided(
        xp, (n, c, kh, kw, ho, wo), (s[0], s[1], s[2], s[3], s[2] * stride, s[3] * stride)
    )
    cols = cols.transpose(0, 4, 5, 1, 2, 3).reshape(n * ho * wo, c * kh * kw)
    out = cols @ w.reshape(o, -1).T
    return out.reshape(n, ho, wo, o).transpose(0, 3, 1, 2)
