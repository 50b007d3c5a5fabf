"""Result files are never partially written (issue 13 B): a failure while writing leaves
the previous file and no temporary; a complete file gets the usual permissions."""

import os
import stat

import numpy as np
import pytest

from mpcgpu.errors import MPCError
from mpcgpu.util.results import atomic_path, check_writable, save_json, save_npy, writable_problem


def test_save_npy_and_json_round_trip(tmp_path):
    a = np.arange(12, dtype=np.int64).reshape(3, 4)
    save_npy(tmp_path / "a.npy", a)
    assert np.array_equal(np.load(tmp_path / "a.npy"), a)
    save_npy(tmp_path / "b", a)  # exactly the name given: no .npy appended
    assert (tmp_path / "b").exists() and not (tmp_path / "b.npy").exists()
    save_json(tmp_path / "m.json", {"k": [1, 2]})
    assert (tmp_path / "m.json").read_text().strip().startswith("{")
    mode = stat.S_IMODE(os.stat(tmp_path / "a.npy").st_mode)
    mask = os.umask(0o022)
    os.umask(mask)
    assert mode == 0o666 & ~mask


def test_a_failure_leaves_the_old_file_and_no_temporary(tmp_path):
    save_npy(tmp_path / "a.npy", np.zeros(3))
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "a.npy") as tmp:
            with open(tmp, "wb") as fh:
                fh.write(b"half")
            raise RuntimeError("killed while writing")
    assert np.array_equal(np.load(tmp_path / "a.npy"), np.zeros(3))
    assert os.listdir(tmp_path) == ["a.npy"]


def test_unwritable_targets_are_named(tmp_path):
    assert writable_problem(tmp_path / "x.npy") is None
    assert "does not exist" in writable_problem(tmp_path / "no" / "x.npy")
    assert "is a folder" in writable_problem(tmp_path)
    with pytest.raises(MPCError, match="does not exist"):
        check_writable(None, tmp_path / "no" / "x.png")
