"""`mpcgpu generate`: private greedy generation by a GPT-2 graph model from token prompts
(three MPI ranks).  The command line only; the work is :mod:`mpcgpu.nn.generate`."""

from __future__ import annotations

import time

import numpy

from .channel_args import add_shard_job_arguments, cli_settings
from . import checks
from .checks import peek_frac_bits

SUMMARY = "generate tokens privately with a shared GPT-2 graph model from shared prompts (mpirun -n 3)"
DESCRIPTION = """\
Private greedy generation on three MPI ranks. Each rank opens only its own shards:
  --model STEM   a GPT-2 graph model shared by `mpcgpu share`: the graph of
                 mpcgpu.nn.transformers.gpt2 (so that its prompt and one-token step
                 graphs can be built); write one from Hugging Face GPT-2 weights with
                 mpcgpu.nn.generate.save_gpt2("gpt2.h5", "gpt2", state_dict) (see below)
  --data STEM    the prompts: a token dataset shared by `mpcgpu share` (made by
                 `python -m datasets.tokens`); each row's prompt is its run of
                 tokens (attention mask 1), padded before or after
For each prompt, --tokens N tokens are chosen one after the other: the next token is the
private argmax of the last position's logits (ties to the lower id), revealed to the
result owner only (--reveal-to, default party 0) and fed back as a secret one-hot; the
model, the prompts and the tokens stay secret from the other two parties. The attention
masks are public (they show each prompt's length), and so are N and the model's shape.
With the key/value cache (default) the prompt runs once and each further token runs a
one-token step that attends over the cached keys and values; --no-cache recomputes the
whole sequence at every step (the reference: same tokens, more work). Prompts of the same
length and padding run together, --batch-size at a time.

The owner prints the tokens and the time per token (the first token includes the
prompt), the bytes all three parties sent and the rounds.

Files (result owner only; written under a temporary name and renamed, mode 0600):
  --out FILE.npy   the generated tokens, (prompts, N) int64, row i from prompt i
  FILE.json        metadata next to it: model, dataset, N, prompt lengths, owner
  --json FILE      a summary: seconds per token, bytes and rounds (per step too)

Errors before any computation: a model that is not such a GPT-2 graph (another
network, or a graph imported from ONNX: its position table is folded to the exported
length), a prompt longer than the model's context or N beyond it (prompt length + N - 1
positions), N < 1, ids of a larger vocabulary than the model's, a job of other than
three ranks.

Example (a Hugging Face GPT-2 small; another size: a TransformerConfig of its sizes):
  python -c "import transformers as T; from mpcgpu.nn.generate import save_gpt2; \\
    m = T.GPT2LMHeadModel.from_pretrained('gpt2'); \\
    save_gpt2('gpt2.h5', 'gpt2', {k: v.double().numpy() for k, v in m.state_dict().items()})"
  python -m datasets.tokens prompts.txt prompts.h5 --vocab 50257
  mpcgpu share gpt2.h5 --out shards/ && mpcgpu share prompts.h5 --out shards/
  mpirun -n 3 mpcgpu generate --model shards/gpt2 --data shards/prompts --tokens 16 --out gen.npy
"""

VALUES_NOTE = (
    "greedy tokens: at each step the argmax of the last position's logits, chosen privately (ties to the "
    "lower id), revealed to the result owner only; row i continues prompt i"
)


def add_arguments(p):
    p.add_argument(
        "--model", required=True, metavar="STEM", help="GPT-2 graph model shard set (stem, file, or {party} pattern)"
    )
    p.add_argument("--data", required=True, metavar="STEM", help="token dataset shard set of the prompts")
    p.add_argument("--tokens", type=int, required=True, metavar="N", help="tokens to generate per prompt (N >= 1)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts of one length generated together (default 8)")
    p.add_argument("--limit", type=int, default=None, help="only the first K prompts")
    p.add_argument("--reveal-to", type=int, default=0, choices=(0, 1, 2), help="result owner (default 0)")
    p.add_argument(
        "--no-cache",
        action="store_true",
        help="recompute the whole sequence at every step instead of the key/value cache (the reference)",
    )
    p.add_argument(
        "--out", default=None, metavar="FILE.npy", help="result owner writes the tokens here (metadata to FILE.json)"
    )
    p.add_argument("--json", default=None, metavar="FILE", help="result owner writes a summary (time, bytes) as JSON")
    p.add_argument("--profile", action="store_true", help="print per-operator time and communication")
    p.add_argument(
        "--warm-up",
        action="store_true",
        help="first run the first prompts' graph and one step untimed, revealing nothing: on a fresh or "
        "busy machine this compiles or loads the CPU kernels (many seconds, once), so that the first "
        "token's time measures the protocol",
    )
    add_shard_job_arguments(p)


