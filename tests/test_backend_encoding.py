"""Back end selection, fixed-point encoding, the rank-count check (single process)."""

import os
import subprocess
import sys

import numpy as np
import pytest

from mpcgpu.device.backend import Backend, array_module
from mpcgpu.ring.encoding import decode, encode, safe_limit
from mpcgpu.errors import BackendError, EncodingError


def test_cpu_backend_and_array_module():
    b = Backend("cpu")
    assert b.xp is np and b.name == "cpu" and not b.is_gpu
    a = np.arange(3)
    assert b.to_host(b.to_device(a)) is not None
    assert array_module(a) is np


def test_cuda_requested_without_gpu_is_a_clear_error():
    try:
        import cupy

        if cupy.cuda.is_available():
            pytest.skip("a GPU is present")
    except Exception:
        pass
    with pytest.raises(BackendError, match="cuda"):
        Backend("cuda")
    assert Backend("auto").name == "cpu"


def test_unknown_device_and_env(monkeypatch):
    with pytest.raises(BackendError, match="unknown device"):
        Backend("tpu")
    from mpcgpu import settings

    monkeypatch.setattr(settings, "_ACTIVE", settings.resolve(env={"MPCGPU_DEVICE": "cpu"}))
    assert Backend().name == "cpu"  # without a device: the process's settings
    with pytest.raises(BackendError, match="MPCGPU_DEVICE='tpu'"):
        settings.resolve(env={"MPCGPU_DEVICE": "tpu"})


def test_encode_decode_roundtrip_exact_against_python_ints():
    rng = np.random.default_rng(1)
    x = rng.uniform(-(2**31) + 1, 2**31 - 1, 10_000)
    x[:5] = [0.0, 2**-16, -(2**-16), 2**31 - 2**-16, -(2**31 - 2**-16)]
    r = encode(x, 16)
    for v, w in zip(x[:200], r[:200]):
        assert int(w) == round(v * 2**16) % 2**64
    assert np.abs(decode(r, 16) - x).max() <= 2**-17


def test_encode_integers_and_decode_scale0():
    v = np.array([-3, 0, 7])
    r = encode(v, 16)
    assert [int(t) for t in r] == [(-3 << 16) % 2**64, 0, 7 << 16]
    assert decode(encode(v, 0), 0).tolist() == [-3, 0, 7]


@pytest.mark.parametrize("bad", [2.0**31, -(2.0**31), 1e20, np.inf, np.nan])
def test_out_of_range_is_an_error(bad):
    with pytest.raises(EncodingError):
        encode(np.array([1.0, bad]), 16)


def test_safe_limit_depends_on_precision():
    assert safe_limit(16) == 2.0**31
    assert safe_limit(12) == 2.0**39
    with pytest.raises(EncodingError):
        safe_limit(40)


def _mpiexec():
    here = os.path.dirname(sys.executable)
    cand = os.path.join(here, "mpiexec")
    return cand if os.path.exists(cand) else None


def test_wrong_rank_count_fails_fast_on_every_rank():
    mpiexec = _mpiexec()
    if mpiexec is None:
        pytest.skip("no mpiexec next to this python")
    proc = subprocess.run(
        [mpiexec, "-n", "2", sys.executable, "-c", "import mpcgpu; mpcgpu.init()"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert proc.stderr.count("groups of three parties") == 2, proc.stderr
    assert "mpirun -n 3" in proc.stderr
