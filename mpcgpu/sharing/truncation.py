"""Truncation: dividing a shared fixed-point value by ``2^d``.

A product of two values with ``f`` fractional bits carries ``2f`` and must be
divided by ``2^f``.  Two protocols, chosen by ``mode``:

``"prob"`` (default): MSB-corrected probabilistic truncation
---------------------------------------------------------------
(Dalskov, Escudero, Keller, PETS 2020 s3.2.2; Escudero et al., CRYPTO 2020
s5.1, adapted to replicated sharing with a dealer.)  Roles rotate from call to
call (``rt.next_role()``): party ``j`` is the *dealer* D, parties ``j+1`` and
``j+2`` the *openers* A and B.

* Shift ``x' = x + 2^62``: for ``|x| < 2^62`` (ring units) ``x'`` lies in
  ``[0, 2^63)``.
* D knows ``r = r_A + r_B`` (``r_A`` from the key of D and A, ``r_B`` from the
  key of D and B) and splits it as ``r = r_msb 2^63 + r_mid 2^d + r_lo``.  It
  deals two-out-of-two shares of ``T = r_msb 2^(63-d)`` and ``r_mid`` to A and
  B (A's half from their common key, B's half sent: 16 bytes/element).
* Round 1: A and B learn ``c = x' + r mod 2^64`` (uniform: ``r`` is unknown to
  each of them) -- from the components they hold, or, fused with a product,
  from the parties' three-out-of-three summands, D's summand reaching each of
  them under a mask that only the other one knows.
* Locally: with ``b = c_msb XOR r_msb``,
  ``y = floor((c mod 2^63) / 2^d) + b 2^(63-d) - r_mid - 2^(62-d)``
  ``= floor(x / 2^d) + [c mod 2^d < r_lo]``: exact floor plus a carry that is
  1 with probability ``(x mod 2^d) / 2^d`` -- unbiased stochastic rounding, off
  by less than one unit in the last place, and no large error while
  ``|x| < 2^62``.
* Round 2: A and B hold two-out-of-two shares of ``y``; they exchange one word
  each to form the component they both hold; the other two components come
  from keys (D's two).

Cost: 2 rounds.  On a replicated input: 16 bytes/element from each of D, A and
B (48 in all).  Fused with a product (replacing its resharing round): D 32, A
16, B 16 bytes/element (64 in all; the plain product reshare was 24).  The
role rotates, so every party sends the same on average.

The local work of each role is a step of ``rt.kernels`` (:mod:`mpcgpu.kernelsets`:
``trunc_deal``, ``trunc_open_message``, ``trunc_open_half``; array code, fused numba
kernels on the CPU, the GPU slot): one protocol body, the same words and messages under
every kernel set.

What each party sees: A and B see ``c`` (uniform) and masked words; D sees
nothing.  The rounding carry, however, is decided by ``r_lo``, which D knows
and which A and B could compute from ``c`` *if they knew* ``x``: a party does
not learn ``x``'s discarded bits, but the last bit of a revealed probabilistic
result is correlated with what these parties saw.  Values mpcgpu reveals as
reals are therefore rounded exactly (:func:`mpcgpu.protocols.rounding.round_exact`),
whose result is a function of ``x`` alone.  Precisely, the carry is ``[c_lo < x_lo]``:
each party holds a threshold (A and B ``c_lo``, D ``r_lo``) that a revealed value
depending on the carry compares with ``x_lo`` (the leakage function and its bound:
docs/design.md s7, "What a truncation leaks").

``"hidden"`` and ``"exact"`` (opt-in): registered protocols
-------------------------------------------------------------
:mod:`mpcgpu.protocols.trunc_hidden` registers them in :data:`REGISTERED` (sharing
imports nothing from protocols); :func:`msb_corrected` hands a call with ``mode`` one
of them over.  ``"hidden"``: stochastic rounding whose threshold no party knows (12
rounds); ``"exact"``: round to nearest (12 rounds), what the layers after an exact
output's last product use (:class:`forced`).  :func:`default_mode` reads the setting
``MPCGPU_TRUNCATION=dealer|hidden``.

``"aby3"`` (opt-in): the one-round ABY3 truncation
---------------------------------------------------
Party ``j`` shifts ``x_j + x_{j+1}``, parties ``j+1, j+2`` shift ``-x_{j+2}``
and negate, party ``j`` re-randomises and sends one word: 1 round, 8
bytes/element from one party.  It is wrong by about ``2^(64-d)`` (ring units)
with probability about ``|x| / 2^64`` per element (measured: 1.5% at
``|x| = 2^58``, i.e. about 0.3 failures per LeNet training epoch at f = 16 and
hundreds at f = 20), and its rounding bit is a function of ``x_{j+2}``, which
two parties hold.  Use it only where both are acceptable.

``bits`` may be an int or an array (one shift per element, broadcast against
``x``), so truncations by different amounts run in the same two rounds.
"""

