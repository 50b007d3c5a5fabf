"""Token-id datasets (the inputs of BERT and GPT-2): the plaintext file, its share step, and
the servers' reader.

Plaintext file (HDF5, ``format = "mpcgpu-tokens/1"``; ``datasets/tokens.py`` converts
``.npy`` / ``.txt`` files of ids)::

    /ids              int64 (or a narrower int), N x T: token ids in [0, vocab_size)
    /attention_mask   uint8, N x T: 1 for a token, 0 for padding
    /labels           optional, int64, N (a class per sequence) or N x T (per token)
    root attrs:
      format          "mpcgpu-tokens/1"
      name            e.g. "sst2-dev"
      vocab_size      int V: every id is below it
      seq_len         int T
      pad_id          int: the id of the padding positions
      num_classes     optional, int (with per-sequence class labels)
      source          optional: where the data came from

Shared like images (``mpcgpu share FILE``; a shard of kind ``dataset`` whose ``/public``
``format`` is this one): the data owner's rows become **one-hot integer shares**
``input_ids`` of shape ``N x T x V`` (scale 0, the form the private ``Gather`` of an
embedding table takes: one-hot times the secret table; no server learns an id), labels
integer shares as for images, and the attention masks **public**: copied in clear to every
party's file (``/consts/attention_mask``; they show where each sequence is padded, i.e.
its length).  A one-hot row costs ``16 * T * V`` bytes per party file (BERT-base: 62.5 MB
per 128-token sequence), so share the sequences to run, not a corpus.

At inference :class:`TokenDataset` gives batches ``(one-hot share, public mask, labels
share or None)``.
"""

from __future__ import annotations

import numpy

from ..errors import MPCError, ShardError

FORMAT = "mpcgpu-tokens/1"
#: the public attributes of a token file copied to its shards (the allow-list's additions)
PUBLIC_ATTRS = ("vocab_size", "seq_len", "pad_id")
#: the share of the ids in a token dataset shard, the public masks
IDS, MASK, LABELS = "input_ids", "attention_mask", "labels"


class TokensError(MPCError, ValueError):
    """A token dataset is malformed (ids outside the vocabulary, bad mask, shapes...)."""


def check_tokens(ids, attention_mask, labels=None, *, vocab_size: int, num_classes: int | None = None):
    """Raise :class:`TokensError` unless ``ids`` are N x T integers in ``[0, vocab_size)``,
    the mask N x T of 0/1 values and the labels integers of N or N x T rows."""
    ids, mask = numpy.asarray(ids), numpy.asarray(attention_mask)
    if int(vocab_size) < 1:
        raise TokensError(f"vocab_size must be positive, got {vocab_size}")
    if ids.ndim != 2 or ids.dtype.kind not in "iu":
        raise TokensError(f"ids must be N x T integers, got {ids.shape} {ids.dtype}")
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        bad = numpy.argwhere((ids < 0) | (ids >= vocab_size))[0]
        raise TokensError(
            f"token id {int(ids[tuple(bad)])} at row {bad[0]}, position {bad[1]} is outside [0, {vocab_size})"
        )
    if mask.shape != ids.shape or mask.dtype.kind not in "biu":
        raise TokensError(f"attention_mask must be {ids.shape} integers, got {mask.shape} {mask.dtype}")
    if mask.size and not numpy.isin(mask, (0, 1)).all():
        raise TokensError("attention_mask holds values other than 0 and 1")
    if labels is not None:
        labels = numpy.asarray(labels)
        if labels.dtype.kind not in "iu" or labels.shape not in ((len(ids),), ids.shape):
            raise TokensError(f"labels must be {len(ids)} or {ids.shape} integers, got {labels.shape} {labels.dtype}")
        if labels.size and (labels.min() < 0 or (num_classes is not None and labels.max() >= num_classes)):
            raise TokensError(f"labels outside [0, {num_classes})")


