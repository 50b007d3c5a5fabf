"""Shape and plumbing operators: local on shares (0 rounds, 0 bytes), NumPy on public values.

Reshape, Transpose, Split, Concat, Slice, Gather, Unsqueeze, Squeeze, Expand, Flatten,
Identity, GatherElements, GatherND move the elements of a share (both components alike;
the ``keep`` of a masked share and the logical axes of a one-hot share with them); the index
inputs (shapes, axes, indices) must be public.  Gather of a secret table by secret one-hot
ids is a product ``one_hot @ table`` (1 round, 8 bytes per output element per party: an
integer times a fixed-point value needs no truncation).  Shape, Constant, ConstantOfShape,
Range, Equal, And, Or, Not, Less, Greater compute public values only (Shape of a share:
its public shape).  Cast moves an integer share to fixed point for free.  IsNaN of a share
is a public all-False array (a fixed-point value is never NaN).  Where with a public
condition selects locally; a branch of ``-inf`` / ``<= -1e4`` makes a masked share.
"""

from __future__ import annotations

import math

import numpy

from ...sharing.arithmetic import ArithmeticShare, matmul, matmul_public, to_scale
from ...sharing.compact import CompactShare, held
from ..dag import register_op
from . import values as V
from ._common import P, S, axes_arg, ex, int_list, norm_axis

LOCAL = "local: 0 rounds, 0 bytes"


def _public_index(node, v, what):
    if v is None or not V.is_public(v):
        node.fail(f"{what} must be public, got a {V.kind(v)}")
    return V.public(v)


def _local(ctx, v, fn):
    return V.map_local(ctx.rt, v, fn)


def _trail(a, nd):
    """The axes of ``a`` after the first ``nd`` (a one-hot share's class axis)."""
    return tuple(a.shape[nd:])


# -- Reshape -------------------------------------------------------------------------------


def _reshape_target(node, in_shape, shape):
    allowzero = int(node.attr("allowzero", 0))
    target = []
    for i, d in enumerate(int_list(shape)):
        if d == 0 and not allowzero:
            if i >= len(in_shape):
                node.fail(f"shape entry 0 at {i} copies a dimension the input (rank {len(in_shape)}) lacks")
            d = in_shape[i]
        target.append(d)
    if target.count(-1) > 1:
        node.fail("at most one -1 in the target shape")
    size = math.prod(in_shape)
    if -1 in target:
        rest = math.prod(d for d in target if d != -1)
        if rest == 0 or size % rest:
            node.fail(f"cannot reshape {tuple(in_shape)} to {tuple(target)}")
        target[target.index(-1)] = size // rest
    if math.prod(target) != size:
        node.fail(f"cannot reshape {tuple(in_shape)} to {tuple(target)}")
    return tuple(target)


def reshape_plain(node, args):
    x, shape = args
    return [x.reshape(_reshape_target(node, x.shape, shape))]


def reshape_private(ctx, node, args):
    x, shape = args
    in_shape = V.shape_of(x)
    target = _reshape_target(node, in_shape, _public_index(node, shape, "the target shape"))
    nd = len(in_shape)
    return [_local(ctx, x, lambda a, xp, to: a.reshape(target + _trail(a, nd)))]


register_op(
    "Reshape",
    plain=reshape_plain,
    private=reshape_private,
    examples=[
        ex("Reshape", [S("x", (2, 3, 4)), P("shape", (3,), "int")], values={"shape": numpy.array([2, -1, 2])}),
        ex(
            "Reshape",
            [S("x", (2, 3, 4)), P("shape", (3,), "int")],
            values={"shape": numpy.array([0, 0, 4])},
            attrs={"allowzero": 0},
        ),
        ex(
            "Reshape",
            [S("x", (1, 6)), P("shape", (2,), "int")],
            attrs={"allowzero": 1},
            values={"shape": numpy.array([3, 2])},
        ),
    ],
    doc=LOCAL,
)