from __future__ import annotations

import numpy  # host-side shape arithmetic only

from ..errors import ProtocolError

MODES = ("prob", "aby3", "hidden", "exact")
DEFAULT_MODE = "prob"
SHIFT = 1 << 62
MASK63 = (1 << 63) - 1

#: ``"hidden"`` (a rounding threshold no party knows) and ``"exact"`` (round to nearest,
#: deterministic) are protocols of :mod:`mpcgpu.protocols.trunc_hidden`, which registers them
#: here when :mod:`mpcgpu.protocols` is imported (sharing imports nothing from protocols)
REGISTERED: dict = {}
#: the setting that picks the default: ``dealer`` (``"prob"``) or ``hidden``
SETTING = "MPCGPU_TRUNCATION"
_FORCED: list = []  # the mode of an enclosing :func:`forced` block


def default_mode() -> str:
    """The default truncation: ``"prob"`` unless the ``truncation`` setting (:data:`SETTING`,
    resolved once: :mod:`mpcgpu.settings`) says ``hidden`` or a :func:`forced` block is open."""
    if _FORCED:
        return _FORCED[-1]
    from .. import settings as settings_mod

    return "prob" if settings_mod.active().truncation == "dealer" else "hidden"


class forced:
    """``with forced("exact"): ...``: every truncation of the default mode inside uses ``mode``."""

    def __init__(self, mode):
        self.mode = check_mode(mode)

    def __enter__(self):
        _FORCED.append(self.mode)

    def __exit__(self, *exc):
        _FORCED.pop()


def check_mode(mode) -> str:
    mode = default_mode() if mode is None else mode
    if mode not in MODES:
        raise ProtocolError(
            f"unknown truncation mode {mode!r}; choose one of {', '.join(MODES)} "
            "(exact rounding: mpcgpu.protocols.rounding.round_exact)"
        )
    return mode


def _shift_amounts(xp, bits, shape):
    """``bits`` as uint64 (scalar or an array broadcast to ``shape``); checks 1 <= bits <= 62."""
    arr = numpy.asarray(bits)
    if arr.size == 0 or int(arr.min()) < 1 or int(arr.max()) > 62:
        raise ProtocolError(f"truncation needs 1 <= bits <= 62, got {bits}")
    if arr.ndim == 0:
        return xp.uint64(int(arr))
    try:
        numpy.broadcast_shapes(arr.shape, tuple(shape))
    except ValueError:
        raise ProtocolError(f"truncation amounts of shape {arr.shape} do not broadcast to {tuple(shape)}") from None
    return xp.asarray(arr.astype(numpy.uint64))


#: elements per call of the protocol: larger inputs go in chunks of this size (2 rounds each),
#: which bounds the memory of the dealt randomness (about 120 bytes per element at the dealer,
#: so ~130 MB per call) -- a VGG-16 layer at 224 x 224 (3.2M elements) takes 4 calls
CHUNK = 1 << 20


