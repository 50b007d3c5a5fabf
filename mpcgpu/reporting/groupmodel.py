"""The step time of data-parallel training over ``K`` groups of three, projected from one
group's step (``mpcgpu bench training --groups K``).

With ``K`` groups (:mod:`mpcgpu.nn.trainer`) a training step is

1. every group's private step on its slice of the global batch ``B`` (forward, loss
   gradient, backward: the three-party exchanges of one group); group 0's slice is the
   largest, ``ceil(B / K)`` rows, and group 0 also runs the update (clipping and SGD), so
   the step of ONE group on ``ceil(B / K)`` rows, update included, is measured and stands
   for the slowest group;
2. the role all-reduce of the gradient shares: each party's ``K`` ranks add up both of
   their components, ``S = 2 x 8 x P`` bytes for ``P`` trained parameters, through group
   0's rank (:mod:`mpcgpu.comm.role`): the root receives ``(K - 1) S`` and then sends
   ``(K - 1) S``, two steps;
3. the broadcast of group 0's new state (master weights and velocity, ``2 x 8 x 2P``
   bytes, and every model parameter at ``f`` bits, ``2 x 8 x Q`` bytes, running statistics
   included), ``(K - 1)`` copies from the root, one step.

So::

    projected(K) = step(ceil(B/K)) [+ rounds x RTT + bytes / bandwidth on --network]
                   + 2 (rtt_r + (K - 1) S / bw_r) + (rtt_r + (K - 1) S_b / bw_r)

with ``bw_r``, ``rtt_r`` the intra-organisation network between the ranks of one party
(``--role-network``).  The three parties' role exchanges run at the same time, each on its
organisation's own network, so one party's time counts.  Every phase is charged a full
round-trip time, as :mod:`mpcgpu.reporting.netmodel` charges a round; nothing overlaps.

Role-network profiles (``--role-network``; or ``BANDWIDTH,RTT`` as for ``--network``):

* ``node`` (the default): the ``K`` ranks of a party on one node (the SLURM script's
  layout: one node per organisation), through host memory: 10 GB/s, 20 us.  GPU arrays are
  staged through host memory by the role communicator, so the PCIe copies bound it too;
* ``ib``: across nodes of one organisation over InfiniBand HDR: 200 Gbit/s, 10 us;
* ``eth``: across nodes over 25 Gbit Ethernet, 50 us.

These figures are our assumptions for the named settings, not measurements.
"""

from __future__ import annotations

import math

from mpcgpu.reporting.netmodel import Network, parse_network, project

ROLE_PROFILES = {
    "node": Network("node", 10e9, 20e-6),
    "ib": Network("ib", 200e9 / 8, 10e-6),
    "eth": Network("eth", 25e9 / 8, 50e-6),
}
DEFAULT_ROLE_NETWORK = "node"


def parse_role_network(text: str | None) -> Network:
    """A role-network profile (``node``, ``ib``, ``eth``) or ``BANDWIDTH,RTT``."""
    key = (text or DEFAULT_ROLE_NETWORK).strip().lower()
    if key in ROLE_PROFILES:
        return ROLE_PROFILES[key]
    return parse_network(text)


def slice_rows(batch: int, k: int) -> int:
    """The rows of the largest slice (group 0's) of a global batch over ``k`` groups."""
    return math.ceil(int(batch) / int(k))


def role_bytes(trained: int, params: int) -> dict:
    """Bytes one rank moves for one step: ``allreduce`` (its components of the gradients,
    ``2 x 8 x trained``) and ``bcast`` (master weights, velocity and every parameter:
    ``2 x 8 x (2 trained + params)``)."""
    return {"allreduce": 16 * int(trained), "bcast": 16 * (2 * int(trained) + int(params))}


def project_groups(
    step_s: float,
    rounds: int,
    busiest_bytes: float,
    k: int,
    trained: int,
    params: int,
    role_net: Network,
    net: Network | None = None,
) -> dict:
    """The projected step time over ``k`` groups and its terms (see the module docstring):
    ``step_s``, ``rounds``, ``busiest_bytes``: one group's measured step on the largest
    slice; ``net``: the network between the parties (None: as measured here)."""
    sizes = role_bytes(trained, params)
    group = project(step_s, rounds, busiest_bytes, net)["seconds"] if net is not None else float(step_s)
    others = int(k) - 1
    if others:
        allreduce = 2 * (role_net.rtt_s + others * sizes["allreduce"] / role_net.bandwidth_bytes_per_s)
        bcast = role_net.rtt_s + others * sizes["bcast"] / role_net.bandwidth_bytes_per_s
    else:
        allreduce = bcast = 0.0
    return {
        "groups": int(k),
        "network": net.name if net is not None else "measured",
        "role_network": role_net.name,
        "group_step_s": group,
        "allreduce_s": allreduce,
        "bcast_s": bcast,
        "allreduce_bytes_per_rank": sizes["allreduce"],
        "bcast_bytes_per_rank": sizes["bcast"],
        "seconds": group + allreduce + bcast,
    }


__all__ = [
    "ROLE_PROFILES",
    "DEFAULT_ROLE_NETWORK",
    "parse_role_network",
    "slice_rows",
    "role_bytes",
    "project_groups",
]
