"""The CPU ring kernel chosen per product shape (mpcgpu.ring.choice): the setting, the
calibration grid and its cache, the nearest grid point, the robust timing, and that every
choice gives the same words (no timing is asserted: the clocks are faked)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mpcgpu.errors import BackendError
from mpcgpu.ring import choice as kernels, native, products as ring
from mpcgpu.settings import resolve

M64 = 2**64
needs_native = pytest.mark.skipif(not native.available(), reason="numba not available")


def settings(tmp_path, kernel):
    return resolve(env={"XDG_CACHE_HOME": str(tmp_path), kernels.ENV: kernel})


def rand(rng, *shape):
    return rng.integers(0, M64, size=shape, dtype=np.uint64)


def matmul_py(a, b):
    return np.array((a.astype(object) @ b.astype(object)) % M64, dtype=np.uint64)


@pytest.fixture(autouse=True)
def fresh_choice(monkeypatch):
    monkeypatch.setattr(kernels, "_CHOICE", None)
    monkeypatch.setattr(ring, "INTEGER_FALLBACK", False)


CHOICES = {"limbs": lambda a, b: ring.matmul(a, b, scheme="K22"), "native": native.matmul}


def test_forced_kernels_and_a_bad_setting(tmp_path, monkeypatch):
    assert kernels.choice(CHOICES, settings(tmp_path, "limbs")) == {
        "kernel": "limbs",
        "why": f"forced by {kernels.ENV}",
        "grid": None,
    }
    monkeypatch.setattr(kernels, "_CHOICE", None)
    with pytest.raises(BackendError, match="limbs, native or auto"):
        kernels.choice(CHOICES, settings(tmp_path, "bogus"))
    forced = {"kernel": "native", "why": "forced", "grid": None}
    assert kernels.kernel_for(forced, 16, 4096, 4096, 4096) == "native"  # no grid: one kernel for all


def fake_grid(winner):
    """A grid over kernels.GRID whose winner is ``winner(shape)``."""
    return [{"shape": list(s), "limbs": 1.0, "native": 2.0, "kernel": winner(tuple(s))} for s in kernels.GRID]


@needs_native
def test_calibration_is_cached_and_the_cached_grid_is_used(tmp_path, monkeypatch):
    calls = []
    big = lambda s: "limbs" if s[1] * s[2] * s[3] >= 2**27 else "native"  # noqa: E731
    monkeypatch.setattr(kernels, "measure", lambda ks: calls.append(1) or fake_grid(big))
    first = kernels.choice(CHOICES, settings(tmp_path, "auto"))
    assert "just now" in first["why"] and len(calls) == 1 and first["kernel"] == "per shape"
    path = tmp_path / "mpcgpu" / "ring-kernel-grid.json"
    cached = json.loads(path.read_text())
    assert cached["grid"] == first["grid"] and "seconds" in cached  # what the calibration cost
    # the cache, edited: 512 x 1024 x 512 now native, everything else limbs
    edited = [dict(r, kernel="native" if r["shape"] == [1, 512, 1024, 512] else "limbs") for r in cached["grid"]]
    path.write_text(json.dumps(dict(cached, grid=edited)))
    monkeypatch.setattr(kernels, "_CHOICE", None)
    again = kernels.choice(CHOICES, settings(tmp_path, "auto"))
    assert "cached" in again["why"] and len(calls) == 1 and again["grid"] == edited
    assert kernels.kernel_for(again, 1, 1000, 1000, 700) == "native"
    assert kernels.kernel_for(again, 1, 2048, 500, 50) == "limbs"
    # another key (another CPU or software): measured again
    monkeypatch.setattr(kernels, "_CHOICE", None)
    monkeypatch.setattr(kernels, "GRID_REVISION", kernels.GRID_REVISION + 1)
    kernels.choice(CHOICES, settings(tmp_path, "auto"))
    assert len(calls) == 2
    # an old cache file (one kernel per machine, no grid) is measured again too
    path.write_text(json.dumps({"key": kernels._key("array"), "kernel": "native", "seconds": {}}))
    monkeypatch.setattr(kernels, "_CHOICE", None)
    kernels.choice(CHOICES, settings(tmp_path, "auto"), limb_steps="array")
    assert len(calls) == 3


@needs_native
def test_products_follow_the_cached_grid(monkeypatch):
    """The kernel of the nearest grid point computes each product: spy on the native entry points."""
    grid = fake_grid(lambda s: "native" if s[3] == 64 else "limbs")  # narrow outputs native
    monkeypatch.setattr(kernels, "_CHOICE", {"kernel": "per shape", "why": "test", "grid": grid})
    seen = []
    for name in ("matmul", "conv2d", "conv2d_grad_input", "conv2d_grad_weight"):
        real = getattr(native, name)
        monkeypatch.setattr(native, name, lambda *a, _real=real, _n=name, **k: seen.append(_n) or _real(*a, **k))
    rng = np.random.default_rng(1)
    a, b_narrow, b_wide = rand(rng, 20, 200), rand(rng, 200, 60), rand(rng, 200, 600)
    assert (ring.matmul(a, b_narrow) == matmul_py(a, b_narrow)).all() and seen == ["matmul"]
    assert (ring.matmul(a, b_wide) == matmul_py(a, b_wide)).all() and seen == ["matmul"]
    x, w = rand(rng, 1, 3, 12, 12), rand(rng, 64, 3, 3, 3)  # M = 100, K = 27, N = 64: native
    y = ring.conv2d(x, w)
    assert seen[-1] == "conv2d"
    w_wide = rand(rng, 512, 3, 3, 3)  # N = 512: limbs
    ring.conv2d(x, w_wide)
    assert seen[-1] == "conv2d" and len(seen) == 2
    ring.conv2d_grad_weight(x, y, w.shape)  # M = 64 (O), K = 100, N = 27
    ring.conv2d_grad_input(y, w, x.shape)
    expect = kernels.kernel_for(kernels._CHOICE, 1, 64, 100, 27), kernels.kernel_for(kernels._CHOICE, 1, 100, 64, 27)
    assert seen[2:] == [n for n, k in zip(("conv2d_grad_weight", "conv2d_grad_input"), expect) if k == "native"]


def test_nearest_grid_point():
    grid = [
        {"shape": [1, 128, 256, 64], "kernel": "native"},
        {"shape": [1, 1024, 1024, 512], "kernel": "limbs"},
        {"shape": [16, 128, 64, 128], "kernel": "native"},
    ]
    current = {"kernel": "per shape", "grid": grid}
    assert kernels.kernel_for(current, 1, 1024, 1024, 1024) == "limbs"
    assert kernels.kernel_for(current, 1, 2048, 2048, 2048) == "limbs"
    assert kernels.kernel_for(current, 1, 100, 300, 50) == "native"
    assert kernels.kernel_for(current, 12, 128, 64, 128) == "native"
    assert kernels.kernel_for(current, 1, 0, 0, 0) == "native"  # empty dimensions count as 1


@needs_native
@pytest.mark.parametrize("pattern", ["limbs", "native", "alternate", "by size"])
def test_every_grid_gives_the_same_words(monkeypatch, pattern):
    """Whatever a (forced) grid says, each product is exact: parties may differ in it."""
    order = {tuple(s): i for i, s in enumerate(kernels.GRID)}
    winner = {
        "limbs": lambda s: "limbs",
        "native": lambda s: "native",
        "alternate": lambda s: ("limbs", "native")[order[s] % 2],
        "by size": lambda s: "native" if s[1] * s[2] * s[3] < 2**24 else "limbs",
    }[pattern]
    monkeypatch.setattr(kernels, "_CHOICE", {"kernel": "per shape", "why": "test", "grid": fake_grid(winner)})
    rng = np.random.default_rng(7)
    for m, k, n in [(3, 5, 2), (130, 257, 65), (1025 // 8, 513, 33), (9, 1025, 70)]:
        a, b = rand(rng, m, k), rand(rng, k, n)
        assert (ring.matmul(a, b) == matmul_py(a, b)).all()
    a, b = rand(rng, 16, 20, 9), rand(rng, 16, 9, 24)  # batched: the batch class
    assert (ring.matmul(a, b) == np.stack([matmul_py(x, y) for x, y in zip(a, b)])).all()
    x, w = rand(rng, 2, 4, 9, 9), rand(rng, 6, 4, 3, 3)
    monkeypatch.setattr(kernels, "_CHOICE", {"kernel": "limbs", "why": "test", "grid": None})
    ref = ring.conv2d(x, w, padding=1)
    monkeypatch.setattr(kernels, "_CHOICE", {"kernel": "per shape", "why": "test", "grid": fake_grid(winner)})
    assert (ring.conv2d(x, w, padding=1) == ref).all()


class FakeClock:
    """process_time / perf_counter of runs with given (cpu, wall) seconds."""

    def __init__(self, runs):
        self.runs, self.cpu, self.wall, self.calls = list(runs), 0.0, 0.0, 0

    def fn(self):
        cpu, wall = self.runs.pop(0)
        self.cpu += cpu
        self.wall += wall
        self.calls += 1


def test_timing_takes_the_minimum_and_reruns_disturbed_runs(monkeypatch):
    clock = FakeClock([(0.5, 1.0), (0.2, 1.0), (1.0, 1.0), (0.9, 0.95), (1.1, 1.1), (0.0, 0.01)])
    monkeypatch.setattr(kernels, "AGREE", 0.0)
    monkeypatch.setattr(kernels.time, "process_time", lambda: clock.cpu)
    monkeypatch.setattr(kernels.time, "perf_counter", lambda: clock.wall)
    # runs 1-2 were disturbed (half a core, a fifth): thrown away, not counted; then 3 clean ones
    assert kernels.timed(clock.fn, repeats=3, retries=4) == pytest.approx(0.95)
    assert clock.calls == 5
    # every try disturbed: the minimum of them all
    clock = FakeClock([(0.1, 1.0), (0.1, 0.7), (0.1, 0.9)])
    monkeypatch.setattr(kernels.time, "process_time", lambda: clock.cpu)
    monkeypatch.setattr(kernels.time, "perf_counter", lambda: clock.wall)
    assert kernels.timed(clock.fn, repeats=2, retries=3) == pytest.approx(0.7) and clock.calls == 3
    # a loaded machine: at most `retries` disturbed runs
    clock = FakeClock([(0.1, 1.0), (1.0, 1.0), (0.1, 0.5), (0.1, 0.4), (9, 9)])
    monkeypatch.setattr(kernels.time, "process_time", lambda: clock.cpu)
    monkeypatch.setattr(kernels.time, "perf_counter", lambda: clock.wall)
    assert kernels.timed(clock.fn, repeats=3, retries=3) == pytest.approx(1.0) and clock.calls == 4
    # two clean runs that agree within AGREE end the timing early
    monkeypatch.setattr(kernels, "AGREE", 0.03)
    clock = FakeClock([(1.0, 1.0), (1.01, 1.01), (5.0, 5.0)])
    monkeypatch.setattr(kernels.time, "process_time", lambda: clock.cpu)
    monkeypatch.setattr(kernels.time, "perf_counter", lambda: clock.wall)
    assert kernels.timed(clock.fn, repeats=3, retries=1) == pytest.approx(1.0) and clock.calls == 2


def test_measure_reports_every_grid_point():
    calls = []
    fns = {"limbs": lambda a, b: calls.append(("limbs", a.shape, b.shape)), "native": lambda a, b: None}
    rows = kernels.measure(fns, grid=((1, 4, 3, 2), (2, 3, 2, 1)), repeats=1)
    assert [r["shape"] for r in rows] == [[1, 4, 3, 2], [2, 3, 2, 1]]
    assert all(r["kernel"] in ("limbs", "native") and r["limbs"] >= 0 for r in rows)
    assert ("limbs", (4, 3), (3, 2)) in calls and ("limbs", (2, 3, 2), (2, 2, 1)) in calls
    lines = kernels.describe({"kernel": "per shape", "why": "test", "grid": rows})
    assert len(lines) == 2 + len(rows) and "1 x 4 x 3 x 2" in lines[2]
