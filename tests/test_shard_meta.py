"""Public metadata of shard files: only an allow-list of the input's attributes reaches
the servers; everything else (training recipe, seeds, source paths, statistics of the
private data) stays with the owner unless named with --public-meta."""

import os
import struct

import h5py
import numpy as np
import pytest

from mpcgpu import cli
from mpcgpu.assets.dataset_h5 import write_dataset
from mpcgpu.data import Shard, reconstruct_local, split
from mpcgpu.ring.encoding import encode
from mpcgpu.errors import ShardError

# distinctive secret values: none of them may appear anywhere in a shard file
RECIPE = "sgd lr=0.05 cosine 40 epochs SECRET-RECIPE-7f3a9c"
SOURCE = "/data/hospital-x/SECRET-PATIENTS-b41e/images"
SEED = 0x5EEDC0DE2741
PIXEL_MEAN = np.array([0.123456789012345, 0.234567890123456, 0.345678901234567])
PIXEL_STD = np.array([0.0987654321098765, 0.0876543210987654, 0.0765432109876543])
NOTES = "public note " + "x" * 200
MEAN = np.array([0.5, 0.4, 0.3])
STD = np.array([0.25, 0.2, 0.3])

#: attribute names that must never appear in a shard written without --public-meta
PRIVATE_WEIGHT_ATTRS = {"seed", "recipe", "dataset", "test_accuracy", "notes", "param_count"}
PRIVATE_DATA_ATTRS = {"seed", "source", "pixel_mean", "pixel_std", "classes", "normalisation"}


def secret_bytes():
    """Byte strings whose presence in a file would reveal a secret value."""
    out = [
        RECIPE.encode(),
        b"SECRET-RECIPE",
        SOURCE.encode(),
        b"SECRET-PATIENTS",
        struct.pack("<q", SEED),
        struct.pack(">q", SEED),
    ]
    for arr in (PIXEL_MEAN, PIXEL_STD):
        out.append(arr.astype("<f8").tobytes())
        out += [struct.pack("<d", v) for v in arr]
    return out


def make_weights(path):
    rng = np.random.default_rng(3)
    with h5py.File(path, "w") as f:
        f.attrs["format"] = "mpcgpu-weights/1"
        f.attrs["model"] = "tiny"
        f.attrs["dtype"] = "float32"
        f.attrs["param_count"] = 112
        g = f.create_group("params")
        g["conv.weight"] = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
        g["conv.bias"] = rng.normal(size=4).astype(np.float32)
        m = f.create_group("meta")
        m.attrs["seed"] = SEED
        m.attrs["recipe"] = RECIPE
        m.attrs["dataset"] = "mnist"
        m.attrs["test_accuracy"] = 0.987
        m.attrs["notes"] = NOTES
    return str(path)


def make_data(path, float_images=False):
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, (12, 3, 4, 4), dtype=np.uint8)
    labels = rng.integers(0, 10, 12)
    write_dataset(
        path,
        images,
        labels,
        name="toy-private",
        mean=MEAN,
        std=STD,
        num_classes=10,
        classes=[f"c{i}" for i in range(10)],
        source=SOURCE,
        attrs={"seed": SEED, "pixel_mean": PIXEL_MEAN, "pixel_std": PIXEL_STD},
    )
    if float_images:  # real-valued images: the file's mean/std are not applied
        with h5py.File(path, "r+") as f:
            del f["images"]
            f["images"] = (images / 255.0).astype(np.float32)
    return str(path)


def all_attrs(path):
    """{object path: {attr: value}} for the root and every group and dataset of a file."""
    out = {}
    with h5py.File(path, "r") as f:
        out["/"] = dict(f.attrs.items())
        f.visititems(lambda name, obj: out.__setitem__("/" + name, dict(obj.attrs.items())))
    return out


def objects(path):
    with h5py.File(path, "r") as f:
        names = []
        f.visit(names.append)
    return names