def msb_corrected(rt, shape, bits, *, rss=None, summand=None, offset=0, keep=False, mode="prob"):
    """The ``"prob"`` protocol (module docstring); see :func:`_msb_corrected_call`.  Inputs of
    more than :data:`CHUNK` elements (without ``keep``) go in chunks, 2 rounds each, written
    into the result as they come (no concatenation of the pieces).  ``mode`` ``"hidden"`` or
    ``"exact"`` hands the call to that registered protocol (:data:`REGISTERED`)."""
    if mode in REGISTERED and not keep:
        return REGISTERED[mode](rt, shape, bits, rss=rss, summand=summand, offset=offset)
    n = int(numpy.prod(shape, dtype=numpy.int64)) if tuple(shape) else 1
    if keep or n <= CHUNK:
        return _msb_corrected_call(rt, shape, bits, rss=rss, summand=summand, offset=offset, keep=keep)
    xp = rt.xp
    flat_bits = numpy.broadcast_to(numpy.asarray(bits), tuple(shape)).reshape(-1) if numpy.ndim(bits) else bits
    parts = (rss[0].reshape(-1), rss[1].reshape(-1)) if rss is not None else (summand.reshape(-1),)
    first, second = xp.empty(n, dtype=xp.uint64), xp.empty(n, dtype=xp.uint64)
    for lo in range(0, n, CHUNK):  # each chunk's pair is written in place
        hi = min(n, lo + CHUNK)
        piece = [a[lo:hi] for a in parts]
        _msb_corrected_call(
            rt,
            (hi - lo,),
            flat_bits[lo:hi] if numpy.ndim(flat_bits) else flat_bits,
            rss=tuple(piece) if rss is not None else None,
            summand=piece[0] if summand is not None else None,
            offset=offset,
            out=(first[lo:hi], second[lo:hi]),
        )
    return first.reshape(shape), second.reshape(shape)


def _msb_corrected_call(rt, shape, bits, *, rss=None, summand=None, offset=0, keep=False, out=None):
    """The ``"prob"`` protocol (module docstring) on this party's input; returns the new
    pair ``(first, second)``, or ``((first, second), aux)`` with ``keep``.

    Input: ``rss=(first, second)`` (a replicated share) or ``summand`` (this party's term
    of a three-out-of-three sum, e.g. of a product before resharing).  ``offset`` (a ring
    constant) is added to ``x`` first (``2^(d-1)`` rounds to nearest).  With ``keep``,
    ``aux = (c_lo, r_lo_pair)``: the opened low bits ``c mod 2^d`` (None on the dealer)
    and this party's replicated pair of ``r_lo`` (D deals it in round 1: +16
    bytes/element from D), for an exact correction of the carry.  ``out``: two flat uint64
    arrays of the input's size (e.g. slices of a chunked caller's result) that receive the
    pair in place.

    Cost: 2 rounds; per element D sends 16 bytes (32 fused with a product, +16 with
    ``keep``), A 16 and B 16 (module docstring).  The local steps are those of
    ``rt.kernels`` (:mod:`mpcgpu.kernelsets`: ``trunc_deal``, ``trunc_open_message``,
    ``trunc_open_half``) on flat arrays; this body draws the PRG blocks (one ``(rows, n)``
    block per pair key) and makes the exchanges.
    """
    if tuple(shape) == ():  # 0-d arrays turn into NumPy scalars, which warn on wrap-around
        as_1d = _msb_corrected_call(
            rt,
            (1,),
            bits,
            rss=None if rss is None else (rss[0].reshape(1), rss[1].reshape(1)),
            summand=None if summand is None else summand.reshape(1),
            offset=offset,
            keep=keep,
        )
        out, aux = as_1d if keep else (as_1d, None)
        out = (out[0].reshape(()), out[1].reshape(()))
        return (out, aux) if keep else out
    xp, comm, prg, me, ks = rt.xp, rt.comm, rt.prg, rt.rank, rt.kernels
    u64 = xp.uint64
    shape = tuple(shape)
    n = int(numpy.prod(shape, dtype=numpy.int64))
    d = _shift_amounts(xp, bits, shape)
    if d.ndim:  # one shift per element, flat like the data
        d = xp.ascontiguousarray(xp.broadcast_to(d, shape)).reshape(-1)
    fused = summand is not None
    if fused == (rss is not None):
        raise ProtocolError("msb_corrected needs exactly one of rss= and summand=")
    first, second = out if out is not None else (xp.empty(n, dtype=u64), xp.empty(n, dtype=u64))
    j = rt.next_role()
    D, A, B = j, (j + 1) % 3, (j + 2) % 3
    na = 4 + fused + keep  # from the key of D and A: r_A, T_A, m_A, v, [nu], [rho_A]
    nb = 2 + fused + keep  # from the key of D and B: r_B, u, [mu], [rho_D]

    def block(draw, rows, role):  # with keep, rows of the block are returned: no scratch
        return draw((rows, n), out=None if keep else ks.prg_buffer(role, rows * n))

    if me == D:
        ka = block(prg.with_next, na, "trunc-ka")
        kb = block(prg.with_prev, nb, "trunc-kb")
        s = xp.ascontiguousarray(summand).reshape(-1) if fused else None
        # components D (u) and A (v) are written into (first, second): copies, not views of a block
        to_b, to_a = ks.trunc_deal(ka, kb, s, d, keep, first, second)
        sends = {B: to_b.reshape(to_b.shape[:1] + shape)}
        if to_a is not None:
            sends[A] = to_a.reshape(to_a.shape[:1] + shape)
        comm.exchange(sends, {})
        comm.exchange({}, {})
        pair = (first.reshape(shape), second.reshape(shape))
        return (pair, (B, None, (kb[-1].reshape(shape), ka[-1].reshape(shape)))) if keep else pair
    is_a = me == A
    if is_a:  # the key of D and A; A's term: x_A
        k = block(prg.with_prev, na, "trunc-ka")
    else:  # the key of D and B; B's term: x_B + x_D
        k = block(prg.with_next, nb, "trunc-kb")
    parts = (summand,) if fused else (rss[0],) if is_a else rss
    parts = tuple(xp.ascontiguousarray(p).reshape(-1) for p in parts)
    row = 4 if is_a else 2  # the mask of D's summand: nu (A), mu (B)
    msg = ks.trunc_open_message(parts, k, fused, row)
    other = B if is_a else A
    from_d = (2 + fused + keep) if me == B else (fused + keep)
    recvs = {other: (shape, u64)}
    if from_d:
        recvs[D] = ((from_d,) + shape, u64)
    got = comm.exchange({other: msg.reshape(shape)}, recvs)
    dealt = got[D].reshape(from_d, n) if from_d else None
    const = u64((SHIFT + int(offset)) % (1 << 64))
    kept = first if is_a else second  # its output mask: v (A), u (B)
    half, c_lo = ks.trunc_open_half(
        parts, msg, k, got[other].reshape(-1), dealt, fused, is_a, row, d, const, keep, kept
    )
    theirs = comm.exchange({other: half.reshape(shape)}, {other: (shape, u64)})[other]
    xp.add(half, theirs.reshape(-1), out=second if is_a else first)
    pair = (first.reshape(shape), second.reshape(shape))
    if not keep:
        return pair
    rho_b = dealt[-1]
    r_lo_pair = (k[-1], rho_b) if is_a else (rho_b, k[-1])
    return pair, (B, c_lo.reshape(shape), tuple(a.reshape(shape) for a in r_lo_pair))


