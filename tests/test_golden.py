"""Golden words: the revealed ring words of LeNet and of a residual network with batch norm,
under the test seed, pinned across redesigns (issue 19).  A change to any drawn word, exchange
order, truncation or rounding of inference, backward or the optimiser changes a SHA-256 here.

``tests/golden/words.json`` was written by ``tests/golden/run_golden.py`` on the code before
the redesign; it is data to compare with, never rewritten by the test.  The words do not depend
on the ring kernel (native or limbs, bit-exact alike) nor on the back end (NumPy or strict)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mpcgpu.jobs.launcher import find_mpiexec, local_env

HERE = Path(__file__).parent / "golden"


@pytest.mark.parametrize("device", ["cpu", "strict"])
def test_revealed_words_are_bit_identical_to_the_pinned_ones(tmp_path, device):
    try:
        mpiexec = find_mpiexec()
    except Exception:
        pytest.skip("no mpiexec")
    env = local_env()
    root = str(HERE.parent.parent)  # this checkout's package, whatever is installed
    env.update({"MPCGPU_INSECURE_PRG_SEED": "golden-1", "MPCGPU_DEVICE": device, "PYTHONPATH": root})
    out = tmp_path / "words.json"
    cmd = [mpiexec, "-n", "3", sys.executable, str(HERE / "run_golden.py"), str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=root)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    got = json.loads(out.read_text())
    want = json.loads((HERE / "words.json").read_text())
    assert sorted(got) == sorted(want)
    differ = [k for k in want if got[k] != want[k]]
    assert not differ, f"{len(differ)} of {len(want)} stages changed: {differ[:10]}"
