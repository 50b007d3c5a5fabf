"""Three-rank tests: each party opens only its own shard; every bad case fails on every rank."""

import os
import shutil
import tempfile

import h5py
import numpy as np
import pytest

from mpcgpu.data import open_shard, split
from mpcgpu.ring.encoding import encode
from mpcgpu.errors import ShardError

pytestmark = pytest.mark.mpi(min_size=3)

MEAN = np.array([0.5])
STD = np.array([0.25])


def _make_inputs(d):
    rng = np.random.default_rng(7)
    with h5py.File(os.path.join(d, "toy.h5"), "w") as f:
        f["images"] = rng.integers(0, 256, (20, 1, 8, 8), dtype=np.uint8)
        f["labels"] = rng.integers(0, 10, 20)
        f.attrs.update({"format": "mpcgpu-dataset/1", "name": "toy", "mean": MEAN, "std": STD})
    with h5py.File(os.path.join(d, "w.h5"), "w") as f:
        f.attrs.update({"format": "mpcgpu-weights/1", "model": "tiny"})
        f["params/conv.weight"] = rng.normal(size=(2, 1, 3, 3))
        f["params/conv.bias"] = rng.normal(size=2)
        f.create_group("meta").attrs.update({"seed": 1234, "recipe": "sgd lr=0.1 SECRET-RECIPE"})


def _variant(d, name, replace):
    """A copy of the good set in ``d/name/``, with ``replace[party](path)`` applied to some files."""
    os.makedirs(os.path.join(d, name))
    for i in range(3):
        dst = os.path.join(d, name, f"toy.party{i}.h5")
        shutil.copy(os.path.join(d, "good", f"toy.party{i}.h5"), dst)
        if i in replace:
            replace[i](dst)
    return os.path.join(d, name, "toy")


def _flip(path):
    with h5py.File(path) as f:
        offset = f["arrays/images/second"].id.get_offset()
    with open(path, "r+b") as fh:
        fh.seek(offset + 100)
        b = fh.read(1)
        fh.seek(offset + 100)
        fh.write(bytes([b[0] ^ 1]))


def _truncate(path):
    with open(path, "r+b") as fh:
        fh.truncate(os.path.getsize(path) - 1000)


def _fewer_rows(path):
    """Rewrite the images of one shard with 10 rows, consistently (valid checksums)."""
    import hashlib

    with h5py.File(path, "r+") as f:
        g = f["arrays/images"]
        for ds in ("first", "second"):
            data = g[ds][:10]
            del g[ds]
            g.create_dataset(ds, data=data)
            g.attrs[f"sha256_{ds}"] = hashlib.sha256(data.tobytes()).hexdigest()
        g.attrs["shape"] = np.array([10, 1, 8, 8])


@pytest.fixture(scope="module")
def sets(rt):
    """Shard sets in a directory shared by the three ranks (made by rank 0)."""
    d = tempfile.mkdtemp(prefix="mpcgpu-shards-") if rt.rank == 0 else None
    d = rt.comm.bcast_object(d)
    if rt.rank == 0:
        _make_inputs(d)
        toy, w = os.path.join(d, "toy.h5"), os.path.join(d, "w.h5")
        split.split_file(toy, os.path.join(d, "good"))
        split.split_file(toy, os.path.join(d, "other"))
        split.split_file(toy, os.path.join(d, "p12"), frac_bits=12)
        split.split_file(w, os.path.join(d, "model"))
        _variant(d, "flip", {1: _flip})
        _variant(d, "trunc", {2: _truncate})
        _variant(d, "shape", {2: _fewer_rows})
    rt.comm.barrier()
    yield d
    rt.comm.barrier()
    if rt.rank == 0:
        shutil.rmtree(d, ignore_errors=True)


def _plain_images(d):
    with h5py.File(os.path.join(d, "toy.h5")) as f:
        im, labels = f["images"][:], f["labels"][:]
    return encode((im / 255.0 - MEAN[0]) / STD[0], 16), labels


def _reconstruct(rt, pair):
    """Party i holds (x_i, x_{i+1}) and receives x_{i-1} from party i-1."""
    first, second = pair
    prev = rt.comm.pass_next(first)
    return rt.backend.to_host(prev + first + second)


