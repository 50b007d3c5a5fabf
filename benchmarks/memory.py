"""Peak resident memory per party of batch-1 private inference, per phase and per layer.

    mpiexec -n 3 python benchmarks/memory.py --model resnet50
    mpiexec -n 3 python benchmarks/memory.py --model vgg16_features --hw 112 --layers 8

Phases: ``base`` (runtime and kernels loaded), ``share`` (the parameters secret-shared, large ones compactly:
:mod:`mpcgpu.sharing.compact`, unless ``--held-weights``,
from party 0, whose plaintext is then dropped), ``prepare`` (batch norms folded),
``first`` (the first forward pass) and ``forward`` (a second one).  For each, the
peak resident set size (VmHWM, reset between phases) of every party; with
``--layers N`` the N layers of the second pass whose peak is the highest, and the
resident size held after them.  ``--hw`` builds the model for another input size
(same layers); ``vgg16_features`` is VGG-16's convolutions with one small fully
connected layer (its activations without its 120M classifier weights).  ``--json``
writes every figure.  Weights are random (as ``mpcgpu bench``), nothing is revealed
except the logits to party 0 with ``--check`` (compared with the plaintext twin).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import mpcgpu  # noqa: E402
from mpcgpu.util import memstat  # noqa: E402
from mpcgpu.jobs.bench import _warm_up, bench_params  # noqa: E402
from mpcgpu.nn import private as P  # noqa: E402
from mpcgpu.nn.models import get_model  # noqa: E402
from mpcgpu.sharing.arithmetic import share  # noqa: E402
from mpcgpu.sharing.compact import share as compact_share  # noqa: E402

MB = 1e6


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--hw", type=int, default=None, help="input height = width (default: the model's)")
    ap.add_argument("--layers", type=int, default=0, help="print the N layers with the highest peak")
    ap.add_argument("--check", action="store_true", help="compare the logits with the plaintext twin")
    ap.add_argument(
        "--held-weights",
        action="store_true",
        help="hold both components of every weight (no compact shares: the A/B baseline)",
    )
    ap.add_argument(
        "--keep-unfolded",
        action="store_true",
        help="keep the original weights next to the folded ones (PrivateModel inference_only=False)",
    )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="MODULE.NAME=INT",
        help="override a size constant, e.g. mpcgpu.nn.layers.PIECE=1099511627776 (A/B timing)",
    )
    ap.add_argument("--trace", action="store_true", help="also report live bytes (tracemalloc: slow)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import importlib

    for item in args.set:
        target, value = item.split("=")
        mod, name = target.rsplit(".", 1)
        setattr(importlib.import_module(mod), name, int(value))
    rt = mpcgpu.init(device=os.environ.get("MPCGPU_DEVICE", "cpu"))
    comm = rt.comm
    if args.model == "vgg16_features":  # VGG-16's 13 convolutions and a small classifier
        from mpcgpu.nn import spec as S
        from mpcgpu.nn.models import _top, vgg_features

        side = (args.hw or 224) // 32
        cls = S.Sequential((S.Linear(512 * side * side, 10),))
        model = S.Model("vgg16_features", (3, args.hw or 224, args.hw or 224), 10, _top(vgg_features(), cls))
    else:
        model = get_model(args.model)
    if args.hw and model.input_shape[1] != args.hw:
        model = dataclasses.replace(model, input_shape=(model.input_shape[0], args.hw, args.hw))
    _warm_up(rt)
    phases = {}

    def phase(name, fn):
        comm.barrier()
        memstat.reset_peak()
        t0 = time.perf_counter()
        with comm.measure() as m:
            out = fn()
        seconds = comm.allreduce_max(time.perf_counter() - t0)
        phases[name] = {
            "peak": memstat.peak_bytes(),
            "after": memstat.current_bytes(),
            "seconds": seconds,
            "rounds": m.rounds,
        }
        if args.trace:
            import tracemalloc

            phases[name]["live"], phases[name]["live_peak"] = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
        return out

    phases["base"] = {"peak": memstat.peak_bytes(), "after": memstat.current_bytes(), "seconds": 0.0, "rounds": 0}
    if args.trace:
        import tracemalloc

        tracemalloc.start()

    def shared_model():
        params = bench_params(model, args.seed) if rt.rank == 0 else None
        out = {}
        for p in P.S.param_specs(model):  # one plaintext array at a time leaves party 0
            compact = P.wants_compact(model) and not (args.keep_unfolded or args.held_weights)
            compact = compact and p.size >= P.COMPACT_MIN
            deal = compact_share if compact else share
            out[p.name] = deal(params.pop(p.name) if params is not None else None, src=0)
        return P.PrivateModel(model, out, inference_only=not args.keep_unfolded)

    rng = numpy.random.default_rng(args.seed)
    x = rng.standard_normal((1,) + tuple(model.input_shape)) if rt.rank == 0 else None
    private = phase("share", shared_model)
    sx = share(x, src=0)
    phase("prepare", private.prepare)
    phase("first", lambda: private.forward(sx, exact=True))

    layer_rows = []
    if args.layers:
        original = P.PrivateModel._leaf

        def traced(self, layer, path, xin, profile, forward):
            memstat.reset_peak()
            out = original(self, layer, path, xin, profile, forward)
            layer_rows.append((path, type(layer).__name__, memstat.peak_bytes(), memstat.current_bytes()))
            return out

        P.PrivateModel._leaf = traced
    logits = phase("forward", lambda: private.forward(sx, exact=True))
    if args.layers:
        P.PrivateModel._leaf = original
    revealed = logits.reveal(to=0) if args.check else None

    status = 0
    everyone = comm.allgather_object({"phases": phases, "layers": layer_rows})
    if rt.rank == 0:
        print(f"{model.name} input {model.input_shape}, {rt.describe()}")
        print(f"MPCGPU_TUNE_MALLOC={os.environ.get('MPCGPU_TUNE_MALLOC', '1')}")
        print(
            f"{'phase':<10} {'seconds':>8} {'rounds':>6}  "
            + "  ".join(f"{'peak MB p' + str(r):>12} {'held':>7}" for r in range(3))
        )
        for name in phases:
            cells = []
            for r in range(3):
                ph = everyone[r]["phases"][name]
                cells.append(f"{ph['peak'] / MB:>12.0f} {(ph['after'] or 0) / MB:>7.0f}")
            print(f"{name:<10} {phases[name]['seconds']:>8.2f} {phases[name]['rounds']:>6}  " + "  ".join(cells))
        if args.trace:
            for name in list(phases)[1:]:
                ph = [everyone[r]["phases"][name] for r in range(3)]
                print(
                    f"  traced {name:<8} live MB "
                    + ", ".join(f"{p['live'] / MB:.0f}" for p in ph)
                    + "   live peak MB "
                    + ", ".join(f"{p['live_peak'] / MB:.0f}" for p in ph)
                )
        overall = [max(p["peak"] for p in everyone[r]["phases"].values()) for r in range(3)]
        print("overall peak MB per party: " + ", ".join(f"{v / MB:.0f}" for v in overall))
        if args.layers:
            rows = sorted(range(len(layer_rows)), key=lambda i: -max(everyone[r]["layers"][i][2] for r in range(3)))[
                : args.layers
            ]
            print(f"  {'layer':<34} {'type':<18} {'peak MB (max party)':>20} {'held MB':>8}")
            for i in rows:
                path, kind = layer_rows[i][:2]
                peak = max(everyone[r]["layers"][i][2] for r in range(3))
                held = max(everyone[r]["layers"][i][3] or 0 for r in range(3))
                print(f"  {path:<34} {kind:<18} {peak / MB:>20.0f} {held / MB:>8.0f}")
        if args.check:
            from mpcgpu.nn.plain import PlainModel

            ref = PlainModel(model, bench_params(model, args.seed)).forward(x, need_grad=False)
            diff = float(numpy.abs(revealed - ref).max())
            print(f"max |private - plain| = {diff:.3e}")
            if not diff < 0.1:  # fixed-point error of these nets is 1e-3..2e-2
                print("ERROR: the private logits differ from the plaintext twin")
                status = 1
        if args.json:
            with open(args.json + ".partial", "w") as fh:
                json.dump({"model": model.name, "input_shape": list(model.input_shape), "parties": everyone}, fh)
            os.replace(args.json + ".partial", args.json)
    return comm.bcast_object(status, root=0)


if __name__ == "__main__":
    sys.exit(main())
