"""Exceptions raised by mpcgpu.  Each carries a message meant for the user."""


class MPCError(Exception):
    """Base class: a problem the user can act on (printed without a traceback by the CLI)."""


class BackendError(MPCError):
    """The requested device cannot be used."""


class RankCountError(MPCError):
    """mpcgpu was started with a number of MPI ranks other than three."""


class EncodingError(MPCError, ValueError):
    """A value lies outside the fixed-point range."""


class ShardError(MPCError):
    """A shard file is missing, corrupt, of the wrong party or of another shard set."""


class ProtocolError(MPCError):
    """Parties disagree (shapes, counters) or a protocol was misused."""


class ChannelError(MPCError):
    """A channel between two parties failed: a message did not authenticate, a key is wrong
    or missing, or a peer fell silent (the peer timeout)."""
