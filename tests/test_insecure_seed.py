"""``MPCGPU_INSECURE_PRG_SEED`` is agreed by the three parties at start-up (single process,
launching three real MPI ranks): set on one party only (or to different values) it stops
the job with an error on every party, instead of making that party's keys predictable
without a word; set on all three it is announced by every party."""

import pytest

from test_channel_failures import run_three

SEED_ENV = "MPCGPU_INSECURE_PRG_SEED"

#: T_SEEDS: the seed per rank ("-" for unset), comma-separated; set before init, as a
#: per-rank launcher (`env` or an MPMD line of mpiexec) would
SCRIPT = """
    seeds = os.environ["T_SEEDS"].split(",")
    os.environ.pop("MPCGPU_INSECURE_PRG_SEED", None)
    if seeds[R] != "-":
        os.environ["MPCGPU_INSECURE_PRG_SEED"] = seeds[R]
    rt = mpcgpu.init(device="cpu")
    say("finished on", R, rt.prg.own.key.hex())
"""


@pytest.mark.parametrize(
    "seeds, says",
    [
        ("-,7,-", "party 0: unset, party 1: seed "),
        ("7,7,-", "party 2: unset"),
        ("7,7,8", "party 2: seed "),
    ],
)
def test_a_seed_on_some_parties_only_stops_every_party(tmp_path, seeds, says):
    p, took = run_three(SCRIPT, tmp_path, T_SEEDS=seeds)
    assert p.returncode != 0 and "finished on" not in p.stdout, p.stdout
    for r in range(3):
        assert f"mpcgpu [party {r}] error: the parties disagree on {SEED_ENV} (" in p.stderr, p.stderr
    assert says in p.stderr
    assert took < 30


def test_a_seed_on_every_party_is_announced_by_every_party_and_reproducible(tmp_path):
    runs = [run_three(SCRIPT, tmp_path, T_SEEDS="golden,golden,golden")[0] for _ in range(2)]
    for p in runs:
        assert p.returncode == 0, p.stderr
        for r in range(3):
            assert f"mpcgpu: WARNING [party {r}]: {SEED_ENV} is set" in p.stderr, p.stderr
    keys = [sorted(p.stdout.splitlines()) for p in runs]
    assert keys[0] == keys[1] and len(keys[0]) == 3  # the same keys from the same seed


def test_no_seed_anywhere_runs_with_fresh_keys_and_no_warning(tmp_path):
    runs = [run_three(SCRIPT, tmp_path, T_SEEDS="-,-,-")[0] for _ in range(2)]
    for p in runs:
        assert p.returncode == 0, p.stderr
        assert "WARNING" not in p.stderr
    assert set(runs[0].stdout.splitlines()).isdisjoint(runs[1].stdout.splitlines())
