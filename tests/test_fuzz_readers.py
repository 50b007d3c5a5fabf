"""Property-based tests (hypothesis) of the readers: the shard reader, the dataset and weights
readers of the share step, and load_weights.  Whatever a file's damage (bit flips, truncation,
a dataset of the wrong dtype or shape, NaN/Inf, a missing piece, swapped or mixed shard sets),
the reader either raises an MPCError with a message, or returns exactly what was written --
never another exception, never a wrong result.

CI runs a few dozen fixed examples per property (well under a minute);
``HYPOTHESIS_PROFILE=slow`` runs many more.
"""

import os
import shutil

import h5py
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mpcgpu.assets.dataset_h5 import write_dataset
from mpcgpu.data.shards import open_shard, reconstruct_local, shard_path
from mpcgpu.data.split import split_file
from mpcgpu.errors import MPCError
from mpcgpu.nn.weights import load_weights, save_weights
from reference import fuzz_settings

#: CI: 25 fixed (derandomized) examples per property; HYPOTHESIS_PROFILE=slow: 400 random ones
FUZZ = fuzz_settings(25, 400)

N = 12


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A small plaintext dataset and weights file, and the shard sets made from them."""
    d = tmp_path_factory.mktemp("fuzz")
    rng = np.random.default_rng(5)
    imgs = rng.integers(0, 256, size=(N, 1, 6, 6), dtype=np.uint8)
    labels = rng.integers(0, 10, size=N)
    write_dataset(str(d / "data.h5"), imgs, labels, name="fz", mean=0.5, std=0.25, num_classes=10)
    params = {"w": rng.normal(size=(4, 3)).astype(np.float32), "b": rng.normal(size=4).astype(np.float32)}
    save_weights(str(d / "weights.h5"), "tiny", params)
    for src, out in (("data.h5", "a"), ("data.h5", "b"), ("weights.h5", "a")):
        split_file(str(d / src), str(d / out), progress=False)
    want = {
        name: reconstruct_local([shard_path(str(d / "a" / "data"), i) for i in range(3)], name)
        for name in ("images", "labels")
    }
    return d, want


def check_outcome(fn):
    """``fn()`` either raises MPCError with a non-empty message or returns; anything else fails."""
    try:
        return True, fn()
    except MPCError as exc:
        assert str(exc).strip(), "an MPCError without a message"
        assert "Traceback" not in str(exc)
        return False, exc


# -- damage to a file's bytes ----------------------------------------------------------------------
flips = st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 7)), min_size=1, max_size=8)


def flip_bits(path, where):
    data = bytearray(open(path, "rb").read())
    for frac, bit in where:
        data[int(frac * len(data))] ^= 1 << bit
    open(path, "wb").write(bytes(data))


def truncate(path, frac):
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(int(frac * size))


def shard_read(path, party):
    def read():
        with open_shard(path, party=party, collective=False, verify=True) as s:
            return {name: s.load(name) for name in s.arrays}

    return read


def assert_same_arrays(got, good_dir, party):
    with open_shard(shard_path(str(good_dir / "a" / "data"), party), party=party, collective=False) as s:
        want = {name: s.load(name) for name in s.arrays}
    assert set(got) == set(want)
    for name in want:
        for g, w in zip(got[name], want[name]):
            assert g.dtype == w.dtype and np.array_equal(g, w), f"wrong data read from a damaged shard: {name}"


@FUZZ
@given(party=st.integers(0, 2), where=flips)
def test_shard_with_flipped_bits_is_refused_or_read_exactly(good, tmp_path_factory, party, where):
    d, _ = good
    path = str(tmp_path_factory.mktemp("s") / "x.h5")
    shutil.copy(shard_path(str(d / "a" / "data"), party), path)
    flip_bits(path, where)
    ok, got = check_outcome(shard_read(path, party))
    if ok:
        assert_same_arrays(got, d, party)


@FUZZ
@given(party=st.integers(0, 2), frac=st.floats(0, 1, exclude_max=True))
def test_truncated_shard_is_refused(good, tmp_path_factory, party, frac):
    d, _ = good
    path = str(tmp_path_factory.mktemp("s") / "x.h5")
    shutil.copy(shard_path(str(d / "a" / "data"), party), path)
    truncate(path, frac)
    ok, got = check_outcome(shard_read(path, party))
    assert not ok, "a truncated shard was accepted"


@FUZZ
@given(party=st.integers(0, 2), claimed=st.integers(0, 2), other_set=st.booleans())
def test_swapped_or_mixed_shards_are_refused(good, tmp_path_factory, party, claimed, other_set):
    d, _ = good
    src = shard_path(str(d / ("b" if other_set else "a") / "data"), party)
    ok, _ = check_outcome(shard_read(src, claimed))
    assert ok == (party == claimed)
    if other_set:  # a file of another set among this set's: the set ids differ
        from mpcgpu.data.shards import _collective_problem

        reports = []
        for p in range(3):
            stem = d / ("b" if p == party else "a") / "data"
            with open_shard(shard_path(str(stem), p), party=p, collective=False) as s:
                reports.append(((True, "", s.summary()), 16))
        problem = _collective_problem(reports)
        assert problem and "set" in problem


# -- structural damage (rewritten with h5py) -----------------------------------------------------------
def _datasets(f):
    found = []
    f.visititems(lambda name, obj: found.append(name) if isinstance(obj, h5py.Dataset) else None)
    return sorted(found)


def _attrs(f):
    found = [("/", k) for k in f.attrs]
    f.visititems(lambda name, obj: found.extend((name, k) for k in obj.attrs))
    return sorted(found)


DTYPES = ["float64", "float32", "int64", "int32", "uint8", "uint64", "bool"]

damage = st.one_of(
    st.tuples(st.just("dtype"), st.integers(0, 99), st.sampled_from(DTYPES)),
    st.tuples(st.just("shape"), st.integers(0, 99), st.sampled_from(["drop_row", "drop_axis", "add_axis", "scalar"])),
    st.tuples(st.just("value"), st.integers(0, 99), st.sampled_from([np.nan, np.inf, -np.inf, 1e30, -1e30, 256.0])),
    st.tuples(st.just("delete"), st.integers(0, 99), st.just(None)),
    st.tuples(st.just("attr"), st.integers(0, 99), st.sampled_from(["", "x", -1, 2**40, 1.5, np.nan, b"\xff"])),
    st.tuples(st.just("delattr"), st.integers(0, 99), st.just(None)),
)


def apply_damage(path, how):
    kind, pick, arg = how
    with h5py.File(path, "r+") as f:
        if kind in ("attr", "delattr"):
            names = _attrs(f)
            if not names:
                return
            where, key = names[pick % len(names)]
            obj = f[where]
            if kind == "delattr":
                del obj.attrs[key]
            else:
                obj.attrs[key] = arg
            return
        names = _datasets(f)
        if not names:
            return
        name = names[pick % len(names)]
        old = f[name][()]
        if kind == "delete":
            del f[name]
            return
        if kind == "dtype":
            new = np.asarray(old).astype(arg)
        elif kind == "shape":
            a = np.asarray(old)
            new = {
                "drop_row": a[:-1] if a.ndim else a,
                "drop_axis": a.reshape(a.shape[:-2] + (-1,)) if a.ndim >= 2 else a.reshape(-1)[:0],
                "add_axis": a[..., None],
                "scalar": a.reshape(-1)[:1].reshape(()) if a.size else np.zeros(()),
            }[arg]
        else:
            a = np.asarray(old)
            if a.dtype.kind != "f":
                a = a.astype(np.float64)
            new = a.copy()
            if new.size:
                new.reshape(-1)[pick % new.size] = arg
        del f[name]
        f[name] = new


def split_outcome(src, out):
    return check_outcome(lambda: split_file(src, out, progress=False, overwrite=True))


F = 16
LIMIT = 2.0 ** (63 - 2 * F)


def reference(path, kind):
    """What the file says, read independently with h5py under the documented semantics
    (``{name: float64 or int array}``), or None where it holds something that cannot be shared
    (non-finite, beyond the fixed-point range, unreadable)."""
    try:
        with h5py.File(path, "r") as f:
            if kind == "model":  # integer arrays are shared as integers (scale 0), reals in fixed point
                return {k: _as_shared(np.asarray(d[()])) for k, d in f["params"].items()}
            images = np.asarray(f["images"][()])
            out = {}
            if images.dtype.kind in "ui":  # (v/255 - mean[c]) / std[c] over axis 1
                bshape = (1, -1) + (1,) * (images.ndim - 2)
                mean = np.asarray(f.attrs.get("mean", 0.0), np.float64)
                std = np.asarray(f.attrs.get("std", 1.0), np.float64)
                mean = mean.reshape(bshape) if mean.size > 1 else mean
                std = std.reshape(bshape) if std.size > 1 else std
                with np.errstate(all="ignore"):
                    out["images"] = (images.astype(np.float64) / 255.0 - mean) / std
            else:
                out["images"] = images.astype(np.float64)
            if "labels" in f:
                labels = np.asarray(f["labels"][()])
                out["labels"] = _as_shared(labels)
            return out
    except Exception:
        return None


def _as_shared(v):
    return v.astype(np.int64) if v.dtype.kind in "biu" else v.astype(np.float64)


def encoded(v):
    if v.dtype.kind != "f":
        return v.astype(np.int64)
    return np.rint(v * 2.0**F).astype(np.int64)


def check_split(src, out, stem, kind):
    """Refused with an MPCError, or the shares reconstruct to what the file says: never a wrong
    result, and never a share of something that cannot be encoded."""
    ok, _ = split_outcome(src, out)
    if not ok:
        return False
    ref = reference(src, kind)
    assert ref is not None, "the share step accepted a file that cannot be read"
    for name, v in ref.items():
        assert np.all(np.isfinite(v)) and np.all(np.abs(v) < LIMIT), f"accepted non-finite/out-of-range {name}"
        got = reconstruct_local([shard_path(os.path.join(out, stem), i) for i in range(3)], name).view(np.int64)
        want = encoded(v)
        assert got.shape == want.shape, name
        assert np.all(np.abs(got - want) <= 1), f"wrong shares of {name}"
    return True


def fresh_copy(good, tmp_path_factory, name):
    """``(work dir, path)``: a copy of the good file ``name`` in a fresh directory, to damage."""
    work = tmp_path_factory.mktemp(name.split(".")[0])
    src = str(work / name)
    shutil.copy(good[0] / name, src)
    return work, src


@FUZZ
@given(how=damage)
def test_damaged_dataset_is_refused_or_shared_exactly(good, tmp_path_factory, how):
    work, src = fresh_copy(good, tmp_path_factory, "data.h5")
    apply_damage(src, how)
    check_split(src, str(work / "out"), "data", "dataset")


@FUZZ
@given(where=flips)
def test_dataset_with_flipped_bits_is_refused_or_shared_exactly(good, tmp_path_factory, where):
    work, src = fresh_copy(good, tmp_path_factory, "data.h5")
    flip_bits(src, where)
    check_split(src, str(work / "out"), "data", "dataset")


@FUZZ
@given(how=damage)
def test_damaged_weights_are_refused_or_loaded_exactly(good, tmp_path_factory, how):
    work, src = fresh_copy(good, tmp_path_factory, "weights.h5")
    apply_damage(src, how)
    ok, got = check_outcome(lambda: load_weights(src))
    if ok:
        _, params = got
        with h5py.File(src, "r") as f:  # load_weights reads every parameter as float64
            ref = {k: np.asarray(d[()], np.float64) for k, d in f["params"].items()}
        assert set(params) == set(ref)
        assert all(np.array_equal(params[k], ref[k], equal_nan=True) for k in ref), how
    check_split(src, str(work / "out"), "weights", "model")


@FUZZ
@given(where=flips)
def test_weights_with_flipped_bits_are_refused_or_shared_exactly(good, tmp_path_factory, where):
    work, src = fresh_copy(good, tmp_path_factory, "weights.h5")
    flip_bits(src, where)
    check_outcome(lambda: load_weights(src))
    check_split(src, str(work / "out"), "weights", "model")


@FUZZ
@given(frac=st.floats(0, 1, exclude_max=True), which=st.sampled_from(["data.h5", "weights.h5"]))
def test_truncated_inputs_are_refused(good, tmp_path_factory, frac, which):
    work, src = fresh_copy(good, tmp_path_factory, which)
    truncate(src, frac)
    ok, _ = split_outcome(src, str(work / "out"))
    assert not ok
    if which == "weights.h5":
        ok, _ = check_outcome(lambda: load_weights(src))
        assert not ok
