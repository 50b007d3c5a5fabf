"""Shard files: schema, writer, reader and validation.

A *shard set* is three HDF5 files made by one split of one plaintext file
(see :mod:`mpcgpu.data.split`).  Every array ``x`` is encoded into the ring
``Z_{2^64}`` and split into ``x = x0 + x1 + x2 (mod 2^64)``; party ``i``'s
file holds only its two components ``(x_i, x_{i+1})`` (indices mod 3).  No
file holds all three, so no single server learns ``x``.

File naming: ``<dir>/<stem>.party<i>.h5`` for ``i = 0, 1, 2``.  Every file is created
with mode 0600 (readable by its owner only), whatever the umask.

Schema ``mpcgpu-shard/1``::

    / (root) attrs
      format         "mpcgpu-shard/1"
      kind           "dataset" | "model"
      party          int 0..2: the party this file belongs to
      parties        3
      set_id         32 hex chars (128 random bits), the same in the three files of one split
      frac_bits      int: fixed-point precision f of the split
      name           dataset or model name (public)
      source_format  format tag of the plaintext input ("mpcgpu-dataset/1", ...)
      array_names    JSON list of the array names, in order
      created        UTC time of the split (ISO 8601)
    /public          group: the input's metadata that its owner made public.
                     Never a copy of all the input's attrs (they may hold a
                     training recipe and seed, a data path, statistics of the
                     private data).  The share step copies only an allow-list:
                     the input's format tag, its dataset or model name
                     (``name`` / ``model``), a dataset's ``num_classes``, and
                     ``mean``/``std`` when they were applied to the images; any
                     other attr only if the owner named it (``--public-meta
                     KEY``).  Attrs of a weights file's /meta that the owner
                     named (``--public-meta meta.KEY``) go to the attrs of the
                     sub-group /public/meta (one level of sub-groups at most)
    /arrays/<name>   group per array (names may contain dots), attrs:
      shape          int64[]: logical shape of x
      dtype          plaintext dtype of the source ("uint8", "float32", "int64", ...)
      scale          fractional bits of the encoding: frac_bits, or 0 for integers
      encoding       "fixed" (round(v * 2^scale)) | "integer" (v itself)
      transform      "none" | "normalise": v = (pixel/255 - mean[c]) / std[c] over axis 1
      mean, std      float64[] (only with transform "normalise")
      components     int[2] = (i, (i+1) mod 3)
      sha256_first, sha256_second
                     hex SHA-256 of the raw little-endian bytes (C order) of the datasets
      datasets
        first        uint64 ('<u8'), shape, contiguous, uncompressed: component x_i
        second       uint64: component x_{i+1}
    /consts/<name>   public arrays in clear, the same in the three files: a graph
                     model's constants (:mod:`mpcgpu.nn.dag`: reshape targets, scalar
                     factors, causal masks; float64, int64 or bool) or a token dataset's
                     attention masks (:mod:`mpcgpu.data.tokens`); the parties compare a
                     digest of them when they open the set

Reading (on the servers): each rank opens only its own file with
:func:`open_shard`, which checks the file locally (exists, is HDF5, not
truncated, format, party, checksums) and then, collectively over the three
ranks, that the shards belong to one set and fit the runtime (kind, arrays,
shapes, scales, ``frac_bits``).  Any failure raises :class:`ShardError` on
every rank, naming the party and the reason, before any computation.
Checksums are never sent to other parties: the hash of a component would let
a party that lacks it test guesses of a low-entropy secret.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import secrets
from dataclasses import dataclass, field

import numpy

from mpcgpu.util import atomic, faults
from mpcgpu.ring.encoding import check_range, encode, safe_limit
from ..errors import EncodingError, ShardError
from mpcgpu.util.hdf5 import DAMAGE, damaged_message, open_for_reading, written_atomically
from mpcgpu.util.progress import Progress

FORMAT = "mpcgpu-shard/1"
KINDS = ("dataset", "model")
PARTIES = 3
#: rows of one block are chosen so that one uint64 component of a block is about this size
BLOCK_BYTES = 8 << 20
#: the writer shows progress on stderr when the three files together exceed this (progress=None)
PROGRESS_BYTES = 256 << 20

_U64 = numpy.dtype("<u8")


def shard_path(stem: str, party: int) -> str:
    """``<stem>.party<party>.h5`` (``stem`` may include a directory)."""
    return f"{stem}.party{int(party)}.h5"


def _h5py():
    import h5py

    return h5py


def _rows_per_block(shape, block_bytes: int = BLOCK_BYTES) -> int:
    row = int(numpy.prod(shape[1:], dtype=numpy.int64)) if len(shape) > 1 else 1
    return max(1, block_bytes // (8 * max(row, 1)))


def _blocks(n_rows: int, rows: int):
    for start in range(0, n_rows, rows):
        yield start, min(n_rows, start + rows)


# ----------------------------------------------------------------------------------------
# writer
# ----------------------------------------------------------------------------------------


@dataclass
class ArraySpec:
    """One array to secret-share.

    ``source`` is anything sliceable by leading rows (a NumPy array or an h5py
    dataset); it is read block by block.  ``scale`` is the number of fractional
    bits (0 for integers).  ``transform`` is "none" or "normalise" (then ``mean``
    and ``std`` are per-channel, applied over axis 1 as ``(v/255 - mean)/std``).
    ``rows`` limits the leading dimension (None: all rows).
    """

    name: str
    source: object
    scale: int
    transform: str = "none"
    mean: numpy.ndarray | None = None
    std: numpy.ndarray | None = None
    rows: int | None = None

    @property
    def shape(self) -> tuple:
        shape = tuple(int(s) for s in self.source.shape)
        if self.rows is not None and shape:
            shape = (min(shape[0], int(self.rows)),) + shape[1:]
        return shape

    @property
    def dtype(self) -> numpy.dtype:
        return numpy.dtype(self.source.dtype)

    def plain_block(self, start: int, stop: int) -> numpy.ndarray:
        """Rows ``start:stop`` as reals (after the transform), or the scalar for 0-d arrays."""
        if not self.shape:
            block = numpy.asarray(self.source[()])
        else:
            block = numpy.asarray(self.source[start:stop])
        if self.transform == "normalise":
            block = block.astype(numpy.float64) / 255.0
            bshape = (1, -1) + (1,) * (block.ndim - 2)
            mean = numpy.asarray(self.mean, numpy.float64)
            std = numpy.asarray(self.std, numpy.float64)
            if mean.size > 1:
                mean = mean.reshape(bshape)
            if std.size > 1:
                std = std.reshape(bshape)
            block = (block - mean) / std
        return block

    def check(self):
        kind = self.dtype.kind
        if kind not in "biuf":
            raise EncodingError(f"array {self.name!r} has dtype {self.dtype}; only numbers can be shared")
        if self.scale == 0 and (kind == "f" or self.transform != "none"):
            raise EncodingError(f"array {self.name!r} holds reals; it needs a scale > 0 (fractional bits)")
        safe_limit(self.scale)
        if self.transform == "normalise":
            shape = self.shape
            if len(shape) < 2:
                raise EncodingError(f"array {self.name!r}: normalisation needs rows x channels x ...")
            for label, v in (("mean", self.mean), ("std", self.std)):
                v = numpy.asarray(v, numpy.float64).ravel()
                if v.size not in (1, shape[1]):
                    raise EncodingError(f"array {self.name!r}: {label} has {v.size} values for {shape[1]} channels")
                if not numpy.isfinite(v).all():
                    raise EncodingError(f"array {self.name!r}: {label} is not finite")
            if (numpy.asarray(self.std, numpy.float64) <= 0).any():
                raise EncodingError(f"array {self.name!r}: std must be positive")
        elif self.transform != "none":
            raise EncodingError(f"array {self.name!r}: unknown transform {self.transform!r}")


@dataclass
class ShardSet:
    """What a split wrote."""

    paths: list
    set_id: str
    kind: str
    frac_bits: int
    arrays: dict  # name -> {"shape", "dtype", "scale"}
    sizes: list = field(default_factory=list)  # bytes per file
    public: dict = field(default_factory=dict)  # what /public holds (sub-groups as dicts)
    withheld: list = field(default_factory=list)  # input attrs kept private (set by the share step)
    consts: dict = field(default_factory=dict)  # a graph model's public constants (set by the share step)


def write_shard_set(
    out_dir: str,
    stem: str,
    arrays,
    *,
    kind: str,
    frac_bits: int,
    name: str = "",
    source_format: str = "arrays",
    public: dict | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
    block_bytes: int = BLOCK_BYTES,
    consts: dict | None = None,
) -> ShardSet:
    """Secret-share ``arrays`` (a list of :class:`ArraySpec`) into three shard files.

    The components ``x0, x1`` are drawn from a fresh AES-CTR stream
    (:class:`mpcgpu.crypto.prg.Stream` with a new OS key per call) and ``x2 = x - x0 - x1``.
    Arrays are processed in row blocks of about ``block_bytes`` per component.
    Files are written under temporary names and renamed when complete, so a
    failed split leaves no partial shard set.  ``progress``: None shows a
    progress line on stderr when the output exceeds 256 MiB.  ``public`` is written
    as is to ``/public`` (a dict value becomes a sub-group): pass only what every
    server may learn (:func:`mpcgpu.data.split.select_public` chooses it).  ``consts``
    (a graph model's public constants, ``{name: array}``) go in clear to ``/consts`` of
    every file.
    """
    from mpcgpu.crypto.prg import Stream, fresh_key

    h5py = _h5py()
    if kind not in KINDS:
        raise ShardError(f"shard kind must be one of {KINDS}, got {kind!r}")
    safe_limit(frac_bits)
    names = [a.name for a in arrays]
    if len(set(names)) != len(names):
        raise ShardError(f"duplicate array names: {names}")
    for a in arrays:
        if not a.name or a.name.startswith("/") or "//" in a.name:
            raise ShardError(f"invalid array name {a.name!r}")
        a.check()
    os.makedirs(out_dir or ".", exist_ok=True)
    base = os.path.join(out_dir, stem)
    paths = [shard_path(base, i) for i in range(PARTIES)]
    if not overwrite:
        existing = [p for p in paths if os.path.exists(p)]
        if existing:
            raise ShardError(
                f"shard file(s) already exist: {', '.join(existing)} (remove them or pass --force / overwrite=True)"
            )
    tmp = [p + ".partial" for p in paths]

    set_id = secrets.token_hex(16)
    total = 3 * 2 * 8 * sum(int(numpy.prod(a.shape, dtype=numpy.int64)) for a in arrays)
    show = (total > PROGRESS_BYTES) if progress is None else bool(progress)
    meter = Progress(total, "sharing", enabled=show, unit="MiB", scale=2**20)
    stream = Stream(fresh_key())
    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    files = []
    try:
        for i in range(PARTIES):
            atomic.create_private(tmp[i])  # mode 0600 before a byte is written
            f = h5py.File(tmp[i], "w")
            files.append(f)
            _write_header(
                f,
                i,
                kind=kind,
                set_id=set_id,
                frac_bits=frac_bits,
                name=name,
                source_format=source_format,
                names=names,
                created=created,
                public=public,
                consts=consts,
            )
        info = {}
        for k, a in enumerate(arrays):
            info[a.name] = _write_array(files, a, stream, meter, block_bytes)
            if k == 0:
                faults.point("write-shard")  # tests: killed with the files half-written
        for f in files:
            f.close()
        files = []
        for t in tmp:
            atomic.fsync_file(t)
        for t, p in zip(tmp, paths):
            os.replace(t, p)
        atomic.fsync_file(os.path.abspath(out_dir or "."), directory=True)
    except BaseException:
        for f in files:
            try:
                f.close()
            except Exception:
                pass
        for t in tmp:
            try:
                os.remove(t)
            except OSError:
                pass
        raise
    finally:
        meter.close()
    return ShardSet(
        paths=paths,
        set_id=set_id,
        kind=kind,
        frac_bits=int(frac_bits),
        arrays=info,
        sizes=[os.path.getsize(p) for p in paths],
        public={k: dict(v) if isinstance(v, dict) else v for k, v in (public or {}).items()},
    )


def _write_header(f, party: int, *, kind, set_id, frac_bits, name, source_format, names, created, public, consts=None):
    """The root attributes, ``/public``, ``/consts`` (if any) and an empty ``/arrays`` of
    one party's file."""
    f.attrs["format"] = FORMAT
    f.attrs["kind"] = kind
    f.attrs["party"] = int(party)
    f.attrs["parties"] = PARTIES
    f.attrs["set_id"] = set_id
    f.attrs["frac_bits"] = int(frac_bits)
    f.attrs["name"] = str(name)
    f.attrs["source_format"] = str(source_format)
    f.attrs["array_names"] = json.dumps(list(names))
    f.attrs["created"] = created
    pub = f.create_group("public")
    for k, v in (public or {}).items():
        if isinstance(v, dict):  # one level of sub-groups, e.g. a weights file's /meta
            sub = pub.create_group(k)
            for kk, vv in v.items():
                sub.attrs[kk] = vv
        else:
            pub.attrs[k] = v
    if consts is not None:
        group = f.create_group("consts", track_order=True)
        for k, v in consts.items():
            v = numpy.asarray(v)
            if v.dtype.kind not in "biuf":
                raise ShardError(f"const {k!r}: {v.dtype} is not a number or bool")
            group.create_dataset(k, data=v)
    f.create_group("arrays")


def _array_group(f, party: int, name: str, shape, dtype: str, scale: int):
    g = f["arrays"].create_group(name)
    g.attrs["shape"] = numpy.asarray(shape, numpy.int64)
    g.attrs["dtype"] = dtype
    g.attrs["scale"] = int(scale)
    g.attrs["encoding"] = "fixed" if scale else "integer"
    g.attrs["components"] = numpy.asarray([party, (party + 1) % PARTIES], numpy.int64)
    return g


def write_party_shard(
    path: str,
    party: int,
    arrays: dict,
    *,
    kind: str,
    set_id: str,
    frac_bits: int,
    name: str,
    public: dict | None = None,
    source_format: str = "mpcgpu-train",
    separate_hosts: bool = False,
    consts: dict | None = None,
) -> str:
    """Write ONE party's file of a shard set that the three parties produce together (e.g.
    trained weights): ``arrays`` is ``{name: (first, second, scale)}`` -- this party's own
    two components, host uint64 arrays -- and ``set_id`` is common to the three files.
    Written under a temporary name (mode 0600) and renamed when complete; ``separate_hosts``
    (a parties file): another party's file in the directory is an error
    (:func:`mpcgpu.util.atomic.check_own_directory`).  Returns the path."""
    h5py = _h5py()
    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    atomic.check_own_directory(folder, party, separate_hosts=separate_hosts)
    with written_atomically(path, "write-shard", private=True) as tmp, h5py.File(tmp, "w") as f:
        _write_header(
            f,
            party,
            kind=kind,
            set_id=set_id,
            frac_bits=frac_bits,
            name=name,
            source_format=source_format,
            names=list(arrays),
            created=created,
            public=public,
            consts=consts,
        )
        for key, (first, second, scale) in arrays.items():
            first = numpy.ascontiguousarray(first, dtype=_U64)
            second = numpy.ascontiguousarray(second, dtype=_U64)
            g = _array_group(f, party, key, first.shape, "float64" if scale else "int64", scale)
            g.attrs["transform"] = "none"
            g.create_dataset("first", data=first)
            g.create_dataset("second", data=second)
            g.attrs["sha256_first"] = hashlib.sha256(memoryview(first).cast("B")).hexdigest()
            g.attrs["sha256_second"] = hashlib.sha256(memoryview(second).cast("B")).hexdigest()
    return path


def _write_array(files, a: ArraySpec, stream, meter: Progress, block_bytes: int) -> dict:
    shape = a.shape
    groups, dsets = [], []
    for i, f in enumerate(files):
        g = _array_group(f, i, a.name, shape, a.dtype.name, a.scale)
        g.attrs["transform"] = a.transform
        if a.transform == "normalise":
            g.attrs["mean"] = numpy.asarray(a.mean, numpy.float64).ravel()
            g.attrs["std"] = numpy.asarray(a.std, numpy.float64).ravel()
        # contiguous, uncompressed: shares are random and read in row blocks
        dsets.append(
            (g.create_dataset("first", shape=shape, dtype=_U64), g.create_dataset("second", shape=shape, dtype=_U64))
        )
        groups.append(g)
    hashes = [hashlib.sha256() for _ in range(PARTIES)]  # one per component x_j
    what = f"array {a.name!r}"
    n_rows = shape[0] if shape else 1
    for start, stop in _blocks(n_rows, _rows_per_block(shape, block_bytes)):
        plain = a.plain_block(start, stop)
        check_range(plain, a.scale, what=f"{what} (rows {start}:{stop})" if shape else what)
        x = numpy.ascontiguousarray(encode(plain, a.scale, check=False), dtype=_U64)
        x0 = stream.uint64(x.shape)
        x1 = stream.uint64(x.shape)
        x2 = x - x0 - x1  # wraps mod 2^64
        comps = (x0, x1, x2)
        for j, c in enumerate(comps):
            hashes[j].update(memoryview(numpy.ascontiguousarray(c, dtype=_U64)).cast("B"))
        sel = slice(start, stop) if shape else ()
        for i, (first, second) in enumerate(dsets):
            first[sel] = comps[i]
            second[sel] = comps[(i + 1) % PARTIES]
        meter.update(6 * x.nbytes, a.name)
    digests = [h.hexdigest() for h in hashes]
    for i, g in enumerate(groups):
        g.attrs["sha256_first"] = digests[i]
        g.attrs["sha256_second"] = digests[(i + 1) % PARTIES]
    return {"shape": shape, "dtype": a.dtype.name, "scale": int(a.scale)}


# ----------------------------------------------------------------------------------------
# reader
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArrayInfo:
    """Public description of one shared array."""

    name: str
    shape: tuple
    dtype: str  # plaintext dtype of the source
    scale: int  # fractional bits (0: integers)
    transform: str = "none"
    mean: tuple | None = None
    std: tuple | None = None

    @property
    def rows(self) -> int:
        return self.shape[0] if self.shape else 1


def resolve_path(path: str, party: int) -> str:
    """The shard file of ``party`` for ``path``: an existing file as is, a pattern with
    ``{party}`` filled in, or a stem completed to ``<stem>.party<party>.h5``."""
    path = os.fspath(path)
    if "{party}" in path:
        return path.format(party=party)
    if os.path.isfile(path):
        return path
    candidate = shard_path(path, party)
    if os.path.isfile(candidate) or not path.endswith((".h5", ".hdf5")):
        return candidate
    return path


_DAMAGE = DAMAGE  # h5py's errors on a damaged file (mpcgpu.util.hdf5)


def _damaged(path, exc) -> str:
    return damaged_message("shard file", path, exc) + "; copy it again"


def _attr_str(v) -> str:
    if isinstance(v, bytes):
        return v.decode()
    return str(v)


def _attr_int(attrs, key, where) -> int:
    if key not in attrs:
        raise ShardError(f"{where}: missing attribute {key!r}: not a complete mpcgpu shard")
    try:
        return int(attrs[key])
    except (TypeError, ValueError):
        raise ShardError(f"{where}: attribute {key!r} is not an integer") from None


class Shard:
    """One party's open shard file (use :func:`open_shard`).

    Attributes: ``path``, ``party``, ``kind``, ``set_id``, ``frac_bits``, ``name``,
    ``source_format``, ``arrays`` (name -> :class:`ArrayInfo`, in order), ``public``
    (the input metadata its owner made public: the attrs of ``/public``, and each
    sub-group such as ``/public/meta`` as a nested dict).  Arrays come back as pairs
    ``(component_i, component_{i+1})`` of uint64 arrays, moved to ``backend``
    (NumPy host arrays when there is none).
    """

    def __init__(self, path: str, backend=None):
        self.path = path
        self.backend = backend
        self._file = None
        self._open()

    # -- local validation -------------------------------------------------------------
    def _open(self):
        faults.point("read-shard")
        self._file = open_for_reading(self.path, ShardError, "shard file")
        try:
            self._read_header()
        except _DAMAGE as exc:  # h5py on damaged metadata (found by tests/test_fuzz_readers.py)
            self.close()
            raise ShardError(_damaged(self.path, exc)) from None
        except BaseException:
            self.close()
            raise

    def _read_header(self):
        f, path = self._file, self.path
        fmt = _attr_str(f.attrs.get("format", ""))
        if fmt != FORMAT:
            raise ShardError(
                f"{path} is not an mpcgpu shard: format tag {fmt or '(none)'!r}, expected "
                f"{FORMAT!r}"
                + (
                    " (this looks like plaintext input: run `mpcgpu share` on it first)"
                    if fmt.startswith(("mpcgpu-dataset", "mpcgpu-weights"))
                    else ""
                )
            )
        self.party = _attr_int(f.attrs, "party", path)
        parties = _attr_int(f.attrs, "parties", path)
        if parties != PARTIES or not 0 <= self.party < PARTIES:
            raise ShardError(f"{path}: party {self.party} of {parties} is not a three-party shard")
        self.kind = _attr_str(f.attrs.get("kind", ""))
        if self.kind not in KINDS:
            raise ShardError(f"{path}: unknown shard kind {self.kind!r}")
        self.set_id = _attr_str(f.attrs.get("set_id", ""))
        if len(self.set_id) != 32:
            raise ShardError(f"{path}: missing or malformed shard-set id")
        self.frac_bits = _attr_int(f.attrs, "frac_bits", path)
        self.name = _attr_str(f.attrs.get("name", ""))
        self.source_format = _attr_str(f.attrs.get("source_format", ""))
        self.created = _attr_str(f.attrs.get("created", ""))
        try:
            names = json.loads(_attr_str(f.attrs["array_names"]))
        except (KeyError, ValueError):
            raise ShardError(f"{path}: missing or malformed attribute 'array_names'") from None
        self.public = {}
        if "public" in f:
            pub = f["public"]
            self.public = {k: _plain(v) for k, v in pub.attrs.items()}
            for k, sub in pub.items():
                self.public[k] = {kk: _plain(vv) for kk, vv in sub.attrs.items()}
        arrays = {}
        for name in names:
            key = f"arrays/{name}"
            if key not in f:
                raise ShardError(f"{path}: array {name!r} is listed but missing")
            g = f[key]
            where = f"{path}: array {name!r}"
            for attr in ("shape", "scale", "sha256_first", "sha256_second"):
                if attr not in g.attrs:
                    raise ShardError(f"{where}: missing attribute {attr!r}")
            shape = tuple(int(s) for s in numpy.asarray(g.attrs["shape"]).ravel())
            comps = tuple(int(c) for c in numpy.asarray(g.attrs.get("components", [-1, -1])).ravel())
            if comps != (self.party, (self.party + 1) % PARTIES):
                raise ShardError(
                    f"{where}: holds components {comps}, but party {self.party} holds "
                    f"({self.party}, {(self.party + 1) % PARTIES})"
                )
            for ds in ("first", "second"):
                if ds not in g or not isinstance(g[ds], _h5py().Dataset):
                    raise ShardError(f"{where}: component dataset {ds!r} is missing")
                d = g[ds]
                if tuple(d.shape) != shape or d.dtype != _U64:
                    raise ShardError(f"{where}: component {ds!r} is {d.dtype}{tuple(d.shape)}, expected uint64{shape}")
            mean = g.attrs.get("mean")
            std = g.attrs.get("std")
            arrays[name] = ArrayInfo(
                name=name,
                shape=shape,
                dtype=_attr_str(g.attrs.get("dtype", "")),
                scale=int(g.attrs["scale"]),
                transform=_attr_str(g.attrs.get("transform", "none")),
                mean=None if mean is None else tuple(float(v) for v in numpy.ravel(mean)),
                std=None if std is None else tuple(float(v) for v in numpy.ravel(std)),
            )
        self.arrays = arrays
        self.const_names = ()
        if "consts" in f:
            group = f["consts"]
            if not isinstance(group, _h5py().Group):
                raise ShardError(f"{path}: '/consts' is not a group")
            self.const_names = tuple(group.keys())
            for k in self.const_names:
                if not isinstance(group[k], _h5py().Dataset) or group[k].dtype.kind not in "biuf":
                    raise ShardError(f"{path}: const {k!r} is not a numeric dataset")

    def consts(self) -> dict:
        """The public arrays (``/consts``: a graph model's constants, a token dataset's
        masks), ``{name: host array}`` (empty for any other shard)."""
        try:
            return {k: numpy.asarray(self._file["consts"][k][()]) for k in self.const_names}
        except _DAMAGE as exc:
            raise ShardError(f"shard {self.path}: the consts cannot be read: {exc}") from None

    def consts_digest(self) -> str:
        """SHA-256 of the constants (names, dtypes, shapes, bytes): public, compared
        across the parties."""
        h = hashlib.sha256()
        for k, v in self.consts().items():
            v = numpy.ascontiguousarray(v)
            h.update(json.dumps([k, v.dtype.str, list(v.shape)]).encode())
            h.update(v.tobytes())
        return h.hexdigest()

    def check_party(self, party: int):
        """ShardError unless this file belongs to ``party``."""
        if self.party != party:
            raise ShardError(f"shard {self.path} belongs to party {self.party} but this is party {party}")

    def verify_checksums(self, block_bytes: int = BLOCK_BYTES):
        """Recompute the SHA-256 of every stored component (read in row blocks)."""
        try:
            self._verify_checksums(block_bytes)
        except _DAMAGE as exc:
            raise ShardError(_damaged(self.path, exc)) from None

    def _verify_checksums(self, block_bytes):
        for name, info in self.arrays.items():
            g = self._file[f"arrays/{name}"]
            for ds in ("first", "second"):
                d = g[ds]
                h = hashlib.sha256()
                try:
                    if not info.shape:
                        h.update(numpy.asarray(d[()], _U64).tobytes())
                    else:
                        for start, stop in _blocks(info.shape[0], _rows_per_block(info.shape, block_bytes)):
                            block = numpy.ascontiguousarray(d[start:stop], dtype=_U64)
                            h.update(memoryview(block).cast("B"))
                except OSError as exc:
                    raise ShardError(
                        f"shard {self.path}: array {name!r} cannot be read (truncated or corrupt file): {exc}"
                    ) from None
                expected = _attr_str(g.attrs[f"sha256_{ds}"])
                if h.hexdigest() != expected:
                    raise ShardError(
                        f"shard {self.path}: checksum mismatch in array {name!r} "
                        f"(component {ds!r}): the file is corrupt; copy it again"
                    )

    #: the attributes :meth:`summary` gives, with the arrays' names, shapes and scales
    PUBLIC_FACTS = ("set_id", "kind", "frac_bits", "party", "name")

    def summary(self) -> dict:
        """Public facts compared across the parties (never checksums or data)."""
        facts = {k: getattr(self, k) for k in self.PUBLIC_FACTS}
        facts["arrays"] = [(n, list(a.shape), a.scale) for n, a in self.arrays.items()]
        if self.const_names:
            facts["consts"] = self.consts_digest()
        return facts

    # -- data -----------------------------------------------------------------------
    def info(self, name: str) -> ArrayInfo:
        try:
            return self.arrays[name]
        except KeyError:
            raise ShardError(
                f"shard {self.path} has no array {name!r} (it has: {', '.join(self.arrays) or 'none'})"
            ) from None

    def rows(self, name: str) -> int:
        return self.info(name).rows

    def _dev(self, a):
        return self.backend.to_device(a) if self.backend is not None else a

    def read(self, name: str, start: int = 0, stop: int | None = None):
        """Rows ``start:stop`` of ``name`` as a pair of *host* uint64 arrays."""
        stop = self.rows(name) if stop is None else stop
        return tuple(self.read_component(name, which, start, stop) for which in ("first", "second"))

    def take(self, name: str, rows):
        """The rows ``rows`` (increasing, no repeats) of ``name`` as a pair on the back end:
        one batch of a shuffled epoch."""
        rows = numpy.asarray(rows, dtype=numpy.int64)
        if rows.ndim != 1 or (rows.size > 1 and (numpy.diff(rows) <= 0).any()):
            raise ShardError("take() needs increasing row indices")
        if rows.size and (rows[0] < 0 or rows[-1] >= self.rows(name)):
            raise ShardError(f"row index out of range for {name!r} ({self.rows(name)} rows)")
        try:
            g = self._file[f"arrays/{name}"]
            return tuple(self._dev(numpy.ascontiguousarray(g[c][rows], dtype=_U64)) for c in ("first", "second"))
        except _DAMAGE as exc:
            raise ShardError(f"shard {self.path}: array {name!r} cannot be read: {exc}") from None

    def read_component(self, name: str, which: str, start: int, stop: int):
        """Rows ``start:stop`` of one component (``"first"`` or ``"second"``) of ``name``,
        a host uint64 array (a weight read where it is used: :class:`StoredComponent`)."""
        info = self.info(name)
        try:
            d = self._file[f"arrays/{name}"][which]
            if not info.shape:
                return numpy.asarray(d[()], _U64)
            return numpy.ascontiguousarray(d[start:stop], dtype=_U64)
        except _DAMAGE as exc:
            raise ShardError(f"shard {self.path}: array {name!r} cannot be read: {exc}") from None

    def load(self, name: str):
        """The whole array ``name`` as a pair on the back end (model parameters)."""
        first, second = self.read(name)
        return self._dev(first), self._dev(second)

    def load_all(self) -> dict:
        """Every array as ``{name: (first, second)}`` on the back end, in file order."""
        return {name: self.load(name) for name in self.arrays}

    def batches(self, names, batch_size: int, *, start: int = 0, stop: int | None = None, drop_last: bool = False):
        """Iterate row batches on the back end.

        ``names`` is one array name (yields pairs) or a sequence of names with the
        same number of rows (yields tuples of pairs, e.g. ``("images", "labels")``).
        """
        single = isinstance(names, str)
        names = [names] if single else list(names)
        counts = {self.rows(n) for n in names}
        if len(counts) != 1:
            raise ShardError(f"arrays {names} have different numbers of rows")
        if batch_size < 1:
            raise ValueError("batch_size must be positive")
        end = counts.pop() if stop is None else min(stop, self.rows(names[0]))
        for lo in range(start, end, batch_size):
            hi = min(lo + batch_size, end)
            if drop_last and hi - lo < batch_size:
                return
            pairs = tuple(tuple(self._dev(c) for c in self.read(n, lo, hi)) for n in names)
            yield pairs[0] if single else pairs

    def close(self):
        if self._file is not None:
            try:
                self._file.close()
            finally:
                self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return (
            f"Shard({self.path!r}, party={self.party}, kind={self.kind!r}, set={self.set_id[:8]}, "
            f"frac_bits={self.frac_bits}, arrays={list(self.arrays)})"
        )


def _plain(v):
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, numpy.ndarray):
        return v.tolist()
    if isinstance(v, numpy.generic):
        return v.item()
    return v


