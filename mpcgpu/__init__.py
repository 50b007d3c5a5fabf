"""mpcgpu: private deep learning by secure three-party computation (CryptGPU style).

Three MPI ranks hold 2-out-of-3 replicated secret shares of inputs and weights.
The public face:

    import mpcgpu
    rt = mpcgpu.init()                # on all three ranks (mpirun -n 3)
    x = mpcgpu.share(array, src=0)     # rank 0's array, secret-shared
    y = (x @ x.T).relu()
    print(y.reveal())                  # every rank sees the result
    print(mpcgpu.comm_stats())         # bytes and rounds of this party
"""

from __future__ import annotations

from .errors import BackendError, EncodingError, MPCError, ProtocolError, RankCountError, ShardError
from .runtime import get as get_runtime
from .runtime import init, is_initialised
from .sharing.arithmetic import ArithmeticShare, share
from .sharing.binary import BinaryShare
from . import protocols  # noqa: F401  (attaches the protocols to the share types as methods)

from ._version import __version__

__all__ = [
    "__version__",
    "init",
    "get_runtime",
    "is_initialised",
    "share",
    "ArithmeticShare",
    "BinaryShare",
    "comm_stats",
    "reset_comm_stats",
    "MPCError",
    "RankCountError",
    "EncodingError",
    "ShardError",
    "ProtocolError",
    "BackendError",
]


def comm_stats() -> dict:
    """Bytes sent, rounds and messages of this party since init (or the last reset)."""
    return get_runtime().comm.stats.as_dict()


def reset_comm_stats():
    get_runtime().comm.reset_stats()


def __getattr__(name):
    # subpackages on first use: `mpcgpu.nn`, `mpcgpu.data`, ...
    import importlib

    if name in ("nn", "ring", "data", "comm", "crypto", "device", "kernelsets", "util", "reporting", "interop"):
        return importlib.import_module(f".{name}", __name__)
    if name == "encoding":  # its old place
        return importlib.import_module(".ring.encoding", __name__)
    raise AttributeError(f"module 'mpcgpu' has no attribute {name!r}")
