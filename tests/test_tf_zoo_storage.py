"""Graph models (transformers) in weights files and model shards, single process: the
graph JSON in ``spec``, parameters under /params, public constants under /consts (as they
are: float64 with -inf, int64, bool), the share step carrying the constants in clear in
every party's file, and the errors."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from mpcgpu import cli
from mpcgpu.data import split
from mpcgpu.data.shards import open_shard, reconstruct_local
from mpcgpu.errors import ShardError
from mpcgpu.nn import dag
from mpcgpu.nn import transformers as TF
from mpcgpu.nn import weights as W
from mpcgpu.ring.encoding import encode
from tf_zoo_helpers import ops_available


@pytest.fixture(autouse=True, scope="module")
def _ops():
    with ops_available():
        yield


def _graph_file(path, name="gpt2-tiny", dtype=np.float64, seed=0):
    g = TF.get_transformer(name)
    params, consts = TF.random_weights(g, seed)
    W.save_weights(path, g.name, params, spec=g, consts=consts, dtype=dtype, meta={"seed": seed})
    return g, params, consts


def test_graph_weights_round_trip(tmp_path):
    path = tmp_path / "gpt2.h5"
    g, params, consts = _graph_file(path)
    back, p2, c2 = W.load_graph(path)
    assert dag.to_dict(back) == dag.to_dict(g)
    assert list(p2) == [p.name for p in g.params]
    assert all(np.array_equal(p2[k], params[k]) for k in params)
    assert list(c2) == [c.name for c in g.consts]
    for c in g.consts:
        assert c2[c.name].dtype == consts[c.name].dtype and np.array_equal(c2[c.name], consts[c.name])
    assert np.isneginf(c2["const.causal_mask"]).sum() == 16 * 15 // 2  # -inf kept as it is
    with h5py.File(path) as f:
        assert f.attrs["format"] == "mpcgpu-weights/2" and dag.is_graph_json(f.attrs["spec"])
        assert f["consts/const.position_ids"].dtype == np.int64
        assert f.attrs["param_count"] == g.count_params()
    # the other readers
    arch = W.read_architecture(path)
    assert isinstance(arch, dag.GraphModel) and arch.name == "gpt2-tiny"
    assert W.is_graph_file(path)
    name, p3 = W.load_weights(path, True)
    assert name == "gpt2-tiny" and set(p3) == set(params)
    assert isinstance(W.model_by_name_or_file(str(path)), dag.GraphModel)


def test_float32_storage_and_bool_consts(tmp_path):
    path = tmp_path / "bert.h5"
    g, params, consts = _graph_file(path, "bert-tiny", dtype=np.float32)
    _, p2, c2 = W.load_graph(path)
    w = "encoder.layer.1.output.dense.weight"
    assert np.array_equal(p2[w], params[w].astype(np.float32))
    assert c2["const.first_token"].shape == () and c2["const.first_token"].dtype == np.int64


def test_transformer_names_resolve():
    g = W.model_by_name_or_file("gpt2")
    assert isinstance(g, dag.GraphModel) and g.count_params() == 124_439_808
    assert W.model_by_name_or_file("lenet").name == "lenet"
    with pytest.raises(Exception, match="bert-base"):
        W.model_by_name_or_file("no-such-model")


def test_save_refuses_mismatched_graph_arrays(tmp_path):
    g = TF.get_transformer("bert-tiny")
    params, consts = TF.random_weights(g, 0)
    with pytest.raises(W.WeightsError, match="consts"):
        W.save_weights(tmp_path / "a.h5", g.name, params, spec=g)
    bad = dict(params, **{"pooler.dense.weight": np.zeros((3, 3))})
    del bad["pooler.dense.bias"]
    bad["extra"] = np.zeros(2)
    with pytest.raises(W.WeightsError) as e:
        W.save_weights(tmp_path / "a.h5", g.name, bad, spec=g, consts=consts)
    msg = str(e.value)
    assert "pooler.dense.bias" in msg and "extra" in msg and "pooler.dense.weight: expected shape (32, 32)" in msg
    nan = dict(params, **{"pooler.dense.bias": np.full(32, np.nan)})
    with pytest.raises(W.WeightsError, match="non-finite"):
        W.save_weights(tmp_path / "a.h5", g.name, nan, spec=g, consts=consts)
    with pytest.raises(W.WeightsError, match="const const.position_ids: expected int"):
        W.save_weights(
            tmp_path / "a.h5", g.name, params, spec=g, consts=dict(consts, **{"const.position_ids": np.zeros((1, 16))})
        )
    with pytest.raises(W.WeightsError, match="graph models only"):
        W.save_weights(tmp_path / "a.h5", "lenet", {}, consts=consts)
    assert not (tmp_path / "a.h5").exists()


def test_split_graph_model(tmp_path):
    src = tmp_path / "gpt2.h5"
    g, params, consts = _graph_file(src)
    result = split.split_file(src, tmp_path / "out", frac_bits=16)
    assert result.kind == "model"
    for name in ("transformer.wte.weight", "transformer.h.1.mlp.c_proj.bias", "transformer.ln_f.weight"):
        assert np.array_equal(reconstruct_local(result.paths, name), encode(params[name], 16))
    digests = set()
    for party, path in enumerate(result.paths):
        s = open_shard(path, party=party, kind="model")
        assert set(s.arrays) == {p.name for p in g.params}  # no const is shared as a secret
        assert s.const_names == tuple(c.name for c in g.consts)
        got = s.consts()
        for c in g.consts:
            assert got[c.name].dtype == consts[c.name].dtype and np.array_equal(got[c.name], consts[c.name])
        assert dag.from_json(s.public["spec"]).name == "gpt2-tiny"
        assert "seed" not in s.public  # /meta stays private
        digests.add(s.summary()["consts"])
        s.close()
    assert len(digests) == 1


def test_split_refuses_a_graph_file_that_does_not_match(tmp_path):
    src = tmp_path / "bert.h5"
    _graph_file(src, "bert-tiny")
    with h5py.File(src, "r+") as f:
        del f["consts/const.position_ids"]
        f["consts/const.position_ids"] = np.zeros((1, 3), np.int64)
        del f["params/pooler.dense.bias"]
    with pytest.raises(ShardError, match="Nothing was written") as e:
        split.split_file(src, tmp_path / "out")
    assert "pooler.dense.bias" in str(e.value) and "const.position_ids: expected shape (1, 16)" in str(e.value)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_split_refuses_a_weight_outside_fixed_point(tmp_path):
    src = tmp_path / "vit.h5"
    _graph_file(src, "vit-tiny")
    with h5py.File(src, "r+") as f:
        f["params/classifier.bias"][0] = 1e15
    with pytest.raises(Exception, match="classifier.bias"):
        split.split_file(src, tmp_path / "out")


def test_share_cli_on_a_graph_model(tmp_path, capsys):
    src = tmp_path / "vit.h5"
    _graph_file(src, "vit-tiny")
    rc = cli.main(["share", str(src), "--out", str(tmp_path / "s"), "-q"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "vit.embeddings.cls_token" in out and "public arrays" in out and "const.shape_0" in out
    count = len(TF.get_transformer("vit-tiny").consts)
    assert f"({count} in all)" in out


def test_compact_weights_of_large_graphs():
    from types import SimpleNamespace

    from mpcgpu.models_io import wants_compact_graph

    auto = SimpleNamespace(compact_weights=None)
    assert wants_compact_graph(TF.get_transformer("bert-base"), auto)  # 109M parameters
    assert not wants_compact_graph(TF.get_transformer("bert-tiny"), auto)
    assert wants_compact_graph(TF.get_transformer("bert-tiny"), SimpleNamespace(compact_weights=True))
    assert not wants_compact_graph(TF.get_transformer("gpt2"), SimpleNamespace(compact_weights=False))


def test_random_weights_for_a_graph_read_from_a_file(tmp_path):
    """bench --models FILE: the architecture of a weights file with random weights (its
    consts from the file)."""
    path = tmp_path / "vit.h5"
    _, _, consts = _graph_file(path, "vit-tiny")
    g = W.model_by_name_or_file(str(path))
    params, c2 = TF.random_weights(g, 1)
    assert set(params) == {p.name for p in g.params}
    assert all(np.array_equal(c2[k], consts[k]) and c2[k].dtype == consts[k].dtype for k in consts)
    g2 = dag.from_json(dag.to_json(g))  # not read from a file: no const values known
    with pytest.raises(dag.GraphError, match="const values are unknown"):
        TF.random_weights(g2, 1)
