"""Where it will run: project a job measured here onto a network between three machines.

All three parties of a measured job run on this one machine and talk through shared
memory, so the wall time measured here contains almost no network cost.  This module
adds the cost of a real network, from what the communicator counted:

    projected = compute + rounds * rtt + bytes_per_party / bandwidth

* ``compute``: the measured wall time (slowest party).  It is an **upper bound** on the
  compute of one party on its own machine: here three ranks share two cores, and the
  time also holds the (small) shared-memory transfers and the waiting of one rank for
  another.  On three machines (or GPUs) the compute is lower.
* ``rounds``: communication rounds of the job (the counter of ``mpcgpu.comm.communicator``, that of
  the busiest party).  Each round is charged one full round-trip time, not a one-way
  latency: a message that does not fit MPI's eager limit takes a request/answer
  handshake before its data, and a party cannot start the next round before its peer's
  message has arrived.  A one-way latency per round would be the optimistic end.
* ``bytes_per_party``: the bytes sent by the party that sends most; ``bandwidth`` is the
  rate at which one machine can send (one network interface, full duplex; the two links
  of a party share it).  Parties send at the same time, so the busiest one sets the time.
* No overlap of compute and communication (the protocols wait for each round), no TCP
  slow start, no packet loss, no cost for the barrier/timing messages.  The
  projection is meant to say "seconds, not milliseconds" or "bandwidth-bound, not
  latency-bound", not to replace a measurement on the target network.

Named profiles (``--network lan|wan``):

* ``lan``: 10 Gbit/s, 0.2 ms RTT -- machines in one data centre.  The peers' figures
  (CryptGPU, Piranha) were measured with their parties on GPU machines of one cloud
  region, a LAN; 10 Gbit/s and 0.2 ms stand for that setting (we could not re-check the
  papers' exact link figures from here: treat them as our assumption).
* ``wan``: 100 Mbit/s, 40 ms RTT -- machines in different regions of one continent;
  the order of the WAN settings used in the MPC literature (our assumption too).

A custom network is ``BANDWIDTH,RTT`` with units, e.g. ``1Gbit,10ms``,
``25Gbit/s,0.05ms``, ``100MB/s,2ms`` (bits: ``bit, kbit, Mbit, Gbit``; bytes: ``B, kB,
MB, GB``; decimal prefixes; an optional ``/s``; ``Gbps`` means bits; time: ``s, ms,
us``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mpcgpu.errors import MPCError


@dataclass(frozen=True)
class Network:
    """A network between the three parties: send rate per party and round-trip time."""

    name: str
    bandwidth_bytes_per_s: float
    rtt_s: float

    def describe(self) -> str:
        return f"{self.name} ({format_rate(self.bandwidth_bytes_per_s)}, {format_time(self.rtt_s)} RTT)"


PROFILES = {
    "lan": Network("lan", 10e9 / 8, 0.2e-3),
    "wan": Network("wan", 100e6 / 8, 40e-3),
}

_PREFIX = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_RATE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmgt]?)(bit|b)(/s|ps)?\s*$", re.IGNORECASE)
_TIME = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*(s|ms|us|µs)\s*$", re.IGNORECASE)
_TIME_UNIT = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6}


def parse_rate(text: str) -> float:
    """``'10Gbit'``, ``'100 Mbit/s'``, ``'1Gbps'``, ``'125MB/s'`` -> bytes per second.

    ``bit`` and ``bps`` count bits, ``B`` bytes (``B/s``); ``b`` or ``b/s`` alone is
    ambiguous and refused."""
    m = _RATE.match(text)
    if not m:
        raise MPCError(
            f"bandwidth {text!r} not understood: give a number and a unit, e.g. 10Gbit, 100Mbit/s, 1Gbps, 125MB/s"
        )
    number, prefix, unit, per = float(m.group(1)), m.group(2).lower(), m.group(3), (m.group(4) or "").lower()
    if unit == "b" and per == "ps":
        unit = "bit"  # 1Gbps: bits per second, as everyone writes it
    if unit == "b":
        raise MPCError(f"bandwidth {text!r}: write 'bit' for bits or 'B' for bytes (e.g. 10Gbit or 125MB/s)")
    per_s = number * _PREFIX[prefix] / (8.0 if unit.lower() == "bit" else 1.0)
    if not per_s > 0:
        raise MPCError(f"bandwidth {text!r} must be positive")
    return per_s


def parse_time(text: str) -> float:
    """``'0.2ms'``, ``'40 ms'``, ``'150us'``, ``'0.04s'`` -> seconds (zero allowed)."""
    m = _TIME.match(text)
    if not m:
        raise MPCError(f"round-trip time {text!r} not understood: give a number and a unit (s, ms, us), e.g. 40ms")
    return float(m.group(1)) * _TIME_UNIT[m.group(2).lower()]


def parse_network(text: str) -> Network:
    """A profile name (``lan``, ``wan``) or ``BANDWIDTH,RTT`` (see the module docstring)."""
    key = text.strip().lower()
    if key in PROFILES:
        return PROFILES[key]
    parts = text.split(",")
    if len(parts) != 2:
        raise MPCError(
            f"network {text!r} not understood: use one of {', '.join(PROFILES)} or BANDWIDTH,RTT (e.g. 1Gbit,10ms)"
        )
    bw, rtt = parse_rate(parts[0]), parse_time(parts[1])
    return Network(text.strip().replace(" ", ""), bw, rtt)


def project(compute_s: float, rounds: int, bytes_per_party: float, net: Network) -> dict:
    """Projected seconds of a job on ``net`` and its three terms (see the module docstring)."""
    if compute_s < 0 or rounds < 0 or bytes_per_party < 0:
        raise MPCError("projection needs non-negative time, rounds and bytes")
    latency = rounds * net.rtt_s
    transfer = bytes_per_party / net.bandwidth_bytes_per_s
    return {
        "network": net.name,
        "bandwidth_bytes_per_s": net.bandwidth_bytes_per_s,
        "rtt_s": net.rtt_s,
        "compute_s": compute_s,
        "latency_s": latency,
        "transfer_s": transfer,
        "seconds": compute_s + latency + transfer,
    }


def format_rate(bytes_per_s: float) -> str:
    bits = bytes_per_s * 8
    for unit, scale in (("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if bits >= scale:
            return f"{bits / scale:g} {unit}"
    return f"{bits:g} bit/s"


def format_time(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:g} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:g} ms"
    return f"{seconds * 1e6:g} us"


__all__ = ["Network", "PROFILES", "parse_network", "parse_rate", "parse_time", "project"]