def output_paths(out: str | None) -> dict:
    """``main`` (the tokens) and ``meta`` (JSON) for ``--out``; empty without it."""
    if not out:
        return {}
    main = out if out.endswith(".npy") else out + ".npy"
    return {"main": main, "meta": main[: -len(".npy")] + ".json"}


def batches(spans: list, batch_size: int) -> list:
    """``[(rows, start, length)]``: the prompts grouped by their span (same start and
    length: one static graph), in file order within a group, ``batch_size`` at a time."""
    groups: dict = {}
    for i, span in enumerate(spans):
        groups.setdefault(span, []).append(i)
    out = []
    for (start, length), rows in groups.items():
        for lo in range(0, len(rows), batch_size):
            out.append((numpy.asarray(rows[lo : lo + batch_size], numpy.int64), start, length))
    return out


class StepMeter:
    """Time, bytes sent (this party) and rounds of each generation step, summed over the
    batches of prompts: step 0 is the prompt and the first token, step k > 0 the k-th
    further token.  :meth:`token` is the ``on_token`` callback of
    :func:`mpcgpu.nn.generate.generate`; it also advances the progress line."""

    def __init__(self, comm, steps: int, bar):
        self.comm, self.steps, self.bar = comm, steps, bar
        self.seconds = numpy.zeros(steps)
        self.sent = numpy.zeros(steps, numpy.int64)
        self.rounds = numpy.zeros(steps, numpy.int64)
        self.size = 0

    def start(self, size: int):
        """A batch of ``size`` prompts begins (its prompt counts in step 0)."""
        self.size = size
        self._mark = (time.perf_counter(), self.comm.stats.copy())

    def token(self, k: int, _seconds=None):
        now, stats = time.perf_counter(), self.comm.stats.copy()
        then, before = self._mark
        self.seconds[k] += now - then
        self.sent[k] += stats.bytes_sent - before.bytes_sent
        self.rounds[k] += stats.rounds - before.rounds
        self._mark = (now, stats)
        self.bar.update(self.size, extra=f"token {k + 1}/{self.steps}")


