"""A strict array module over NumPy that refuses what CuPy refuses (for tests without a GPU).

``MPCGPU_DEVICE=strict`` (or ``device="strict"``) makes this module the runtime's ``xp``.
Its arrays (:class:`ndarray`, a wrapper around a NumPy array) behave like CuPy arrays where
a CPU-only test run would otherwise hide a bug that only a user's GPU run shows:

* no implicit conversion to a host array: ``numpy.asarray(a)``, a NumPy function called on
  it, h5py, an mpi4py buffer, ``a.__index__`` (``range(a)``) all raise :class:`StrictDeviceError`;
  host data moves only through ``Backend.to_device`` / ``Backend.to_host`` (or ``a.get()``);
* no mixing: an operation between a device array and a NumPy array raises (CuPy raises
  ``TypeError: Unsupported type <class 'numpy.ndarray'>``); NumPy *scalars* are fine;
* only the functions CuPy also has: ``xp.NAME`` is served for the names CuPy 14.2 shares
  with NumPy 2.4 (``_CUPY_NAMES``, generated from ``dir(cupy)``), anything else is an
  AttributeError naming the function; array methods likewise (``_CUPY_METHODS``);
* reductions and scalar indexing give 0-d arrays, not NumPy scalars, as CuPy does.

``xp.asarray`` / ``xp.array`` / ``xp.ascontiguousarray`` accept host data (a copy, as
``cupy.asarray`` does); an array's ``[...] = host_array`` is allowed too (CuPy copies it over).
Arithmetic is NumPy's: results are bit-identical to the CPU back end.

The rules bind the package's own code.  A refusal looks at who asked (the first Python
frame outside NumPy, h5py and this module): code of the ``mpcgpu`` package is refused; a
test looking at a device array with NumPy (``np.array_equal(x.reveal_raw(), ref)``) is
served a host view, as a CuPy test would with ``.get()``.
"""

from __future__ import annotations

import os as _os
import sys as _sys

import numpy as _np

_PACKAGE_DIR = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))) + _os.sep  # mpcgpu/, above device/
_PASS_THROUGH = (_os.path.dirname(_os.path.abspath(_np.__file__)) + _os.sep, _os.sep + "h5py" + _os.sep)


class StrictDeviceError(TypeError):
    """A host/device mistake that a CuPy run would hit (a TypeError, like CuPy's)."""


def _refuse(what: str):
    raise StrictDeviceError(
        f"strict back end: {what}. A CuPy array refuses this too; move data explicitly with "
        "Backend.to_host / Backend.to_device (or .get()), and use the runtime's xp functions."
    )


def _package_asks() -> bool:
    """Whether the code asking (first frame outside NumPy, h5py and this module) is mpcgpu's."""
    f = _sys._getframe(2)
    here = _os.path.abspath(__file__)
    while f is not None:
        name = f.f_code.co_filename
        if name == here or any(p in name for p in _PASS_THROUGH):
            f = f.f_back
            continue
        return _os.path.abspath(name).startswith(_PACKAGE_DIR)
    return True


def _host(x):
    """Device arrays (also inside lists and tuples) as NumPy arrays: for tests only."""
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, (list, tuple)):
        return type(x)(_host(v) for v in x)
    if isinstance(x, dict):
        return {k: _host(v) for k, v in x.items()}
    return x


def _unwrap(x, what: str):
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, _np.ndarray) and _package_asks():
        _refuse(f"a NumPy array was mixed with device arrays in {what}")
    if isinstance(x, (list, tuple)):
        return type(x)(_unwrap(v, what) for v in x)
    return x


def _wrap(r):
    if isinstance(r, _np.ndarray):
        return ndarray(r)
    if isinstance(r, _np.generic):
        return ndarray(_np.asarray(r))
    if isinstance(r, tuple):
        return tuple(_wrap(v) for v in r)
    if isinstance(r, list):
        return [_wrap(v) for v in r]
    return r


def _call(fn, name, args, kwargs, host_ok=False):
    if host_ok:
        args = tuple(a._a if isinstance(a, ndarray) else a for a in args)
    else:
        args = _unwrap(args, name)
    out = kwargs.get("out")
    kwargs = {k: _unwrap(v, name) for k, v in kwargs.items()}
    r = fn(*args, **kwargs)
    if out is not None and isinstance(out, ndarray) and r is out._a:
        return out
    return _wrap(r)


