"""Single-process tests of the share step, the shard files and the launch scripts."""

import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest

from mpcgpu import cli
from mpcgpu.data import shards, split
from mpcgpu.data.shards import ArraySpec, Shard, open_shard, reconstruct_local, write_shard_set
from mpcgpu.ring.encoding import encode
from mpcgpu.errors import EncodingError, ShardError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEAN = np.array([0.5, 0.4, 0.3])
STD = np.array([0.25, 0.2, 0.3])


def make_dataset(path, n=50, channels=3, seed=0, images=None):
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        f["images"] = rng.integers(0, 256, (n, channels, 6, 5), dtype=np.uint8) if images is None else images
        f["labels"] = rng.integers(0, 10, n)
        f.attrs["format"] = "mpcgpu-dataset/1"
        f.attrs["name"] = "toy"
        f.attrs["mean"] = MEAN[:channels]
        f.attrs["std"] = STD[:channels]
    return path


def make_model(path, seed=1, big=False):
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        f.attrs["format"] = "mpcgpu-weights/1"
        f.attrs["model"] = "tiny"
        g = f.create_group("params")
        g["features.0.weight"] = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
        g["features.0.bias"] = rng.normal(size=4)
        g["bn.num_batches_tracked"] = np.int64(7)
        if big:
            g["fc.weight"] = np.full((2, 2), 1e10)
    return path


def plain_images(path):
    with h5py.File(path) as f:
        im = f["images"][:].astype(np.float64) / 255.0
        mean, std = f.attrs["mean"], f.attrs["std"]
    return (im - mean[None, :, None, None]) / std[None, :, None, None]


def paths_of(stem):
    return [f"{stem}.party{i}.h5" for i in range(3)]


@pytest.fixture
def dataset_set(tmp_path):
    src = make_dataset(tmp_path / "toy.h5")
    result = split.split_file(src, tmp_path / "out")
    return src, result


def test_split_round_trip_dataset(dataset_set, tmp_path):
    src, result = dataset_set
    assert result.paths == paths_of(str(tmp_path / "out" / "toy"))
    x = reconstruct_local(result.paths, "images")
    assert np.array_equal(x, encode(plain_images(src), 16))
    y = reconstruct_local(result.paths, "labels")
    with h5py.File(src) as f:
        assert np.array_equal(y.view(np.int64), f["labels"][:])
    with Shard(result.paths[1]) as s:
        assert s.kind == "dataset" and s.party == 1 and s.frac_bits == 16 and s.name == "toy"
        assert s.arrays["images"].scale == 16 and s.arrays["labels"].scale == 0
        assert s.arrays["images"].transform == "normalise"
        assert np.allclose(s.arrays["images"].mean, MEAN) and np.allclose(s.public["std"], STD)
        assert s.public["format"] == "mpcgpu-dataset/1"
        assert s.set_id == result.set_id and len(s.set_id) == 32


def test_split_round_trip_model(tmp_path):
    src = make_model(tmp_path / "w.h5")
    result = split.split_file(src, tmp_path, frac_bits=12)
    assert result.kind == "model"
    with h5py.File(src) as f:
        for name in ("features.0.weight", "features.0.bias"):
            x = reconstruct_local(result.paths, name)
            assert np.array_equal(x, encode(f["params"][name][()], 12))
        assert reconstruct_local(result.paths, "bn.num_batches_tracked").view(np.int64) == 7
    s = open_shard(result.paths[0], party=0)
    assert s.name == "tiny" and s.arrays["bn.num_batches_tracked"].scale == 0
    assert s.public == {"format": "mpcgpu-weights/1", "model": "tiny"}  # the allow-list only
    assert s.arrays["features.0.weight"].shape == (4, 3, 3, 3)
    params = s.load_all()
    assert set(params) == {"features.0.weight", "features.0.bias", "bn.num_batches_tracked"}
    assert params["features.0.weight"][0].dtype == np.uint64


def test_each_shard_holds_only_its_two_components(dataset_set):
    _, result = dataset_set
    comps = {}
    for i, p in enumerate(result.paths):
        with h5py.File(p) as f:
            assert int(f.attrs["party"]) == i
            g = f["arrays/images"]
            assert sorted(g.keys()) == ["first", "second"]
            assert list(g.attrs["components"]) == [i, (i + 1) % 3]
            assert g["first"].compression is None and g["first"].chunks is None  # contiguous
            first, second = g["first"][:], g["second"][:]
        for j, c in ((i, first), ((i + 1) % 3, second)):
            if j in comps:
                assert np.array_equal(comps[j], c)  # replicas agree
            comps[j] = c
    x = comps[0] + comps[1] + comps[2]
    for i, p in enumerate(result.paths):
        with h5py.File(p) as f:
            first, second = f["arrays/images/first"][:], f["arrays/images/second"][:]
        missing = comps[(i + 2) % 3]
        # the missing component appears nowhere in the file, nor does the secret
        for held in (first, second):
            assert not np.array_equal(held, missing) and not np.array_equal(held, x)
            assert np.mean(held == x) < 0.01


