"""Rewrites of a graph model that the private executor applies before it runs
(:class:`mpcgpu.nn.dag_run.PrivateGraph`, ``fuse=``; :data:`DEFAULT`: the exact ones):
the same function, fewer rounds and bytes.  Each rewrite matches the exact operator
pattern the exporters write, with its public constants checked, and only where the
intermediate tensors have no other reader.

* **GELU, erf form** (BERT, ViT: ``x * 0.5 * (1 + erf(x / sqrt 2))``, as ``Div``/``Mul``,
  ``Erf``, ``Add``, ``Mul``, ``Mul`` in either order) and **tanh form** (GPT-2:
  ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`` with ``Pow``) -> one ``Gelu`` node
  (``approximate`` "none" / "tanh"): 16 rounds and ~432 bytes per element (three parties)
  instead of 24 rounds / ~704 bytes (erf form) or 34 rounds / ~1056 bytes (tanh form);
  error 0.0075 at most (PUMA's GELU: 0.014), where the composed form is more accurate for
  small inputs (erf's 0.0035 times x/2): on by default (:data:`DEFAULT`; ``fuse=("scaled_matmul",)``
  keeps the exporters' form).
* **Scaled attention scores**: ``MatMul(Mul(q, s1), Mul(k, s2))`` with public scalars whose
  product is a power of two ``2^-j`` (``s1 = s2 = d^-1/4`` for head width ``d = 64``: 1/8)
  -> one ``MatMul`` whose fused truncation drops ``j`` bits more (attribute ``pow2``:
  ``-j``): two public products (4 rounds, 96 bytes per element each) disappear, and their
  roundings with them (exact: on by default).

:func:`fuse` returns the rewritten graph (or the same one when nothing matches) and the
count of each rewrite.
"""

from __future__ import annotations

import math

import numpy

from .dag import GraphModel, Node, replace

#: relative tolerance on the constants of a pattern (they come from float32 exports)
RTOL = 1e-5
SQRT2 = math.sqrt(2.0)
TANH_K = math.sqrt(2.0 / math.pi)
TANH_C = 0.044715


class _Index:
    def __init__(self, g: GraphModel, consts: dict):
        self.producer = {}
        self.readers: dict = {}
        for n in g.nodes:
            for o in n.outputs:
                self.producer[o] = n
            for i in n.inputs:
                if i:
                    self.readers.setdefault(i, []).append(n)
        self.outputs = set(g.outputs)
        self.scalars = {}
        for name, v in consts.items():
            a = numpy.asarray(v)
            if a.size == 1 and a.dtype.kind == "f":
                self.scalars[name] = float(a.reshape(-1)[0])

    def node(self, tensor, op):
        n = self.producer.get(tensor)
        return n if n is not None and n.op == op and len(n.outputs) == 1 else None

    def private(self, tensor) -> bool:
        """Whether ``tensor`` is read by one node only and is not a graph output."""
        return tensor not in self.outputs and len(self.readers.get(tensor, ())) == 1

    def is_const(self, name, value) -> bool:
        v = self.scalars.get(name)
        return v is not None and abs(v - value) <= RTOL * abs(value)

    def scaled(self, tensor, value, ops=("Mul",)):
        """``(x, node)`` when ``tensor = Mul(x, value)`` (either order) or ``Div(x, 1/value)``."""
        for op in ops:
            n = self.node(tensor, op)
            if n is None or len(n.inputs) != 2:
                continue
            a, b = n.inputs
            if op == "Div":
                if self.is_const(b, 1.0 / value):
                    return a, n
                continue
            if self.is_const(b, value):
                return a, n
            if self.is_const(a, value):
                return b, n
        return None, None

    def plus_one(self, tensor, op):
        """``(inner, [Add, op node])`` when ``tensor = Add(op(inner), 1)`` (either order)."""
        add = self.node(tensor, "Add")
        if add is None:
            return None, []
        a, b = add.inputs
        other = b if self.is_const(a, 1.0) else a if self.is_const(b, 1.0) else None
        f = self.node(other, op) if other else None
        if f is None or not self.private(other):
            return None, []
        return f.inputs[0], [add, f]


def _erf_core(ix: _Index, a):
    """``(x, nodes)`` when ``a = 1 + erf(x / sqrt 2)``."""
    d, nodes = ix.plus_one(a, "Erf")
    if d is None or not ix.private(d):
        return None, []
    x, n = ix.scaled(d, 1.0 / SQRT2, ("Div", "Mul"))
    return (x, nodes + [n]) if x else (None, [])


def _tanh_core(ix: _Index, a):
    """``(x, nodes)`` when ``a = 1 + tanh(k (x + c x^3))``."""
    t, nodes = ix.plus_one(a, "Tanh")
    if t is None or not ix.private(t):
        return None, []
    s, n_k = ix.scaled(t, TANH_K)
    add = ix.node(s, "Add") if s and ix.private(s) else None
    if add is None:
        return None, []
    for x, pc in (add.inputs, add.inputs[::-1]):
        p, n_c = ix.scaled(pc, TANH_C) if ix.private(pc) else (None, None)
        pw = ix.node(p, "Pow") if p and ix.private(p) else None
        if pw is not None and pw.inputs[0] == x and ix.is_const(pw.inputs[1], 3.0):
            return x, nodes + [n_k, add, n_c, pw]
    return None, []


