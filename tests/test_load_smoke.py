"""The load benchmark (benchmarks/load_memory.py) runs: both runs finish and memory is
sampled on the three parties (quick sizes; the figures themselves are in the README)."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_load_benchmark_quick_mode_samples_three_parties(tmp_path):
    if not os.path.exists(
        os.path.join(os.environ.get("MPCGPU_MNIST_DIR", "/work/shared/data/mnist"), "train-images-idx3-ubyte.gz")
    ):
        pytest.skip("MNIST training images not available")
    out = tmp_path / "load.json"
    p = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "load_memory.py"), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    import json

    report = json.loads(out.read_text())
    for run in ("infer", "train"):
        rows = report[run]["summary"]
        assert len(rows) == 3 and all(r["samples"] >= 3 and r["peak_mb"] > 20 for r in rows)