# the functions that take host data and copy it to the device (as cupy.asarray does)
_HOST_OK = frozenset({"asarray", "array", "asanyarray", "ascontiguousarray"})


class _Ufunc:
    def __init__(self, uf):
        self._uf = uf
        self.__name__ = uf.__name__

    def __call__(self, *args, **kwargs):
        return _call(self._uf, self.__name__, args, kwargs)

    def __getattr__(self, attr):
        if attr not in ("reduce", "accumulate", "reduceat", "outer", "at", "nin", "nout", "nargs", "types"):
            raise AttributeError(f"strict back end: cupy.{self.__name__}.{attr} does not exist")
        member = getattr(self._uf, attr)
        if not callable(member):
            return member
        return lambda *a, **k: _call(member, f"{self.__name__}.{attr}", a, k)


def _function(name):
    fn = getattr(_np, name)
    if isinstance(fn, _np.ufunc):
        return _Ufunc(fn)
    if isinstance(fn, type) or not callable(fn):  # dtypes (xp.uint64 is numpy.uint64 in CuPy too)
        return fn
    host_ok = name in _HOST_OK

    def strict_function(*args, **kwargs):
        return _call(fn, name, args, kwargs, host_ok=host_ok)

    strict_function.__name__ = name
    return strict_function


def __getattr__(name):  # module attributes: xp.NAME (PEP 562)
    if name in _CUPY_NAMES and name not in _SUBMODULES:
        value = _function(name)
        globals()[name] = value
        return value
    if name.startswith("__"):
        raise AttributeError(name)
    raise AttributeError(f"strict back end: numpy.{name} has no CuPy counterpart (or is not served here)")


class _StrideTricks:
    @staticmethod
    def as_strided(x, shape=None, strides=None, **kwargs):
        return _wrap(_np.lib.stride_tricks.as_strided(_unwrap(x, "as_strided"), shape, strides, **kwargs))


class _Lib:
    stride_tricks = _StrideTricks()


lib = _Lib()


def _binary(op, reflected=False):
    def method(self, other):
        if isinstance(other, _np.ndarray):
            if _package_asks():
                _refuse(f"a NumPy array operand in '{op.__name__}'")
            return op(other, self._a) if reflected else op(self._a, other)  # a test: host result
        if not isinstance(other, (ndarray, int, float, bool, complex, _np.generic)):
            return NotImplemented
        other = other._a if isinstance(other, ndarray) else other
        r = op(other, self._a) if reflected else op(self._a, other)
        return _wrap(r)

    return method


def _inplace(op):
    def method(self, other):
        if isinstance(other, _np.ndarray) and _package_asks():
            _refuse(f"a NumPy array operand in '{op.__name__}'")
        op(self._a, other._a if isinstance(other, ndarray) else other)
        return self

    return method


