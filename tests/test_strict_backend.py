"""The strict back end (mpcgpu.device.strict): CuPy's refusals for the package's code, NumPy's
arithmetic bit for bit (single process)."""

import os

import h5py
import numpy as np
import pytest

import mpcgpu
from mpcgpu.device import strict
from mpcgpu.device.backend import Backend, array_module, is_device_array
from mpcgpu.device.strict import StrictDeviceError

PACKAGE_DIR = os.path.dirname(os.path.abspath(mpcgpu.__file__))


def as_package_code(src: str):
    """Run ``src`` as if it were a module of the mpcgpu package (its frames carry a file name
    inside the package), returning its namespace; the strict rules bind such code."""
    ns = {"np": np, "xp": strict}
    exec(compile(src, os.path.join(PACKAGE_DIR, "_strict_probe.py"), "exec"), ns)
    return ns


@pytest.fixture
def be():
    return Backend("strict")


def test_selected_by_name_and_environment(be, monkeypatch):
    assert be.name == "strict" and be.xp is strict and be.is_gpu
    from mpcgpu import settings

    monkeypatch.setattr(settings, "_ACTIVE", settings.resolve(env={"MPCGPU_DEVICE": "strict"}))
    assert Backend().name == "strict"
    monkeypatch.setattr(settings, "_ACTIVE", settings.resolve(env={"MPCGPU_DEVICE": "cpu"}))
    assert Backend().name == "cpu"


def test_moves_are_explicit_copies(be):
    host = np.arange(10, dtype=np.uint64)
    dev = be.to_device(host)
    assert is_device_array(dev) and array_module(dev) is strict
    host[0] = 99  # the device copy does not see it
    back = be.to_host(dev)
    assert type(back) is np.ndarray and back[0] == 0
    back[1] = 77
    assert int(dev[1]) == 1


REFUSED = {
    "np.asarray": "np.asarray(a)",
    "np.array_equal": "np.array_equal(a, a)",
    "numpy function": "np.concatenate([a, a])",
    "numpy ufunc on mixed": "np.add(a, np.ones(4, np.uint64))",
    "mixing operand": "a + np.ones(4, np.uint64)",
    "mixing reflected": "np.ones(4, np.uint64) ^ a",
    "mixing in-place": "a += np.ones(4, np.uint64)",
    "mixing in xp function": "xp.concatenate([a, np.ones(4, np.uint64)])",
    "float of many": "float(a)",
    "index": "list(range(10))[a[0]]",
    "contains": "3 in a",
    "numpy-only method": "a.resize((2, 2))",
    "numpy-only function": "xp.fromregex",
    "numpy-only submodule": "xp.random",
}


@pytest.mark.parametrize("what", sorted(REFUSED))
def test_package_code_is_refused_what_cupy_refuses(what):
    with pytest.raises((StrictDeviceError, AttributeError)) as info:
        as_package_code(f"a = xp.arange(4, dtype=xp.uint64)\n{REFUSED[what]}\n")
    assert "strict back end" in str(info.value) or "CuPy" in str(info.value)


def test_h5py_and_mpi_buffers_refuse_device_arrays(be, tmp_path):
    a = be.to_device(np.arange(4, dtype=np.uint64))
    with pytest.raises(TypeError):
        as_package_code(
            "import h5py\nf = h5py.File(PATH, 'w')\ntry:\n    f['x'] = A\nfinally:\n    f.close()\n".replace(
                "PATH", repr(str(tmp_path / "x.h5"))
            ).replace("A", "xp.asarray(np.arange(3))")
        )
    from mpi4py import MPI

    with pytest.raises(TypeError):
        MPI.COMM_SELF.Isend([a, MPI.BYTE], 0)
    with h5py.File(tmp_path / "ok.h5", "w") as f:  # through to_host it works
        f["x"] = be.to_host(a)


def test_allowed_operations_match_numpy_bit_for_bit(be):
    rng = np.random.default_rng(7)
    x = rng.integers(0, 2**64, size=(5, 7), dtype=np.uint64)
    y = rng.integers(0, 2**64, size=(5, 7), dtype=np.uint64)
    ns = as_package_code(
        "def f(a, b):\n"
        "    out = [a + b, a - b, a * b, a ^ b, a & b, a | b, a >> 3, a << xp.uint64(5), ~a, -a,\n"
        "           xp.concatenate([a, b]), xp.stack([a, b]), a.T.copy(), a.reshape(7, 5), a.view(xp.int64),\n"
        "           a.sum(axis=0), xp.bitwise_xor.reduce(a, axis=1), (a < b), a[1:3, ::2], xp.where(a < b, a, b),\n"
        "           a.astype(xp.float64) @ b.astype(xp.float64).T, xp.uint64(3) * a, 7 - a]\n"
        "    c = a.copy()\n"
        "    c += b\n"
        "    c[0] = 0\n"
        "    c[1, :] = b[2]\n"
        "    out.append(c)\n"
        "    s = a.sum()\n"
        "    return out, s, int(a[0, 0]), bool(a[0, 0] == a[0, 0])\n"
    )
    got, total, first, same = ns["f"](be.to_device(x), be.to_device(y))
    c = x.copy()
    c += y
    c[0] = 0
    c[1, :] = y[2]
    want = [
        x + y,
        x - y,
        x * y,
        x ^ y,
        x & y,
        x | y,
        x >> np.uint64(3),
        x << np.uint64(5),
        ~x,
        -x,
        np.concatenate([x, y]),
        np.stack([x, y]),
        x.T.copy(),
        x.reshape(7, 5),
        x.view(np.int64),
        x.sum(axis=0),
        np.bitwise_xor.reduce(x, axis=1),
        x < y,
        x[1:3, ::2],
        np.where(x < y, x, y),
        x.astype(np.float64) @ y.astype(np.float64).T,
        np.uint64(3) * x,
        np.uint64(7) - x,
        c,
    ]
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert is_device_array(g)
        h = be.to_host(g)
        assert h.dtype == w.dtype and np.array_equal(h, w)
    assert is_device_array(total) and total.shape == ()  # a 0-d array, as CuPy returns
    assert int(total) == int(x.sum()) and first == int(x[0, 0]) and same


def test_tests_may_look_at_device_arrays_with_numpy(be):
    a = be.to_device(np.arange(4, dtype=np.uint64))
    assert np.array_equal(a, np.arange(4, dtype=np.uint64))  # from a test: served a host view
    assert (a == np.arange(4, dtype=np.uint64)).all()


def test_served_names_exist_in_cupy():
    cupy = pytest.importorskip("cupy")
    missing = sorted(n for n in strict._CUPY_NAMES if not hasattr(cupy, n))
    assert not missing
    methods = sorted(n for n in strict._CUPY_METHODS if not hasattr(cupy.ndarray, n))
    assert not methods
