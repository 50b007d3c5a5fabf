"""Fixed-point encoding in the ring Z_{2^64}.

A real ``v`` is stored as ``round(v * 2^f)`` in two's complement inside a
``uint64`` word (default ``f = 16``).  A product of two encoded values carries
``2f`` fractional bits, so it must stay below ``2^63`` in magnitude before it
is truncated: the *safe range* of an encoded value is ``|v| < 2^(63 - 2f)``
(``2^31`` for ``f = 16``).  Encoding anything outside it is an
:class:`~mpcgpu.errors.EncodingError`, never a silent wrap.

All functions work on NumPy or CuPy arrays alike (via :func:`array_module`).
"""

from __future__ import annotations

from mpcgpu.device.backend import array_module
from mpcgpu.errors import EncodingError

DEFAULT_FRAC_BITS = 16


def safe_limit(frac_bits: int) -> float:
    """Largest magnitude (exclusive) a real value may have when encoded with ``frac_bits``."""
    if not 0 <= frac_bits <= 30:
        raise EncodingError(f"fractional bits must be in 0..30, got {frac_bits}")
    return float(2 ** (63 - 2 * frac_bits))


def check_range(x, frac_bits: int, what: str = "value"):
    """Raise EncodingError if any element of ``x`` is non-finite or outside the safe range."""
    xp = array_module(x)
    limit = safe_limit(frac_bits)
    if x.size == 0:
        return
    finite = bool(xp.isfinite(x).all()) if x.dtype.kind == "f" else True
    if not finite:
        raise EncodingError(f"{what} contains NaN or infinity; it cannot be encoded")
    big = float(xp.abs(x).max())
    if big >= limit:
        raise EncodingError(
            f"{what} has magnitude {big:.6g}, outside the fixed-point range "
            f"(-2^{63 - 2 * frac_bits}, 2^{63 - 2 * frac_bits}) = (-{limit:.6g}, {limit:.6g}) "
            f"for {frac_bits} fractional bits; scale the data or lower the precision"
        )


def encode(x, frac_bits: int = DEFAULT_FRAC_BITS, check: bool = True):
    """Real array -> uint64 ring elements ``round(x * 2^f) mod 2^64``."""
    xp = array_module(x)
    x = xp.asarray(x)
    if check:
        check_range(x, frac_bits)
    if x.dtype.kind in "iub":
        return x.astype(xp.int64).astype(xp.uint64) << xp.uint64(frac_bits)
    scaled = xp.asarray(xp.rint(x.astype(xp.float64) * float(2**frac_bits)))
    return scaled.astype(xp.int64).astype(xp.uint64)


def decode(r, frac_bits: int = DEFAULT_FRAC_BITS):
    """uint64 ring elements -> float64 reals (two's complement, divided by 2^f)."""
    xp = array_module(r)
    signed = r.view(xp.int64) if r.dtype == xp.uint64 else r.astype(xp.int64)
    if frac_bits == 0:
        return signed
    return signed.astype(xp.float64) / float(2**frac_bits)
