"""Three ranks: a graph model's shard set (GPT-2 tiny) opened by every party: shared
parameters that reconstruct to the owner's, the same public consts on every party,
consts that differ between the parties' files refused on every rank, and training on a
graph model a clear error on every rank."""

from __future__ import annotations

import os
import shutil
import tempfile

import h5py
import numpy as np
import pytest

from mpcgpu.data import open_shard, split
from mpcgpu.errors import MPCError, ShardError
from mpcgpu.ring.encoding import encode
from tf_zoo_helpers import ops_available

pytestmark = pytest.mark.mpi(min_size=3)


@pytest.fixture(scope="module")
def graph_set(rt):
    from mpcgpu.nn import transformers as TF
    from mpcgpu.nn.weights import save_weights

    with ops_available():
        d = tempfile.mkdtemp(prefix="mpcgpu-tfzoo-") if rt.rank == 0 else None
        d = rt.comm.bcast_object(d)
        g = TF.get_transformer("gpt2-tiny")
        params, consts = TF.random_weights(g, 5)
        if rt.rank == 0:
            src = os.path.join(d, "gpt2.h5")
            save_weights(src, g.name, params, spec=g, consts=consts, dtype=np.float64)
            split.split_file(src, os.path.join(d, "good"))
            split.split_file(src, os.path.join(d, "bad"))
            with h5py.File(os.path.join(d, "bad", "gpt2.party2.h5"), "r+") as f:
                f["consts/const.position_ids"][0, 0] = 7  # one party's public consts differ
        rt.comm.barrier()
        yield d, g, params, consts
        rt.comm.barrier()
        if rt.rank == 0:
            shutil.rmtree(d, ignore_errors=True)


def _reconstruct(rt, share):
    prev = rt.comm.pass_next(share.first)
    return rt.backend.to_host(prev + share.first + share.second)


def test_load_private_graph(rt, graph_set):
    from mpcgpu.models_io import load_private_graph
    from mpcgpu.nn import dag

    d, g, params, consts = graph_set
    with ops_available():
        got, shares, public = load_private_graph(os.path.join(d, "good", "gpt2"), rt)
    assert dag.to_dict(got) == dag.to_dict(g)
    assert list(shares) == [p.name for p in g.params]
    for name in ("transformer.wte.weight", "transformer.h.0.attn.c_attn.bias", "transformer.ln_f.weight"):
        assert shares[name].scale == rt.frac_bits
        assert np.array_equal(_reconstruct(rt, shares[name]), encode(params[name], rt.frac_bits))
    assert set(public) == set(consts)
    for k, v in consts.items():
        assert public[k].dtype == v.dtype and np.array_equal(public[k], v)


def test_consts_that_differ_between_parties_are_refused_everywhere(rt, graph_set):
    d = graph_set[0]
    with pytest.raises(ShardError, match="different public consts"):
        open_shard(os.path.join(d, "bad", "gpt2"), rt, kind="model")
    rt.comm.barrier()  # still in step


def test_training_a_graph_model_is_a_clear_error(rt, graph_set):
    from mpcgpu.models_io import initial_private_model, load_private_model

    d = graph_set[0]
    with ops_available():
        with pytest.raises(MPCError, match="inference only"):
            load_private_model(os.path.join(d, "good", "gpt2"), rt, training=True)
        with pytest.raises(MPCError, match="inference only"):
            initial_private_model(os.path.join(d, "good", "gpt2"), rt)
    with pytest.raises(MPCError, match="inference only"):
        initial_private_model("gpt2", rt)
    rt.comm.barrier()


def test_load_private_model_gives_the_graph_executor(rt, graph_set):
    pytest.importorskip("mpcgpu.nn.dag_run")
    from mpcgpu.models_io import load_private_model
    from mpcgpu.nn.dag_run import PrivateGraph

    d, g, _, consts = graph_set
    model = load_private_model(os.path.join(d, "good", "gpt2"), rt)
    assert isinstance(model, PrivateGraph) and model.graph.name == g.name
    assert set(model.consts) == set(consts) and set(model.params) == {p.name for p in g.params}
