"""Plaintext references shared by the tests (independent of the code under test)."""

import contextlib

import numpy as np


def conv2d_ref(x, w, stride=1, padding=0, groups=1):
    """Direct float64 cross-correlation, NCHW x OIHW, by explicit summation over the window."""
    sh, sw = (stride, stride) if np.isscalar(stride) else stride
    ph, pw = (padding, padding) if np.isscalar(padding) else padding
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    ho = (h + 2 * ph - kh) // sh + 1
    wo = (wd + 2 * pw - kw) // sw + 1
    out = np.zeros((n, o, ho, wo))
    og = o // groups
    for g in range(groups):
        xs = xp[:, g * cg : (g + 1) * cg]
        ws = w[g * og : (g + 1) * og]
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, :, i : i + sh * ho : sh, j : j + sw * wo : sw]  # n, cg, ho, wo
                out[:, g * og : (g + 1) * og] += np.einsum("nchw,oc->nohw", patch, ws[:, :, i, j])
    return out


def all_components(rt, s):
    """Gather every party's (first, second) pair (test-only: shows the whole sharing)."""
    return rt.comm.allgather_object((s.first, s.second))


def shared(rt, x, src=0, **kw):
    """Secret-share ``x`` from party ``src`` (every party calls this; only ``src``'s data is used)."""
    from mpcgpu.sharing.arithmetic import share

    return share(x if rt.rank == src else None, src=src, **kw)


def enc(x, frac_bits=16):
    """The reals a protocol actually receives: ``x`` rounded to the fixed-point grid."""
    return np.rint(np.asarray(x, dtype=np.float64) * 2.0**frac_bits) / 2.0**frac_bits


@contextlib.contextmanager
def recording(comm):
    """Log every exchange of this party as (sent {peer: array}, received {peer: array})."""
    log = []
    original = comm.exchange

    def wrapped(sends=None, recvs=None):
        got = original(sends, recvs)
        log.append(({p: np.array(a) for p, a in (sends or {}).items()}, {p: np.array(a) for p, a in got.items()}))
        return got

    comm.exchange = wrapped
    try:
        yield log
    finally:
        del comm.exchange


def received(log):
    """Every array this party received in a recorded block."""
    return [a for _, got in log for a in got.values()]


def assert_fresh_messages(comm, run, held):
    """Run ``run()`` twice, recording what this party receives: the messages change from
    call to call (fresh masks) and no word equals, at its position, one of this party's own
    component arrays ``held`` (a message is never a component in clear)."""
    logs = []
    for _ in range(2):
        with recording(comm) as log:
            run()
        logs.append(received(log))
    assert len(logs[0]) == len(logs[1]) > 0
    for a, b in zip(*logs):
        assert np.mean(a == b) < 1e-3
        for h in held:
            h = np.asarray(h).reshape(-1)
            m = min(a.size, h.size)
            assert not np.any(a.reshape(-1)[:m] == h[:m])


def shared_ring(rt, values, rng, scale=0):
    """A sharing of arbitrary ring values (int64/uint64, any magnitude) with random components
    drawn from a generator seeded alike on every rank (test-only; no range check)."""
    from mpcgpu.sharing.arithmetic import ArithmeticShare

    x = np.asarray(values).astype(np.int64).view(np.uint64)
    return ArithmeticShare(*_replicated_pair(rt, rng, x, 2**64, np.subtract), scale, rt)


def bit_share(rt, rng, bits):
    """A replicated XOR sharing of the 0/1 array ``bits`` with random 0/1 components."""
    from mpcgpu.sharing.binary import BinaryShare

    b = np.asarray(bits, dtype=np.uint64)
    return BinaryShare(*_replicated_pair(rt, rng, b, 2, np.bitwise_xor), rt)


def _replicated_pair(rt, rng, x, high, minus):
    """This party's pair of the components ``c0, c1`` (drawn below ``high``) and
    ``minus(minus(x, c0), c1)``: the third, so that the three combine to ``x``."""
    c0 = rng.integers(0, high, size=x.shape, dtype=np.uint64)
    c1 = rng.integers(0, high, size=x.shape, dtype=np.uint64)
    comps = [c0, c1, minus(minus(x, c0), c1)]
    return comps[rt.rank].copy(), comps[(rt.rank + 1) % 3].copy()


def ring_words(rng, shape):
    """Random uint64 ring words, the first ones the edges of the ring (0, 1, -1, 2^63, ...)."""
    x = rng.integers(0, 2**64, size=shape, dtype=np.uint64)
    edges = np.array([0, 1, 2**64 - 1, 2**63, 2**63 - 1, 2**62, 3, 2**64 - 2], dtype=np.uint64)
    m = min(x.size, edges.size)
    x.reshape(-1)[:m] = edges[:m]
    return x


