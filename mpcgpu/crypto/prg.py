"""Cryptographic pseudo-random generation without communication.

Key set-up (one tiny message at start-up): party ``i`` draws a 128-bit key
``k_i`` from the operating system and sends it to party ``i-1``, so that party
``i`` holds ``(k_i, k_{i+1})``.  Key ``k_j`` is therefore known to exactly the
two parties ``j`` and ``j-1``.  The key travels as an ordinary exchange of
:mod:`mpcgpu.comm.communicator`, i.e. sealed by the channel of that pair (AES-256-GCM after
the key exchange of :mod:`mpcgpu.comm.channels`); only ``--insecure-channels`` sends
it in clear.

Each key drives a :class:`Stream`: AES-128 in counter mode (OpenSSL via the
``cryptography`` package).  Call number ``c`` of a stream encrypts the counter
blocks ``(c || 0), (c || 1), ...`` (64-bit call counter, 64-bit block
counter), so the counter advances on *every* call and no keystream block is
ever used twice.  Two parties that share a key and make the same sequence of
calls draw the same words; a mismatch gives wrong results, never a silent
loss of privacy.

From the two streams a party derives
* zero shares: ``a_i = F(k_i) - F(k_{i+1})`` (and ``F(k_i) ^ F(k_{i+1})``),
  which sum (XOR) to zero over the three parties;
* random replicated shares: party ``i`` gets ``(F(k_i), F(k_{i+1}))``;
* randomness common to a pair: with the party before (``own``) or after
  (``next``).

Words are generated on the host and moved to the back end explicitly.
"""

from __future__ import annotations

import os

import numpy
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

KEY_BYTES = 16


#: environment variable that makes the keys reproducible (tests of bit-identical resumption
#: only: anyone who knows the seed knows every mask -- the runtime says so loudly)
INSECURE_SEED_ENV = "MPCGPU_INSECURE_PRG_SEED"


def fresh_key() -> bytes:
    """A 128-bit key from the operating system's CSPRNG."""
    return os.urandom(KEY_BYTES)


def key_label(kind: str, party: int, group: int = 0) -> str:
    """The label of a seeded key (:func:`seeded_key`): ``"pair1"``, ``"local2"`` in group 0 (the
    labels of a 3-rank job, unchanged), ``"group3/pair1"`` in group 3: no two groups of one
    job ever derive the same key, so no PRG stream is shared between groups."""
    return f"{kind}{party}" if group == 0 else f"group{group}/{kind}{party}"


def seeded_key(seed: str, label: str) -> bytes:
    """A key derived from a public seed: REPRODUCIBLE AND INSECURE (tests only)."""
    import hashlib

    return hashlib.sha256(f"mpcgpu-insecure:{seed}:{label}".encode()).digest()[:KEY_BYTES]


def seed_digest(seed: str | None) -> bytes:
    """What the parties compare at start-up to agree on the insecure seed: SHA-256 of the
    seed, or of its absence (32 bytes)."""
    import hashlib

    text = "mpcgpu-insecure-seed:none" if not seed else f"mpcgpu-insecure-seed:set:{seed}"
    return hashlib.sha256(text.encode()).digest()


class Stream:
    """AES-128-CTR keystream; every call uses a new 64-bit call counter."""

    def __init__(self, key: bytes, calls: int = 0):
        if len(key) != KEY_BYTES:
            raise ValueError(f"PRG key must be {KEY_BYTES} bytes, got {len(key)}")
        self.key = bytes(key)
        self._algorithm = algorithms.AES(self.key)
        self.calls = int(calls)

    def _nonce(self) -> bytes:
        nonce = self.calls.to_bytes(8, "big") + bytes(8)
        self.calls += 1
        return nonce

    def bytes(self, n: int) -> bytes:
        """``n`` keystream bytes (one call)."""
        enc = Cipher(self._algorithm, modes.CTR(self._nonce())).encryptor()
        return enc.update(bytes(n)) + enc.finalize()

    def uint64(self, shape, out=None) -> numpy.ndarray:
        """A host uint64 array of ``shape`` filled with keystream words (one call).

        ``out`` (a C-contiguous uint64 host array of that many elements, owned by the caller)
        receives the words instead of a fresh array and is returned reshaped: a warm buffer
        saves the page faults of a fresh one (AES-CTR fills it about twice as fast).  The
        words are the same either way."""
        shape = (int(shape),) if numpy.isscalar(shape) else tuple(int(s) for s in shape)
        count = int(numpy.prod(shape, dtype=numpy.int64)) if shape else 1
        _check_out(out, count)  # before the call is taken
        return reserve(self, count).words(out=out).reshape(shape)