def assert_no_secrets(paths, private_names, meta_group=False):
    """No attr named in ``private_names`` on any object, no secret value in the raw bytes,
    and (unless ``meta_group``) no /meta group anywhere."""
    for p in paths:
        attrs = all_attrs(p)
        for where, a in attrs.items():
            leaked = private_names & set(a)
            assert not leaked, f"{p}{where} holds private attrs {sorted(leaked)}"
        if not meta_group:
            assert not any(o == "meta" or o.endswith("/meta") for o in objects(p)), objects(p)
        raw = open(p, "rb").read()
        for s in secret_bytes():
            assert s not in raw, f"{p} contains the secret bytes {s!r}"


def plain(v):
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v


# -- weights ----------------------------------------------------------------------------------


def test_weights_meta_stays_private_by_default(tmp_path):
    src = make_weights(tmp_path / "w.h5")
    result = split.split_file(src, tmp_path / "out")
    assert result.public == {"format": "mpcgpu-weights/1", "model": "tiny"}
    assert result.withheld == [
        "dtype",
        "param_count",
        "meta.dataset",
        "meta.notes",
        "meta.recipe",
        "meta.seed",
        "meta.test_accuracy",
    ]
    assert_no_secrets(result.paths, PRIVATE_WEIGHT_ATTRS)
    for i, p in enumerate(result.paths):
        attrs = all_attrs(p)
        assert set(attrs["/"]) == {
            "format",
            "kind",
            "party",
            "parties",
            "set_id",
            "frac_bits",
            "name",
            "source_format",
            "array_names",
            "created",
        }
        assert {k: plain(v) for k, v in attrs["/public"].items()} == {"format": "mpcgpu-weights/1", "model": "tiny"}
        with Shard(p) as s:
            assert s.public == {"format": "mpcgpu-weights/1", "model": "tiny"}
            assert s.name == "tiny" and s.party == i
    # the weights themselves are intact
    with h5py.File(src) as f:
        w = f["params/conv.weight"][()]
    assert np.array_equal(reconstruct_local(result.paths, "conv.weight"), encode(w, 16))


@pytest.mark.parametrize(
    "named",
    [
        ["meta.dataset", "meta.test_accuracy", "dtype"],
        "meta.dataset, meta.test_accuracy,dtype",
        ["meta.dataset,meta.test_accuracy", "dtype", "meta.dataset"],
    ],
)
def test_named_meta_keys_are_published(tmp_path, named):
    src = make_weights(tmp_path / "w.h5")
    result = split.split_file(src, tmp_path / "out", public_meta=named)
    expected = {
        "format": "mpcgpu-weights/1",
        "model": "tiny",
        "dtype": "float32",
        "meta": {"dataset": "mnist", "test_accuracy": 0.987},
    }
    assert result.withheld == ["param_count", "meta.notes", "meta.recipe", "meta.seed"]
    for p in result.paths:
        with Shard(p) as s:
            assert s.public == expected
        assert {k: plain(v) for k, v in all_attrs(p)["/public/meta"].items()} == expected["meta"]
    assert_no_secrets(result.paths, {"seed", "recipe", "notes", "param_count"}, meta_group=True)


def test_unknown_or_group_key_is_an_error(tmp_path):
    src = make_weights(tmp_path / "w.h5")
    out = tmp_path / "out"
    with pytest.raises(
        ShardError,
        match=r"--public-meta names an attribute that .*w\.h5 does not have: "
        r"'meta\.sede' \(its attributes are root: .*param_count; "
        r"/meta: .*meta\.seed",
    ):
        split.split_file(src, out, public_meta="meta.dataset,meta.sede")
    with pytest.raises(ShardError, match=r"does not have: 'seed', 'meta\.nope'"):
        split.split_file(src, out, public_meta=["seed", "meta.nope"])  # seed is in /meta, not root
    with pytest.raises(ShardError, match=r"'meta' names the group /meta, not an attribute: .*meta\.KEY"):
        split.split_file(src, out, public_meta="meta")
    assert not out.exists() or os.listdir(out) == []  # nothing written
    data = make_data(tmp_path / "d.h5")
    with pytest.raises(ShardError, match=r"does not have: 'meta\.seed' \(its attributes are root: [^;]*\)$"):
        split.split_file(data, out, public_meta="meta.seed")  # a dataset file has no /meta


# -- datasets ---------------------------------------------------------------------------------