def _open_local(path, party, backend, verify, kind):
    shard = Shard(path, backend)
    try:
        if party is not None:
            shard.check_party(party)
        if kind is not None and shard.kind != kind:
            raise ShardError(f"shard {path} holds a {shard.kind}, but a {kind} is needed here")
        if verify:
            shard.verify_checksums()
    except BaseException:
        shard.close()
        raise
    return shard


def open_shard(
    path,
    rt=None,
    *,
    party: int | None = None,
    kind: str | None = None,
    verify: bool = True,
    collective: bool | None = None,
) -> Shard:
    """Open and validate this party's shard; returns a :class:`Shard`.

    ``path``: the shard file, a stem (``out/mnist`` -> ``out/mnist.party<i>.h5``) or a
    pattern containing ``{party}``.  ``rt``: the runtime (default: the initialised one,
    if any); ``party`` defaults to ``rt.rank``.  ``kind``: "dataset" or "model" if the
    caller needs one.  ``verify``: recompute the checksums.

    With a runtime (``collective`` true by default) this must be called on all three
    ranks: after the local checks the parties compare their shards' public facts (set
    id, kind, arrays, shapes, scales, frac_bits against ``rt.frac_bits``) and every rank
    raises the same :class:`ShardError` if any check failed on any party.
    """
    if rt is None:
        from .. import runtime

        if runtime.is_initialised():
            rt = runtime.get()
    if collective is None:
        collective = rt is not None
    if party is None:
        if rt is None:
            raise ShardError("open_shard needs the party index (party=...) or an initialised runtime")
        party = rt.rank
    backend = rt.backend if rt is not None else None
    resolved = resolve_path(path, party)
    if not collective:
        return _open_local(resolved, party, backend, verify, kind)

    shard, report = None, None
    try:
        shard = _open_local(resolved, party, backend, verify, kind)
        report = (True, "", shard.summary())
    except ShardError as exc:
        report = (False, str(exc), None)
    except Exception as exc:  # never leave the other ranks waiting
        report = (False, f"{resolved}: {exc.__class__.__name__}: {exc}", None)
    reports = rt.comm.allgather_object((report, int(rt.frac_bits)))
    problem = _collective_problem(reports)
    if problem:
        if shard is not None:
            shard.close()
        raise ShardError(problem)
    return shard


