"""Private models from model shards (or from a registered architecture): the library
under ``mpcgpu infer`` and ``mpcgpu train``.

* :func:`load_private_model` -- a model shard set (``mpcgpu share weights.h5``) as a
  :class:`~mpcgpu.nn.private.PrivateModel`: for inference a large model keeps one
  component of its big weights in the file (compact shares); for training every
  parameter is held.
* :func:`initial_private_model` -- the starting point of a training run: model shards, or
  a registered model whose He-initialised weights party 0 draws and secret-shares.
* :func:`load_private_graph` -- a graph model's shard set (transformers:
  :mod:`mpcgpu.nn.dag`) as ``(GraphModel, shared params, public consts)``;
  :func:`load_private_model` wraps them as the private executor's ``PrivateGraph``.
  Graph models are inference only.

This module ties the shard files (:mod:`mpcgpu.data`) to the networks (:mod:`mpcgpu.nn`),
which know nothing of each other's files; every function here is a collective (all three
parties call it alike).
"""

from __future__ import annotations

import os

import numpy

from .errors import MPCError


def load_private_model(stem, rt, *, verify: bool = True, training: bool = False, dropout_seed: int = 0):
    """Open the model shard set ``stem`` (this party's file) and wrap its parameters as shares.

    ``training=False``: an inference-only model (batch norms folded into the convolutions);
    a large model (:func:`~mpcgpu.nn.private.wants_compact`) keeps the second component of
    each large array in the open file (read where used) and the file stays open with the
    model.  The batch-norm domain is the shards' ``bn_var_domain`` (the default without).
    ``training=True``: every parameter held, the training batch-norm domain
    (:data:`~mpcgpu.nn.layers.TRAIN_BN_DOMAIN`), public dropout masks from ``dropout_seed``.
    ``verify``: re-hash the file (its checksums)."""
    from .data.shards import StoredComponent, as_share, open_shard
    from .nn.layers import TRAIN_BN_DOMAIN
    from .nn.models import architecture
    from .nn.private import COMPACT_MIN, DEFAULT_BN_DOMAIN, PrivateModel, wants_compact
    from .sharing.compact import CompactShare
    from .sharing.components import Held

    shard = open_shard(stem, rt, kind="model", verify=verify)
    if _holds_graph(shard):
        if training:
            shard.close()
            raise MPCError(
                f"model {shard.name} ({stem}) is a graph model (a transformer): graph models are "
                "inference only; mpcgpu train takes layer models"
            )
        return _private_graph(*_graph_from_shard(shard, rt), rt)
    compact = False
    try:
        spec = architecture(shard.name, shard.public)
        # a large model: one component of its weights stays in the file
        compact = not training and wants_compact(spec)
        params = {}
        for name in shard.arrays:
            info = shard.info(name)
            if compact and int(numpy.prod(info.shape, dtype=numpy.int64)) >= COMPACT_MIN:
                first = rt.backend.to_device(shard.read_component(name, "first", 0, info.rows))
                params[name] = CompactShare(Held(first), StoredComponent(shard, name, "second"), info.scale, rt)
            else:
                params[name] = as_share(shard.load(name), info.scale)
        domain = shard.public.get("bn_var_domain")
    finally:
        if not compact:
            shard.close()  # (otherwise it stays open with the model: StoredComponent reads it)
    if training:
        return PrivateModel(spec, params, bn_domain=TRAIN_BN_DOMAIN, dropout_seed=dropout_seed)
    return PrivateModel(
        spec, params, bn_domain=tuple(domain) if domain is not None else DEFAULT_BN_DOMAIN, inference_only=True
    )


def _holds_graph(shard) -> bool:
    from .nn.dag import is_graph_json
    from .nn.models import SPEC_KEY

    return is_graph_json(shard.public.get(SPEC_KEY))


def _graph_from_shard(shard, rt) -> tuple:
    """``(GraphModel, params, consts)`` of an open graph-model shard (closed here unless its
    large weights stay compact in it)."""
    from .data.shards import StoredComponent, as_share
    from .nn import dag
    from .nn.models import SPEC_KEY
    from .nn.private import COMPACT_MIN
    from .sharing.compact import CompactShare
    from .sharing.components import Held

    compact = False
    try:
        try:
            g = dag.from_json(shard.public[SPEC_KEY])
        except dag.GraphError as e:
            raise MPCError(f"model shards {shard.path}: {e}") from None
        want = {p.name: p.shape for p in g.params}
        have = {n: tuple(shard.info(n).shape) for n in shard.arrays}
        if want != have:
            raise MPCError(
                f"model shards {shard.path}: the arrays do not match graph {g.name} "
                f"(missing {sorted(set(want) - set(have))[:5]}, unexpected {sorted(set(have) - set(want))[:5]}, "
                f"mis-shaped {[n for n in want if n in have and want[n] != have[n]][:5]})"
            )
        consts = shard.consts()
        types = {"float": "f", "int": "iu", "bool": "b"}
        bad = [
            c.name
            for c in g.consts
            if c.name not in consts
            or consts[c.name].shape != c.shape
            or consts[c.name].dtype.kind not in types[c.dtype]
        ]
        if bad or set(consts) != {c.name for c in g.consts}:
            raise MPCError(f"model shards {shard.path}: the public consts do not match graph {g.name} ({bad[:5]})")
        compact = wants_compact_graph(g)
        params = {}
        for name in want:
            info = shard.info(name)
            if compact and int(numpy.prod(info.shape, dtype=numpy.int64)) >= COMPACT_MIN:
                first = rt.backend.to_device(shard.read_component(name, "first", 0, info.rows))
                params[name] = CompactShare(Held(first), StoredComponent(shard, name, "second"), info.scale, rt)
            else:
                params[name] = as_share(shard.load(name), info.scale)
    finally:
        if not compact:
            shard.close()  # (otherwise it stays open with the params: StoredComponent reads it)
    return g, params, consts