def test_dataset_extra_attrs_stay_private(tmp_path):
    src = make_data(tmp_path / "d.h5")
    result = split.split_file(src, tmp_path / "out")
    assert sorted(result.withheld) == sorted(PRIVATE_DATA_ATTRS)
    assert_no_secrets(result.paths, PRIVATE_DATA_ATTRS)
    for p in result.paths:
        with Shard(p) as s:
            assert set(s.public) == {"format", "name", "num_classes", "mean", "std"}
            assert s.public["format"] == "mpcgpu-dataset/1" and s.public["name"] == "toy-private"
            assert s.public["num_classes"] == 10 and s.name == "toy-private"
            # the normalisation actually applied: public, per array and in /public
            assert s.public["mean"] == MEAN.tolist() and s.public["std"] == STD.tolist()
            info = s.arrays["images"]
            assert info.transform == "normalise" and info.mean == tuple(MEAN) and info.std == tuple(STD)
        assert set(all_attrs(p)["/arrays/images"]) == {
            "shape",
            "dtype",
            "scale",
            "encoding",
            "transform",
            "mean",
            "std",
            "components",
            "sha256_first",
            "sha256_second",
        }


def test_unapplied_mean_std_stay_private(tmp_path):
    """Real-valued images are shared as they are: the file's mean/std describe the private
    data and are not needed to read the shards."""
    src = make_data(tmp_path / "d.h5", float_images=True)
    result = split.split_file(src, tmp_path / "out")
    assert sorted(result.withheld) == sorted(PRIVATE_DATA_ATTRS | {"mean", "std"})
    assert_no_secrets(result.paths, PRIVATE_DATA_ATTRS | {"mean", "std"})
    for p in result.paths:
        with Shard(p) as s:
            assert s.public == {"format": "mpcgpu-dataset/1", "name": "toy-private", "num_classes": 10}
            assert s.arrays["images"].transform == "none" and s.arrays["images"].mean is None
        raw = open(p, "rb").read()
        assert MEAN.astype("<f8").tobytes() not in raw and STD.astype("<f8").tobytes() not in raw
    # and with the owner's consent they are published
    named = split.split_file(src, tmp_path / "out2", public_meta="mean,std,source")
    with Shard(named.paths[2]) as s:
        assert s.public["mean"] == MEAN.tolist() and s.public["source"] == SOURCE
    assert SOURCE.encode() in open(named.paths[2], "rb").read()  # the byte check can fail


def test_split_arrays_filters_its_metadata(tmp_path):
    meta = {"name": "arr", "seed": SEED, "meta": {"recipe": RECIPE, "dataset": "mnist"}}
    r = split.split_arrays(str(tmp_path), "arr", {"v": np.arange(4.0)}, kind="model", public=meta)
    assert r.public == {"name": "arr"} and r.withheld == ["seed", "meta.recipe", "meta.dataset"]
    assert_no_secrets(r.paths, {"seed", "recipe", "dataset"})
    r = split.split_arrays(
        str(tmp_path), "arr2", {"v": np.arange(4.0)}, kind="model", public=meta, public_meta=["meta.dataset"]
    )
    with Shard(r.paths[0]) as s:
        assert s.public == {"name": "arr", "meta": {"dataset": "mnist"}}
    with pytest.raises(ShardError, match=r"the metadata does not have: 'meta\.seed'"):
        split.split_arrays(
            str(tmp_path), "arr3", {"v": np.arange(4.0)}, kind="model", public=meta, public_meta="meta.seed"
        )


def test_parse_public_meta():
    assert split.parse_public_meta(None) == []
    assert split.parse_public_meta(" a, meta.b ,,") == ["a", "meta.b"]
    assert split.parse_public_meta(["a,b", "b", "c"]) == ["a", "b", "c"]


# -- command line -----------------------------------------------------------------------------