def test_components_look_uniform(tmp_path):
    # all-zero images (normalised to a constant): the components must still look random
    src = make_dataset(tmp_path / "z.h5", n=400, images=np.zeros((400, 3, 6, 5), np.uint8))
    result = split.split_file(src, tmp_path / "out")
    for p in result.paths:
        with h5py.File(p) as f:
            for ds in ("first", "second"):
                c = f["arrays/images"][ds][:].ravel()
                bits = (c[:, None] >> np.arange(64, dtype=np.uint64)) & np.uint64(1)
                freq = bits.mean(axis=0)
                # n = 36000 words: sigma = 0.0026 per bit position
                assert np.all(np.abs(freq - 0.5) < 0.015), freq
                assert len(np.unique(c)) > 0.99 * c.size


def test_two_splits_differ(tmp_path):
    src = make_dataset(tmp_path / "toy.h5")
    a = split.split_file(src, tmp_path / "a")
    b = split.split_file(src, tmp_path / "b")
    assert a.set_id != b.set_id
    for pa, pb in zip(a.paths, b.paths):
        with h5py.File(pa) as fa, h5py.File(pb) as fb:
            assert np.mean(fa["arrays/images/first"][:] == fb["arrays/images/first"][:]) < 0.01
    assert np.array_equal(reconstruct_local(a.paths, "images"), reconstruct_local(b.paths, "images"))


def test_streaming_in_small_blocks(tmp_path):
    """Many row blocks: checksums and reconstruction match, progress goes to stderr."""
    src = make_dataset(tmp_path / "toy.h5", n=37)
    with h5py.File(src) as f:
        spec = ArraySpec("images", f["images"], 16, "normalise", MEAN, STD)
        result = write_shard_set(
            str(tmp_path),
            "blk",
            [spec, ArraySpec("labels", f["labels"], 0)],
            kind="dataset",
            frac_bits=16,
            block_bytes=8 * 90 * 4,
            progress=True,
        )
    for i, p in enumerate(result.paths):
        open_shard(p, party=i).close()  # verifies checksums
    assert np.array_equal(reconstruct_local(result.paths, "images"), encode(plain_images(src), 16))
    s = open_shard(str(tmp_path / "blk"), party=2)
    got = list(s.batches(("images", "labels"), 16))
    assert [b[0][0].shape[0] for b in got] == [16, 16, 5]
    assert len(list(s.batches("images", 16, drop_last=True))) == 2
    first, _ = s.read("images", 3, 9)
    assert np.array_equal(got[0][0][0][3:9], first)


def test_progress_line_on_stderr(tmp_path, capsys):
    write_shard_set(
        str(tmp_path), "p", [ArraySpec("x", np.ones((10, 3)), 16)], kind="model", frac_bits=16, progress=True
    )
    err = capsys.readouterr().err
    assert err.startswith("sharing [") and "MiB" in err and err.rstrip().endswith("x")


def _flip_byte(path, array="images", ds="first", at=11):
    with h5py.File(path, "r") as f:
        offset = f[f"arrays/{array}/{ds}"].id.get_offset()
    with open(path, "r+b") as fh:
        fh.seek(offset + at)
        b = fh.read(1)
        fh.seek(offset + at)
        fh.write(bytes([b[0] ^ 0x10]))


def test_checksum_detects_flipped_byte(dataset_set):
    _, result = dataset_set
    _flip_byte(result.paths[1], "labels", "second", at=5)
    open_shard(result.paths[1], party=1, verify=False).close()  # header still fine
    with pytest.raises(ShardError, match=r"checksum mismatch in array 'labels' \(component 'second'\)"):
        open_shard(result.paths[1], party=1)


