"""Plain data from a peer: the pickles of the object channel (``bcast_object`` and friends).

A peer is authenticated but not trusted with this process (another organisation's
server), so what it sends is read as *values*, never code, and within bounds:

* a message is at most :data:`MAX_OBJECT_BYTES` (8 MiB); the peer's size prefix is checked
  against it (and against a negative size) before anything is allocated, and a party
  refuses to send a larger object itself;
* a pickle may name only plain data: containers and numbers (built by the pickle's own
  opcodes), ``slice``, ``complex``, ``OrderedDict``, NumPy dtypes, arrays and scalars
  without Python objects inside (through checked stand-ins for NumPy's own functions),
  the strict back end's arrays.  Nothing that builds a
  large value from a small one (``bytearray(n)``, ``range``, ``set``/``frozenset`` of an
  iterable) and no callable that runs code: what a pickle allocates stays within a few
  tens of times its own size (about 50 x for a pickle of nothing but empty lists, the
  worst case: some 400 MiB at the largest size);
* an array or scalar is at most :data:`MAX_OBJECT_BYTES` before it is allocated, and the
  value is nested at most :data:`MAX_DEPTH` levels;
* whatever goes wrong while reading (malformed opcodes, ``MemoryError``,
  ``RecursionError``, a refused name) is a :class:`~mpcgpu.errors.ProtocolError` naming
  the peer.
"""

from __future__ import annotations

import io
import pickle
from collections import OrderedDict

import numpy

from mpcgpu.errors import ProtocolError

#: the largest pickle the object channel carries (the messages are metadata: shapes, ids,
#: per-step figures); a peer's size prefix above it is refused before allocating
MAX_OBJECT_BYTES = 8 << 20
#: the deepest nesting of containers a peer's value may have
MAX_DEPTH = 100
PROTOCOL = 5  # bytes and bytearray by length-prefixed opcodes, not by a call

_MULTIARRAY = ("numpy.core.multiarray", "numpy._core.multiarray")


def _refuse(what: str):
    raise pickle.UnpicklingError(what)


def _checked_dtype(dtype):
    if not isinstance(dtype, numpy.dtype):
        _refuse(f"{type(dtype).__name__} is not a dtype")
    if dtype.hasobject:
        _refuse("a dtype of Python objects is not plain data")
    if dtype.itemsize > MAX_OBJECT_BYTES:
        _refuse(f"an item of {dtype.itemsize} bytes is larger than {MAX_OBJECT_BYTES}")
    return dtype


def _dtype(*args):
    return _checked_dtype(numpy.dtype(*args))


def _dtype_class(cls):
    def make(*args):
        return _checked_dtype(cls(*args))

    return make


class _NdarrayName:
    """Stands for ``numpy.ndarray`` in a pickle: only :func:`_reconstruct` takes it."""

    def __new__(cls, *args, **kwargs):
        _refuse("numpy.ndarray(...) is not a way to send an array")


def _reconstruct(subtype, shape, dtype):
    if subtype is not _NdarrayName:
        _refuse("_reconstruct of something other than numpy.ndarray")
    if not isinstance(shape, tuple) or not all(isinstance(s, int) and s >= 0 for s in shape):
        _refuse("an array shape must be a tuple of non-negative ints")
    dtype = _checked_dtype(numpy.dtype(dtype))
    count = 1
    for s in shape:
        count *= s
    if count * dtype.itemsize > MAX_OBJECT_BYTES:
        _refuse(f"an array of {count} x {dtype.itemsize} bytes is larger than {MAX_OBJECT_BYTES}")
    return _REAL[("numpy._core.multiarray", "_reconstruct")](numpy.ndarray, shape, dtype)


def _scalar(dtype, *data):
    return _REAL[("numpy._core.multiarray", "scalar")](_checked_dtype(dtype), *data)


def _frombuffer(buf, dtype, *args):
    """Protocol 5's array: a view of the pickle's own bytes, reshaped (numpy checks the size)."""
    if not isinstance(buf, (bytes, bytearray, pickle.PickleBuffer)):
        _refuse("an array buffer must be bytes")
    return _REAL[("numpy._core.numeric", "_frombuffer")](buf, _checked_dtype(dtype), *args)


