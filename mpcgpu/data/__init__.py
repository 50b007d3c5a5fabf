"""Data at rest: HDF5 shard files and the share (split) step.

* :mod:`mpcgpu.data.shards` -- the shard schema, writer, reader and validation
  (:func:`open_shard`, :class:`Shard`).
* :mod:`mpcgpu.data.split` -- the share step (``mpcgpu share``, whose command line is
  :mod:`mpcgpu.jobs.share`): plaintext file -> three shards; of the file's own metadata
  only an allow-list (and what the owner names with ``--public-meta``) is stored in clear.
"""

from .shards import (
    FORMAT,
    ArrayInfo,
    ArraySpec,
    Shard,
    ShardSet,
    as_share,
    open_shard,
    reconstruct_local,
    resolve_path,
    shard_path,
    write_shard_set,
)
from .split import split_arrays, split_file

__all__ = [
    "FORMAT",
    "ArrayInfo",
    "ArraySpec",
    "Shard",
    "ShardSet",
    "as_share",
    "open_shard",
    "reconstruct_local",
    "resolve_path",
    "shard_path",
    "split_arrays",
    "split_file",
    "write_shard_set",
]