def infer_args(model: str, data: str, **overrides):
    """The arguments of ``mpcgpu infer --model MODEL --data DATA`` as the real parser makes
    them (its defaults), on the test device, without a progress bar; ``overrides`` replace
    any of them (``batch_size=16``, ``out=...``)."""
    import os

    from mpcgpu.cli import build_parser

    args = build_parser().parse_args(["infer", "--model", model, "--data", data])
    args.device = os.environ.get("MPCGPU_DEVICE", "").strip().lower() or "cpu"  # as conftest.test_device
    args.no_progress = True
    for name, value in overrides.items():
        if not hasattr(args, name):
            raise AttributeError(f"mpcgpu infer has no argument {name!r}")
        setattr(args, name, value)
    return args


def kernel_set_runs(rt, call):
    """``call()`` under every kernel set available on this back end (:mod:`mpcgpu.kernelsets`,
    the reference ``array`` first), each from the same randomness (PRG streams and role
    counter): ``[(name, out, log)]``, every exchange of this party recorded."""
    from mpcgpu import kernelsets

    runs = []
    state = rt.state()
    for name in kernelsets.available(rt.backend):
        rt.restore(state)
        with rt.using_kernels(name), recording(rt.comm) as log:
            out = call()
        runs.append((name, out, log))
    return runs


def words_of(out):
    """The arrays of a protocol's result, in order: share components, arrays, nested
    tuples and lists (None skipped)."""
    if out is None:
        return []
    if isinstance(out, (tuple, list)):
        return [a for o in out for a in words_of(o)]
    if hasattr(out, "first") and hasattr(out, "second"):
        return [out.first, out.second]
    if isinstance(out, int):
        return [np.asarray(out)]
    return [out]


def assert_same_runs(runs):
    """Every run of :func:`kernel_set_runs` returned the reference's words (same dtype,
    shape and bits) and sent and received the same messages."""
    name0, out0, log0 = runs[0]
    ref = words_of(out0)
    for name, out, log in runs[1:]:
        got = words_of(out)
        assert len(got) == len(ref), (name0, name)
        for a, b in zip(ref, got):
            a, b = np.asarray(a), np.asarray(b)
            assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), (name0, name)
        assert_same_exchanges(log0, log)


def assert_same_exchanges(log_a, log_b):
    """Two recorded runs sent and received the same arrays, round by round."""
    assert len(log_a) == len(log_b)
    for (sent_a, got_a), (sent_b, got_b) in zip(log_a, log_b):
        for ours, theirs in ((sent_a, sent_b), (got_a, got_b)):
            assert ours.keys() == theirs.keys()
            for peer in ours:
                assert ours[peer].shape == theirs[peer].shape and np.array_equal(ours[peer], theirs[peer])


def fuzz_settings(ci_examples: int, slow_examples: int):
    """Hypothesis settings of a fuzz suite: in CI ``ci_examples`` fixed (derandomized)
    examples per property; with ``HYPOTHESIS_PROFILE=slow`` ``slow_examples`` random ones."""
    import os

    from hypothesis import HealthCheck, settings

    slow = os.environ.get("HYPOTHESIS_PROFILE") == "slow"
    return settings(
        max_examples=slow_examples if slow else ci_examples,
        deadline=None,
        derandomize=not slow,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


def mnist_shards(d, parts: dict, *, out: str = "shards", weights: bool = True, name=None):
    """The owners' share step for tests: for each ``part: rows`` the MNIST test images
    ``rows`` written as the dataset ``d/PART.h5`` (named ``name(PART)``, default PART) and
    shared into ``d/OUT``; with ``weights`` LeNet's trained weights shared there too."""
    import os

    from mpcgpu.assets import lenet_weights_path, mnist_test_idx_paths
    from mpcgpu.assets.dataset_h5 import write_dataset
    from mpcgpu.assets.mnist_idx import MNIST_MEAN, MNIST_STD, load_mnist
    from mpcgpu.data.split import split_file

    imgs, labels = load_mnist(*mnist_test_idx_paths(), verify=False)
    imgs = imgs.reshape(-1, 1, 28, 28)
    shards = os.path.join(str(d), out)
    for part, rows in parts.items():
        path = os.path.join(str(d), f"{part}.h5")
        label = name(part) if name else part
        write_dataset(path, imgs[rows], labels[rows], name=label, mean=MNIST_MEAN, std=MNIST_STD, num_classes=10)
        split_file(path, shards, progress=False)
    if weights:
        split_file(lenet_weights_path(), shards, progress=False)