_ZERO_CACHE = {"buf": bytearray(0)}


def _zeros(n: int):
    buf = _ZERO_CACHE["buf"]
    if len(buf) < n:
        buf = bytearray(n)
        _ZERO_CACHE["buf"] = buf
    return memoryview(buf)[:n]


class PartyPRG:
    """The two streams of one party and what is derived from them.

    ``own`` is keyed by ``k_i`` (shared with party ``i-1``), ``next`` by
    ``k_{i+1}`` (shared with party ``i+1``).  ``local`` is private to this party.
    """

    def __init__(self, own_key: bytes, next_key: bytes, to_device=None, local_key: bytes | None = None):
        self.own = Stream(own_key)
        self.next = Stream(next_key)
        self.local = Stream(local_key or fresh_key())
        self._to_device = to_device or (lambda a: a)

    STREAMS = ("own", "next", "local")

    def state(self) -> dict:
        """Keys and call counters of the three streams (for a checkpoint of THIS party: the
        keys are what it already holds, never another party's)."""
        return {name: (getattr(self, name).key, getattr(self, name).calls) for name in self.STREAMS}

    def restore(self, state: dict):
        """Continue the streams from :meth:`state` (all parties restore the same checkpoint)."""
        for name in self.STREAMS:
            key, calls = state[name]
            setattr(self, name, Stream(bytes(key), int(calls)))

    def zero_share(self, shape):
        """Additive zero sharing: ``F(k_i) - F(k_{i+1})`` (sums to 0 over the parties).

        ``F(k_{i+1})`` is drawn into a private scratch buffer (reused from call to call, never
        handed out) and subtracted in place from the fresh ``F(k_i)``: one fresh array."""
        first = self.own.uint64(shape)
        second = self.next.uint64(shape, out=self._scratch(first.size))
        numpy.subtract(first, second.reshape(first.shape), out=first)
        return self._to_device(first)

    def _scratch(self, count: int):
        """This object's private host buffer of ``count`` uint64 (grown as needed, at most
        :data:`SCRATCH_WORDS` kept); its contents are consumed before any call returns."""
        buf = getattr(self, "_buf", None)
        if buf is None or buf.size < count:
            buf = numpy.empty(count, dtype=numpy.uint64)
            if count <= self.SCRATCH_WORDS:
                self._buf = buf
        return buf[:count]

    #: words of the private scratch buffer kept between calls (64 MiB)
    SCRATCH_WORDS = 1 << 23

    def zero_share_xor(self, shape):
        """XOR zero sharing: ``F(k_i) ^ F(k_{i+1})`` (XORs to 0 over the parties)."""
        first, second = self.zero_share_xor_parts(shape)
        return self._to_device(first ^ second)

    def zero_share_xor_parts(self, shape):
        """The two host words ``(F(k_i), F(k_{i+1}))`` whose XOR :meth:`zero_share_xor` would
        return (same streams, same order), for a step that XORs them itself."""
        return self.zero_share_parts(shape)

    def zero_share_parts(self, shape, out=(None, None)):
        """The two host words ``(F(k_i), F(k_{i+1}))`` of a zero share, drawn as
        :meth:`zero_share` and :meth:`zero_share_xor` draw them (same streams, same order), for
        a protocol step that combines them itself (``-`` or ``^``: :mod:`mpcgpu.kernelsets`).
        ``out``: two host buffers (see :meth:`Stream.uint64`) or None each."""
        first = self.own.uint64(shape, out=out[0])
        return first, self.next.uint64(shape, out=out[1])

    def random_pair(self, shape):
        """Replicated components ``(r_i, r_{i+1})`` of an unknown uniform value."""
        return self._to_device(self.own.uint64(shape)), self._to_device(self.next.uint64(shape))

    def with_prev(self, shape, out=None):
        """Words known to this party and party ``i-1`` only (``out``: see :meth:`Stream.uint64`)."""
        return self._to_device(self.own.uint64(shape, out=out))

    def with_next(self, shape, out=None):
        """Words known to this party and party ``i+1`` only (``out``: see :meth:`Stream.uint64`)."""
        return self._to_device(self.next.uint64(shape, out=out))

    def private(self, shape):
        """Words known to this party alone."""
        return self._to_device(self.local.uint64(shape))