def _collective_problem(reports) -> str | None:
    """The reason the three parties' shards cannot be used together (None if they can).

    ``reports[p] = ((ok, message, summary), runtime_frac_bits)``; every rank evaluates
    the same list, so every rank reaches the same verdict.
    """
    failed = [f"party {p}: {msg}" for p, ((ok, msg, _), _) in enumerate(reports) if not ok]
    if failed:
        return "shard check failed on " + "; ".join(failed)
    summaries = [s for (_, _, s), _ in reports]
    ids = [s["set_id"] for s in summaries]
    if len(set(ids)) != 1:
        return (
            "the parties' shards come from different splits (shard-set ids "
            + ", ".join(f"party {p}: {i[:12]}" for p, i in enumerate(ids))
            + "): give every party its file of the same `mpcgpu share` run"
        )
    kinds = [s["kind"] for s in summaries]
    if len(set(kinds)) != 1:
        return "the parties' shards are of different kinds: " + ", ".join(
            f"party {p}: {k}" for p, k in enumerate(kinds)
        )
    for p, s in enumerate(summaries):
        if s["party"] != p:
            return f"party {p} opened the shard of party {s['party']}"
    fbits = [s["frac_bits"] for s in summaries]
    for p, ((_, _, s), rt_bits) in enumerate(reports):
        if s["frac_bits"] != rt_bits:
            return (
                f"the shards were split with {s['frac_bits']} fractional bits but party {p} runs "
                f"with {rt_bits} (use --precision {s['frac_bits']}, or split again)"
            )
    if len(set(fbits)) != 1:
        return f"the parties' shards disagree on the fractional bits: {fbits}"
    digests = [s.get("consts") for s in summaries]
    if len(set(digests)) != 1:
        return "the parties' shards hold different public consts: " + ", ".join(
            f"party {p}: {(d or 'none')[:12]}" for p, d in enumerate(digests)
        )
    layouts = [s["arrays"] for s in summaries]
    if any(layout != layouts[0] for layout in layouts):
        for p in range(1, PARTIES):
            if layouts[p] != layouts[0]:
                diff = _layout_diff(layouts[0], layouts[p])
                return f"the shards of party 0 and party {p} disagree on the arrays: {diff}"
    return None


