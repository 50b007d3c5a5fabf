"""The choice of the kernel set (mpcgpu.kernelsets), in one process: the request, the choice
per back end, and that every set offers every step."""

import numpy as np
import pytest

from mpcgpu import kernelsets
from mpcgpu.device.backend import Backend
from mpcgpu.errors import BackendError
from mpcgpu.kernelsets.array import ArraySteps


@pytest.mark.parametrize(
    "value, expected",
    [(None, "auto"), ("", "auto"), ("1", "auto"), ("0", "array"), ("numba", "numba"), (" Array ", "array")],
)
def test_the_request_is_the_kernels_setting(value, expected):
    from mpcgpu.settings import resolve

    env = {} if value is None else {kernelsets.ENV: value}
    assert kernelsets.requested_kernel_set(resolve(env=env)) == expected


def test_auto_chooses_numba_on_the_cpu_where_it_runs_and_the_gpu_slot_on_strict():
    cpu, strict = Backend("cpu"), Backend("strict")
    numba_ok = kernelsets.why_not("numba", cpu) is None
    assert kernelsets.choose_kernel_set(cpu, "auto").name == ("numba" if numba_ok else "array")
    assert kernelsets.choose_kernel_set(strict, "auto").name == "cupy"
    assert kernelsets.choose_kernel_set(cpu, "array").name == "array"
    assert kernelsets.choose_kernel_set(strict, "array").name == "array"
    assert kernelsets.why_not("cupy", cpu) and kernelsets.why_not("numba", strict)
    with pytest.raises(BackendError, match="numba"):
        kernelsets.choose_kernel_set(strict, "numba")
    with pytest.raises(BackendError, match="unknown kernel set"):
        kernelsets.choose_kernel_set(cpu, "fast")
    assert kernelsets.build("array", cpu) is kernelsets.build("array", cpu)  # one instance per back end


def test_every_set_offers_every_step_and_no_other():
    public = {n for n in dir(ArraySteps) if not n.startswith("_") and callable(getattr(ArraySteps, n))}
    assert public - {"why_not"} == set(kernelsets.STEPS)
    for name in kernelsets.KERNEL_SETS:
        cls = kernelsets._class(name)
        assert issubclass(cls, ArraySteps) and cls.name == name
        own = {n for n, v in vars(cls).items() if callable(v) and not n.startswith("_")}
        assert own - {"why_not"} <= set(kernelsets.STEPS), f"{name}: {sorted(own - set(kernelsets.STEPS))}"


def test_numba_steps_compute_the_array_steps_words_locally():
    """Single-step check without MPI: the adder inputs, the MSB tree's level 1 and the
    truncation's opener message on random words (the MPI tests cover every step)."""
    cpu = Backend("cpu")
    if kernelsets.why_not("numba", cpu):
        pytest.skip(kernelsets.why_not("numba", cpu))
    arr, nb = kernelsets.build("array", cpu), kernelsets.build("numba", cpu)
    rng = np.random.default_rng(5)

    def w(*shape):
        return rng.integers(0, 2**64, size=shape, dtype=np.uint64)

    xf, xs, rho, mask = w(1001), w(1001), w(1001), w(1001)
    for neg in (False, True):
        assert np.array_equal(arr.adder_sum(xf, xs, neg, rho), nb.adder_sum(xf, xs, neg, rho))
        for a, b in zip(arr.adder_and(xs, neg, rho, mask), nb.adder_and(xs, neg, rho, mask)):
            assert np.array_equal(a, b)
    g, p = w(2, 777), w(2, 777)
    for pub in ((True, False), (False, True), (False, False)):
        parts = w(777), w(777)
        one = arr.msb_level1(g[0], g[1], p[0], p[1], *pub, parts[0].copy(), parts[1].copy())
        two = nb.msb_level1(g[0], g[1], p[0], p[1], *pub, parts[0].copy(), parts[1].copy())
        assert all(np.array_equal(a, b) for a, b in zip(one, two))
    k = w(5, 300)
    for parts in ((w(300),), (w(300), w(300))):
        for fused in (False, True):
            assert np.array_equal(arr.trunc_open_message(parts, k, fused, 4), nb.trunc_open_message(parts, k, fused, 4))
