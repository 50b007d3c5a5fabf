"""The executors of graph models (:mod:`mpcgpu.nn.dag`): plaintext and private.

* :func:`run_plain` runs every node's plaintext facet in float64 / int64 / bool NumPy: the
  reference of the tests and of fidelity figures.
* :class:`PrivateGraph` runs the graph on shares: a node whose inputs are all public runs
  its plaintext facet on every party alike (constant folding at run time); any other node
  its private facet, on the value kinds of :mod:`mpcgpu.nn.ops.values`.  A value is freed
  as soon as no later node reads it (:meth:`GraphModel.last_use`), so a 12-layer network
  holds about one layer's activations at a time.  ``run(feeds, profile=Profile())`` adds
  one row per operator type (seconds, bytes, rounds, calls; the nodes of a GELU left
  composed in one row, :data:`GELU_ROW`), with the public evaluation in a row of its own.

Secret integer inputs (token ids) enter as one-hot integer shares whose last axis is the
vocabulary (:func:`share_inputs` makes them; :meth:`GraphModel.one_hot_width` finds the
vocabulary): a Gather of a secret table by them is a product, and neither the text nor
the table is revealed.
"""

from __future__ import annotations

import contextlib

import numpy

from ..errors import MPCError
from ..protocols.domain import guarded
from ..sharing.arithmetic import ArithmeticShare, share
from ..sharing.compact import CompactShare
from ..sharing.truncation import forced
from .dag import GraphError, GraphModel, op_type
from .dag_fuse import DEFAULT as _DEFAULT_FUSE
from .dag_fuse import fuse as _fuse
from .dag_fuse import gelu_nodes as _gelu_nodes
from .ops import values as V
from .private import Profile, section

#: the profile row of the nodes of a GELU left composed (one per operator otherwise)
GELU_ROW = "Gelu (composed)"


def _check_known(g: GraphModel, given: dict, infos, what: str, shape_of):
    names = {t.name for t in infos}
    missing = sorted(names - set(given))
    extra = sorted(set(given) - names)
    if missing or extra:
        raise GraphError(f"graph {g.name}: {what}s: missing {missing}, unexpected {extra}")
    for t in infos:
        got = tuple(shape_of(given[t.name]))
        if got != t.shape:
            raise GraphError(f"graph {g.name}: {what} {t.name} has shape {got}, expected {t.shape}")


def _call(node, fn, *args):
    """``fn(*args)``, an error naming the node: a GraphError as it is, a protocol's or the
    encoding's error (ProtocolError, EncodingError, ValueError) as the same type with the
    node's name in front (callers catching EncodingError for domains still catch it)."""
    try:
        return _outputs(node, fn(*args))
    except GraphError:
        raise
    except (MPCError, ValueError) as exc:
        try:
            named = type(exc)(f"node {node.name} ({node.op}): {exc}")
        except Exception:  # an exception type with another constructor: as it is
            raise exc from None
        raise named from exc


def _outputs(node, result):
    result = list(result)
    if len(result) != len(node.outputs):
        node.fail(f"computed {len(result)} outputs for {len(node.outputs)} names")
    return result


def run_plain(g: GraphModel, params: dict, consts: dict, feeds: dict) -> dict:
    """``{output: array}``: every node's plaintext facet in float64 NumPy.  ``params`` and
    ``consts``: ``{name: array}``; ``feeds``: ``{input name: array}`` (token ids as int
    arrays, not one-hot)."""
    _check_known(g, params, g.params, "param", numpy.shape)
    _check_known(g, consts, g.consts, "const", numpy.shape)
    _check_known(g, feeds, g.inputs, "input", numpy.shape)
    env = {}
    for t in g.params:
        env[t.name] = numpy.asarray(params[t.name], dtype=numpy.float64)
    for t in g.consts:
        env[t.name] = V.public(consts[t.name])
    for t in g.inputs:
        env[t.name] = V.public(feeds[t.name])
    last = g.last_use()
    for i, node in enumerate(g.nodes):
        args = [env[n] if n else None for n in node.inputs]
        out = _call(node, op_type(node.op).plain, node, args)
        for name, value in zip(node.outputs, out):
            if name in last:
                env[name] = V.public(value)
        for n in node.inputs:
            if n and last.get(n) == i:
                env.pop(n, None)
    return {o: env[o] for o in g.outputs}


#: operators that never truncate a share (moves, selections, sums): an output's last
#: rounding happens before them (:meth:`PrivateGraph.exact_nodes`)
LOCAL_OPS = frozenset(
    (
        "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Flatten", "Concat", "Split", "Slice",
        "Expand", "Gather", "GatherElements", "GatherND", "Add", "Sub", "Neg", "Where", "Cast", "ReduceSum",
    )
)  # fmt: skip