def test_cli_lists_public_and_private_attributes(tmp_path, capsys):
    src = make_weights(tmp_path / "w.h5")
    rc = cli.main(
        [
            "share",
            src,
            "--out",
            str(tmp_path / "o"),
            "-q",
            "--public-meta",
            "meta.dataset",
            "--public-meta",
            "meta.test_accuracy,meta.notes",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    lines = out.splitlines()
    start = lines.index("public (in clear in every shard file: each server learns this):")
    end = [i for i, line in enumerate(lines) if line.startswith("kept private")][0]
    public = lines[start + 1 : end]
    with Shard(str(tmp_path / "o" / "w.party0.h5")) as s:
        set_id, created = s.set_id, s.created
    notes = repr(NOTES)[:69] + "..."
    assert public == [
        '  array_names = \'["conv.bias", "conv.weight"]\'',
        f"  created = '{created}'",
        "  format = 'mpcgpu-shard/1'",
        "  frac_bits = 16",
        "  kind = 'model'",
        "  name = 'tiny'",
        f"  set_id = '{set_id}'",
        "  source_format = 'mpcgpu-weights/1'",
        "  public/format = 'mpcgpu-weights/1'",
        "  public/model = 'tiny'",
        "  public/meta/dataset = 'mnist'",
        f"  public/meta/notes = {notes}",
        "  public/meta/test_accuracy = 0.987",
        "  and per array: the name, shape, dtype, scale and normalisation listed above, and checksums "
        "of the components",
    ]
    assert len(notes) == 72
    assert lines[end] == (
        f"kept private (attributes of {src} not copied to the shards): dtype, param_count, meta.recipe, meta.seed"
    )
    assert RECIPE not in out and str(SEED) not in out


def test_cli_dataset_output_and_errors(tmp_path, capsys):
    src = make_data(tmp_path / "d.h5")
    rc = cli.main(["share", src, "--out", str(tmp_path / "o"), "-q", "--public-meta", "classes"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert (
        "  images: 12x3x4x4 uint8 (scale 16, normalised with mean [0.5, 0.4, 0.3], "
        "std [0.25, 0.2, 0.3])" in out.splitlines()
    )
    assert "  public/classes = ['c0', 'c1', 'c2', 'c3', 'c4', 'c5', 'c6', 'c7', 'c8', 'c9']" in out
    assert "  public/num_classes = 10" in out and "  public/mean = [0.5, 0.4, 0.3]" in out
    assert (
        f"kept private (attributes of {src} not copied to the shards): "
        "normalisation, pixel_mean, pixel_std, seed, source"
    ) in out
    assert SOURCE not in out
    rc = cli.main(["share", src, "--out", str(tmp_path / "o2"), "--public-meta", "sed"])
    err = capsys.readouterr().err
    assert rc == 1 and "mpcgpu share: error: --public-meta names an attribute that" in err
    assert "does not have: 'sed'" in err and not os.path.exists(tmp_path / "o2" / "d.party0.h5")


def test_share_help_documents_public_meta(capsys):
    with pytest.raises(SystemExit):
        cli.main(["share", "--help"])
    out = capsys.readouterr().out
    assert "--public-meta meta.KEY" in out and "--public-meta KEY" in out
    assert "Everything else stays private" in out


# -- the embedded demo assets -----------------------------------------------------------------


def test_demo_assets_share_with_names_only(tmp_path):
    from mpcgpu.jobs.demo import prepare

    model_stem, data_stem, _, _ = prepare(str(tmp_path), 8, 16)
    with Shard(f"{model_stem}.party0.h5") as s:
        assert s.public == {"format": "mpcgpu-weights/1", "model": "lenet"} and s.name == "lenet"
        assert s.kind == "model"
    with Shard(f"{data_stem}.party1.h5") as s:
        assert s.public == {
            "format": "mpcgpu-dataset/1",
            "name": "mnist-test",
            "num_classes": 10,
            "mean": [0.1307],
            "std": [0.3081],
        }
    for stem, private in (
        (model_stem, {"seed", "lr", "schedule", "trainer", "test_accuracy", "param_count", "weight_decay"}),
        (data_stem, {"source", "normalisation"}),
    ):
        for i in range(3):
            p = f"{stem}.party{i}.h5"
            for where, a in all_attrs(p).items():
                assert not private & set(a), (p, where)
            raw = open(p, "rb").read()
            assert b"MNIST t10k" not in raw and b"cosine" not in raw and b"train_plain" not in raw
