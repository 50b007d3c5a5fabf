"""`--network`: parsing of profiles and BANDWIDTH,RTT with units, and the projection
against the formula computed by hand (exact rationals) on random inputs (issue 13 B)."""

from fractions import Fraction

import numpy as np
import pytest

from mpcgpu.errors import MPCError
from mpcgpu.reporting.netmodel import PROFILES, Network, parse_network, parse_rate, parse_time, project


def test_profiles_are_the_stated_figures():
    assert parse_network("lan") == Network("lan", 10e9 / 8, 0.2e-3)
    assert parse_network(" WAN ") == Network("wan", 100e6 / 8, 40e-3)
    assert set(PROFILES) == {"lan", "wan"}
    assert "10 Gbit/s" in PROFILES["lan"].describe() and "200 us" in PROFILES["lan"].describe()
    assert "100 Mbit/s" in PROFILES["wan"].describe() and "40 ms" in PROFILES["wan"].describe()


@pytest.mark.parametrize(
    "text, bytes_per_s",
    [
        ("1Gbit", 1e9 / 8),
        ("1 gbit/s", 1e9 / 8),
        ("10Gbps", 10e9 / 8),
        ("100Mbit/s", 100e6 / 8),
        ("2.5kbit", 2500 / 8),
        ("512bit", 64.0),
        ("125MB/s", 125e6),
        ("1GB", 1e9),
        ("3kB/s", 3000.0),
        ("40B", 40.0),
        ("1e3Mbit", 1e9 / 8),
    ],
)
def test_rates_with_units(text, bytes_per_s):
    assert parse_rate(text) == pytest.approx(bytes_per_s, rel=1e-15)


@pytest.mark.parametrize(
    "text, seconds", [("40ms", 0.04), ("0.2 ms", 2e-4), ("150us", 150e-6), ("1s", 1.0), ("0ms", 0.0), ("2e1ms", 0.02)]
)
def test_times_with_units(text, seconds):
    assert parse_time(text) == pytest.approx(seconds, rel=1e-15)


def test_custom_network():
    net = parse_network("1Gbit,10ms")
    assert net.bandwidth_bytes_per_s == 1e9 / 8 and net.rtt_s == pytest.approx(0.01) and net.name == "1Gbit,10ms"
    assert parse_network("25Gbit/s, 0.05ms").rtt_s == pytest.approx(5e-5)


@pytest.mark.parametrize(
    "text, match",
    [
        ("lann", "not understood"),
        ("", "not understood"),
        ("1Gbit", "not understood"),  # no RTT
        ("1Gbit,10ms,3", "not understood"),
        ("1G,10ms", "bandwidth"),  # no unit
        ("1Gb,10ms", "'bit' for bits"),  # ambiguous b
        ("1Gb/s,10ms", "'bit' for bits"),
        ("1000,10ms", "bandwidth"),
        ("0Gbit,10ms", "positive"),
        ("-1Gbit,10ms", "bandwidth"),
        ("1Gbit,10", "round-trip"),  # no unit
        ("1Gbit,10min", "round-trip"),
        ("1Gbit,-1ms", "round-trip"),
        ("fast,slow", "bandwidth"),
    ],
)
def test_parse_errors_are_clear(text, match):
    with pytest.raises(MPCError, match=match):
        parse_network(text)


def test_projection_is_the_formula_on_random_inputs():
    rng = np.random.default_rng(7)
    for _ in range(500):
        compute = float(rng.uniform(0, 100))
        rounds = int(rng.integers(0, 100000))
        sent = float(rng.integers(0, 10**12))
        bw = float(rng.uniform(1e3, 1e11))
        rtt = float(rng.uniform(0, 0.5))
        p = project(compute, rounds, sent, Network("x", bw, rtt))
        exact = Fraction(compute) + rounds * Fraction(rtt) + Fraction(sent) / Fraction(bw)
        assert p["seconds"] == pytest.approx(float(exact), rel=1e-12, abs=1e-300)
        assert p["latency_s"] == pytest.approx(float(rounds * Fraction(rtt)), rel=1e-12, abs=1e-300)
        assert p["transfer_s"] == pytest.approx(float(Fraction(sent) / Fraction(bw)), rel=1e-12, abs=1e-300)
        assert p["compute_s"] == compute and p["network"] == "x"


def test_projection_by_hand():
    # LeNet-like row: 0.042 s, 91 rounds, 1 MB from the busiest party
    lan = project(0.042, 91, 1_000_000, PROFILES["lan"])
    assert lan["seconds"] == pytest.approx(0.042 + 91 * 0.0002 + 1e6 / 1.25e9)
    wan = project(0.042, 91, 1_000_000, PROFILES["wan"])
    assert wan["seconds"] == pytest.approx(0.042 + 91 * 0.04 + 1e6 / 12.5e6)
    with pytest.raises(MPCError):
        project(-1, 1, 1, PROFILES["lan"])