def _layout_diff(a, b) -> str:
    da = {n: (shape, scale) for n, shape, scale in a}
    db = {n: (shape, scale) for n, shape, scale in b}
    if list(da) != list(db):
        return f"names {list(da)} vs {list(db)}"
    for n in da:
        if da[n] != db[n]:
            (sa, ca), (sb, cb) = da[n], db[n]
            if sa != sb:
                return f"array {n!r} has shape {tuple(sa)} vs {tuple(sb)}"
            return f"array {n!r} has scale {ca} vs {cb}"
    return "unknown difference"


class StoredComponent:
    """One component of an array of an open shard, read from the file where it is used
    (a :mod:`mpcgpu.sharing.components` kind: ``shape``, ``held_bytes``, ``read(lo, hi)``
    of flat words).  The file's checksums were verified when it was opened, and the file
    stays open: a shard set replaced meanwhile (written to a new file, then renamed) does
    not change what is read."""

    __slots__ = ("shard", "name", "which", "shape")

    def __init__(self, shard: Shard, name: str, which: str):
        self.shard, self.name, self.which = shard, name, which
        self.shape = tuple(shard.info(name).shape)

    @property
    def held_bytes(self) -> int:
        return 0

    def read(self, lo: int, hi: int):
        if not self.shape:
            return self.shard._dev(self.shard.read_component(self.name, self.which, 0, 0).reshape(1)[lo:hi])
        per_row = int(numpy.prod(self.shape[1:], dtype=numpy.int64))  # >= 1: a compact array is large
        r0, r1 = lo // per_row, -(-hi // per_row)
        rows = self.shard.read_component(self.name, self.which, r0, r1).reshape(-1)
        return self.shard._dev(rows[lo - r0 * per_row : hi - r0 * per_row])


def as_share(pair, scale: int):
    """Wrap ``(first, second)`` as the share tensor type (imported lazily)."""
    from ..sharing.arithmetic import ArithmeticShare

    first, second = pair
    return ArithmeticShare(first, second, scale)


def reconstruct_local(paths, name: str, start: int = 0, stop: int | None = None) -> numpy.ndarray:
    """x = x0 + x1 + x2 from the three shard files (testing and owner-side checks only:
    never on a server, which must hold one file)."""
    parts = {}
    for p in paths:
        with Shard(p) as s:
            first, second = s.read(name, start, stop)
            parts[s.party] = first
            parts.setdefault((s.party + 1) % PARTIES, second)
    if set(parts) != {0, 1, 2}:
        raise ShardError(f"cannot reconstruct {name!r}: components {sorted(parts)} only")
    return parts[0] + parts[1] + parts[2]