def _gelu(ix: _Index, y: Node):
    """``(x, approximate, inner nodes)`` when the Mul ``y`` closes a GELU pattern."""
    if y.op != "Mul" or len(y.inputs) != 2:
        return None
    for u, v in (y.inputs, y.inputs[::-1]):
        for core, mode in ((_erf_core, "none"), (_tanh_core, "tanh")):
            # y = x * (0.5 * a)
            a, half = ix.scaled(v, 0.5) if ix.private(v) else (None, None)
            if a and ix.private(a):
                x, nodes = core(ix, a)
                if x == u:
                    return x, mode, [half] + nodes
            # y = (x * 0.5) * a
            x, half = ix.scaled(u, 0.5) if ix.private(u) else (None, None)
            if x and ix.private(v):
                x2, nodes = core(ix, v)
                if x2 == x:
                    return x, mode, [half] + nodes
    return None


def _pow2(value):
    """``j`` when ``value = 2^-j`` (to RTOL), else None."""
    if value <= 0:
        return None
    j = -math.log2(value)
    k = round(j)
    return k if abs(j - k) <= RTOL else None


def _scaled_matmul(ix: _Index, n: Node):
    """``(a, b, j, removed)`` when ``n = MatMul(Mul(a, s1), Mul(b, s2))`` with
    ``s1 s2 = 2^-j`` (a missing Mul counts as 1)."""
    if n.op != "MatMul" or "pow2" in n.attrs:
        return None
    scale, ins, removed = 1.0, [], []
    for t in n.inputs:
        m = ix.node(t, "Mul") if ix.private(t) else None
        hit = None
        if m is not None and len(m.inputs) == 2:
            for x, c in (m.inputs, m.inputs[::-1]):
                if c in ix.scalars and x not in ix.scalars:
                    hit = (x, ix.scalars[c])
                    break
        if hit:
            ins.append(hit[0])
            scale *= hit[1]
            removed.append(m)
        else:
            ins.append(t)
    j = _pow2(scale)
    if not removed or j is None or j < 0:
        return None
    return ins[0], ins[1], j, removed


#: every rewrite; :data:`DEFAULT` the ones the private executor applies unless told
REWRITES = ("scaled_matmul", "gelu")
#: both: the GELU fusion replaces the exporters' composed GELU (an erf or tanh
#: approximation, then products) by one piecewise-polynomial GELU
#: (:func:`mpcgpu.protocols.activations.gelu`, max error 0.0069 against float64, PUMA's
#: 0.014): 16-40 % fewer bytes for the whole network (BERT-base: ~1.3 GB and 96 rounds
#: less), at a mean output error about twice the composed form's (tiny BERT, GPT-2 and ViT
#: with random weights: max 0.031 / 0.015 / 0.005, mean 0.0024 / 0.0034 / 0.0021, against
#: 0.031 / 0.013 / 0.003 and 0.0016 / 0.0011 / 0.0012 composed).  ``fuse=("scaled_matmul",)``
#: keeps the exporter's GELU.
DEFAULT = REWRITES


def rewrites(choice) -> tuple:
    """The rewrites meant by ``choice``: True (all), False/None (none), or names."""
    if choice is True:
        return REWRITES
    if not choice:
        return ()
    names = (choice,) if isinstance(choice, str) else tuple(choice)
    unknown = sorted(set(names) - set(REWRITES))
    if unknown:
        raise ValueError(f"unknown graph rewrites {unknown}; known: {', '.join(REWRITES)}")
    return names


def fuse(g: GraphModel, consts: dict, which=True) -> tuple:
    """``(graph, {rewrite: count})`` (module docstring); ``consts``: the public constants;
    ``which``: the rewrites (:func:`rewrites`)."""
    which = rewrites(which)
    ix = _Index(g, consts)
    drop, swap = set(), {}  # by id(): node names need not be unique
    counts = {name: 0 for name in which}
    for n in g.nodes:
        if id(n) in drop:
            continue
        hit = _gelu(ix, n) if "gelu" in which else None
        if hit:
            x, mode, inner = hit
            if not any(id(m) in drop for m in inner):
                drop.update(id(m) for m in inner)
                swap[id(n)] = Node("Gelu", n.name, [x], n.outputs, {"approximate": mode})
                counts["gelu"] += 1
                continue
        hit = _scaled_matmul(ix, n) if "scaled_matmul" in which else None
        if hit:
            a, b, j, removed = hit
            if not any(id(m) in drop for m in removed):
                drop.update(id(m) for m in removed)
                swap[id(n)] = Node("MatMul", n.name, [a, b], n.outputs, {**n.attrs, "pow2": -j})
                counts["scaled_matmul"] += 1
    if not swap:
        return g, counts
    nodes = [swap.get(id(n), n) for n in g.nodes if id(n) not in drop]
    return replace(g, nodes=tuple(nodes)), counts


def gelu_nodes(g: GraphModel, consts: dict) -> set:
    """``id()`` of every node of a GELU pattern left composed (for a profile that groups
    them as one layer type: :class:`mpcgpu.nn.dag_run.PrivateGraph`)."""
    ix = _Index(g, consts)
    out = set()
    for n in g.nodes:
        hit = _gelu(ix, n)
        if hit:
            out.update(id(m) for m in hit[2])
            out.add(id(n))
    return out


__all__ = ["REWRITES", "DEFAULT", "rewrites", "fuse", "gelu_nodes"]