def aby3(rt, first, second, bits):
    """The one-round ABY3 truncation (opt-in, see the module docstring); returns the pair."""
    xp, comm, rank = rt.xp, rt.comm, rt.rank
    if numpy.ndim(bits):
        raise ProtocolError("the aby3 truncation takes one shift for all elements")
    _shift_amounts(xp, bits, first.shape)
    shift = xp.int64(int(bits))
    j = rt.next_role()
    shape = tuple(first.shape)
    if rank == j:
        a = (first + second).view(xp.int64) >> shift
        r = rt.prg.with_next(shape)  # y_{j+1}, known to j and j+1
        y_j = a.view(xp.uint64) - r
        comm.exchange({(j + 2) % 3: y_j}, {})
        return y_j, r
    if rank == (j + 1) % 3:
        r = rt.prg.with_prev(shape)
        b_shift = (-((-second).view(xp.int64) >> shift)).view(xp.uint64)
        comm.exchange({}, {})
        return r, b_shift
    b_shift = (-((-first).view(xp.int64) >> shift)).view(xp.uint64)
    y_j = comm.exchange({}, {j: (shape, xp.uint64)})[j]
    return b_shift, y_j


def reshare(rt, summand):
    """Three-out-of-three summands -> replicated pair: add a fresh zero share and send
    ``z_i`` to party ``i-1``.  1 round, 8 bytes/element per party."""
    z = rt.prg.zero_share(summand.shape)  # a fresh array: the sum goes in place (one pass)
    z += summand
    return z, rt.comm.pass_prev(z)


__all__ = ["MODES", "DEFAULT_MODE", "CHUNK", "check_mode", "default_mode", "forced", "msb_corrected", "aby3", "reshare"]