class Context:
    """What a private facet may ask of the executor."""

    def __init__(self, rt, graph: GraphModel):
        self.rt = rt
        self.graph = graph

    def device(self, arr):
        """A public host array on the runtime's device."""
        return V.device(self.rt, arr)

    def public(self, arr):
        return V.public(arr)


class PrivateGraph:
    """A graph model with secret parameters (``{name: ArithmeticShare | CompactShare}``) and
    public constants (``{name: array}``, known to every party).  ``fuse``: the rewrites of
    :mod:`mpcgpu.nn.dag_fuse` to run the graph with (default: the exact ones, power-of-two
    score scales folded into the product's truncation, and GELU patterns as one
    Gelu; ``False``: none); :attr:`fused` counts them."""

    def __init__(self, g: GraphModel, params: dict, consts: dict, rt, fuse=_DEFAULT_FUSE):
        _check_known(g, params, g.params, "param", lambda v: v.shape)
        for t in g.params:
            if not isinstance(params[t.name], (ArithmeticShare, CompactShare)):
                raise GraphError(f"graph {g.name}: param {t.name} must be a share, got {type(params[t.name]).__name__}")
        _check_known(g, consts, g.consts, "const", numpy.shape)
        self.source = g
        self.params = dict(params)
        self.consts = {k: V.public(v) for k, v in consts.items()}
        self.fused: dict = {}
        if fuse:
            g, self.fused = _fuse(g, self.consts, fuse)
        self.graph = g
        #: profile rows: a composed GELU's nodes (Div, Erf, Add, Mul... or Pow, Tanh...) in one
        self._rows = {i: GELU_ROW for i in _gelu_nodes(g, self.consts)}
        self.rt = rt
        self.ctx = Context(rt, g)
        self._last = g.last_use()
        #: the most intermediate values (not params or consts) alive at once in the last run
        self.live_peak = 0
        self._profile = None
        self._exact = None

    def _input(self, t, v):
        g = self.graph
        if t.role == "public":
            if V.is_secret(v):
                raise GraphError(f"graph {g.name}: input {t.name} is public, got a share")
            v = V.public(v)
            if v.shape != t.shape:
                raise GraphError(f"graph {g.name}: input {t.name} has shape {v.shape}, expected {t.shape}")
            return v
        if not V.is_secret(v):
            raise GraphError(f"graph {g.name}: input {t.name} is secret: feed a share, not a public array")
        if t.dtype == "int":
            if isinstance(v, ArithmeticShare) and v.scale == 0 and tuple(v.shape) == t.shape:
                v = self._one_hot_ids(t, v)  # ids: their one-hot rows, privately
            elif isinstance(v, ArithmeticShare) and v.scale == 0 and v.shape[:-1] == t.shape:
                v = V.OneHotShare(v)
            if not isinstance(v, V.OneHotShare) or v.shape != t.shape:
                raise GraphError(
                    f"graph {g.name}: secret integer input {t.name} of shape {t.shape} must be fed as an integer "
                    f"share of the ids (shape {t.shape}) or of their one-hot rows ({t.shape} + (vocabulary,)), "
                    f"got {v!r}"
                )
            return v
        if isinstance(v, CompactShare) or not isinstance(v, (ArithmeticShare, V.MaskedShare)):
            raise GraphError(f"graph {g.name}: secret input {t.name} must be an ArithmeticShare, got {v!r}")
        if tuple(v.shape) != t.shape:
            raise GraphError(f"graph {g.name}: input {t.name} has shape {tuple(v.shape)}, expected {t.shape}")
        return v

    def _one_hot_ids(self, t, ids):
        """The one-hot rows of the secret ids ``ids`` over the vocabulary of the table that
        reads input ``t`` (:func:`mpcgpu.protocols.onehot.one_hot`; a profile row of its own)."""
        from ..protocols.onehot import one_hot as one_hot_rows

        with section(self._profile, self.rt.comm, "one-hot ids", "one-hot ids"):
            return V.OneHotShare(one_hot_rows(ids, self.graph.one_hot_width(t.name)))

    def exact_nodes(self) -> frozenset:
        """The indices of the nodes whose truncations decide the outputs' last bits: walking
        back from every output through operators that never truncate (:data:`LOCAL_OPS`),
        the first node of every path that may truncate.  ``run(exact=True)`` runs them with
        exact rounding, so that a revealed output is a function of the value it rounds,
        never of what one party saw in a probabilistic truncation."""
        if self._exact is None:
            g = self.graph
            producer = {o: i for i, n in enumerate(g.nodes) for o in n.outputs}
            todo, seen, exact = list(g.outputs), set(), set()
            while todo:
                name = todo.pop()
                i = producer.get(name)
                if i is None or i in seen:
                    continue
                seen.add(i)
                if g.nodes[i].op in LOCAL_OPS:
                    todo.extend(n for n in g.nodes[i].inputs if n)
                else:
                    exact.add(i)
            self._exact = frozenset(exact)
        return self._exact

    def run(self, feeds: dict, profile: Profile | None = None, exact: bool = False) -> dict:
        """``{output: value}`` (shares stay shares; the caller reveals).  Every party calls
        it with feeds of the same kinds and shapes.  ``exact``: the outputs will be revealed
        as reals: the nodes of :meth:`exact_nodes` round exactly (their truncations 12
        rounds instead of 2; :func:`mpcgpu.sharing.truncation.forced`)."""
        g = self.graph
        missing = sorted({t.name for t in g.inputs} - set(feeds))
        extra = sorted(set(feeds) - {t.name for t in g.inputs})
        if missing or extra:
            raise GraphError(f"graph {g.name}: feeds: missing {missing}, unexpected {extra}")
        env = dict(self.params)
        env.update(self.consts)
        self._profile = profile
        for t in g.inputs:
            env[t.name] = self._input(t, feeds[t.name])
        keep = set(g.outputs) | set(self.params) | set(self.consts)
        fixed = len(self.params) + len(self.consts)
        comm = self.rt.comm
        self.live_peak = 0
        with guarded(self.rt) as guard:  # one revealed bit per run (protocols.domain)
            for i, node in enumerate(g.nodes):
                guard.label = f"node {node.name} ({node.op})"
                args = [env[n] if n else None for n in node.inputs]
                op = op_type(node.op)
                if all(a is None or V.is_public(a) for a in args):
                    with section(profile, comm, "(public)", "public evaluation"):
                        out = _call(node, op.plain, node, [None if a is None else V.public(a) for a in args])
                        out = [V.public(o) for o in out]
                else:
                    row = self._rows.get(id(node), node.op)
                    rounding = forced("exact") if exact and i in self.exact_nodes() else contextlib.nullcontext()
                    with section(profile, comm, row, row), rounding:
                        out = _call(node, op.private, self.ctx, node, args)
                for name, value in zip(node.outputs, out):
                    if name in self._last:  # an output nothing reads (a Split's unused part) is dropped now
                        env[name] = value
                del args, out
                self.live_peak = max(self.live_peak, len(env) - fixed)
                for n in node.inputs:
                    if n and self._last.get(n) == i and n not in keep:
                        env.pop(n, None)
        return {o: env[o] for o in g.outputs}


