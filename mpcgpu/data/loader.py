"""Batches of secret-shared samples from one or several dataset shard sets.

Several data owners each share their own dataset (``mpcgpu share``); the servers
train on their concatenation.  Each rank opens only its own files; the row order
is public (a permutation from a seed, :func:`mpcgpu.nn.schedule.epoch_batches`),
so rows are read by index and nothing depends on the data.
"""

from __future__ import annotations

import numpy

from ..errors import ShardError
from .shards import open_shard


class ShardedDataset:
    """``images`` (and ``labels`` when present) of one or more dataset shard sets.

    ``stems``: a list of shard stems (or one stem, or a comma-separated string).
    ``limit``: use only the first ``limit`` rows of the concatenation.
    """

    def __init__(self, stems, rt, *, limit: int | None = None, verify: bool = True):
        if isinstance(stems, str):
            stems = [s.strip() for s in stems.split(",") if s.strip()]
        if not stems:
            raise ShardError("no dataset shard stem given")
        self.rt = rt
        self.shards = []
        try:
            for stem in stems:
                self.shards.append(open_shard(stem, rt, kind="dataset", verify=verify))
        except BaseException:
            self.close()
            raise
        first = self.shards[0]
        if "images" not in first.arrays:
            raise ShardError(f"dataset shards {stems[0]} have no 'images' array")
        self.sample_shape = tuple(first.info("images").shape[1:])
        self.has_labels = all("labels" in s.arrays for s in self.shards)
        for stem, s in zip(stems, self.shards):
            if "images" not in s.arrays or tuple(s.info("images").shape[1:]) != self.sample_shape:
                raise ShardError(f"dataset shards {stem} hold images of another shape than {stems[0]}")
        sizes = [s.rows("images") for s in self.shards]
        self.offsets = numpy.concatenate([[0], numpy.cumsum(sizes)]).astype(numpy.int64)
        total = int(self.offsets[-1])
        self.n = total if limit is None else min(int(limit), total)
        self.names = [s.name for s in self.shards]

    def __len__(self):
        return self.n

    def _gather(self, name, rows):
        """The sorted global ``rows`` of array ``name`` as one share (scale of the shards)."""
        from ..sharing.arithmetic import ArithmeticShare, to_scale

        xp = self.rt.xp
        rows = numpy.asarray(rows, dtype=numpy.int64)
        firsts, seconds, scale = [], [], None
        for i, s in enumerate(self.shards):
            lo, hi = self.offsets[i], self.offsets[i + 1]
            mine = rows[(rows >= lo) & (rows < hi)] - lo
            if mine.size:
                f, sec = s.take(name, mine)
                firsts.append(f)
                seconds.append(sec)
                scale = s.info(name).scale
        share = ArithmeticShare(xp.concatenate(firsts), xp.concatenate(seconds), scale, self.rt)
        if name == "images" and share.scale < self.rt.frac_bits:
            share = to_scale(share, self.rt.frac_bits)  # exact: a shift
        return share

    def batch(self, rows):
        """``(images, labels or None)`` shares for the sorted global row indices ``rows``."""
        images = self._gather("images", rows)
        if images.scale != self.rt.frac_bits:
            raise ShardError(
                f"the images were shared with {images.scale} fractional bits, more than the "
                f"{self.rt.frac_bits} of this run (use --precision {images.scale})"
            )
        labels = self._gather("labels", rows) if self.has_labels else None
        return images, labels

    def sequential(self, batch_size: int):
        """Batches in file order (evaluation): ``(rows, images, labels)``."""
        for lo in range(0, self.n, batch_size):
            rows = numpy.arange(lo, min(lo + batch_size, self.n))
            yield (rows, *self.batch(rows))

    def close(self):
        for s in self.shards:
            s.close()
        self.shards = []


__all__ = ["ShardedDataset"]