def write_tokens(
    path,
    ids,
    attention_mask=None,
    labels=None,
    *,
    vocab_size: int,
    name: str,
    pad_id: int = 0,
    num_classes: int | None = None,
    source: str | None = None,
) -> None:
    """Write a token file atomically (``attention_mask`` None: every position a token)."""
    import h5py

    from mpcgpu.util.atomic import written_atomically

    ids = numpy.asarray(ids)
    mask = numpy.ones(ids.shape, numpy.uint8) if attention_mask is None else numpy.asarray(attention_mask)
    check_tokens(ids, mask, labels, vocab_size=vocab_size, num_classes=num_classes)
    if not 0 <= int(pad_id) < vocab_size:
        raise TokensError(f"pad_id {pad_id} is outside [0, {vocab_size})")
    with written_atomically(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("ids", data=ids.astype(numpy.int64))
        f.create_dataset("attention_mask", data=mask.astype(numpy.uint8))
        if labels is not None:
            f.create_dataset("labels", data=numpy.asarray(labels).astype(numpy.int64))
        f.attrs["format"] = FORMAT
        f.attrs["name"] = str(name)
        f.attrs["vocab_size"] = int(vocab_size)
        f.attrs["seq_len"] = int(ids.shape[1])
        f.attrs["pad_id"] = int(pad_id)
        if num_classes is not None:
            f.attrs["num_classes"] = int(num_classes)
        if source is not None:
            f.attrs["source"] = str(source)


def _s(v):
    return v.decode() if isinstance(v, bytes) else v


def tokens_info(path) -> dict:
    """Root attributes and shapes of a token file (checks the format and the layout)."""
    from mpcgpu.util.hdf5 import open_for_reading

    with open_for_reading(path, TokensError, "token file") as f:
        return _info(f, path)


def _info(f, path) -> dict:
    if _s(f.attrs.get("format")) != FORMAT:
        raise TokensError(f"{path}: format {_s(f.attrs.get('format'))!r}, expected {FORMAT!r}")
    for key in ("ids", "attention_mask"):
        if key not in f:
            raise TokensError(f"{path}: needs a /{key} dataset")
    info = {k: _s(v) for k, v in f.attrs.items()}
    if "vocab_size" not in info:
        raise TokensError(f"{path}: needs the attribute vocab_size")
    info["vocab_size"] = int(info["vocab_size"])
    shape = tuple(int(d) for d in f["ids"].shape)
    if len(shape) != 2 or tuple(f["attention_mask"].shape) != shape:
        raise TokensError(f"{path}: ids {shape} and attention_mask {tuple(f['attention_mask'].shape)} must be N x T")
    if "labels" in f and tuple(f["labels"].shape) not in (shape[:1], shape):
        raise TokensError(f"{path}: labels of shape {tuple(f['labels'].shape)} for {shape[0]} sequences")
    info["n"], info["seq_len"] = shape
    info["has_labels"] = "labels" in f
    return info


def read_tokens(path, start: int = 0, stop: int | None = None):
    """``(ids int64, attention_mask uint8, labels int64 or None, info)`` for rows
    ``[start, stop)``, checked (ids below the vocabulary, 0/1 mask)."""
    from mpcgpu.util.hdf5 import open_for_reading

    with open_for_reading(path, TokensError, "token file") as f:
        info = _info(f, path)
        ids = numpy.asarray(f["ids"][start:stop]).astype(numpy.int64)
        mask = numpy.asarray(f["attention_mask"][start:stop]).astype(numpy.uint8)
        labels = numpy.asarray(f["labels"][start:stop]).astype(numpy.int64) if info["has_labels"] else None
    check_tokens(ids, mask, labels, vocab_size=info["vocab_size"], num_classes=info.get("num_classes"))
    return ids, mask, labels, info


def one_hot(ids, vocab_size: int, dtype=numpy.uint8):
    """``ids`` (any shape) as one-hot rows: shape ``ids.shape + (vocab_size,)``."""
    ids = numpy.asarray(ids, numpy.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise TokensError(f"token ids outside [0, {vocab_size})")
    out = numpy.zeros(ids.shape + (int(vocab_size),), dtype)
    numpy.put_along_axis(out, ids[..., None], 1, axis=-1)
    return out


class _OneHotRows:
    """The one-hot form of the rows of an ids dataset, made block by block as the share
    step reads them (never all at once)."""

    def __init__(self, ids, vocab_size: int):
        self.ids, self.vocab_size = ids, int(vocab_size)
        self.shape = tuple(int(d) for d in ids.shape) + (self.vocab_size,)
        self.dtype = numpy.dtype(numpy.uint8)

    def __getitem__(self, key):
        return one_hot(numpy.asarray(self.ids[key]), self.vocab_size)


def share_arrays(f, limit: int | None = None) -> tuple:
    """The share step's view of an open token file: ``(arrays, public consts, public attrs)``:
    the one-hot ids and the labels as :class:`~mpcgpu.data.shards.ArraySpec` (integers,
    scale 0), the masks in clear, the attributes the servers need (their values).  The whole file is
    checked first (ids below the vocabulary, 0/1 masks)."""
    from .shards import ArraySpec

    info = _info(f, f.filename)
    rows = None if limit is None else int(limit)
    if rows is not None and rows < 1:
        raise ShardError("--limit must be at least 1")
    stop = info["n"] if rows is None else min(rows, info["n"])
    mask = numpy.asarray(f["attention_mask"][:stop])
    labels = numpy.asarray(f["labels"][:stop]) if info["has_labels"] else None
    try:
        ids = numpy.asarray(f["ids"][:stop])
        check_tokens(ids, mask, labels, vocab_size=info["vocab_size"], num_classes=info.get("num_classes"))
    except TokensError as e:
        raise ShardError(f"{f.filename}: {e}") from None
    arrays = [ArraySpec(IDS, _OneHotRows(f["ids"], info["vocab_size"]), 0, rows=rows)]
    if info["has_labels"]:
        arrays.append(ArraySpec(LABELS, f["labels"], 0, rows=rows))
    public = {k: int(info[k]) for k in PUBLIC_ATTRS if k in info}
    return arrays, {MASK: mask.astype(numpy.uint8)}, public


def is_token_shard(shard) -> bool:
    """Whether an open dataset shard holds a token dataset."""
    return shard.public.get("format") == FORMAT


class TokenDataset:
    """The servers' reader of a token dataset shard set (a collective to open): batches
    of one-hot id shares (``B x T x V``, scale 0), public masks and label shares."""

    def __init__(self, stem, rt, *, limit: int | None = None, verify: bool = True):
        from .shards import open_shard

        self.rt = rt
        self.shard = open_shard(stem, rt, kind="dataset", verify=verify)
        try:
            if not is_token_shard(self.shard) or IDS not in self.shard.arrays or MASK not in self.shard.const_names:
                raise ShardError(f"dataset shards {stem} are not a token dataset ({FORMAT})")
            n, self.seq_len, self.vocab_size = self.shard.info(IDS).shape
            self.masks = self.shard.consts()[MASK].astype(numpy.int64)
            if self.masks.shape != (n, self.seq_len):
                raise ShardError(f"dataset shards {stem}: masks {self.masks.shape} for ids {(n, self.seq_len)}")
        except BaseException:
            self.shard.close()
            raise
        self.n = n if limit is None else min(int(limit), n)
        self.has_labels = LABELS in self.shard.arrays
        self.name = self.shard.name

    def __len__(self):
        return self.n

    def batch(self, rows):
        """``(one-hot ids share, mask int64 array, labels share or None)`` for the sorted
        row indices ``rows``."""
        from ..sharing.arithmetic import ArithmeticShare

        rows = numpy.asarray(rows, numpy.int64)
        first, second = self.shard.take(IDS, rows)
        ids = ArithmeticShare(first, second, 0, self.rt)
        labels = None
        if self.has_labels:
            lf, ls = self.shard.take(LABELS, rows)
            labels = ArithmeticShare(lf, ls, 0, self.rt)
        return ids, self.masks[rows], labels

    def sequential(self, batch_size: int):
        """Batches in file order: ``(rows, ids, mask, labels)``."""
        for lo in range(0, self.n, batch_size):
            rows = numpy.arange(lo, min(lo + batch_size, self.n))
            yield (rows, *self.batch(rows))

    def close(self):
        self.shard.close()


__all__ = [
    "FORMAT",
    "TokensError",
    "check_tokens",
    "write_tokens",
    "tokens_info",
    "read_tokens",
    "one_hot",
    "share_arrays",
    "is_token_shard",
    "TokenDataset",
]
