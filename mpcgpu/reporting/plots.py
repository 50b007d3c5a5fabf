"""PNG figures of saved results: benchmark tables (`mpcgpu bench --plot`) and training
curves (`mpcgpu train --plot`), and `mpcgpu plot FILE.json` for either after the fact.

matplotlib is an optional extra (``pip install 'mpcgpu[plots]'``); without it every
entry point says so in one line (:class:`~mpcgpu.errors.MPCError`) instead of a
traceback.  Figures are drawn off screen (Agg) and written atomically.
"""

from __future__ import annotations

import json
import os

from mpcgpu.errors import MPCError
from mpcgpu.util.results import atomic_path, check_writable

INSTALL_HINT = "plots need matplotlib, which is not installed: pip install 'mpcgpu[plots]' (or pip install matplotlib)"


def pyplot():
    """matplotlib.pyplot on the Agg back end, or MPCError with the install hint."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MPCError(INSTALL_HINT) from None
    return plt


def have_matplotlib() -> bool:
    try:
        pyplot()
    except MPCError:
        return False
    return True


def _save(fig, path) -> str:
    plt = pyplot()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return os.fspath(path)


def kind_of(summary: dict) -> str:
    """``"bench"`` or ``"training"`` for a JSON written by `mpcgpu bench` or `mpcgpu train`."""
    if isinstance(summary, dict) and isinstance(summary.get("results"), list) and "what" in summary:
        return "bench"
    if isinstance(summary, dict) and isinstance(summary.get("steps"), list) and "epochs" in summary:
        return "training"
    raise MPCError("not a result of `mpcgpu bench` (keys what, results) or `mpcgpu train --json` (steps, epochs)")


def bench_figure(summary: dict, path) -> str:
    """Bar chart, one group per model: seconds measured here, each ``--network``
    projection, and the peers' published seconds as markers (log scale)."""
    plt = pyplot()
    rows = summary["results"]
    if not rows:
        raise MPCError("the benchmark result holds no rows to plot")
    nets = []
    for r in rows:
        for p in r.get("projections", []):
            if p["network"] not in nets:
                nets.append(p["network"])
    series = [("measured here (3 parties, one machine)", [r["private_seconds"] for r in rows])]
    for net in nets:
        vals = [
            next((p["seconds"] for p in r.get("projections", []) if p["network"] == net), float("nan")) for r in rows
        ]
        series.append((f"projected, {net}", vals))
    fig, ax = plt.subplots(figsize=(max(8.0, 1.3 * len(rows) + 4), 4.5))
    width = 0.8 / len(series)
    xs = list(range(len(rows)))
    for i, (label, vals) in enumerate(series):
        ax.bar([x - 0.4 + width * (i + 0.5) for x in xs], vals, width, label=label)
    for key, marker, label in (("cryptgpu_s", "v", "CryptGPU (GPU, LAN)"), ("piranha_s", "^", "Piranha (GPU, LAN)")):
        pts = [(x, r.get("peers", {}).get(key)) for x, r in zip(xs, rows) if r.get("peers", {}).get(key)]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=marker, color="k", zorder=3, label=label)
    ax.set_xticks(xs)
    ax.set_xticklabels([f"{r['model']}\nbatch {r['batch']}" for r in rows], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("seconds" + (" per step" if summary.get("what") == "training" else " per pass"))
    ax.set_title(f"mpcgpu bench {summary.get('what', '')}: {summary.get('device', '')}", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return _save(fig, path)


def training_figure(summary: dict, path) -> str:
    """Training loss (if revealed; else seconds) per step and test accuracy per epoch."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    steps = summary["steps"]
    if steps and steps[0].get("loss") is not None:
        axes[0].plot([s["step"] for s in steps], [s["loss"] for s in steps], lw=0.8)
        axes[0].set_ylabel("training loss (revealed)")
    else:
        axes[0].plot([s["step"] for s in steps], [s["seconds"] for s in steps], lw=0.8)
        axes[0].set_ylabel("seconds per step")
    axes[0].set_xlabel("step")
    ep = [e for e in summary["epochs"] if e.get("test_accuracy") is not None]
    axes[1].plot([e["epoch"] for e in ep], [100 * e["test_accuracy"] for e in ep], "o-")
    axes[1].set_xlabel("epoch")
    axes[1].set_ylabel("test accuracy (%)")
    fig.suptitle(f"private training of {summary.get('settings', {}).get('model', '?')}")
    fig.tight_layout()
    return _save(fig, path)


def plot_file(json_path, png_path=None) -> str:
    """The figure of a saved bench or training JSON; default PNG next to it."""
    try:
        with open(json_path) as fh:
            summary = json.load(fh)
    except OSError as exc:
        raise MPCError(f"cannot read {json_path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise MPCError(f"{json_path} is not valid JSON: {exc}") from None
    kind = kind_of(summary)
    png = png_path or os.path.splitext(os.fspath(json_path))[0] + ".png"
    check_writable(png)
    return (bench_figure if kind == "bench" else training_figure)(summary, png)


__all__ = ["INSTALL_HINT", "bench_figure", "training_figure", "plot_file", "have_matplotlib", "kind_of"]
