"""The step-time projection of data-parallel training over K groups
(mpcgpu.reporting.groupmodel, `mpcgpu bench training --groups K`): its terms, exactly."""

import numpy as np
import pytest

from mpcgpu.errors import MPCError
from mpcgpu.nn import spec as S
from mpcgpu.nn.models import get_model
from mpcgpu.reporting.groupmodel import (
    ROLE_PROFILES,
    parse_role_network,
    project_groups,
    role_bytes,
    slice_rows,
)
from mpcgpu.reporting.netmodel import Network, parse_network


def test_group_0_takes_the_largest_slice():
    assert [slice_rows(128, k) for k in (1, 2, 3, 4, 5)] == [128, 64, 43, 32, 26]
    assert slice_rows(7, 7) == 1 and slice_rows(1, 1) == 1


def test_role_bytes_are_both_components_of_every_word():
    assert role_bytes(1000, 1020) == {"allreduce": 16_000, "bcast": 16 * 3020}


def test_the_projection_adds_the_role_all_reduce_and_the_broadcast():
    net = Network("x", 1e9, 1e-3)  # 1 GB/s, 1 ms
    p = project_groups(2.0, 100, 5e6, 3, 1000, 1200, net)
    s, sb = 16 * 1000, 16 * (2000 + 1200)
    assert p["allreduce_s"] == pytest.approx(2 * (1e-3 + 2 * s / 1e9), rel=1e-12)
    assert p["bcast_s"] == pytest.approx(1e-3 + 2 * sb / 1e9, rel=1e-12)
    assert p["group_step_s"] == 2.0 and p["network"] == "measured"
    assert p["seconds"] == pytest.approx(2.0 + p["allreduce_s"] + p["bcast_s"], rel=1e-12)
    # on a network between the parties the group's step gains rounds x RTT + bytes / bandwidth
    lan = parse_network("lan")
    q = project_groups(2.0, 100, 5e6, 3, 1000, 1200, net, lan)
    assert q["group_step_s"] == pytest.approx(2.0 + 100 * 0.2e-3 + 5e6 / (10e9 / 8), rel=1e-12)
    assert q["seconds"] - q["group_step_s"] == pytest.approx(p["seconds"] - 2.0, rel=1e-12)


def test_one_group_is_the_measured_step():
    p = project_groups(1.5, 10, 1e6, 1, 1000, 1000, ROLE_PROFILES["node"])
    assert p["allreduce_s"] == 0.0 and p["bcast_s"] == 0.0 and p["seconds"] == 1.5


def test_lenet_role_traffic_and_profiles():
    lenet = get_model("lenet")
    trained = sum(int(np.prod(p.shape)) for p in S.param_specs(lenet) if p.trainable)
    assert 400_000 < trained < 450_000  # 2 x 8 x P: about 7 MB per rank and step
    assert parse_role_network(None) is ROLE_PROFILES["node"]
    assert parse_role_network("IB") is ROLE_PROFILES["ib"]
    custom = parse_role_network("25Gbit,0.05ms")
    assert custom.bandwidth_bytes_per_s == pytest.approx(25e9 / 8) and custom.rtt_s == pytest.approx(5e-5)
    with pytest.raises(MPCError, match="not understood"):
        parse_role_network("fast")
