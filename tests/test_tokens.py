"""Token-id datasets (mpcgpu.data.tokens, datasets/tokens.py), single process: the file
format and its checks, the converter (text and .npy, padding, truncation, labels), and the
share step (one-hot integer shares of the ids, labels shared, masks public in every
party's file)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from datasets import tokens as conv
from mpcgpu.data import split
from mpcgpu.data import tokens as T
from mpcgpu.data.shards import open_shard, reconstruct_local
from mpcgpu.errors import ShardError


def _file(path, n=5, t=6, vocab=11, labels=True, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (n, t))
    ids[0, :2] = [0, vocab - 1]
    mask = np.ones((n, t), np.uint8)
    mask[1, 4:] = 0
    ids[1, 4:] = 0
    lab = rng.integers(0, 3, n) if labels else None
    T.write_tokens(
        path,
        ids,
        mask,
        lab,
        vocab_size=vocab,
        name="toy-tokens",
        num_classes=3 if labels else None,
        source="SECRET-SRC",
    )
    return ids, mask, lab


def test_write_read_round_trip(tmp_path):
    p = tmp_path / "t.h5"
    ids, mask, lab = _file(p)
    got_ids, got_mask, got_lab, info = T.read_tokens(p)
    assert np.array_equal(got_ids, ids) and got_ids.dtype == np.int64
    assert np.array_equal(got_mask, mask) and got_mask.dtype == np.uint8
    assert np.array_equal(got_lab, lab)
    assert info["format"] == T.FORMAT and info["vocab_size"] == 11 and info["seq_len"] == 6 and info["n"] == 5
    assert info["pad_id"] == 0 and info["num_classes"] == 3
    part = T.read_tokens(p, 1, 3)
    assert np.array_equal(part[0], ids[1:3])


@pytest.mark.parametrize(
    "ids,mask,labels,match",
    [
        ([[0, 11]], None, None, r"token id 11 at row 0, position 1 is outside \[0, 11\)"),
        ([[-1, 2]], None, None, "token id -1"),
        ([[0.5, 2]], None, None, "integers"),
        ([0, 1, 2], None, None, "N x T"),
        ([[0, 1]], [[1, 2]], None, "other than 0 and 1"),
        ([[0, 1]], [[1, 1, 1]], None, "attention_mask must be"),
        ([[0, 1]], None, [0, 1], "labels must be"),
        ([[0, 1]], None, [5], r"labels outside \[0, 3\)"),
    ],
)
def test_bad_tokens_are_refused(tmp_path, ids, mask, labels, match):
    with pytest.raises(T.TokensError, match=match):
        T.write_tokens(tmp_path / "x.h5", np.asarray(ids), mask, labels, vocab_size=11, name="x", num_classes=3)
    assert not (tmp_path / "x.h5").exists()


def test_read_checks_the_file(tmp_path):
    p = tmp_path / "t.h5"
    _file(p)
    with h5py.File(p, "r+") as f:
        f["ids"][2, 3] = 99  # edited after writing: outside the vocabulary
    with pytest.raises(T.TokensError, match="token id 99 at row 2, position 3"):
        T.read_tokens(p)
    with pytest.raises(ShardError, match="token id 99"):
        split.split_file(p, tmp_path / "out")
    with h5py.File(tmp_path / "img.h5", "w") as f:
        f.attrs["format"] = "mpcgpu-dataset/1"
    with pytest.raises(T.TokensError, match="expected 'mpcgpu-tokens/1'"):
        T.tokens_info(tmp_path / "img.h5")


def test_one_hot():
    ids = np.array([[0, 3], [2, 2]])
    oh = T.one_hot(ids, 4)
    assert oh.shape == (2, 2, 4) and oh.dtype == np.uint8
    assert np.array_equal(oh.argmax(-1), ids) and oh.sum() == 4
    with pytest.raises(T.TokensError):
        T.one_hot([4], 4)


# -- the converter --------------------------------------------------------------------------------


def test_convert_text_pads_with_mask_zero(tmp_path, capsys):
    src = tmp_path / "ids.txt"
    src.write_text("# a comment\n5 6 7\n\n1, 2\n9 9 9 9 8\n")
    (tmp_path / "labels.txt").write_text("0\n1\n2\n")
    out = tmp_path / "t.h5"
    rc = conv.main(
        [
            str(src),
            str(out),
            "--vocab",
            "10",
            "--seq-len",
            "6",
            "--pad-id",
            "3",
            "--labels",
            str(tmp_path / "labels.txt"),
        ]
    )
    assert rc == 0
    assert "3 sequences of 6 positions (10 tokens, 8 padding)" in capsys.readouterr().out
    ids, mask, labels, info = T.read_tokens(out)
    assert ids.tolist() == [[5, 6, 7, 3, 3, 3], [1, 2, 3, 3, 3, 3], [9, 9, 9, 9, 8, 3]]
    assert mask.tolist() == [[1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0]]
    assert labels.tolist() == [0, 1, 2] and info["num_classes"] == 3 and info["pad_id"] == 3 and info["name"] == "ids"


def test_convert_npy_and_errors(tmp_path, capsys):
    a = np.array([[1, 2, 3, 4], [4, 3, 2, 1]])
    np.save(tmp_path / "ids.npy", a)
    out = tmp_path / "t.h5"
    assert conv.main([str(tmp_path / "ids.npy"), str(out), "--vocab", "5"]) == 0
    ids, mask, _, info = T.read_tokens(out)
    assert np.array_equal(ids, a) and mask.all() and info["seq_len"] == 4
    # an id at the vocabulary size: refused, nothing written
    bad = tmp_path / "bad.h5"
    assert conv.main([str(tmp_path / "ids.npy"), str(bad), "--vocab", "4"]) == 1
    assert "token id 4 at row 0, position 3 is outside [0, 4)" in capsys.readouterr().err
    assert not bad.exists()
    # longer than --seq-len: an error, or cut with --truncate
    assert conv.main([str(tmp_path / "ids.npy"), str(bad), "--vocab", "5", "--seq-len", "3"]) == 1
    assert "--truncate" in capsys.readouterr().err
    assert conv.main([str(tmp_path / "ids.npy"), str(out), "--vocab", "5", "--seq-len", "3", "--truncate"]) == 0
    assert T.read_tokens(out)[0].tolist() == [[1, 2, 3], [4, 3, 2]]
    # an explicit mask
    np.save(tmp_path / "mask.npy", np.array([[1, 1, 0, 0], [1, 1, 1, 0]]))
    assert conv.main([str(tmp_path / "ids.npy"), str(out), "--vocab", "5", "--mask", str(tmp_path / "mask.npy")]) == 0
    assert T.read_tokens(out)[1].tolist() == [[1, 1, 0, 0], [1, 1, 1, 0]]
    (tmp_path / "x.txt").write_text("1 2 x\n")
    assert conv.main([str(tmp_path / "x.txt"), str(bad), "--vocab", "5"]) == 1
    assert "line 1" in capsys.readouterr().err


# -- the share step -------------------------------------------------------------------------------


def test_share_token_dataset(tmp_path):
    p = tmp_path / "toks.h5"
    ids, mask, lab = _file(p)
    result = split.split_file(p, tmp_path / "out")
    assert result.kind == "dataset"
    oh = reconstruct_local(result.paths, "input_ids")
    assert oh.shape == (5, 6, 11) and np.array_equal(oh, T.one_hot(ids, 11).astype(np.uint64))
    assert np.array_equal(reconstruct_local(result.paths, "labels").view(np.int64), lab)
    for party, path in enumerate(result.paths):
        with open_shard(path, party=party, kind="dataset") as s:
            assert T.is_token_shard(s)
            assert s.arrays["input_ids"].scale == 0 and s.arrays["labels"].scale == 0
            assert set(s.arrays) == {"input_ids", "labels"}  # the mask is not a secret
            assert np.array_equal(s.consts()["attention_mask"], mask)
            assert s.public == {
                "format": T.FORMAT,
                "name": "toy-tokens",
                "num_classes": 3,
                "vocab_size": 11,
                "seq_len": 6,
                "pad_id": 0,
            }
        assert b"SECRET-SRC" not in open(path, "rb").read()
        # the ids themselves appear nowhere in clear: each party's components look random
        with h5py.File(path) as f:
            first = f["arrays/input_ids/first"][()]
            assert first.max() > 2**60
    limited = split.split_file(p, tmp_path / "lim", limit=2, stem="two")
    assert reconstruct_local(limited.paths, "input_ids").shape == (2, 6, 11)
    with open_shard(limited.paths[0], party=0) as s:
        assert s.consts()["attention_mask"].shape == (2, 6)


def test_share_without_labels(tmp_path):
    p = tmp_path / "toks.h5"
    _file(p, labels=False)
    result = split.split_file(p, tmp_path / "out")
    assert set(result.arrays) == {"input_ids"}
