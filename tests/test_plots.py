"""Plots (issue 13 B): bench results and training curves as PNG, `mpcgpu plot` on saved
JSON, and a clear message (not a traceback) without matplotlib."""

import json
import sys

import pytest

from mpcgpu import cli
from mpcgpu.errors import MPCError
from mpcgpu.reporting.netmodel import PROFILES, project

PNG = b"\x89PNG\r\n\x1a\n"


def bench_summary():
    rows = []
    for name, s, rounds, busiest, peers in (
        ("lenet", 0.04, 91, 1.0e6, {"cryptgpu_s": 0.38, "piranha_s": 0.031}),
        ("alexnet_cifar10", 0.07, 136, 0.7e6, {"cryptgpu_s": 0.91}),
        ("resnet50", 2.9, 651, 8e8, {}),
    ):
        row = {"model": name, "batch": 1, "private_seconds": s, "rounds": rounds, "bytes_busiest_party": busiest}
        row["projections"] = [project(s, rounds, busiest, PROFILES[n]) for n in ("lan", "wan")]
        row["peers"] = peers
        rows.append(row)
    return {"what": "inference", "device": "cpu", "results": rows}


def training_summary(loss=True):
    steps = [{"step": i, "seconds": 1.0 + 0.01 * i, "loss": (2.3 / (1 + i)) if loss else None} for i in range(20)]
    epochs = [{"epoch": e, "test_accuracy": 0.5 + 0.2 * e} for e in range(1, 3)]
    return {"settings": {"model": "lenet"}, "steps": steps, "epochs": epochs}


def is_png(path):
    with open(path, "rb") as fh:
        head = fh.read(8)
    return head == PNG and path.stat().st_size > 5000


def test_bench_and_training_figures(tmp_path):
    pytest.importorskip("matplotlib")
    from mpcgpu.reporting.plots import bench_figure, training_figure

    assert bench_figure(bench_summary(), tmp_path / "b.png") and is_png(tmp_path / "b.png")
    for loss in (True, False):
        training_figure(training_summary(loss), tmp_path / f"t{loss}.png")
        assert is_png(tmp_path / f"t{loss}.png")
    assert not list(tmp_path.glob("*.partial"))  # written under a temporary name, renamed


def test_plot_subcommand_reads_saved_json(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    (tmp_path / "bench.json").write_text(json.dumps(bench_summary()))
    (tmp_path / "train.json").write_text(json.dumps(training_summary()))
    assert cli.main(["plot", str(tmp_path / "bench.json")]) == 0
    assert is_png(tmp_path / "bench.png")
    assert cli.main(["plot", str(tmp_path / "train.json"), "-o", str(tmp_path / "curves.png")]) == 0
    assert is_png(tmp_path / "curves.png") and "written" in capsys.readouterr().out
    # what is not a result says so
    (tmp_path / "other.json").write_text(json.dumps({"a": 1}))
    (tmp_path / "broken.json").write_text("{")
    for name, match in (
        ("other.json", "not a result"),
        ("broken.json", "not valid JSON"),
        ("none.json", "cannot read"),
    ):
        assert cli.main(["plot", str(tmp_path / name)]) == 1
        assert match in capsys.readouterr().err
    assert cli.main(["plot", str(tmp_path / "bench.json"), "-o", str(tmp_path / "no" / "x.png")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_without_matplotlib_a_clear_message(tmp_path, monkeypatch, capsys):
    for mod in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    from mpcgpu.jobs.train import _plot
    from mpcgpu.reporting.plots import have_matplotlib, pyplot

    assert not have_matplotlib()
    with pytest.raises(MPCError, match=r"pip install 'mpcgpu\[plots\]'"):
        pyplot()
    (tmp_path / "bench.json").write_text(json.dumps(bench_summary()))
    assert cli.main(["plot", str(tmp_path / "bench.json")]) == 1
    err = capsys.readouterr().err
    assert "matplotlib" in err and "Traceback" not in err
    assert not (tmp_path / "bench.png").exists()
    # training writes its JSON anyway and says why there is no plot
    assert _plot(str(tmp_path / "t.png"), training_summary()) is None
    assert "matplotlib" in capsys.readouterr().out