class ndarray:  # noqa: N801 (the name CuPy and NumPy use: isinstance(x, xp.ndarray))
    """A device array of the strict back end (a NumPy array inside, CuPy's rules outside)."""

    __slots__ = ("_a",)
    __array_priority__ = 100  # NumPy scalars defer to us: np.uint64(1) + a -> a.__radd__
    __hash__ = None

    def __init__(self, a):
        if not isinstance(a, _np.ndarray):
            raise TypeError("strict.ndarray wraps a NumPy array; use xp.asarray or Backend.to_device")
        self._a = a

    # -- what CuPy refuses -----------------------------------------------------------
    def __array__(self, dtype=None, copy=None):
        if _package_asks():
            _refuse("implicit conversion of a device array to a NumPy array (numpy.asarray, h5py, a NumPy function)")
        return self._a if dtype is None else self._a.astype(dtype)

    def __array_function__(self, func, types, args, kwargs):
        if _package_asks():
            _refuse(f"numpy.{func.__name__} called on a device array (use the runtime's xp.{func.__name__})")
        return func(*_host(args), **_host(kwargs))

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        # NumPy scalars on the left (np.uint64(1) + a) come here; NumPy arrays are refused
        for v in inputs + tuple(kwargs.get("out", ()) or ()):
            if isinstance(v, _np.ndarray):
                if _package_asks():
                    _refuse(f"a NumPy array mixed with device arrays in numpy.{ufunc.__name__}")
                member = ufunc if method == "__call__" else getattr(ufunc, method)
                return member(*_host(inputs), **_host(kwargs))  # a test: host result
        member = ufunc if method == "__call__" else getattr(ufunc, method)
        return _call(member, ufunc.__name__, inputs, kwargs)

    def __index__(self):
        if _package_asks():
            _refuse("a device array used as a Python index (range(a), a list index): use int(a)")
        return self._a.__index__()

    def __contains__(self, item):
        if _package_asks():
            _refuse("'in' on a device array")
        return item in self._a

    # -- explicit moves and Python scalars (allowed for one element, like CuPy) ----------
    def get(self):
        """A host (NumPy) copy."""
        return self._a.copy()

    def set(self, host):
        """Copy a host array into this array."""
        self._a[...] = _np.asarray(host)

    def _scalar(self, kind):
        if self._a.size != 1:
            _refuse(f"{kind.__name__}() of a device array of {self._a.size} elements")
        return kind(self._a.reshape(()).item() if kind is not bool else self._a.reshape(()))

    def __int__(self):
        return self._scalar(int)

    def __float__(self):
        return self._scalar(float)

    def __bool__(self):
        return self._scalar(bool)

    def __complex__(self):
        return self._scalar(complex)

    # -- attributes ----------------------------------------------------------------------
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    nbytes = property(lambda self: self._a.nbytes)
    itemsize = property(lambda self: self._a.itemsize)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: ndarray(self._a.T))
    mT = property(lambda self: ndarray(self._a.mT))
    real = property(lambda self: ndarray(self._a.real))
    imag = property(lambda self: ndarray(self._a.imag))
    base = property(lambda self: None if self._a.base is None else ndarray(_np.asarray(self._a.base)))

    @shape.setter
    def shape(self, value):
        self._a.shape = value

    def __getattr__(self, name):
        if name.startswith("__") or (name not in _CUPY_METHODS and _package_asks()):
            raise AttributeError(f"strict back end: a CuPy array has no attribute {name!r}")
        member = getattr(self._a, name)
        return lambda *a, **k: _call(member, name, a, k)

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        for row in self._a:
            yield _wrap(row)

    def __getitem__(self, key):
        return _wrap(self._a[_index(key)])

    def __setitem__(self, key, value):
        self._a[_index(key)] = value._a if isinstance(value, ndarray) else value

    def __repr__(self):
        return "strict." + repr(self._a)

    def __str__(self):
        return str(self._a)

    def __copy__(self):
        return ndarray(self._a.copy())

    def __deepcopy__(self, memo):
        return ndarray(self._a.copy())

    def __reduce__(self):  # CuPy arrays pickle too (through a host copy)
        return (ndarray, (self._a.copy(),))

    def __neg__(self):
        return _wrap(-self._a)

    def __pos__(self):
        return _wrap(+self._a)

    def __invert__(self):
        return _wrap(~self._a)

    def __abs__(self):
        return _wrap(abs(self._a))


def _index(key):
    if isinstance(key, ndarray):
        return key._a
    if isinstance(key, tuple):
        return tuple(k._a if isinstance(k, ndarray) else k for k in key)
    return key


_OPS = {
    "add": "add",
    "sub": "sub",
    "mul": "mul",
    "truediv": "truediv",
    "floordiv": "floordiv",
    "mod": "mod",
    "pow": "pow",
    "matmul": "matmul",
    "and": "and_",
    "or": "or_",
    "xor": "xor",
    "lshift": "lshift",
    "rshift": "rshift",
}


def _install_operators():
    import operator

    for name, opname in _OPS.items():
        op = getattr(operator, opname)
        setattr(ndarray, f"__{name}__", _binary(op))
        setattr(ndarray, f"__r{name}__", _binary(op, reflected=True))
        if name != "matmul":  # CuPy has no in-place @= (neither does it matter)
            setattr(ndarray, f"__i{name}__", _inplace(getattr(operator, "i" + opname.rstrip("_"))))
    for name in ("eq", "ne", "lt", "le", "gt", "ge"):
        setattr(ndarray, f"__{name}__", _binary(getattr(operator, name)))
    ndarray.__divmod__ = _binary(divmod)


_install_operators()

#: array methods of cupy.ndarray (14.2) served here (the rest of NumPy's are refused)
_CUPY_METHODS = frozenset(
    "all any argmax argmin argpartition argsort astype byteswap choose clip compress conj conjugate copy "
    "cumprod cumsum diagonal dot fill flatten item max mean min nonzero partition prod ptp put ravel "
    "repeat reshape round searchsorted sort squeeze std sum swapaxes take tobytes tolist trace transpose "
    "var view".split()
)

