"""Authenticated, encrypted channels between the three parties.

Threat model: see docs/design.md ("Channels").  Without channels every share crosses
the interconnect in clear and anyone who reads it learns every secret.

* **Long-term keys.** Each server has an Ed25519 key pair (``mpcgpu keygen``); a
  *parties file* (JSON) lists the three public keys, optionally with host names.
* **Key exchange** (at start-up, two rounds, all three pairs at once).  Round 1: every
  party sends each peer a 128-byte hello: its channel mode, a fresh X25519 public key
  for that pair, its long-term public key, a fresh 16-byte job nonce (the same in both
  its hellos) and its host name (informational: never trusted for a decision).  After
  round 1 every party holds the three nonces; the **job id** is ``SHA-256(label, "job",
  n_0, n_1, n_2)``, the same on the three parties of one job and different for any
  other mix of processes.  Round 2 (with a parties file only): each party signs the
  transcript hash ``T = SHA-256(label, i, j, both hellos, job id)`` (it covers both
  identities, both ephemeral keys and the job) with its long-term key and sends the
  64-byte signature; the peer verifies it against the key the parties file lists for
  that party.  Both derive ``HKDF-SHA256(X25519(e_i, e_j), salt=T)`` -> two 256-bit
  direction keys (i->j and j->i).  Bytes per party: 2 x 128 (+ 2 x 64).  Two jobs run
  at the same time (with the same keys) cannot be spliced: a party of one job that is
  made to talk to a party of the other computes another job id, so the signatures do
  not verify and no message opens.
* **Sealing.** Every message is one AES-256-GCM ciphertext plus a 16-byte tag.  The
  nonce is the 96-bit message counter of its direction (never sent: the receiver
  uses the counter it expects), and the associated data binds the job id, sender,
  receiver, counter and payload length.  A replayed, reordered, dropped, altered or wrongly
  keyed message fails to open.  Shape and dtype are the receiver's own expectation
  (checked against the length); they are not bound, so a program may send ``int64``
  words that the peer reads as ``uint64``, as before.
* **Modes.** ``authenticated`` (a parties file and this party's private key);
  ``ephemeral`` (no parties file: encrypted, NOT authenticated: an active attacker
  on the wire can sit in the middle; refused unless MPI's shared-memory communicator
  puts all three ranks on one machine: host names are not trusted for this);
  ``insecure`` (``--insecure-channels`` / ``MPCGPU_INSECURE_CHANNELS=1``: clear text,
  as before, and the CUDA-aware GPU path).

Everything here is host-side; :mod:`mpcgpu.comm.communicator` calls it for every message.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
from dataclasses import dataclass

import numpy
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from mpcgpu.errors import ChannelError

PARTIES = 3
TAG_BYTES = 16
HELLO_BYTES = 128
SIG_BYTES = 64
NONCE_BYTES = 16
HOST_BYTES = HELLO_BYTES - 1 - 32 - 32 - NONCE_BYTES
JOB_ID_BYTES = 32
LABEL = b"mpcgpu-channel-v1"
PARTIES_FORMAT = "mpcgpu-parties-1"

KEY_ENV = "MPCGPU_KEY"
PARTIES_ENV = "MPCGPU_PARTIES"
INSECURE_ENV = "MPCGPU_INSECURE_CHANNELS"
TIMEOUT_ENV = "MPCGPU_PEER_TIMEOUT"
#: seconds an exchange may wait for a peer before every live rank aborts.  Parties
#: compute in lock step, so a wait is short unless one party does extra local work
#: (verifying large shard files, writing a checkpoint); 10 minutes covers that.
DEFAULT_PEER_TIMEOUT = 600.0

MODES = ("insecure", "ephemeral", "authenticated")
_HOST = HELLO_BYTES - HOST_BYTES  # where the host name starts in a hello


@dataclass(frozen=True)
class ChannelConfig:
    """How a party protects its channels: ``mode`` and the files it needs."""

    mode: str = "ephemeral"
    key: str | None = None
    parties: str | None = None
    peer_timeout: float = DEFAULT_PEER_TIMEOUT

    @classmethod
    def resolve(cls, key=None, parties=None, insecure=None, peer_timeout=None, settings=None) -> "ChannelConfig":
        """The configuration from explicit values, falling back to ``settings`` (default: this
        process's, :func:`mpcgpu.settings.active`: ``MPCGPU_KEY``, ``MPCGPU_PARTIES``,
        ``MPCGPU_INSECURE_CHANNELS``, ``MPCGPU_PEER_TIMEOUT``)."""
        from mpcgpu import settings as settings_mod

        settings = settings if settings is not None else settings_mod.active()
        key = key or settings.key or None
        parties = parties or settings.parties or None
        if insecure is None:
            insecure = settings.insecure_channels
        if peer_timeout is None:
            peer_timeout = settings.peer_timeout
        peer_timeout = float(peer_timeout)
        if not peer_timeout >= 0:
            raise ChannelError(f"the peer timeout must be >= 0 seconds (0: wait for ever), got {peer_timeout}")
        if insecure:
            return cls("insecure", None, None, peer_timeout)
        if parties:
            return cls("authenticated", key, parties, peer_timeout)
        if key:
            raise ChannelError(
                f"a private key was given ({key}) but no parties file: add --parties FILE (or {PARTIES_ENV})"
            )
        return cls("ephemeral", None, None, peer_timeout)

    @property
    def separate_hosts(self) -> bool:
        """The parties run on hosts of their own (a parties file authenticates the channels):
        another party's file in a directory this party writes to is then an error, not a
        warning (:func:`mpcgpu.util.atomic.check_own_directory`)."""
        return self.mode == "authenticated"

    @classmethod
    def from_settings(cls, settings) -> "ChannelConfig":
        """The configuration of resolved :class:`~mpcgpu.settings.Settings`."""
        return cls.resolve(settings=settings)

    def describe(self, gpu_staged: bool = False) -> str:
        stage = ", GPU messages staged through host memory" if gpu_staged else ""
        if self.mode == "insecure":
            return "channels: INSECURE, messages in clear (--insecure-channels)"
        if self.mode == "ephemeral":
            return (
                "channels: AES-256-GCM with ephemeral keys, encrypted but NOT authenticated "
                f"(no parties file; single host only){stage}"
            )
        return f"channels: AES-256-GCM, authenticated by the parties file {self.parties}{stage}"


# -- key files ------------------------------------------------------------------------------
def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def public_bytes(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _write_new(path: str, data: bytes, mode: int):
    """Write a file atomically (temporary file in the same directory, then rename)."""
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_key_pair(out_dir: str, party: int, force: bool = False) -> tuple[str, str, str]:
    """Make party ``party``'s long-term Ed25519 key: ``party<N>.key`` (PKCS#8 PEM, mode
    0600) and ``party<N>.pub`` (JSON).  Returns (key path, public path, public key b64)."""
    if party not in range(PARTIES):
        raise ChannelError(f"--party must be 0, 1 or 2, got {party}")
    os.makedirs(out_dir, exist_ok=True)
    key_path = os.path.join(out_dir, f"party{party}.key")
    pub_path = os.path.join(out_dir, f"party{party}.pub")
    for path in (key_path, pub_path):
        if os.path.exists(path) and not force:
            raise ChannelError(f"{path} exists: not overwriting a key (use --force to replace it)")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    pub = _b64(public_bytes(key))
    _write_new(key_path, pem, 0o600)
    _write_new(pub_path, (json.dumps({"party": party, "public_key": pub}) + "\n").encode(), 0o644)
    return key_path, pub_path, pub


def write_parties_file(path: str, pub_files: list[str], hosts: list[str] | None = None, force: bool = False):
    """Assemble the parties file from the three ``party<N>.pub`` files (in any order)."""
    keys = {}
    for f in pub_files:
        try:
            with open(f) as fh:
                entry = json.load(fh)
            party, pub = int(entry["party"]), str(entry["public_key"])
            _decode_public(pub, f)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ChannelError(f"cannot read the public key file {f}: {exc}") from None
        if party in keys:
            raise ChannelError(f"two public key files for party {party} ({f})")
        keys[party] = pub
    if sorted(keys) != [0, 1, 2]:
        raise ChannelError(f"the parties file needs the public keys of parties 0, 1 and 2; got {sorted(keys)}")
    if hosts is not None and len(hosts) != PARTIES:
        raise ChannelError("--hosts takes three host names (party 0, 1, 2)")
    if os.path.exists(path) and not force:
        raise ChannelError(f"{path} exists: not overwriting it (use --force)")
    doc = {
        "format": PARTIES_FORMAT,
        "parties": [
            {"party": i, "public_key": keys[i], **({"host": hosts[i]} if hosts else {})} for i in range(PARTIES)
        ],
    }
    _write_new(path, (json.dumps(doc, indent=2) + "\n").encode(), 0o644)


def _decode_public(text: str, where: str) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise ValueError(f"{where}: a public key must be 32 bytes in base64")
    return raw


def load_parties(path: str) -> list[bytes]:
    """The three raw Ed25519 public keys of a parties file."""
    try:
        with open(path) as fh:
            doc = json.load(fh)
    except OSError as exc:
        raise ChannelError(f"cannot read the parties file {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ChannelError(f"the parties file {path} is not valid JSON: {exc}") from None
    try:
        if doc.get("format") != PARTIES_FORMAT:
            raise ValueError(f"format is {doc.get('format')!r}, expected {PARTIES_FORMAT!r}")
        entries = {int(e["party"]): e for e in doc["parties"]}
        if sorted(entries) != [0, 1, 2]:
            raise ValueError("it must list parties 0, 1 and 2")
        return [_decode_public(entries[i]["public_key"], f"party {i}") for i in range(PARTIES)]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ChannelError(f"the parties file {path} is malformed: {exc}") from None


def key_path_for(pattern: str, party: int) -> str:
    """``--key`` may name one file or a pattern with ``{party}`` (one file per party)."""
    return pattern.replace("{party}", str(party))


def load_private_key(pattern: str | None, party: int) -> Ed25519PrivateKey:
    if not pattern:
        raise ChannelError(
            f"party {party} has no private key: a parties file was given, so every party needs "
            f"--key FILE (or {KEY_ENV}); make one with `mpcgpu keygen --out DIR --party {party}`"
        )
    path = key_path_for(pattern, party)
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise ChannelError(f"party {party} cannot read its private key {path}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        key = None
    if not isinstance(key, Ed25519PrivateKey):
        raise ChannelError(f"party {party}: {path} is not an Ed25519 private key made by `mpcgpu keygen`")
    return key


# -- one direction of one channel -------------------------------------------------------------
class Direction:
    """AES-256-GCM with a counter nonce for the messages from ``sender`` to ``receiver``
    of the job ``job_id`` (bound in every message's associated data)."""

    def __init__(self, key: bytes, sender: int, receiver: int, job_id: bytes = bytes(JOB_ID_BYTES)):
        self.aead = AESGCM(key)
        self.sender, self.receiver = sender, receiver
        self.job_id = bytes(job_id)
        self.counter = 0
        self._into = hasattr(self.aead, "encrypt_into") and hasattr(self.aead, "decrypt_into")

    def _aad(self, counter: int, nbytes: int) -> bytes:
        return LABEL + self.job_id + struct.pack(">BBQQ", self.sender, self.receiver, counter, nbytes)

    def seal(self, payload, counter: int | None = None) -> numpy.ndarray:
        """``payload`` (a contiguous host array) -> ciphertext + tag (uint8 array).  Uses and
        advances the counter unless ``counter`` is given (tests)."""
        if counter is None:
            counter, self.counter = self.counter, self.counter + 1
        view = memoryview(payload.reshape(-1)).cast("B") if payload.nbytes else b""
        nonce = counter.to_bytes(12, "big")
        aad = self._aad(counter, payload.nbytes)
        out = numpy.empty(payload.nbytes + TAG_BYTES, dtype=numpy.uint8)
        if self._into:
            self.aead.encrypt_into(nonce, view, aad, out)
        else:  # older cryptography: one extra copy
            out[:] = numpy.frombuffer(self.aead.encrypt(nonce, bytes(view), aad), dtype=numpy.uint8)
        return out

    def open(self, wire: numpy.ndarray, shape, dtype) -> numpy.ndarray:
        """Ciphertext + tag -> a new writable array of ``shape``/``dtype``; ChannelError if it
        does not authenticate (the counter advances only on success)."""
        counter = self.counter
        nbytes = wire.nbytes - TAG_BYTES
        nonce = counter.to_bytes(12, "big")
        aad = self._aad(counter, nbytes)
        out = numpy.empty(shape, dtype=dtype)
        try:
            if self._into:
                self.aead.decrypt_into(nonce, memoryview(wire), aad, memoryview(out.reshape(-1)).cast("B"))
            else:
                plain = self.aead.decrypt(nonce, bytes(wire), aad)
                out.reshape(-1).view(numpy.uint8)[:] = numpy.frombuffer(plain, dtype=numpy.uint8)
        except InvalidTag:
            raise ChannelError(
                f"party {self.receiver}: message {counter} from party {self.sender} failed authentication "
                f"(altered, replayed, reordered, or sealed with another key or for another job): the channel "
                f"from party {self.sender} is not trustworthy; aborting"
            ) from None
        self.counter = counter + 1
        return out


# -- the key exchange -------------------------------------------------------------------------
class Handshake:
    """State of one party's key exchange with its two peers (driven by the communicator,
    which moves the bytes: see :meth:`mpcgpu.comm.link.SealedLink.connect`)."""

    def __init__(self, rank: int, config: ChannelConfig, host: str):
        self.rank = rank
        self.config = config
        self.peers = [p for p in range(PARTIES) if p != rank]
        self.listed = None
        self.identity = None
        long_term = bytes(32)
        if config.mode == "authenticated":
            self.listed = load_parties(config.parties)
            self.identity = load_private_key(config.key, rank)
            long_term = public_bytes(self.identity)
            if long_term != self.listed[rank]:
                raise ChannelError(
                    f"party {rank}: the private key {key_path_for(config.key, rank)} does not belong to party "
                    f"{rank} of the parties file {config.parties} (wrong key file or stale parties file)"
                )
        self.ephemeral = {p: X25519PrivateKey.generate() for p in self.peers}
        self.nonce = os.urandom(NONCE_BYTES)
        hostb = host.encode(errors="replace")[:HOST_BYTES]
        self.hello = {
            p: bytes([MODES.index(config.mode)])
            + public_bytes(self.ephemeral[p])
            + long_term
            + self.nonce
            + hostb.ljust(HOST_BYTES, b"\0")
            for p in self.peers
        }
        self.hellos_from = {}
        self.transcript = {}
        self.job_id = None

    def receive_hellos(self, hellos: dict) -> list[str]:
        """Check the peers' hellos (modes agree, listed identities), agree on the job id;
        returns the host names the three parties report, in rank order (informational)."""
        hosts = [""] * PARTIES
        nonces = [b""] * PARTIES
        hosts[self.rank] = self.hello[self.peers[0]][_HOST:].rstrip(b"\0").decode(errors="replace")
        nonces[self.rank] = self.nonce
        for p in self.peers:
            msg = bytes(hellos[p])
            self.hellos_from[p] = msg
            hosts[p] = msg[_HOST:].rstrip(b"\0").decode(errors="replace")
            nonces[p] = msg[65:_HOST]
        self.job_id = hashlib.sha256(LABEL + b"job" + b"".join(nonces)).digest()
        for p in self.peers:
            msg = self.hellos_from[p]
            mode = MODES[msg[0]] if msg[0] < len(MODES) else f"unknown ({msg[0]})"
            if mode != self.config.mode:
                raise ChannelError(
                    f"party {self.rank} runs {self.config.mode} channels but party {p} runs {mode} channels: "
                    "give every party the same --parties / --insecure-channels settings"
                )
            if self.config.mode == "authenticated" and msg[33:65] != self.listed[p]:
                raise ChannelError(
                    f"party {p} presents a long-term key that is not party {p}'s key in the parties file "
                    f"{self.config.parties} of party {self.rank} (wrong key file on party {p}, or the parties "
                    "files differ)"
                )
            lo, hi = min(self.rank, p), max(self.rank, p)
            h_lo = self.hello[p] if lo == self.rank else msg
            h_hi = msg if lo == self.rank else self.hello[p]
            self.transcript[p] = hashlib.sha256(LABEL + bytes([lo, hi]) + h_lo + h_hi + self.job_id).digest()
        return hosts

    def signatures(self) -> dict:
        """This party's signature of each pair's transcript (authenticated mode)."""
        return {p: self.identity.sign(b"sig" + bytes([self.rank]) + self.transcript[p]) for p in self.peers}

    def verify(self, sigs: dict):
        for p in self.peers:
            try:
                Ed25519PublicKey.from_public_bytes(self.listed[p]).verify(
                    bytes(sigs[p]), b"sig" + bytes([p]) + self.transcript[p]
                )
            except InvalidSignature:
                raise ChannelError(
                    f"party {p} failed to authenticate to party {self.rank}: its signature does not verify "
                    f"against party {p}'s public key in {self.config.parties} (wrong or stale key on party {p}, "
                    "or someone in the middle)"
                ) from None

    def directions(self) -> dict:
        """``{peer: (send Direction, receive Direction)}`` from the X25519 secrets."""
        out = {}
        for p in self.peers:
            peer_pub = X25519PublicKey.from_public_bytes(self.hellos_from[p][1:33])
            try:
                secret = self.ephemeral[p].exchange(peer_pub)
            except ValueError:
                raise ChannelError(f"party {p} sent an invalid key-exchange value to party {self.rank}") from None
            keys = HKDF(algorithm=SHA256(), length=64, salt=self.transcript[p], info=b"directions").derive(secret)
            lo = min(self.rank, p)
            k_lo_hi, k_hi_lo = keys[:32], keys[32:]
            send_key, recv_key = (k_lo_hi, k_hi_lo) if self.rank == lo else (k_hi_lo, k_lo_hi)
            out[p] = (Direction(send_key, self.rank, p, self.job_id), Direction(recv_key, p, self.rank, self.job_id))
        return out