# -- words regenerated instead of stored -------------------------------------------------


class Recipe:
    """How to draw again the ``count`` words of one earlier call of a stream: its key and
    call number.  A share component that is a PRG output (two of the three components of a
    dealt secret are) can be held as recipes -- 24 bytes instead of 8 bytes per word -- and
    regenerated where it is used (:mod:`mpcgpu.sharing.components`).  It holds a key this
    party already has; it is never sent."""

    __slots__ = ("key", "call", "count")

    def __init__(self, key: bytes, call: int, count: int):
        self.key, self.call, self.count = bytes(key), int(call), int(count)

    def __reduce__(self):
        raise TypeError("a PRG recipe holds a key: it is never pickled, sent or saved")

    def words(self, start: int = 0, stop: int | None = None, out=None) -> numpy.ndarray:
        """Words ``start:stop`` of that call (a host uint64 array; into ``out``, a contiguous
        host array of that many words, if given), without drawing the ones before: the
        counter block of word ``w`` is ``(call || w // 2)``, so the keystream is entered at
        the block holding ``start``.  The keystream is written straight into the result."""
        stop = self.count if stop is None else int(stop)
        start = int(start)
        if not 0 <= start <= stop <= self.count:
            raise ValueError(f"words {start}:{stop} outside a call of {self.count} words")
        n = stop - start
        _check_out(out, n)
        out = numpy.empty(n, dtype=numpy.uint64) if out is None else out
        nonce = self.call.to_bytes(8, "big") + (start // 2).to_bytes(8, "big")
        enc = Cipher(algorithms.AES(self.key), modes.CTR(nonce)).encryptor()
        if start % 2:  # a 16-byte counter block holds two words: skip the first one
            enc.update(bytes(8))
        flat = out.reshape(-1).view(numpy.uint8)
        body = max(0, n - 2)  # update_into needs 15 bytes of room past what it writes
        if body:
            enc.update_into(_zeros(8 * body), flat[: 8 * body + 16])
        flat[8 * body :] = numpy.frombuffer(enc.update(bytes(8 * (n - body))), dtype=numpy.uint8)
        return out


def _check_out(out, count: int):
    if out is not None and (
        out.dtype != numpy.uint64 or out.size != count or not out.flags.c_contiguous or not out.flags.writeable
    ):
        raise ValueError(f"out must be a writable C-contiguous uint64 array of {count} elements")


def reserve(stream: Stream, count: int) -> Recipe:
    """Take the next call of ``stream`` for ``count`` words without drawing them: the
    recipe draws them when needed (the same words :meth:`Stream.uint64` would have given)."""
    recipe = Recipe(stream.key, stream.calls, count)
    stream.calls += 1
    return recipe


def draw_range(recipes, lo: int, hi: int) -> numpy.ndarray:
    """Words ``lo:hi`` of the concatenated outputs of ``recipes`` (calls in order), drawn
    again on the host."""
    out = numpy.empty(hi - lo, dtype=numpy.uint64)
    start = 0
    for recipe in recipes:
        a, b = max(lo, start), min(hi, start + recipe.count)
        if a < b:
            recipe.words(a - start, b - start, out=out[a - lo : b - lo])
        start += recipe.count
    if not 0 <= lo <= hi <= start:
        raise ValueError(f"words {lo}:{hi} outside {start} drawn words")
    return out