def wants_compact_graph(g, current=None) -> bool:
    """Whether inference keeps graph ``g``'s large weights compact (the ``compact_weights``
    setting; by default for as many parameters as :func:`mpcgpu.nn.private.wants_compact`)."""
    from . import settings
    from .nn.private import COMPACT_MODEL_MIN

    choice = (current if current is not None else settings.active()).compact_weights
    if choice is not None:
        return choice
    return g.count_params() >= COMPACT_MODEL_MIN


def load_private_graph(stem, rt, *, verify: bool = True) -> tuple:
    """Open the model shard set ``stem`` of a graph model (a collective): ``(GraphModel,
    {name: share}, {name: public array})``.  The parameters are shares as in
    :func:`load_private_model` (compact for a large graph); the constants are the ones
    every party's file carries in clear (their digests compared when opening).  Every
    graph of one set of parameters (GPT-2's prompt and decode steps,
    :mod:`mpcgpu.nn.transformers`) runs on these."""
    from .data.shards import open_shard

    shard = open_shard(stem, rt, kind="model", verify=verify)
    if not _holds_graph(shard):
        shard.close()
        raise MPCError(f"model shards {stem}: model {shard.name} is not a graph model")
    return _graph_from_shard(shard, rt)


def _private_graph(g, params, consts, rt):
    try:
        from .nn.dag_run import PrivateGraph
    except ImportError:  # pragma: no cover (before the graph executor is there)
        raise MPCError(f"graph model {g.name}: this mpcgpu has no graph executor (mpcgpu.nn.dag_run)") from None
    return PrivateGraph(g, params, consts, rt)


def initial_private_model(model, rt, *, init_seed: int = 0, dropout_seed: int = 0, verify: bool = True):
    """``(PrivateModel, description of the source)`` to train: ``model`` is a model shard
    set (every party must have its file) or a registered model name (see
    :func:`mpcgpu.nn.models.list_models`), whose He-initialised weights party 0 draws with
    ``init_seed`` and secret-shares."""
    from .data.shards import resolve_path
    from .nn.layers import TRAIN_BN_DOMAIN
    from .nn.models import get_model, list_models
    from .nn.plain import init_params
    from .nn.private import PrivateModel, share_params

    here = resolve_path(model, rt.rank)
    is_name = model.strip().lower().replace("-", "_") in list_models()
    found = rt.comm.allgather_object(os.path.isfile(here))
    if any(found) and not all(found):
        missing = [p for p, ok in enumerate(found) if not ok]
        raise MPCError(f"model shards {model}: party {missing[0]} has no file")
    if all(found):
        private = load_private_model(model, rt, verify=verify, training=True, dropout_seed=dropout_seed)
        return private, f"shards {model}"
    from .nn.transformers import MODELS as TRANSFORMERS

    if model.strip().lower().replace("_", "-") in TRANSFORMERS:
        raise MPCError(
            f"--model {model}: a transformer is a graph model, inference only; mpcgpu train takes layer models"
        )
    if is_name:
        spec = get_model(model)
        plain = init_params(spec, rng=init_seed) if rt.rank == 0 else None
        params = share_params(spec, plain, src=0)
        source = f"{spec.name}, He initialisation drawn by party 0 (seed {init_seed})"
        return PrivateModel(spec, params, bn_domain=TRAIN_BN_DOMAIN, dropout_seed=dropout_seed), source
    raise MPCError(
        f"--model {model!r} is neither a model shard set nor a registered model ({', '.join(list_models())})"
    )


def save_private_model(stem, rt, spec, params) -> tuple:
    """Write the shared ``params`` of the architecture ``spec`` as a model shard set
    ``stem`` (every party its own file, ``stem.party<i>.h5``; a collective), which
    :func:`load_private_model` reads.  Returns ``(this party's path, set id)``."""
    import secrets

    from .data.shards import shard_path, write_party_shard
    from .nn import spec as S
    from .nn.layers import TRAIN_BN_DOMAIN
    from .nn.models import SPEC_KEY
    from .nn.spec_io import to_json
    from .nn.weights import FORMAT

    set_id = rt.comm.bcast_object(secrets.token_hex(16) if rt.rank == 0 else None, root=0)
    host = rt.backend.to_host
    public = {"format": FORMAT, "model": spec.name, SPEC_KEY: to_json(spec)}
    if any(isinstance(layer, S.BatchNorm2d) for _, layer in S.walk(spec)):
        public["bn_var_domain"] = list(TRAIN_BN_DOMAIN)
    arrays = {
        p.name: (host(params[p.name].first), host(params[p.name].second), params[p.name].scale)
        for p in S.param_specs(spec)
    }
    path = write_party_shard(
        shard_path(stem, rt.rank),
        rt.rank,
        arrays,
        kind="model",
        set_id=set_id,
        frac_bits=rt.frac_bits,
        name=spec.name,
        public=public,
        separate_hosts=rt.comm.channels.separate_hosts,
    )
    rt.comm.barrier()
    return path, set_id


def reveal_params(rt, spec, params, to: int):
    """Every parameter of ``spec`` in clear, to party ``to`` only (a collective; a stated
    disclosure): ``{name: array}`` there, None elsewhere."""
    from .nn import spec as S

    clear = {p.name: params[p.name].reveal(to=to) for p in S.param_specs(spec)}
    return clear if rt.rank == to else None


__all__ = [
    "load_private_model",
    "load_private_graph",
    "wants_compact_graph",
    "initial_private_model",
    "save_private_model",
    "reveal_params",
]
