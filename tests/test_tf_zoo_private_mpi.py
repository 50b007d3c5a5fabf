"""Three ranks: the tiny transformers built by mpcgpu run privately (PrivateGraph) against
the plaintext executor, from a weights file through model shards and, for BERT, a token
dataset's shards (id shares, public masks): the whole journey of a private inference.
Needs graph-core's executor and protocols-tf's softmax and LayerNorm (skipped before)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from tf_zoo_helpers import model_shards, temp_folder

pytestmark = pytest.mark.mpi(min_size=3)

#: the tolerance of a tiny network's outputs (fixed point, approximate GELU, softmax and
#: inverse square root), against float64
TOL = 0.05


def _needs_protocols():
    pytest.importorskip("mpcgpu.nn.dag_run")
    pytest.importorskip("mpcgpu.protocols.attention")
    pytest.importorskip("mpcgpu.protocols.normalize")


@pytest.fixture(scope="module")
def folder(rt):
    with temp_folder(rt, "mpcgpu-tfzoo-private-") as d:
        yield d


def _shared_model(rt, folder, g, seed):
    """Random weights saved by party 0, split into shards, loaded by every party."""
    from mpcgpu.models_io import load_private_model

    stem, params, consts = model_shards(rt, folder, g, seed)
    return load_private_model(stem, rt), params, consts


def _compare(got, want):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape
    err = np.abs(got - want)
    print(f"\n  private vs plain: max error {err.max():.3g}, mean {err.mean():.3g} (scale {np.abs(want).max():.3g})")
    assert err.max() <= TOL * max(1.0, np.abs(want).max()), f"max error {err.max()}, mean {err.mean()}"


def test_bert_tiny_from_shards_and_token_shards(rt, folder):
    _needs_protocols()
    from mpcgpu.data import split
    from mpcgpu.data.tokens import TokenDataset, write_tokens
    from mpcgpu.nn import transformers as TF
    from mpcgpu.nn.dag_run import run_plain

    cfg = TF.get_config("bert-tiny", batch=2)
    g = TF.bert(cfg)
    model, params, consts = _shared_model(rt, folder, g, 1)
    rng = np.random.default_rng(4)
    ids = rng.integers(0, cfg.vocab, (2, cfg.seq_len))
    mask = np.ones((2, cfg.seq_len), np.uint8)
    mask[1, 9:] = 0
    if rt.rank == 0:
        write_tokens(os.path.join(folder, "toks.h5"), ids, mask, vocab_size=cfg.vocab, name="toks")
        split.split_file(os.path.join(folder, "toks.h5"), os.path.join(folder, "data"))
    rt.comm.barrier()
    data = TokenDataset(os.path.join(folder, "data", "toks"), rt)
    ids_share, public_mask, _ = data.batch(np.arange(2))  # expanded to one-hot rows privately
    data.close()
    out = model.run({"input_ids": ids_share, "attention_mask": public_mask})
    want = run_plain(g, params, consts, {"input_ids": ids, "attention_mask": mask.astype(np.int64)})
    for k in g.outputs:
        _compare(out[k].reveal(), want[k])


@pytest.mark.parametrize("name", ["gpt2-tiny", "vit-tiny"])
def test_gpt2_and_vit_tiny(rt, folder, name):
    _needs_protocols()
    from mpcgpu.nn import transformers as TF
    from mpcgpu.nn.dag_run import run_plain, share_inputs

    g = TF.get_transformer(name)
    model, params, consts = _shared_model(rt, folder, g, 2)
    rng = np.random.default_rng(5)
    t = g.inputs[0]
    x = rng.integers(0, 100, t.shape) if t.dtype == "int" else rng.standard_normal(t.shape)
    feeds = share_inputs(g, {t.name: x} if rt.rank == 0 else None, rt)
    out = model.run(feeds)
    want = run_plain(g, params, consts, {t.name: x})
    _compare(out[g.outputs[0]].reveal(), want[g.outputs[0]])