_SUBMODULES = frozenset({"exceptions", "fft", "lib", "linalg", "polynomial", "random", "testing", "typing"})

#: the public names NumPy 2.4 and CuPy 14.2 share (generated: sorted(set(dir(numpy)) & set(dir(cupy))))
_CUPY_NAMES = frozenset(
    """
    abs absolute acos acosh add all allclose amax amin angle any append apply_along_axis apply_over_axes arange arccos
    arccosh arcsin arcsinh arctan arctan2 arctanh argmax argmin argpartition argsort argwhere around array array2string
    array_equal array_equiv array_repr array_split array_str asanyarray asarray asarray_chkfinite ascontiguousarray
    asfortranarray asin asinh astype atan atan2 atanh atleast_1d atleast_2d atleast_3d average bartlett base_repr
    binary_repr bincount bitwise_and bitwise_count bitwise_invert bitwise_left_shift bitwise_not bitwise_or
    bitwise_right_shift bitwise_xor blackman bool bool_ broadcast broadcast_arrays broadcast_shapes broadcast_to byte c_
    can_cast cbrt cdouble ceil choose clip column_stack common_type complex128 complex64 complexfloating compress concat
    concatenate conj conjugate convolve copy copysign copyto corrcoef correlate cos cosh count_nonzero cov cross csingle
    cumprod cumsum cumulative_prod cumulative_sum deg2rad degrees delete diag diag_indices diag_indices_from diagflat
    diagonal diff digitize divide divmod dot double dsplit dstack dtype e ediff1d einsum empty empty_like equal
    euler_gamma exceptions exp exp2 expand_dims expm1 extract eye fabs fft fill_diagonal finfo fix flatiter flatnonzero
    flip fliplr flipud float16 float32 float64 float_power floating floor floor_divide fmax fmin fmod
    format_float_positional format_float_scientific frexp from_dlpack frombuffer fromfile fromfunction fromiter
    fromstring full full_like gcd generic genfromtxt get_printoptions gradient greater greater_equal half hamming
    hanning heaviside histogram histogram2d histogramdd hsplit hstack hypot i0 identity iinfo imag index_exp indices
    inexact inf inner int16 int32 int64 int8 int_ intc integer interp intersect1d intp invert isclose iscomplex
    iscomplexobj isdtype isfinite isfortran isin isinf isnan isneginf isposinf isreal isrealobj isscalar issubdtype
    iterable ix_ kaiser kron lcm ldexp left_shift less less_equal lexsort lib linalg linspace load loadtxt log log10
    log1p log2 logaddexp logaddexp2 logical_and logical_not logical_or logical_xor logspace long longlong mask_indices
    matmul matrix_transpose max maximum may_share_memory mean median meshgrid mgrid min min_scalar_type minimum
    mintypecode mod modf moveaxis multiply nan nan_to_num nanargmax nanargmin nancumprod nancumsum nanmax nanmean
    nanmedian nanmin nanprod nanstd nansum nanvar ndarray ndim ndindex negative newaxis nextafter nonzero not_equal
    number ogrid ones ones_like outer packbits pad partition percentile permute_dims pi piecewise place poly poly1d
    polyadd polyfit polymul polynomial polysub polyval positive pow power printoptions prod promote_types ptp put
    put_along_axis putmask quantile r_ rad2deg radians random ravel ravel_multi_index real real_if_close reciprocal
    remainder repeat require reshape resize result_type right_shift rint roll rollaxis roots rot90 round row_stack s_
    save savetxt savez savez_compressed searchsorted select set_printoptions setdiff1d setxor1d shape shares_memory
    short show_config sign signbit signedinteger sin sinc single sinh size sort sort_complex split sqrt square squeeze
    stack std subtract sum swapaxes take take_along_axis tan tanh tensordot testing tile trace transpose trapezoid tri
    tril tril_indices tril_indices_from trim_zeros triu triu_indices triu_indices_from true_divide trunc typename typing
    ubyte ufunc uint uint16 uint32 uint64 uint8 uintc uintp ulong ulonglong union1d unique unique_all unique_counts
    unique_inverse unique_values unpackbits unravel_index unsignedinteger unwrap ushort vander var vdot vectorize vsplit
    vstack where zeros zeros_like
""".split()
)
