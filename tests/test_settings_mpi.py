"""The runtime's settings (three ranks): resolved once at init and kept as ``rt.settings``;
tests switch the settings looked up at run time with ``rt.overridden``."""

import dataclasses

import pytest

import mpcgpu
from mpcgpu import settings
from mpcgpu.errors import MPCError

pytestmark = pytest.mark.mpi(min_size=3)


def test_the_runtime_keeps_the_settings_it_was_built_with(rt):
    s = rt.settings
    assert isinstance(s, settings.Settings) and settings.active() is s
    assert s.device == rt.backend.name and s.source("device") == "argument"  # conftest: init(device=...)
    assert rt.comm.waiting in ("spin", "sleep") and (s.wait == "auto" or rt.comm.waiting == s.wait)
    assert rt.insecure_seed == s.insecure_prg_seed
    assert rt.comm.channels.peer_timeout == s.peer_timeout
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.kernels = "array"
    assert rt.kernels.name == __import__("mpcgpu.kernelsets").kernelsets.choose_kernel_set(rt.backend, s.kernels).name


def test_overridden_swaps_the_frozen_object_and_puts_it_back(rt):
    before = rt.settings
    with rt.overridden(compact_weights=True, fault=None) as inside:
        assert rt.settings is inside and settings.active() is inside
        assert inside.compact_weights is True
        assert inside.source("compact_weights") == "argument"
        with rt.overridden(compact_weights=False):
            assert rt.settings.compact_weights is False
        assert rt.settings is inside
    assert rt.settings is before and settings.active() is before


def test_overridden_restores_after_an_error(rt):
    before = rt.settings
    with pytest.raises(ZeroDivisionError):
        with rt.overridden(compact_weights=True):
            raise ZeroDivisionError
    assert rt.settings is before and settings.active() is before


def test_settings_used_at_init_cannot_change_on_a_live_runtime(rt):
    with pytest.raises(MPCError, match="wait: used once at init"):
        with rt.overridden(wait="sleep"):
            pass
    with pytest.raises(MPCError, match="kernels: used once at init"):  # rt.using_kernels switches sets
        with rt.overridden(kernels="array"):
            pass
    with pytest.raises(MPCError, match="MPCGPU_COMPACT_WEIGHTS"):
        with rt.overridden(compact_weights="sometimes"):
            pass
    assert mpcgpu.init(device=rt.backend.name) is rt
    assert mpcgpu.init(kernels=rt.settings.kernels) is rt  # the same value: nothing changes
    assert mpcgpu.init(settings=rt.settings) is rt
    with pytest.raises(MPCError, match="already initialised with other settings"):
        mpcgpu.init(settings=rt.settings.replace(compact_weights=not rt.settings.compact_weights))
    with pytest.raises(MPCError, match="already initialised with other settings"):
        mpcgpu.init(kernels="numba" if rt.settings.kernels != "numba" else "array")