def one_hot(ids, width: int) -> numpy.ndarray:
    """``ids`` (int array) as a one-hot int64 array of shape ``ids.shape + (width,)``; an id
    outside ``[0, width)`` is a GraphError (ONNX Gather allows negative ids: they count from
    the end)."""
    ids = numpy.asarray(ids, dtype=numpy.int64)
    ids = numpy.where(ids < 0, ids + width, ids)
    if ids.size and (ids.min() < 0 or ids.max() >= width):
        raise GraphError(f"token ids must lie in [0, {width}), got [{ids.min()}, {ids.max()}]")
    out = numpy.zeros(ids.shape + (width,), dtype=numpy.int64)
    numpy.put_along_axis(out, ids[..., None], 1, axis=-1)
    return out


def share_inputs(g: GraphModel, feeds: dict | None, rt, src: int = 0, *, ids_one_hot: bool = True) -> dict:
    """The feeds of :meth:`PrivateGraph.run` from plaintext ones held by party ``src``
    (others pass None; every party calls this): secret float inputs shared, secret integer
    inputs (ids) shared as one-hot integer shares (:meth:`GraphModel.one_hot_width`) or,
    with ``ids_one_hot=False``, as integer shares of the ids themselves (16 bytes per token:
    the executor expands them privately, :mod:`mpcgpu.protocols.onehot`), public inputs
    sent by ``src`` to all (``rt.comm.bcast_object``)."""
    out = {}
    mine = rt.rank == src
    for t in g.inputs:
        v = feeds[t.name] if mine else None
        if t.role == "public":
            out[t.name] = V.public(rt.comm.bcast_object(None if v is None else V.public(v), root=src))
        elif t.dtype == "int" and ids_one_hot:
            width = g.one_hot_width(t.name)
            out[t.name] = V.OneHotShare(share(one_hot(v, width) if mine else None, src=src, integer=True, rt=rt))
        elif t.dtype == "int":
            ids = None if v is None else numpy.asarray(v, dtype=numpy.int64)
            out[t.name] = share(ids, src=src, integer=True, rt=rt)
        else:
            out[t.name] = share(None if v is None else numpy.asarray(v, dtype=numpy.float64), src=src, rt=rt)
    return out


__all__ = ["run_plain", "PrivateGraph", "Context", "Profile", "one_hot", "share_inputs"]
