"""The runtime's settings (three ranks): resolved once at init and kept as ``rt.settings``;
tests switch the settings looked up at run time with ``rt.overridden``."""

import dataclasses

import pytest

import mpcgpu
from mpcgpu import fused, fused_relu, fused_trunc, settings
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
        s.fused = False


def test_overridden_swaps_the_frozen_object_and_puts_it_back(rt):
    before = rt.settings
    with rt.overridden(fused=False, compact_weights=True) as inside:
        assert rt.settings is inside and settings.active() is inside
        assert inside.fused is False and inside.compact_weights is True
        assert inside.source("fused") == "argument"
        assert not (fused.enabled(rt) or fused_trunc.enabled(rt) or fused_relu.enabled(rt))  # they follow rt.settings
        with rt.overridden(fused=True):
            assert rt.settings.fused and rt.settings.compact_weights is True
        assert rt.settings is inside
    assert rt.settings is before and settings.active() is before


def test_overridden_restores_after_an_error(rt):
    before = rt.settings
    with pytest.raises(ZeroDivisionError):
        with rt.overridden(fused=False):
            raise ZeroDivisionError
    assert rt.settings is before and settings.active() is before


def test_settings_used_at_init_cannot_change_on_a_live_runtime(rt):
    with pytest.raises(MPCError, match="wait: used once at init"):
        with rt.overridden(wait="sleep"):
            pass
    with pytest.raises(MPCError, match="MPCGPU_FUSED"):
        with rt.overridden(fused="sometimes"):
            pass
    assert mpcgpu.init(device=rt.backend.name) is rt
    assert mpcgpu.init(fused=rt.settings.fused) is rt  # the same value: nothing changes
    assert mpcgpu.init(settings=rt.settings) is rt
    with pytest.raises(MPCError, match="already initialised with other settings"):
        mpcgpu.init(settings=rt.settings.replace(compact_weights=not rt.settings.compact_weights))
    with pytest.raises(MPCError, match="already initialised with other settings"):
        mpcgpu.init(fused=not rt.settings.fused)
