"""PRG: known answers, fresh masks, uniformity (single process)."""

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from mpcgpu.crypto.prg import PartyPRG, Stream, fresh_key


def aes_ecb(key: bytes, block: bytes) -> bytes:
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return enc.update(block) + enc.finalize()


def test_aes_block_matches_fips197_vector():
    # FIPS-197 appendix C.1 (AES-128)
    key = bytes(range(16))
    pt = bytes.fromhex("00112233445566778899aabbccddeeff")
    assert aes_ecb(key, pt).hex() == "69c4e0d86a7b0430d8cdb78070b4c55a"


@pytest.mark.parametrize("call", [0, 1, 5])
def test_stream_is_aes_of_counter_blocks(call):
    """Call c of a stream is AES_k(c || 0), AES_k(c || 1), ... computed block by block with ECB."""
    key = bytes(range(16))
    s = Stream(key)
    for _ in range(call):
        s.uint64((3,))
    words = s.uint64((6,))  # 48 bytes = 3 blocks
    expected = b"".join(aes_ecb(key, call.to_bytes(8, "big") + j.to_bytes(8, "big")) for j in range(3))
    assert words.tobytes() == expected
    assert words.dtype == np.uint64 and words.shape == (6,)


def test_counter_advances_every_call_and_shapes():
    s = Stream(fresh_key())
    a, b = s.uint64((100,)), s.uint64((100,))
    assert not np.array_equal(a, b)
    assert s.calls == 2
    assert s.uint64((2, 3, 4)).shape == (2, 3, 4)
    assert s.uint64(7).shape == (7,)
    assert s.uint64((0,)).shape == (0,)


def test_same_key_same_sequence_different_key_differs():
    k = fresh_key()
    s1, s2, s3 = Stream(k), Stream(k), Stream(fresh_key())
    for shape in [(10,), (3, 3), (1000,)]:
        a, b, c = s1.uint64(shape), s2.uint64(shape), s3.uint64(shape)
        assert np.array_equal(a, b)
        assert not np.array_equal(a, c)


def test_words_look_uniform():
    w = Stream(fresh_key()).uint64((200_000,))
    bits = np.unpackbits(w.view(np.uint8)).reshape(-1, 64).mean(axis=0)
    assert np.abs(bits - 0.5).max() < 0.01
    assert len(np.unique(w)) == w.size


def test_zero_shares_of_three_simulated_parties():
    keys = [fresh_key() for _ in range(3)]
    parties = [PartyPRG(keys[i], keys[(i + 1) % 3]) for i in range(3)]
    z = [p.zero_share((5000,)) for p in parties]
    assert ((z[0] + z[1] + z[2]) == 0).all()
    zx = [p.zero_share_xor((5000,)) for p in parties]
    assert ((zx[0] ^ zx[1] ^ zx[2]) == 0).all()
    for part in z + zx:
        assert np.count_nonzero(part) == part.size
    again = parties[0].zero_share((5000,))
    assert np.count_nonzero(again == z[0]) == 0


def test_bad_key_length():
    with pytest.raises(ValueError):
        Stream(b"short")


def test_recipes_regenerate_any_range_of_a_call():
    """A reserved call draws, on demand and from any word on, exactly the words that
    ``Stream.uint64`` draws for that call; the stream goes on as if it had drawn them."""
    from mpcgpu.crypto.prg import reserve

    key = fresh_key()
    direct, lazy = Stream(key), Stream(key)
    rng = np.random.default_rng(5)
    for count in (1, 2, 7, 1000, 4097):
        expected = direct.uint64((count,))
        recipe = reserve(lazy, count)
        assert np.array_equal(recipe.words(), expected)
        for _ in range(20):
            a, b = sorted(int(v) for v in rng.integers(0, count + 1, 2))
            assert np.array_equal(recipe.words(a, b), expected[a:b])
        out = np.empty(count, dtype=np.uint64)
        recipe.words(out=out)
        assert np.array_equal(out, expected)
    assert lazy.calls == direct.calls
    assert np.array_equal(lazy.uint64((9,)), direct.uint64((9,)))
    with pytest.raises(ValueError):
        recipe.words(0, count + 1)


@pytest.mark.parametrize("count", [0, 1, 2, 3, 4, 5, 6, 7, 8, 33, 1000, 65_537])
def test_words_into_a_callers_buffer_are_the_fresh_words(count):
    """``out=``: the same keystream words (the same call counter) written into the caller's
    buffer, which comes back reshaped; a wrong buffer is refused before any word is drawn."""
    key = fresh_key()
    fresh, into = Stream(key), Stream(key)
    fresh.uint64((3,)), into.uint64((3,))
    buf = np.full(count, 7, dtype=np.uint64)
    got = into.uint64((1, count), out=buf)
    assert got.shape == (1, count) and np.shares_memory(got, buf) or count == 0
    assert np.array_equal(got, fresh.uint64((1, count)))
    assert np.array_equal(into.uint64(count, out=buf), fresh.uint64(count))  # buffer reused: new words
    bad_ones = [np.empty(count + 1, np.uint64), np.empty(count, np.int64), np.empty(2 * count, np.uint64)[::2]]
    for bad in bad_ones[: 3 if count > 1 else 2]:
        with pytest.raises(ValueError):
            into.uint64(count, out=bad)
    assert into.calls == fresh.calls


def test_zero_share_is_own_minus_next_and_never_hands_out_its_scratch():
    keys = [fresh_key() for _ in range(2)]
    party = PartyPRG(keys[0], keys[1])
    own, nxt = Stream(keys[0]), Stream(keys[1])
    seen, copies = [], []
    for shape in [(5000,), (3, 7), (5000,), (), (100, 100)]:
        z = party.zero_share(shape)
        assert z.shape == shape and np.array_equal(z, own.uint64(shape) - nxt.uint64(shape))
        assert not any(np.shares_memory(z, s) for s in seen)
        seen.append(z)
        copies.append(z.copy())
    assert all(np.array_equal(a, b) for a, b in zip(seen, copies))  # earlier results intact
