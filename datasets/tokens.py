"""Token ids (.npy or .txt) -> a token dataset file (``mpcgpu-tokens/1``) for BERT / GPT-2.

    python -m datasets.tokens IDS OUT.h5 --vocab V [--seq-len T] [--labels FILE]
                              [--num-classes K] [--pad-id 0] [--name NAME] [--mask FILE.npy]

IDS is a ``.npy`` file of an N x L integer array (every position a token, or with
``--mask`` an N x L array of 0/1 giving which are), or a text file with one sequence per
line, ids separated by spaces or commas (blank lines skipped, ``#`` starts a comment).
Every id must be in ``[0, V)``.  Sequences shorter than T (default: the longest) are
padded at the end with ``--pad-id`` and attention mask 0; a longer one is an error
(``--truncate`` cuts it to T instead).  ``--labels``: a ``.npy`` file or a text file of one
integer per line (per-sequence class labels).  Tokenise with your model's tokenizer first
(e.g. ``tokenizer(texts)["input_ids"]`` saved with ``numpy.save``).  The layout is in
``mpcgpu/data/tokens.py``; share the file with ``mpcgpu share OUT.h5 --out DIR``.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from mpcgpu.data.tokens import TokensError, write_tokens


def read_sequences(path) -> tuple:
    """``(list of 1-D int64 arrays, list of 1-D 0/1 arrays or None)`` from ``.npy`` or text."""
    if str(path).lower().endswith(".npy"):
        a = np.load(path, allow_pickle=False)
        if a.ndim == 1:
            a = a[None]
        if a.ndim != 2 or a.dtype.kind not in "iu":
            raise TokensError(f"{path}: expected an N x L integer array, got {a.shape} {a.dtype}")
        return [row.astype(np.int64) for row in a], None
    seqs = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.split("#", 1)[0].replace(",", " ").strip()
            if not line:
                continue
            try:
                seqs.append(np.array([int(t) for t in line.split()], np.int64))
            except ValueError:
                raise TokensError(f"{path}, line {lineno}: not a list of integer ids: {line[:60]!r}") from None
    if not seqs:
        raise TokensError(f"{path}: no sequences")
    return seqs, None


def read_labels(path) -> np.ndarray:
    if str(path).lower().endswith(".npy"):
        return np.asarray(np.load(path, allow_pickle=False))
    with open(path, encoding="utf-8") as f:
        lines = [ln.split("#", 1)[0].strip() for ln in f]
    try:
        return np.array([int(v) for v in lines if v], np.int64)
    except ValueError:
        raise TokensError(f"{path}: labels must be one integer per line") from None


def pad_sequences(seqs, *, seq_len: int | None = None, pad_id: int = 0, masks=None, truncate: bool = False):
    """``(ids N x T int64, mask N x T uint8)``: each sequence padded at the end with
    ``pad_id`` (mask 0) to ``seq_len`` (default: the longest)."""
    if not seqs:
        raise TokensError("no sequences")
    longest = max(len(s) for s in seqs)
    T = longest if seq_len is None else int(seq_len)
    if T < 1:
        raise TokensError(f"the sequence length must be positive, got {T}")
    ids = np.full((len(seqs), T), int(pad_id), np.int64)
    mask = np.zeros((len(seqs), T), np.uint8)
    for i, s in enumerate(seqs):
        m = np.ones(len(s), np.uint8) if masks is None else np.asarray(masks[i], np.uint8)
        if len(s) > T:
            if not truncate:
                raise TokensError(f"sequence {i} has {len(s)} tokens, more than --seq-len {T} (or pass --truncate)")
            s, m = s[:T], m[:T]
        ids[i, : len(s)] = s
        mask[i, : len(s)] = m
    return ids, mask


def convert(
    ids_path,
    out_path,
    *,
    vocab: int,
    seq_len: int | None = None,
    labels_path=None,
    num_classes: int | None = None,
    pad_id: int = 0,
    name: str | None = None,
    mask_path=None,
    truncate: bool = False,
) -> dict:
    """Convert; returns a summary ``{"n", "seq_len", "tokens", "padding"}``."""
    seqs, masks = read_sequences(ids_path)
    if mask_path is not None:
        m = np.load(mask_path, allow_pickle=False)
        m = m[None] if m.ndim == 1 else m
        if m.shape != (len(seqs), len(seqs[0])) or any(len(s) != m.shape[1] for s in seqs):
            raise TokensError(f"{mask_path}: mask of shape {m.shape} does not fit the ids")
        masks = list(m)
    ids, mask = pad_sequences(seqs, seq_len=seq_len, pad_id=pad_id, masks=masks, truncate=truncate)
    labels = None
    if labels_path is not None:
        labels = read_labels(labels_path)
        if labels.shape[:1] != (len(ids),):
            raise TokensError(f"{labels_path}: {labels.shape[0] if labels.ndim else 0} labels for {len(ids)} sequences")
        if num_classes is None and labels.ndim == 1 and labels.size:
            num_classes = int(labels.max()) + 1
    base = os.path.basename(str(ids_path)).rsplit(".", 1)[0]
    write_tokens(
        out_path,
        ids,
        mask,
        labels,
        vocab_size=vocab,
        name=name or base,
        pad_id=pad_id,
        num_classes=num_classes,
        source=os.path.basename(str(ids_path)),
    )
    return {"n": len(ids), "seq_len": ids.shape[1], "tokens": int(mask.sum()), "padding": int(mask.size - mask.sum())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m datasets.tokens", description=__doc__.split("\n")[0])
    ap.add_argument("ids", help=".npy (N x L integers) or text (one sequence of ids per line)")
    ap.add_argument("out", help="the token dataset file to write (.h5)")
    ap.add_argument("--vocab", type=int, required=True, help="vocabulary size: every id must be below it")
    ap.add_argument("--seq-len", type=int, default=None, help="pad every sequence to T (default: the longest)")
    ap.add_argument("--pad-id", type=int, default=0, help="the id written at padded positions (default 0)")
    ap.add_argument("--labels", default=None, help=".npy or text file of one integer label per sequence")
    ap.add_argument("--num-classes", type=int, default=None)
    ap.add_argument("--mask", default=None, help=".npy N x L 0/1 mask of the ids (default: all tokens)")
    ap.add_argument("--name", default=None)
    ap.add_argument("--truncate", action="store_true", help="cut sequences longer than --seq-len")
    a = ap.parse_args(argv)
    try:
        s = convert(
            a.ids,
            a.out,
            vocab=a.vocab,
            seq_len=a.seq_len,
            labels_path=a.labels,
            num_classes=a.num_classes,
            pad_id=a.pad_id,
            name=a.name,
            mask_path=a.mask,
            truncate=a.truncate,
        )
    except (TokensError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{a.out}: {s['n']} sequences of {s['seq_len']} positions ({s['tokens']} tokens, {s['padding']} padding)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
