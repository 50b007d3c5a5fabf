"""The approximation planner's public outputs are checked to agree across the three parties
before they are used (mpcgpu.protocols.approx.agreed)."""

import dataclasses

import numpy as np
import pytest

from mpcgpu.errors import ProtocolError
from mpcgpu.protocols import approx
from reference import shared

pytestmark = pytest.mark.mpi(min_size=3)


def test_first_use_checks_the_plan_and_costs_no_protocol_round(rt, seeded):
    domain = (0.37, 411.0)  # a domain no other test uses: this is the plan's first use
    plan = approx.plan_reciprocal(domain, rt=rt)
    assert (id(rt), approx.plan_digest(plan)) not in approx._AGREED
    x = seeded.uniform(*domain, 200)
    s = shared(rt, x)
    with rt.comm.measure() as m:
        ys = approx.reciprocal(s, domain=domain)
    assert (id(rt), approx.plan_digest(plan)) in approx._AGREED
    assert m.rounds == plan.rounds  # the agreement message is set-up, not part of the protocol
    y = ys.reveal()
    assert np.abs(y - 1 / x).max() < 1e-3 * np.abs(1 / x).max() + 2**-12


@pytest.mark.parametrize("field", ["H", "offset", "iterations"])
def test_a_plan_that_differs_on_one_party_stops_every_party(rt, seeded, field, monkeypatch):
    domain = (0.53 + 0.01 * ["H", "offset", "iterations"].index(field), 97.0)
    real = approx.plan_reciprocal
    if rt.rank == 1:  # party 1's floating point "differs": its plan is off in one field

        def skewed(*a, **k):
            plan = real(*a, **k)
            v = getattr(plan, field)
            return dataclasses.replace(plan, **{field: v + 1 if isinstance(v, int) else v * (1 + 2**-52)})

        monkeypatch.setattr(approx, "plan_reciprocal", skewed)
    s = shared(rt, seeded.uniform(*domain, 50))
    with pytest.raises(ProtocolError, match="parties disagree on the reciprocal plan"):
        approx.reciprocal(s, domain=domain)
    # nothing was computed with the plans: the parties are still in step
    assert np.allclose((s * 2).reveal(), 2 * s.reveal())


def test_the_digest_covers_every_field(rt):
    plan = approx.plan_inv_sqrt((0.5, 64.0), rt=rt)
    base = approx.plan_digest(plan)
    for f in dataclasses.fields(plan):
        v = getattr(plan, f.name)
        if isinstance(v, bool) or v is None:
            continue
        if isinstance(v, (int, float)):
            changed = dataclasses.replace(plan, **{f.name: v + 1})
        elif isinstance(v, tuple):
            changed = dataclasses.replace(plan, **{f.name: v + (0,)})
        else:
            changed = dataclasses.replace(plan, **{f.name: str(v) + "x"})
        assert approx.plan_digest(changed) != base, f.name
