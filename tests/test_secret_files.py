"""Secret files (issue 20, point 6): shards, checkpoints, keys, trained shards and the
owner's outputs are created with mode 0600 whatever the umask, and a party never writes
them into a directory that holds another party's files when the parties run on
separate hosts (a parties file); on one machine it warns once."""

from __future__ import annotations

import os
import stat
from types import SimpleNamespace

import numpy as np
import pytest

from mpcgpu.util import atomic
from mpcgpu.comm.channels import ChannelConfig, write_key_pair
from mpcgpu.data.shards import ArraySpec, write_party_shard, write_shard_set
from mpcgpu.errors import MPCError
from mpcgpu.nn import checkpoint


@pytest.fixture
def open_umask():
    """The most permissive umask: files get exactly the mode they are created with."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def fresh_warning(monkeypatch):
    monkeypatch.setattr(atomic, "_warned_shared", False)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _u64(*shape):
    return np.arange(int(np.prod(shape)), dtype=np.uint64).reshape(shape)


def _save_checkpoint(directory, party=0, step=1, **kw):
    return checkpoint.save(
        directory,
        party,
        step,
        run_id="run",
        params={"w": (_u64(3), _u64(3), 16)},
        optim={"scale": 16, "steps": 0, "master": (_u64(3), _u64(3)), "velocity": (_u64(3), _u64(3))},
        rng={"role_calls": 0, "prg": {"own": (bytes(16), 0), "next": (bytes(16), 0), "local": (bytes(16), 0)}},
        meta={"step": step},
        settings={"lr": 0.05},
        **kw,
    )


def _party_shard(path, party=0, **kw):
    return write_party_shard(
        path, party, {"w": (_u64(2, 2), _u64(2, 2), 16)}, kind="model", set_id="0" * 32, frac_bits=16, name="m", **kw
    )


def test_create_private_is_0600_whatever_the_umask(tmp_path, open_umask):
    path = tmp_path / "f"
    path.write_bytes(b"old")
    os.chmod(path, 0o644)  # a leftover readable by all is replaced, not reused
    atomic.create_private(path)
    assert _mode(path) == 0o600 and path.read_bytes() == b""
    os.umask(0o277)  # a umask that would take the owner's write permission too
    atomic.create_private(tmp_path / "g")
    assert _mode(tmp_path / "g") == 0o600


def test_create_private_never_follows_a_link(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    os.symlink(victim, tmp_path / "link")
    atomic.create_private(tmp_path / "link")
    assert victim.read_bytes() == b"keep me"
    assert not os.path.islink(tmp_path / "link") and _mode(tmp_path / "link") == 0o600


def test_shard_set_files_are_0600(tmp_path, open_umask):
    s = write_shard_set(
        str(tmp_path), "d", [ArraySpec("x", np.ones((4, 3)), 16)], kind="dataset", frac_bits=16, progress=False
    )
    assert [_mode(p) for p in s.paths] == [0o600] * 3


def test_checkpoint_is_0600_even_over_a_readable_leftover(tmp_path, open_umask):
    path = checkpoint.checkpoint_path(str(tmp_path), 1, 0)
    with open(path + ".partial", "wb"):  # a killed writer's temporary file, mode 0666
        pass
    assert _mode(path + ".partial") == 0o666
    assert _save_checkpoint(str(tmp_path)) == path
    assert _mode(path) == 0o600
    assert checkpoint.load(str(tmp_path), 0, 1)["meta"] == {"step": 1}


def test_trained_shard_key_and_outputs_are_0600(tmp_path, open_umask):
    from mpcgpu.jobs.infer import write_outputs
    from mpcgpu.nn.weights import save_weights

    assert _mode(_party_shard(str(tmp_path / "m.party0.h5"))) == 0o600
    key, pub, _ = write_key_pair(str(tmp_path / "keys"), 0)
    assert _mode(key) == 0o600 and _mode(pub) == 0o644  # the public key is public
    paths = {"main": str(tmp_path / "pred.npy"), "meta": str(tmp_path / "pred.json")}
    written = write_outputs(paths, {"labels": np.arange(3)}, {"model": "m"})
    assert [_mode(p) for p in written] == [0o600, 0o600]
    save_weights(str(tmp_path / "w.h5"), "m", {"a": np.ones(2)})
    assert _mode(tmp_path / "w.h5") == 0o600


def test_other_party_files_are_found_by_name(tmp_path):
    for name in ("ckpt-00000001.party1.h5", "m.party2.h5.partial", "m.party0.h5", "party1.key", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert atomic.other_party_files(tmp_path, 0) == ["ckpt-00000001.party1.h5", "m.party2.h5.partial"]
    assert atomic.other_party_files(tmp_path, 1) == ["m.party0.h5", "m.party2.h5.partial"]
    assert atomic.other_party_files(tmp_path / "missing", 0) == []


def test_separate_hosts_refuse_a_directory_with_another_party_s_files(tmp_path, fresh_warning, capsys):
    _save_checkpoint(str(tmp_path), party=1)
    with pytest.raises(MPCError, match=r"party 0: .* another party's files \(ckpt-00000001\.party1\.h5\)"):
        _save_checkpoint(str(tmp_path), party=0, separate_hosts=True)
    with pytest.raises(MPCError, match="directory of its own"):
        _party_shard(str(tmp_path / "m.party0.h5"), party=0, separate_hosts=True)
    assert sorted(os.listdir(tmp_path)) == ["ckpt-00000001.party1.h5"]  # nothing written
    assert capsys.readouterr().err == ""
    # a directory of its own is fine
    assert os.path.exists(_save_checkpoint(str(tmp_path / "own"), party=0, separate_hosts=True))


def test_one_machine_warns_once(tmp_path, fresh_warning, capsys):
    _save_checkpoint(str(tmp_path), party=1)
    _save_checkpoint(str(tmp_path), party=0)
    _save_checkpoint(str(tmp_path), party=0, step=2)
    _party_shard(str(tmp_path / "m.party0.h5"), party=0)
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and "ckpt-00000001.party1.h5" in err
    assert checkpoint.steps_on_disk(str(tmp_path), 0) == [1, 2]


def _fake_runtime(mode, rank=0, others=(None, None)):
    comm = SimpleNamespace(
        channels=ChannelConfig(mode, "k", "parties.json") if mode == "authenticated" else ChannelConfig(mode),
        allgather_object=lambda obj: [obj, *others],
    )
    return SimpleNamespace(rank=rank, comm=comm)


def test_train_checks_its_directories_before_training(tmp_path, fresh_warning, capsys):
    from mpcgpu.jobs.train import _check_directories

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "ckpt-00000004.party2.h5").write_bytes(b"")
    args = SimpleNamespace(checkpoint_dir=str(ckpt), out=str(tmp_path / "out" / "trained"))
    with pytest.raises(MPCError, match="ckpt-00000004.party2.h5"):
        _check_directories(_fake_runtime("authenticated"), args)
    # a problem on another rank stops this one too
    args.checkpoint_dir = None
    with pytest.raises(MPCError, match="party 1: elsewhere"):
        _check_directories(_fake_runtime("authenticated", others=("party 1: elsewhere", None)), args)
    _check_directories(_fake_runtime("authenticated"), args)
    args.checkpoint_dir = str(ckpt)
    _check_directories(_fake_runtime("ephemeral"), args)  # one machine: a warning
    assert "warning" in capsys.readouterr().err


def test_exported_weights_are_0600(tmp_path, open_umask):
    pytest.importorskip("onnx")
    pytest.importorskip("safetensors")
    from mpcgpu.interop.export import export_onnx, export_safetensors
    from mpcgpu.nn.models import get_model
    from mpcgpu.nn.plain import init_params

    model = get_model("lenet")
    params = init_params(model, 0)
    paths = [
        export_safetensors(str(tmp_path / "m.safetensors"), model, params),
        export_onnx(str(tmp_path / "m.onnx"), model, params),
    ]
    assert [_mode(p) for p in paths] == [0o600, 0o600]