# -- Transpose -----------------------------------------------------------------------------


def _perm(node, nd):
    perm = node.attr("perm")
    perm = list(range(nd))[::-1] if perm is None else [norm_axis(p, nd, node) for p in perm]
    if sorted(perm) != list(range(nd)):
        node.fail(f"perm {perm} is not a permutation of {nd} axes")
    return tuple(perm)


def transpose_plain(node, args):
    return [args[0].transpose(_perm(node, args[0].ndim))]


def transpose_private(ctx, node, args):
    x = args[0]
    nd = len(V.shape_of(x))
    perm = _perm(node, nd)
    return [_local(ctx, x, lambda a, xp, to: a.transpose(perm + tuple(range(nd, a.ndim))))]


register_op(
    "Transpose",
    plain=transpose_plain,
    private=transpose_private,
    examples=[
        ex("Transpose", [S("x", (2, 3, 4, 5))], attrs={"perm": [0, 2, 1, 3]}),
        ex("Transpose", [S("x", (2, 3))]),
    ],
    doc=LOCAL,
)


# -- Split ---------------------------------------------------------------------------------


def _split_sizes(node, shape, split, count):
    axis = norm_axis(node.attr("axis", 0), len(shape), node)
    dim = shape[axis]
    if split is not None:
        sizes = int_list(split)
    else:
        n = int(node.attr("num_outputs", count))
        if n != count:
            node.fail(f"num_outputs {n} but {count} outputs")
        step = -(-dim // n)
        sizes = [min(step, max(dim - i * step, 0)) for i in range(n)]
    if len(sizes) != count or sum(sizes) != dim or any(s < 0 for s in sizes):
        node.fail(f"split sizes {sizes} do not cut axis {axis} of {dim} into {count} outputs")
    return axis, sizes


def _split_indices(node, shape, split, count):
    axis, sizes = _split_sizes(node, shape, split, count)
    out, lo = [], 0
    for s in sizes:
        out.append((slice(None),) * axis + (slice(lo, lo + s),))
        lo += s
    return out


def split_plain(node, args):
    x = args[0]
    split = args[1] if len(args) > 1 else None
    return [x[ix] for ix in _split_indices(node, x.shape, split, len(node.outputs))]


def split_private(ctx, node, args):
    x = args[0]
    split = args[1] if len(args) > 1 else None
    if split is not None:
        split = _public_index(node, split, "split")
    idx = _split_indices(node, V.shape_of(x), split, len(node.outputs))
    return [_local(ctx, x, lambda a, xp, to, ix=ix: a[ix]) for ix in idx]


register_op(
    "Split",
    plain=split_plain,
    private=split_private,
    examples=[
        ex("Split", [S("x", (1, 4, 12))], outputs=3, attrs={"axis": 2, "num_outputs": 3}),
        ex("Split", [S("x", (5, 2)), P("split", (2,), "int")], outputs=2, values={"split": numpy.array([2, 3])}),
        ex("Split", [S("x", (2, 7))], outputs=2, attrs={"axis": -1, "num_outputs": 2}),
    ],
    doc=LOCAL,
)


# -- Concat --------------------------------------------------------------------------------


def concat_plain(node, args):
    axis = norm_axis(node.attr("axis", 0), args[0].ndim, node)
    return [numpy.concatenate(args, axis=axis)]


def concat_private(ctx, node, args):
    rt = ctx.rt
    nd = len(V.shape_of(args[0]))
    axis = norm_axis(node.attr("axis", 0), nd, node)
    if any(isinstance(a, V.OneHotShare) for a in args):
        if not all(isinstance(a, V.OneHotShare) for a in args):
            node.fail("cannot concatenate one-hot shares with other values")
        parts = [a.share for a in args]
        return [V.OneHotShare(_concat_shares(parts, axis))]
    scale = max([_scale(a) for a in args if V.is_secret(a)])
    if any(V.is_public(a) and V.public(a).dtype.kind == "f" for a in args):
        scale = max(scale, rt.frac_bits)
    shares, keeps, masked = [], [], False
    for a in args:
        if isinstance(a, V.MaskedShare):
            s, k, masked = a.share, a.full_keep(), True
        elif V.is_public(a):
            pub = V.public(a)
            k = pub > V.MASK_BELOW if pub.dtype.kind == "f" else numpy.ones(pub.shape, bool)
            masked = masked or not k.all()
            zero = ArithmeticShare(*(rt.xp.zeros(pub.shape, dtype=rt.xp.uint64) for _ in range(2)), scale, rt)
            s = V.add_public(zero, numpy.where(k, pub, 0))
        else:
            s = V.plain_share(node, a)
            k = numpy.ones(s.shape, bool)
        shares.append(to_scale(s, scale) if s.scale < scale else s)
        keeps.append(k)
    out = _concat_shares(shares, axis)
    return [V.MaskedShare(out, numpy.concatenate(keeps, axis=axis)) if masked else out]


def _scale(v):
    return v.share.scale if isinstance(v, (V.MaskedShare, V.OneHotShare)) else v.scale


def _concat_shares(shares, axis):
    if len({s.scale for s in shares}) != 1:
        raise ValueError("concat of shares of different scales")
    xp = shares[0].xp
    return shares[0]._new(
        xp.concatenate([s.first for s in shares], axis=axis), xp.concatenate([s.second for s in shares], axis=axis)
    )


register_op(
    "Concat",
    plain=concat_plain,
    private=concat_private,
    examples=[
        ex("Concat", [S("a", (1, 2, 4)), S("b", (1, 3, 4))], attrs={"axis": 1}),
        ex("Concat", [P("cls", (1, 1, 4)), S("x", (1, 3, 4))], attrs={"axis": -2}),
    ],
    doc=LOCAL + " (a public part becomes a trivial share)",
)


# -- Slice ---------------------------------------------------------------------------------


def _slice_index(node, shape, args):
    starts, ends = int_list(args[1]), int_list(args[2])
    nd = len(shape)
    axes = int_list(args[3]) if len(args) > 3 and args[3] is not None else list(range(len(starts)))
    steps = int_list(args[4]) if len(args) > 4 and args[4] is not None else [1] * len(starts)
    if not len(starts) == len(ends) == len(axes) == len(steps):
        node.fail("starts, ends, axes and steps differ in length")
    index = [slice(None)] * nd
    for s, e, ax, st in zip(starts, ends, axes, steps):
        if st == 0:
            node.fail("a slice step of 0")
        index[norm_axis(ax, nd, node)] = slice(s, e, st)
    return tuple(index)


def slice_plain(node, args):
    return [args[0][_slice_index(node, args[0].shape, args)]]


def slice_private(ctx, node, args):
    x = args[0]
    for i, what in enumerate(("starts", "ends", "axes", "steps"), start=1):
        if len(args) > i and args[i] is not None:
            _public_index(node, args[i], what)
    index = _slice_index(node, V.shape_of(x), args)
    return [_local(ctx, x, lambda a, xp, to: a[index])]


register_op(
    "Slice",
    plain=slice_plain,
    private=slice_private,
    examples=[
        ex(
            "Slice",
            [S("x", (2, 5, 3)), P("starts", (1,), "int"), P("ends", (1,), "int"), P("axes", (1,), "int")],
            values={"starts": numpy.array([1]), "ends": numpy.array([2**62]), "axes": numpy.array([1])},
        ),
        ex(
            "Slice",
            [
                S("x", (4, 6)),
                P("starts", (2,), "int"),
                P("ends", (2,), "int"),
                P("axes", (2,), "int"),
                P("steps", (2,), "int"),
            ],
            values={
                "starts": numpy.array([-1, 0]),
                "ends": numpy.array([-(2**62), 6]),
                "axes": numpy.array([0, -1]),
                "steps": numpy.array([-2, 2]),
            },
        ),
    ],
    doc=LOCAL,
)


# -- Gather ----------------------------------------------------------------------------------


def _fix_ids(node, ids, dim):
    ids = numpy.asarray(ids, dtype=numpy.int64)
    ids = numpy.where(ids < 0, ids + dim, ids)
    if ids.size and (ids.min() < 0 or ids.max() >= dim):
        node.fail(f"indices outside [-{dim}, {dim})")
    return ids


def gather_plain(node, args):
    data, ids = args
    axis = norm_axis(node.attr("axis", 0), data.ndim, node)
    return [numpy.take(data, _fix_ids(node, ids, data.shape[axis]), axis=axis)]


def gather_private(ctx, node, args):
    data, ids = args
    shape = V.shape_of(data)
    axis = norm_axis(node.attr("axis", 0), len(shape), node)
    if isinstance(ids, V.OneHotShare):
        if axis != 0 or len(shape) != 2 or isinstance(data, (V.MaskedShare, V.OneHotShare)):
            node.fail(f"secret one-hot ids select rows of a 2-D table (axis 0), got a {V.kind(data)} of shape {shape}")
        if ids.vocab != shape[0]:
            node.fail(f"one-hot ids over {ids.vocab} classes for a table of {shape[0]} rows")
        if V.is_public(data):
            return [matmul_public(ids.share, V.public(data).astype(numpy.float64))]
        if isinstance(data, CompactShare):
            from .linear import matmul_rows

            return [matmul_rows(ids.share, data)]
        return [matmul(ids.share, held(data))]
    if not V.is_public(ids):
        node.fail(f"the indices are a {V.kind(ids)}: secret ids must be fed one-hot (share_inputs)")
    fixed = _fix_ids(node, V.public(ids), shape[axis])
    if isinstance(data, CompactShare) and axis == 0 and fixed.size:
        lo, hi = int(fixed.min()), int(fixed.max()) + 1  # draw only the rows read
        data, fixed = data.rows(lo, hi), fixed - lo
    return [_local(ctx, data, lambda a, xp, to: xp.take(a, to(fixed), axis=axis))]


def _ids(hi):
    return lambda rng: rng.integers(-hi, hi, (2, 3))


register_op(
    "Gather",
    plain=gather_plain,
    private=gather_private,
    examples=[
        ex("Gather", [S("table", (7, 4)), P("ids", (2, 3), "int")], values={"ids": _ids(7)}, attrs={"axis": 0}),
        ex("Gather", [S("h", (1, 5, 4)), P("i", (), "int")], values={"i": numpy.array(0)}, attrs={"axis": 1}),
        ex("Gather", [S("table", (6, 3)), S("ids", (2, 3), "int")], values={"ids": lambda r: r.integers(0, 6, (2, 3))}),
        ex("Gather", [P("table", (6, 3)), S("ids", (1, 4), "int")], values={"ids": lambda r: r.integers(0, 6, (1, 4))}),
    ],
    doc=LOCAL + " with public ids; secret one-hot ids: one_hot @ table, 1 round, 8 bytes/output element/party",
)


# -- Unsqueeze / Squeeze / Flatten / Expand / Identity -------------------------------------------


def _unsqueeze_shape(node, shape, args):
    axes = args[1] if len(args) > 1 else None
    axes = int_list(axes) if axes is not None else list(node.attr("axes") or [])
    if not axes:
        node.fail("Unsqueeze needs axes")
    nd = len(shape) + len(axes)
    axes = sorted(norm_axis(a, nd, node) for a in axes)
    out, it = [], iter(shape)
    for i in range(nd):
        out.append(1 if i in axes else next(it))
    return tuple(out)


def _squeeze_shape(node, shape, args):
    axes = axes_arg(node, args, 1, len(shape))
    if axes is None:
        axes = [i for i, d in enumerate(shape) if d == 1]
    if any(shape[a] != 1 for a in axes):
        node.fail(f"cannot squeeze axes {axes} of shape {tuple(shape)}")
    return tuple(d for i, d in enumerate(shape) if i not in axes)


def _flatten_shape(node, shape, args):
    axis = int(node.attr("axis", 1))
    axis = axis + len(shape) if axis < 0 else axis
    if not 0 <= axis <= len(shape):
        node.fail(f"axis {axis} out of range")
    return (math.prod(shape[:axis]), math.prod(shape[axis:]))


def _reshaper(target_of):
    def plain(node, args):
        return [args[0].reshape(target_of(node, args[0].shape, args))]

    def private(ctx, node, args):
        for a in args[1:]:
            if a is not None:
                _public_index(node, a, "axes")
        x = args[0]
        shape = V.shape_of(x)
        target = target_of(node, shape, args)
        nd = len(shape)
        return [_local(ctx, x, lambda a, xp, to: a.reshape(target + _trail(a, nd)))]

    return plain, private


for _name, _fn, _examples in (
    (
        "Unsqueeze",
        _unsqueeze_shape,
        [ex("Unsqueeze", [S("x", (2, 3)), P("axes", (2,), "int")], values={"axes": numpy.array([0, -1])})],
    ),
    (
        "Squeeze",
        _squeeze_shape,
        [
            ex("Squeeze", [S("x", (1, 3, 1)), P("axes", (1,), "int")], values={"axes": numpy.array([-1])}),
            ex("Squeeze", [S("x", (1, 3, 1))]),
        ],
    ),
    (
        "Flatten",
        _flatten_shape,
        [ex("Flatten", [S("x", (2, 3, 4))], attrs={"axis": 1}), ex("Flatten", [S("x", (2, 3, 4))], attrs={"axis": -1})],
    ),
):
    _p, _q = _reshaper(_fn)
    register_op(_name, plain=_p, private=_q, examples=_examples, doc=LOCAL)


def _expand_shape(node, shape, target):
    try:
        return tuple(numpy.broadcast_shapes(tuple(shape), tuple(int_list(target))))
    except ValueError:
        node.fail(f"cannot expand {tuple(shape)} to {int_list(target)}")


def expand_plain(node, args):
    x, target = args
    return [numpy.broadcast_to(x, _expand_shape(node, x.shape, target)).copy()]


def expand_private(ctx, node, args):
    x, target = args
    shape = V.shape_of(x)
    out = _expand_shape(node, shape, _public_index(node, target, "the shape"))
    nd = len(shape)

    def fn(a, xp, to):
        lead = a.reshape((1,) * (len(out) - nd) + tuple(a.shape))
        return xp.ascontiguousarray(xp.broadcast_to(lead, out + _trail(a, nd)))

    return [_local(ctx, x, fn)]


register_op(
    "Expand",
    plain=expand_plain,
    private=expand_private,
    examples=[ex("Expand", [S("x", (3, 1)), P("shape", (3,), "int")], values={"shape": numpy.array([2, 1, 4])})],
    doc=LOCAL + " (a copy)",
)


register_op(
    "Identity",
    plain=lambda node, args: [args[0]],
    private=lambda ctx, node, args: [args[0]],
    examples=[ex("Identity", [S("x", (2, 3))])],
    doc=LOCAL,
)


# -- GatherElements / GatherND ------------------------------------------------------------------


def gather_elements_plain(node, args):
    data, ids = args
    axis = norm_axis(node.attr("axis", 0), data.ndim, node)
    return [numpy.take_along_axis(data, _fix_ids(node, ids, data.shape[axis]), axis=axis)]


def gather_elements_private(ctx, node, args):
    data, ids = args
    if isinstance(data, V.OneHotShare):
        node.fail("GatherElements of a one-hot share")
    shape = V.shape_of(data)
    axis = norm_axis(node.attr("axis", 0), len(shape), node)
    fixed = _fix_ids(node, _public_index(node, ids, "the indices"), shape[axis])
    return [_local(ctx, data, lambda a, xp, to: xp.take_along_axis(a, to(fixed), axis=axis))]


register_op(
    "GatherElements",
    plain=gather_elements_plain,
    private=gather_elements_private,
    examples=[
        ex(
            "GatherElements",
            [S("x", (2, 5)), P("i", (2, 3), "int")],
            attrs={"axis": 1},
            values={"i": lambda r: r.integers(-5, 5, (2, 3))},
        )
    ],
    doc=LOCAL,
)


def _nd_index(node, shape, ids):
    if int(node.attr("batch_dims", 0)) != 0:
        node.fail("GatherND with batch_dims != 0 is not supported")
    ids = numpy.asarray(ids, dtype=numpy.int64)
    k = ids.shape[-1]
    if k > len(shape):
        node.fail(f"index tuples of {k} for rank {len(shape)}")
    return tuple(_fix_ids(node, ids[..., i], shape[i]) for i in range(k))


def gather_nd_plain(node, args):
    data, ids = args
    return [data[_nd_index(node, data.shape, ids)]]


def gather_nd_private(ctx, node, args):
    data, ids = args
    if isinstance(data, V.OneHotShare):
        node.fail("GatherND of a one-hot share")
    index = _nd_index(node, V.shape_of(data), _public_index(node, ids, "the indices"))
    return [_local(ctx, data, lambda a, xp, to: a[tuple(to(i) for i in index)])]


register_op(
    "GatherND",
    plain=gather_nd_plain,
    private=gather_nd_private,
    examples=[
        ex(
            "GatherND",
            [S("x", (3, 4, 2)), P("i", (5, 2), "int")],
            values={"i": lambda r: numpy.stack([r.integers(0, 3, 5), r.integers(-4, 4, 5)], axis=-1)},
        ),
        ex("GatherND", [P("x", (3, 4)), P("i", (2, 1), "int")], values={"i": numpy.array([[2], [0]])}),
    ],
    doc=LOCAL,
)


# -- public-only operators -------------------------------------------------------------------------


def _public_only(ctx, node, args):
    node.fail(f"needs public inputs, got {[V.kind(a) for a in args]}")


def shape_plain(node, args):
    return [_shape_slice(node, args[0].shape)]


def _shape_slice(node, shape):
    start, end = node.attr("start", 0), node.attr("end")
    return numpy.asarray(shape[slice(int(start), None if end is None else int(end))], dtype=numpy.int64)


register_op(
    "Shape",
    plain=shape_plain,
    private=lambda ctx, node, args: [_shape_slice(node, V.shape_of(args[0]))],
    examples=[ex("Shape", [S("x", (2, 3, 4))]), ex("Shape", [S("x", (2, 3, 4))], attrs={"start": 1, "end": -1})],
    doc="public: the shape of a share is public (0 rounds)",
)

#: ONNX TensorProto data types -> our dtypes
_FLOAT_TYPES = {1, 10, 11, 16}
_INT_TYPES = {2, 3, 4, 5, 6, 7, 12, 13}
_BOOL_TYPES = {9}


def _cast_host(node, x, to):
    if to in _FLOAT_TYPES:
        return x.astype(numpy.float64)
    if to in _INT_TYPES:
        return x.astype(numpy.int64)
    if to in _BOOL_TYPES:
        return x.astype(bool)
    node.fail(f"cast to ONNX type {to} is not supported")


def cast_plain(node, args):
    return [_cast_host(node, args[0], int(node.attr("to", 1)))]


def cast_private(ctx, node, args):
    x, to = args[0], int(node.attr("to", 1))
    if isinstance(x, V.OneHotShare):
        if to in _INT_TYPES:
            return [x]
        node.fail("cast of secret one-hot ids to a non-integer type")
    if to in _FLOAT_TYPES:
        if isinstance(x, V.MaskedShare):
            return [x]
        s = V.plain_share(node, x)
        return [to_scale(s, ctx.rt.frac_bits) if s.scale < ctx.rt.frac_bits else s]
    if to in _INT_TYPES and not isinstance(x, V.MaskedShare) and V.plain_share(node, x).scale == 0:
        return [x]
    node.fail(f"cast of a {V.kind(x)} to ONNX type {to} would need a rounding protocol")


register_op(
    "Cast",
    plain=cast_plain,
    private=cast_private,
    examples=[
        ex("Cast", [S("x", (2, 3))], attrs={"to": 1}),
        ex("Cast", [P("m", (2, 3), "int")], attrs={"to": 9}),
        ex("Cast", [P("m", (2, 3), "bool")], attrs={"to": 1}),
    ],
    doc="local: an integer share to fixed point is free (0 rounds)",
)


def _constant_value(node):
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        v = node.attr(key)
        if v is not None:
            if key in ("value_int", "value_ints"):
                return numpy.asarray(v, dtype=numpy.int64)
            if key in ("value_float", "value_floats"):
                return numpy.asarray(v, dtype=numpy.float64)
            dtype = node.attr("dtype")
            return V.public(numpy.asarray(v, dtype=dtype)) if dtype else V.public(numpy.asarray(v))
    node.fail("Constant without a value")


register_op(
    "Constant",
    plain=lambda node, args: [_constant_value(node)],
    private=_public_only,
    examples=[
        ex("Constant", [], attrs={"value_ints": [2, -1]}),
        ex("Constant", [], attrs={"value_float": 0.125}),
        ex("Constant", [], attrs={"value": [[1.5, 2.0]], "dtype": "float64"}),
    ],
    doc="public (attribute 'value': a nested list; optional 'dtype' names its NumPy dtype)",
)


def constant_of_shape_plain(node, args):
    v = node.attr("value", 0.0)
    v = numpy.asarray(v).reshape(-1)
    fill = V.public(v)[0] if v.size else numpy.float64(0.0)
    return [numpy.full(tuple(int_list(args[0])), fill, dtype=V.public(numpy.asarray(fill)).dtype)]


def range_plain(node, args):
    start, limit, delta = (V.public(a) for a in args)
    return [numpy.arange(start.item(), limit.item(), delta.item()).astype(numpy.result_type(start, limit, delta))]


def _binary(fn):
    def plain(node, args):
        return [fn(*args)]

    return plain


_PUBLIC_ONLY = [
    (
        "ConstantOfShape",
        constant_of_shape_plain,
        [
            ex("ConstantOfShape", [P("s", (2,), "int")], values={"s": numpy.array([2, 3])}),
            ex("ConstantOfShape", [P("s", (1,), "int")], values={"s": numpy.array([4])}, attrs={"value": [7]}),
        ],
    ),
    (
        "Range",
        range_plain,
        [
            ex(
                "Range",
                [P("a", (), "int"), P("b", (), "int"), P("d", (), "int")],
                values={"a": numpy.array(1), "b": numpy.array(9), "d": numpy.array(3)},
            )
        ],
    ),
    ("Equal", _binary(numpy.equal), [ex("Equal", [P("a", (2, 3), "int"), P("b", (3,), "int")])]),
    ("Less", _binary(numpy.less), [ex("Less", [P("a", (2, 3)), P("b", (2, 3))])]),
    ("Greater", _binary(numpy.greater), [ex("Greater", [P("a", (2, 3)), P("b", (1, 3))])]),
    ("And", _binary(numpy.logical_and), [ex("And", [P("a", (2, 3), "bool"), P("b", (2, 3), "bool")])]),
    ("Or", _binary(numpy.logical_or), [ex("Or", [P("a", (2, 3), "bool"), P("b", (3,), "bool")])]),
    ("Not", _binary(numpy.logical_not), [ex("Not", [P("a", (2, 3), "bool")])]),
]
for _name, _plain, _examples in _PUBLIC_ONLY:
    register_op(_name, plain=_plain, private=_public_only, examples=_examples, doc="public only")


# -- IsNaN / Where ---------------------------------------------------------------------------------


def isnan_private(ctx, node, args):
    if isinstance(args[0], V.OneHotShare):
        node.fail("IsNaN of a one-hot share")
    return [numpy.zeros(V.shape_of(args[0]), dtype=bool)]


register_op(
    "IsNaN",
    plain=lambda node, args: [numpy.isnan(args[0])],
    private=isnan_private,
    examples=[
        ex("IsNaN", [S("x", (2, 3))]),
        ex("IsNaN", [P("x", (3,))], values={"x": numpy.array([0.0, numpy.nan, 1])}),
    ],
    doc="public: a fixed-point share is never NaN (an all-False array, 0 rounds)",
)


def where_plain(node, args):
    cond, a, b = args
    return [numpy.where(cond, a, b)]


def _branch(node, v, shape):
    """A Where branch as (share or None, finite public part or None, keep) over ``shape``."""
    if isinstance(v, V.MaskedShare):
        return v.share, None, numpy.broadcast_to(v.keep, shape)
    if V.is_public(v):
        p = V.public(v)
        keep = p > V.MASK_BELOW if p.dtype.kind == "f" else numpy.ones(p.shape, bool)
        return None, numpy.broadcast_to(numpy.where(keep, p, 0), shape), numpy.broadcast_to(keep, shape)
    return V.plain_share(node, v, "a branch"), None, numpy.ones(shape, bool)


def where_private(ctx, node, args):
    cond, a, b = args
    if not V.is_public(cond):
        node.fail(f"the condition is a {V.kind(cond)}: Where needs a public condition")
    rt = ctx.rt
    cond = V.public(cond).astype(bool)
    shape = numpy.broadcast_shapes(cond.shape, V.shape_of(a), V.shape_of(b))
    cond = numpy.broadcast_to(cond, shape)
    scales = [_scale(x) for x in (a, b) if V.is_secret(x)]
    if any(isinstance(x, V.OneHotShare) for x in (a, b)):
        node.fail("Where on a one-hot share")
    pubs = [V.public(x) for x in (a, b) if V.is_public(x)]
    scale = max(scales)
    if any(p.dtype.kind == "f" for p in pubs) or len(set(scales)) > 1:
        scale = max(scale, rt.frac_bits)
    sa, pa, ka = _branch(node, a, shape)
    sb, pb, kb = _branch(node, b, shape)
    xp = rt.xp
    zero = xp.zeros(shape, dtype=xp.uint64)

    def comps(s):
        if s is None:
            return zero, zero
        if s.scale < scale:
            s = to_scale(s, scale)
        return xp.broadcast_to(s.first, shape), xp.broadcast_to(s.second, shape)

    (a0, a1), (b0, b1) = comps(sa), comps(sb)
    out = ArithmeticShare(V.select(rt, cond, a0, b0), V.select(rt, cond, a1, b1), scale, rt)
    if pa is not None or pb is not None:
        pub = numpy.where(cond, 0 if pa is None else pa, 0 if pb is None else pb)
        out = V.add_public(out, pub)
    keep = numpy.where(cond, ka, kb)
    return [out if keep.all() else V.MaskedShare(out, keep)]


register_op(
    "Where",
    plain=where_plain,
    private=where_private,
    examples=[
        ex("Where", [P("c", (2, 3), "bool"), S("a", (2, 3)), S("b", (1, 3))]),
        ex("Where", [P("c", (2, 3), "bool"), P("a", ()), S("b", (2, 3))], values={"a": numpy.array(0.0)}),
        ex(
            "Where",
            [P("c", (1, 4), "bool"), P("a", ()), S("b", (2, 4))],
            values={"a": numpy.array(-numpy.inf), "c": numpy.array([[True, False, False, True]])},
        ),
    ],
    doc=LOCAL + " (public condition); a -inf / <= -1e4 public branch gives a masked share",
)