def test_reconstruction_over_three_ranks(rt, sets):
    shard = open_shard(os.path.join(sets, "good", "toy"), rt, kind="dataset")
    assert shard.party == rt.rank and shard.path.endswith(f"toy.party{rt.rank}.h5")
    images, labels = _plain_images(sets)
    assert np.array_equal(_reconstruct(rt, shard.load("images")), images)
    assert np.array_equal(_reconstruct(rt, shard.load("labels")).view(np.int64), labels)
    rows = []
    for img_pair, _ in shard.batches(("images", "labels"), 8):
        rows.append(_reconstruct(rt, img_pair))
    assert np.array_equal(np.concatenate(rows), images)
    shard.close()


def test_model_parameters(rt, sets):
    with open_shard(os.path.join(sets, "model", "w"), rt, kind="model") as shard:
        params = shard.load_all()
        assert list(params) == ["conv.bias", "conv.weight"] and shard.name == "tiny"
        # the training recipe and seed in /meta stayed with the owner
        assert shard.public == {"format": "mpcgpu-weights/1", "model": "tiny"}
        assert b"SECRET-RECIPE" not in open(shard.path, "rb").read()
        with h5py.File(os.path.join(sets, "w.h5")) as f:
            for name, pair in params.items():
                assert np.array_equal(_reconstruct(rt, pair), encode(f["params"][name][()], 16))


def _fails_everywhere(rt, path, match, **kw):
    with pytest.raises(ShardError, match=match):
        open_shard(path, rt, **kw)


def test_wrong_party_file_on_one_rank(rt, sets):
    good = os.path.join(sets, "good", "toy")
    path = f"{good}.party1.h5" if rt.rank == 0 else good  # party 0 is given party 1's file
    _fails_everywhere(rt, path, r"party 0: shard .*toy.party1.h5 belongs to party 1 but this is party 0")


def test_all_ranks_given_rotated_files(rt, sets):
    path = os.path.join(sets, "good", f"toy.party{(rt.rank + 1) % 3}.h5")
    _fails_everywhere(rt, path, "belongs to party")


def test_shards_of_two_splits_mixed(rt, sets):
    which = "other" if rt.rank == 2 else "good"
    _fails_everywhere(rt, os.path.join(sets, which, "toy"), "different splits")


def test_flipped_byte_on_one_rank(rt, sets):
    _fails_everywhere(rt, os.path.join(sets, "flip", "toy"), r"failed on party 1: .*checksum mismatch")


def test_truncated_shard_on_one_rank(rt, sets):
    _fails_everywhere(rt, os.path.join(sets, "trunc", "toy"), r"failed on party 2: .*truncated")


def test_shape_mismatch(rt, sets):
    _fails_everywhere(
        rt,
        os.path.join(sets, "shape", "toy"),
        r"party 0 and party 2 disagree.*'images' has shape \(20, 1, 8, 8\) vs \(10, 1, 8, 8\)",
    )


def test_frac_bits_mismatch(rt, sets):
    _fails_everywhere(rt, os.path.join(sets, "p12", "toy"), "split with 12 fractional bits but party 0 runs with 16")


def test_kind_mismatch_and_missing_file(rt, sets):
    _fails_everywhere(rt, os.path.join(sets, "model", "w"), "holds a model, but a dataset is needed", kind="dataset")
    path = os.path.join(sets, "nowhere" if rt.rank == 1 else "good", "toy")
    _fails_everywhere(rt, path, "party 1: shard file .* does not exist")


def test_still_in_step_after_failures(rt, sets):
    """The failed opens left no rank behind: a normal exchange still pairs up."""
    a = np.full(4, rt.rank, np.uint64)
    assert (rt.comm.pass_next(a) == (rt.rank - 1) % 3).all()


def test_as_share_wraps_the_pair(rt, sets):

    from mpcgpu.data import as_share

    images, _ = _plain_images(sets)
    with open_shard(os.path.join(sets, "good", "toy"), rt) as shard:
        x = as_share(shard.load("images"), shard.arrays["images"].scale)
    assert x.scale == 16
    assert np.array_equal(rt.backend.to_host(x.reveal_raw()), images)
