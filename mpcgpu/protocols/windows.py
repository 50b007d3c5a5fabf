"""Geometry of pooling windows (shared by max-pooling and average pooling)."""
from __future__ import annotations

from ..errors import ProtocolError


def pair(v, name):
    """An int or a pair -> (int, int)."""
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ProtocolError(f"{name} must be an int or a pair, got {v}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


def pool_geometry(shape, kernel, stride, padding, what="pooling"):
    """``(kh, kw, sh, sw, ph, pw, ho, wo)`` of a pooling over an NCHW ``shape``.

    ``stride=None`` means the kernel size; padding may be at most half the kernel;
    the output size is rounded down.  ProtocolError for anything else."""
    if len(shape) != 4:
        raise ProtocolError(f"{what} needs an NCHW share, got shape {tuple(shape)}")
    kh, kw = pair(kernel, "kernel")
    sh, sw = pair(kernel if stride is None else stride, "stride")
    ph, pw = pair(padding, "padding")
    if min(kh, kw, sh, sw) < 1 or min(ph, pw) < 0:
        raise ProtocolError(f"invalid {what} kernel {kernel} / stride {stride} / padding {padding}")
    if ph > kh // 2 or pw > kw // 2:
        raise ProtocolError(f"padding {padding} must be at most half the kernel {kernel}")
    _, _, h, w = shape
    ho = (h + 2 * ph - kh) // sh + 1
    wo = (w + 2 * pw - kw) // sw + 1
    if ho <= 0 or wo <= 0:
        raise ProtocolError(f"{what} kernel {kernel} does not fit the input {tuple(shape)}")
    return kh, kw, sh, sw, ph, pw, ho, wo