def _real(module, name):
    import importlib

    for mod in (module, module.replace("._core.", ".core.")):
        try:
            return getattr(importlib.import_module(mod), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"{module}.{name}")


_REAL = {(_MULTIARRAY[1], n): _real(_MULTIARRAY[1], n) for n in ("_reconstruct", "scalar")}
_REAL[("numpy._core.numeric", "_frombuffer")] = _real("numpy._core.numeric", "_frombuffer")

#: what a peer's pickle may name, and what it gets for the name
_ALLOWED = {
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
    ("collections", "OrderedDict"): OrderedDict,
    ("numpy", "dtype"): _dtype,
    ("numpy", "ndarray"): _NdarrayName,
    **{(m, "_reconstruct"): _reconstruct for m in _MULTIARRAY},
    **{(m, "scalar"): _scalar for m in _MULTIARRAY},
    **{(m, "_frombuffer"): _frombuffer for m in ("numpy.core.numeric", "numpy._core.numeric")},
    **{
        ("numpy.dtypes", name): _dtype_class(getattr(numpy.dtypes, name))
        for name in dir(numpy.dtypes)
        if name.endswith("DType") and name not in ("ObjectDType", "StringDType")
    },
}


class _DataOnlyUnpickler(pickle.Unpickler):
    """Unpickles data, refuses anything else (see the module's docstring)."""

    def find_class(self, module, name):
        if module == "mpcgpu.device.strict" and name == "ndarray":
            from mpcgpu.device.strict import ndarray

            return ndarray
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"{module}.{name} is not plain data") from None


def check_size(nbytes: int, peer: int) -> int:
    """The size a peer announced, if the object channel carries it; else ProtocolError."""
    nbytes = int(nbytes)
    if not 0 <= nbytes <= MAX_OBJECT_BYTES:
        raise ProtocolError(
            f"party {peer} announced an object of {nbytes} bytes: the object channel carries "
            f"0 to {MAX_OBJECT_BYTES} bytes"
        )
    return nbytes


_SCALARS = frozenset([int, float, bool, str, bytes, bytearray, complex, type(None)])


def _check_value(obj, budget: int):
    """Refuse (UnpicklingError) a value nested deeper than MAX_DEPTH, one whose walk visits
    more than ``budget`` containers and items (a tree of plain data costs a pickle byte or
    more per item: only cycles and references shared over and over, a DAG with
    exponentially many paths, exceed the pickle's length), or one with an array of Python
    objects.  Iterative: no recursion on the peer's nesting, and at most ``budget`` steps."""
    from mpcgpu.device.strict import ndarray as strict_ndarray

    containers = (list, tuple, dict, set, frozenset, slice)
    todo = [(obj, 1)]
    while todo:
        item, depth = todo.pop()
        if isinstance(item, containers):
            if depth > MAX_DEPTH:
                _refuse(f"a value nested deeper than {MAX_DEPTH} levels")
            if isinstance(item, dict):
                children = [*item.keys(), *item.values()]
            elif isinstance(item, slice):
                children = [item.start, item.stop, item.step]
            else:
                children = item
            budget -= 1 + len(children)
            if budget < 0:
                _refuse("a value with cycles or too many shared references")
            scalars = _SCALARS
            todo.extend((c, depth + 1) for c in children if type(c) not in scalars)
        elif isinstance(item, (numpy.ndarray, numpy.generic)):
            _checked_dtype(item.dtype)
        elif isinstance(item, strict_ndarray):
            _checked_dtype(item._a.dtype)


def loads(data: bytes, peer: int):
    """A peer's pickle as plain data; ProtocolError (naming ``peer``) for anything else."""
    try:
        check_size(len(data), peer)
        obj = _DataOnlyUnpickler(io.BytesIO(data)).load()
        _check_value(obj, len(data) + 64)
        return obj
    except ProtocolError:
        raise
    except Exception as exc:  # MemoryError and RecursionError too: all from the peer's bytes
        raise ProtocolError(
            f"party {peer} sent a message that is not plain data ({type(exc).__name__}: {exc})"
        ) from None