def run(args) -> int:
    from dataclasses import replace

    import mpcgpu
    from mpcgpu.comm.transport import world_rank
    from mpcgpu.util import memstat
    from mpcgpu.util.progress import Progress
    from mpcgpu.util.results import save_json

    from ..data.tokens import TokenDataset
    from ..models_io import load_private_graph
    from ..nn import generate as G
    from ..nn.private import Profile
    from ..reporting.outputs import check_files, write_outputs

    checks.at_least(args, 1, "tokens", "batch_size", "limit")
    steps, owner = int(args.tokens), args.reveal_to
    precision = args.precision or peek_frac_bits(args.model, world_rank())
    rt = mpcgpu.init(precision=precision, cli=cli_settings(args))
    if rt.groups > 1:
        raise mpcgpu.MPCError(
            f"mpcgpu generate runs one group of three parties (mpirun -n 3); this job has {3 * rt.groups} ranks"
        )
    comm = rt.comm
    t_load = time.perf_counter()
    g, params, consts = load_private_graph(args.model, rt, verify=not args.no_verify)
    config = G.gpt2_config_of(g, consts)  # the same verdict on every party: the graph is public
    data = TokenDataset(args.data, rt, limit=args.limit, verify=not args.no_verify)
    try:
        if data.vocab_size > config.vocab:
            raise G.GenerationError(
                f"the prompts' vocabulary ({data.vocab_size} ids) is larger than the model's ({config.vocab})"
            )
        n = len(data)
        spans = G.prompt_spans(data.masks[:n])
        G.check_prompts(config, spans, steps)
        paths = output_paths(args.out)
        check_files(comm, owner, paths, args.json)
    except BaseException:
        data.close()
        raise
    load_s = time.perf_counter() - t_load
    cache = not args.no_cache
    plan = batches(spans, args.batch_size)
    if getattr(args, "warm_up", False):
        rows, start, length = plan[0]
        t0 = time.perf_counter()
        ids, _, _ = data.batch(rows)
        G.warm_up(replace(config, batch=len(rows)), params, ids[:, start : start + length].contiguous(), cache=cache)
        took = comm.allreduce_max(time.perf_counter() - t0)
        if rt.rank == 0:
            print(f"warm-up: the first prompts and one step in {took:.2f} s (nothing revealed; not timed below)")
    comm.reset_stats()
    if rt.rank == 0:
        lengths = sorted({s[1] for s in spans})
        print(
            f"mpcgpu generate: model {g.name} (GPT-2, {config.layers} layers, hidden {config.hidden}, vocab "
            f"{config.vocab}, context {config.max_positions}), {n} prompts of {data.name} "
            f"({lengths[0]}..{lengths[-1]} tokens), {steps} tokens each, "
            f"{'key/value cache' if cache else 'full recompute'}, tokens to party {owner}, {rt.describe()}",
            flush=True,
        )
    profile = Profile() if args.profile else None
    bar = Progress(n * steps, "private generation", enabled=(rt.rank == 0 and not args.no_progress), unit="tokens")
    meter = StepMeter(comm, steps, bar)
    tokens = numpy.zeros((n, steps), numpy.int64) if rt.rank == owner else None
    t_all = time.perf_counter()
    for rows, start, length in plan:
        ids, _, _ = data.batch(rows)
        prompt = ids[:, start : start + length].contiguous()
        c = replace(config, batch=len(rows))
        meter.start(len(rows))
        gen = G.generate(c, params, prompt, steps, owner=owner, cache=cache, profile=profile, on_token=meter.token)
        if tokens is not None:
            tokens[rows] = gen.tokens
    elapsed = time.perf_counter() - t_all
    bar.close()
    data.close()
    seconds, rounds = meter.seconds, meter.rounds
    per_party = comm.allgather_object(meter.sent.tolist())
    step_bytes = numpy.sum(numpy.asarray(per_party, numpy.int64), axis=0)
    peaks = comm.allgather_object(memstat.peak_bytes())
    further = seconds[1:].mean() if steps > 1 else None
    further_bytes = int(step_bytes[1:].mean()) if steps > 1 else None
    summary = {
        "model": g.name,
        "dataset": data.name,
        "prompts": n,
        "prompt_lengths": [s[1] for s in spans],
        "tokens": steps,
        "cache": cache,
        "revealed_to": owner,
        "seconds": elapsed,
        "first_token_seconds": float(seconds[0]),
        "further_token_seconds": None if further is None else float(further),
        "seconds_per_step": seconds.tolist(),
        "bytes_all_parties": int(step_bytes.sum()),
        "bytes_per_step": step_bytes.tolist(),
        "rounds": int(rounds.sum()),
        "rounds_per_step": rounds.tolist(),
        "load_seconds": load_s,
        "peak_bytes_per_party": peaks,
        "device": rt.backend.describe(),
    }
    if rt.rank == owner:
        _show(tokens, spans)
        each = (
            f"; each further token {further:.2f} s, {further_bytes / 1e6:.2f} MB, {int(rounds[1:].mean())} rounds"
            if further is not None
            else ""
        )
        print(
            f"party {owner} (result owner): {n * steps} tokens ({n} prompts x {steps}) in {elapsed:.2f} s; "
            f"first token {seconds[0]:.2f} s (prompt included), {step_bytes[0] / 1e6:.2f} MB, {rounds[0]} rounds"
            f"{each} (all prompts together, bytes sent by the three parties); total {step_bytes.sum() / 1e6:.1f} MB, "
            f"{rounds.sum()} rounds, peak memory per party {', '.join(f'{p / 1e9:.2f}' for p in peaks)} GB",
            flush=True,
        )
        if paths:
            meta = {
                "model": g.name,
                "dataset": data.name,
                "mode": "generate",
                "tokens": steps,
                "count": n,
                "prompt_lengths": [s[1] for s in spans],
                "order": f"row i continues prompt i of the dataset shards in stored order (prompts 0..{n - 1})",
                "cache": cache,
                "revealed_to": owner,
                "frac_bits": rt.frac_bits,
                "values": VALUES_NOTE,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            written = write_outputs(paths, {"tokens": tokens}, meta)
            print(f"tokens written to {', '.join(written)}", flush=True)
        if args.json:
            save_json(args.json, summary)
    if profile is not None:
        profile.report(comm)
    return 0


def _show(tokens, spans, rows: int = 20):
    """The owner's view: each prompt's generated tokens (the first ``rows`` prompts)."""
    for i in range(min(rows, len(tokens))):
        print(f"prompt {i} ({spans[i][1]} tokens) -> {' '.join(str(t) for t in tokens[i])}", flush=True)
    if len(tokens) > rows:
        print(f"... {len(tokens) - rows} more prompts (use --out FILE.npy to save them all)", flush=True)
