"""Window geometry shared by convolutions and pooling: one place for the rules.

* :func:`pair` -- an int or a pair -> ``(int, int)``;
* :func:`out_size` -- output length of a window sliding along one axis;
* :func:`pool_geometry` -- every number of a 2-D pooling over an NCHW shape;
* :func:`window_index` -- the strided slice of a padded NCHW array that kernel
  offset ``(i, j)`` meets, for gathering windows (``a[idx]``) and for the adjoint
  scatter-add (``acc[idx] += g``).

Pure shape arithmetic on Python ints: no array library, no share data.  Errors
are raised as the caller's error class (``error=``), so a spec reports a
``SpecError`` and a protocol a ``ProtocolError`` for the same rule.
"""

from __future__ import annotations

from mpcgpu.errors import MPCError


class GeometryError(MPCError, ValueError):
    """A kernel, stride or padding that does not fit (the default error class here)."""


def pair(v, name: str = "value", error=GeometryError) -> tuple[int, int]:
    """``3 -> (3, 3)``, ``(3, 2) -> (3, 2)``; anything else is ``error``."""
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise error(f"{name} must be an int or a pair, got {tuple(v)!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


def out_size(n: int, k: int, s: int, p: int, error=GeometryError) -> int:
    """Output length ``(n + 2p - k) // s + 1`` of a window (size k, stride s, padding p)."""
    out = (n + 2 * p - k) // s + 1
    if n + 2 * p < k or out < 1:
        raise error(f"window {k} (stride {s}, padding {p}) does not fit input size {n}")
    return out


def pool_geometry(shape, kernel, stride=None, padding=0, what: str = "pooling", error=GeometryError):
    """``(kh, kw, sh, sw, ph, pw, ho, wo)`` of a pooling over an NCHW ``shape``.

    ``stride=None`` means the kernel size; padding may be at most half the kernel; the
    output size is rounded down."""
    if len(shape) != 4:
        raise error(f"{what} needs an NCHW input, got shape {tuple(shape)}")
    kh, kw = pair(kernel, "kernel", error)
    sh, sw = pair(kernel if stride is None else stride, "stride", error)
    ph, pw = pair(padding, "padding", error)
    if min(kh, kw, sh, sw) < 1 or min(ph, pw) < 0:
        raise error(f"invalid {what} kernel {kernel} / stride {stride} / padding {padding}")
    if ph > kh // 2 or pw > kw // 2:
        raise error(f"{what}: padding {padding} must be at most half the kernel {kernel}")
    ho = out_size(shape[2], kh, sh, ph, error)
    wo = out_size(shape[3], kw, sw, pw, error)
    return kh, kw, sh, sw, ph, pw, ho, wo


def conv_geometry(x_shape, w_shape, stride, padding, groups, error=GeometryError) -> dict:
    """Every number of a convolution of an NCHW ``x_shape`` by an OIHW ``w_shape``:
    ``n, c, h, w, o, cg, og, kh, kw, sh, sw, ph, pw, g, ho, wo`` (a dict)."""
    n, c, h, w = x_shape
    o, cg, kh, kw = w_shape
    sh, sw = pair(stride, "stride", error)
    ph, pw = pair(padding, "padding", error)
    g = int(groups)
    if g < 1 or c != g * cg or o % g:
        raise error(f"conv2d: input channels {c} / weight {tuple(w_shape)} do not match groups={g}")
    if min(sh, sw) < 1 or min(ph, pw) < 0:
        raise error("conv2d: stride must be >= 1 and padding >= 0")
    ho, wo = out_size(h, kh, sh, ph, error), out_size(w, kw, sw, pw, error)
    return dict(n=n, c=c, h=h, w=w, o=o, cg=cg, og=o // g, kh=kh, kw=kw, sh=sh, sw=sw, ph=ph, pw=pw, g=g, ho=ho, wo=wo)


def window_index(i: int, j: int, sh: int, sw: int, ho: int, wo: int) -> tuple:
    """Index of the ``(ho, wo)`` inputs that kernel offset ``(i, j)`` meets in a padded
    NCHW array (stride ``(sh, sw)``): ``a[window_index(...)]`` has shape ``(N, C, ho, wo)``."""
    return (slice(None), slice(None), slice(i, i + sh * (ho - 1) + 1, sh), slice(j, j + sw * (wo - 1) + 1, sw))


def window_offsets(kh: int, kw: int):
    """Kernel offsets in row-major window order: ``(k, i, j)`` with ``k = i * kw + j``."""
    for i in range(kh):
        for j in range(kw):
            yield i * kw + j, i, j


__all__ = ["GeometryError", "pair", "out_size", "pool_geometry", "conv_geometry", "window_index", "window_offsets"]