def test_truncated_file(dataset_set):
    _, result = dataset_set
    p = result.paths[0]
    with open(p, "r+b") as fh:
        fh.truncate(os.path.getsize(p) // 2)
    with pytest.raises(ShardError, match="cannot be opened as HDF5") as info:
        open_shard(p, party=0)
    assert p in str(info.value)


def test_not_hdf5_and_missing_file(tmp_path):
    junk = tmp_path / "junk.party0.h5"
    junk.write_bytes(b"not an HDF5 file" * 100)
    with pytest.raises(ShardError, match="cannot be opened as HDF5"):
        open_shard(str(junk), party=0)
    with pytest.raises(ShardError, match="does not exist"):
        open_shard(str(tmp_path / "nothing"), party=0)


def test_wrong_format_tag(dataset_set, tmp_path):
    src, result = dataset_set
    with pytest.raises(ShardError, match="not an mpcgpu shard.*run `mpcgpu share`"):
        open_shard(str(src), party=0)
    with h5py.File(result.paths[2], "r+") as f:
        f.attrs["format"] = "mpcgpu-shard/99"
    with pytest.raises(ShardError, match="format tag 'mpcgpu-shard/99'"):
        open_shard(result.paths[2], party=2)


def test_wrong_party_and_kind(dataset_set):
    _, result = dataset_set
    with pytest.raises(ShardError, match="belongs to party 1 but this is party 0"):
        open_shard(result.paths[1], party=0)
    with pytest.raises(ShardError, match="holds a dataset, but a model is needed"):
        open_shard(result.paths[0], party=0, kind="model")


def test_stem_and_pattern_resolution(dataset_set, tmp_path):
    _, result = dataset_set
    stem = str(tmp_path / "out" / "toy")
    assert shards.resolve_path(stem, 2) == result.paths[2]
    assert shards.resolve_path(str(tmp_path / "out" / "toy.party{party}.h5"), 1) == result.paths[1]
    assert shards.resolve_path(result.paths[0], 2) == result.paths[0]  # explicit file: as is


def test_range_error_names_array_and_range(tmp_path):
    src = make_model(tmp_path / "w.h5", big=True)
    with pytest.raises(EncodingError, match=r"array 'fc.weight'.*outside the fixed-point range \(-2\^31, 2\^31\)"):
        split.split_file(src, tmp_path / "out")
    assert not os.path.exists(tmp_path / "out") or os.listdir(tmp_path / "out") == []  # nothing left
    with pytest.raises(EncodingError, match="NaN"):
        split.split_arrays(str(tmp_path), "nan", {"x": np.array([1.0, np.nan])}, kind="model")


def test_normalised_images_out_of_range(tmp_path):
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["images"] = np.full((2, 1, 2, 2), 255, np.uint8)
        f.attrs["format"] = "mpcgpu-dataset/1"
        f.attrs["mean"] = [0.0]
        f.attrs["std"] = [1e-12]
    with pytest.raises(EncodingError, match="array 'images'"):
        split.split_file(tmp_path / "d.h5", tmp_path / "out", frac_bits=20)


def test_limit_and_refuse_overwrite(tmp_path):
    src = make_dataset(tmp_path / "toy.h5")
    r = split.split_file(src, tmp_path / "o", limit=7)
    with Shard(r.paths[0]) as s:
        assert s.arrays["images"].shape == (7, 3, 6, 5) and s.arrays["labels"].shape == (7,)
    with pytest.raises(ShardError, match="already exist"):
        split.split_file(src, tmp_path / "o")
    r2 = split.split_file(src, tmp_path / "o", overwrite=True)
    assert r2.set_id != r.set_id
    with pytest.raises(ShardError, match="datasets only"):
        split.split_file(make_model(tmp_path / "w.h5"), tmp_path / "o", limit=3)


def test_scalar_and_split_arrays(tmp_path):
    r = split.split_arrays(str(tmp_path), "arr", {"s": np.float64(-2.5), "v": np.arange(5)}, kind="model", frac_bits=8)
    assert reconstruct_local(r.paths, "s").view(np.int64) == -640
    assert np.array_equal(reconstruct_local(r.paths, "v"), np.arange(5, dtype=np.uint64))


def test_cli_help():
    out = subprocess.run(
        [sys.executable, "-m", "mpcgpu.cli", "share", "--help"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0
    assert "STEM.party0.h5  -> server 0 only" in out.stdout and "--precision" in out.stdout
    assert "--public-meta meta.KEY" in out.stdout


def test_cli_run(tmp_path, capsys):
    src = make_dataset(tmp_path / "toy.h5")
    rc = cli.main(["share", str(src), "--out", str(tmp_path / "o"), "--precision", "12", "--limit", "5"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "shard set " in out and "toy.party2.h5" in out and "-> server 2 only" in out
    assert "  public/name = 'toy'" in out
    assert f"kept private (attributes of {src} not copied to the shards): none" in out
    with Shard(str(tmp_path / "o" / "toy.party0.h5")) as s:
        assert s.frac_bits == 12 and s.arrays["images"].rows == 5 and s.set_id in out
    rc = cli.main(["share", str(src), "--out", str(tmp_path / "o")])
    assert rc == 1 and "already exist" in capsys.readouterr().err
    rc = cli.main(["share", str(tmp_path / "missing.h5"), "--out", str(tmp_path / "o")])
    assert rc == 1 and "does not exist" in capsys.readouterr().err


# -- launch/ and job_scripts/ ---------------------------------------------------------------

LOCAL = os.path.join(REPO, "launch", "local.sh")


def test_launcher_help_and_dry_run():
    out = subprocess.run([LOCAL, "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "mpiexec -n 3" in out.stdout
    out = subprocess.run(
        [LOCAL, "--dry-run", "--device", "cpu", "infer", "--data", "a b"], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0
    assert "MPCGPU_DEVICE=cpu" in out.stdout and "-n 3" in out.stdout
    assert "-m mpcgpu.cli infer --data a\\ b" in out.stdout
    bad = subprocess.run([LOCAL, "--device", "tpu", "infer"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "cpu, cuda or auto" in bad.stderr


@pytest.mark.skipif(
    shutil.which("mpiexec", path=os.path.dirname(sys.executable)) is None, reason="no mpiexec next to python"
)
def test_launcher_runs_three_ranks_and_passes_exit_code(tmp_path):
    script = tmp_path / "ranks.py"
    script.write_text(
        "import os, sys\nfrom mpi4py import MPI\nr = MPI.COMM_WORLD.Get_rank()\n"
        "open(os.path.join(os.path.dirname(__file__), f'r{r}'), 'w').write(str(os.environ.get('MPCGPU_DEVICE')))\n"
        "sys.exit(int(sys.argv[1]) if r == 1 else 0)\n"
    )
    env = dict(os.environ, PYTHON=sys.executable)
    ok = subprocess.run(
        [LOCAL, "--device", "cpu", str(script), "0"], capture_output=True, text=True, timeout=120, env=env
    )
    assert ok.returncode == 0, ok.stderr
    assert [(tmp_path / f"r{r}").read_text() for r in range(3)] == ["cpu"] * 3
    failed = subprocess.run([LOCAL, str(script), "3"], capture_output=True, text=True, timeout=120, env=env)
    assert failed.returncode == 3


@pytest.mark.parametrize(
    "name", ["slurm_1node_3gpu.sh", "slurm_3nodes_1gpu.sh", "slurm_3nodes_kgpu.sh", "../launch/local.sh"]
)
def test_scripts_parse(name):
    path = os.path.join(REPO, "job_scripts", name)
    assert subprocess.run(["bash", "-n", path], timeout=30).returncode == 0
    text = open(path).read()
    if name.startswith("slurm"):
        assert "MPCGPU_DEVICE=cuda" in text and "MPCGPU_CUDA_AWARE" in text and "srun" in text


def test_the_k_gpu_script_asks_for_3k_block_tasks_and_names_each_ranks_party_and_group(tmp_path):
    """slurm_3nodes_kgpu.sh under a stand-in ``srun`` that prints what it was asked and runs
    the per-task wrapper for every task: K=2 -> 6 tasks, 2 per node, block distribution, and
    rank p*K + g introduced as party p of group g."""
    fake = tmp_path / "srun"
    fake.write_text(
        '#!/bin/bash\necho "srun $*"\necho "layout $MPCGPU_LAYOUT"\n'
        'for r in 0 1 2 3 4 5; do SLURM_PROCID=$r SLURM_LOCALID=$((r % 2)) bash -c "$BASH_CMD" true; done\n'
    )
    fake.chmod(0o755)
    script = os.path.join(REPO, "job_scripts", "slurm_3nodes_kgpu.sh")
    text = open(script).read()
    wrapper = text.split("bash -c '", 1)[1].split("' \\", 1)[0].replace("'\"$K\"'", "2").replace('; exec "$0" "$@"', "")
    env = dict(
        os.environ,
        PATH=f"{tmp_path}:{os.environ['PATH']}",
        SLURM_NTASKS_PER_NODE="2(x3)",
        MPCGPU_INSECURE_CHANNELS="1",
        BASH_CMD=wrapper,
    )
    out = subprocess.run(["bash", script, "infer", "--model", "m"], capture_output=True, text=True, env=env, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "--ntasks=6 --ntasks-per-node=2 --distribution=block" in out.stdout
    assert "layout block" in out.stdout and "2 groups of three" in out.stdout
    for r in range(6):
        assert f"rank {r} (party {r // 2}, group {r % 2})" in out.stdout
