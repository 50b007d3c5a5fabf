"""Channels in one process: sealing (tamper, replay, reorder, wrong key), key files, the
parties file, the key exchange's arithmetic and the configuration (see mpcgpu/comm/channels.py;
the three-rank behaviour is in test_channels_mpi.py and test_channel_failures.py)."""

import json
import os
import stat

import numpy as np
import pytest

from mpcgpu.comm.channels import (
    HOST_BYTES,
    TAG_BYTES,
    ChannelConfig,
    Direction,
    Handshake,
    load_parties,
    load_private_key,
    write_key_pair,
    write_parties_file,
)
from mpcgpu.cli import main as cli_main
from mpcgpu.errors import ChannelError

KEY = bytes(range(32))


def pair(key=KEY, sender=0, receiver=1):
    return Direction(key, sender, receiver), Direction(key, sender, receiver)


@pytest.mark.parametrize(
    "shape,dtype", [((1000,), np.uint64), ((3, 4, 5), np.int64), ((), np.uint64), ((0,), np.uint64), ((7,), np.uint8)]
)
def test_seal_open_round_trip(shape, dtype):
    rng = np.random.default_rng(1)
    tx, rx = pair()
    for _ in range(3):
        x = rng.integers(0, 255, size=shape).astype(dtype)
        wire = tx.seal(x)
        assert wire.dtype == np.uint8 and wire.nbytes == x.nbytes + TAG_BYTES
        y = rx.open(wire, shape, dtype)
        assert y.shape == x.shape and y.dtype == x.dtype and np.array_equal(x, y)
        y[...] = 0  # the result is writable and independent of the wire
    assert tx.counter == rx.counter == 3


def test_every_flipped_byte_is_detected():
    x = np.arange(40, dtype=np.uint64)
    tx = Direction(KEY, 0, 1)
    wire = tx.seal(x)
    for pos in range(wire.size):  # every payload byte and every tag byte
        rx = Direction(KEY, 0, 1)
        bad = wire.copy()
        bad[pos] ^= 1 << (pos % 8)
        with pytest.raises(ChannelError, match="message 0 from party 0 failed authentication"):
            rx.open(bad, x.shape, x.dtype)
        assert rx.counter == 0


def test_replay_reorder_drop_and_truncation_are_detected():
    tx, rx = pair()
    msgs = [tx.seal(np.full(16, i, dtype=np.uint64)) for i in range(4)]
    rx.open(msgs[0], (16,), np.uint64)
    with pytest.raises(ChannelError, match="message 1 from party 0"):  # replay of message 0
        rx.open(msgs[0], (16,), np.uint64)
    with pytest.raises(ChannelError):  # reordered: message 2 where 1 is due
        rx.open(msgs[2], (16,), np.uint64)
    assert np.array_equal(rx.open(msgs[1], (16,), np.uint64), np.full(16, 1))
    with pytest.raises(ChannelError):  # truncated / reinterpreted as another length
        rx.open(msgs[2][:-8], (15,), np.uint64)
    assert np.array_equal(rx.open(msgs[2], (16,), np.uint64), np.full(16, 2))


def test_wrong_key_and_wrong_direction_are_detected():
    x = np.arange(10, dtype=np.uint64)
    wire = Direction(KEY, 0, 1).seal(x)
    with pytest.raises(ChannelError, match="from party 0"):
        Direction(bytes(32), 0, 1).open(wire, x.shape, x.dtype)
    with pytest.raises(ChannelError, match="from party 2"):  # same key, other sender: bound in the AAD
        Direction(KEY, 2, 1).open(wire, x.shape, x.dtype)


def test_ciphertext_is_fresh_and_uniform():
    zeros = np.zeros(1 << 16, dtype=np.uint64)
    tx = Direction(os.urandom(32), 0, 1)
    a, b = tx.seal(zeros), tx.seal(zeros)
    assert not np.array_equal(a, b)  # same plaintext, new counter
    counts = np.bincount(a[:-TAG_BYTES], minlength=256)
    expected = a.size / 256
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 400  # 255 degrees of freedom: mean 255, sd ~22.6
    assert abs(np.unpackbits(a).mean() - 0.5) < 0.002


def test_error_message_leaks_no_payload():
    x = np.frombuffer(b"SECRET-WORDS-123", dtype=np.uint64)
    wire = Direction(KEY, 0, 1).seal(x)
    wire[0] ^= 1
    with pytest.raises(ChannelError) as info:
        Direction(KEY, 0, 1).open(wire, x.shape, x.dtype)
    text = str(info.value)
    assert "SECRET" not in text and KEY.hex() not in text and "party 0" in text


# -- key files and the parties file ---------------------------------------------------------
def test_keygen_files_and_parties_file(tmp_path):
    pubs = []
    for i in range(3):
        key_path, pub_path, pub = write_key_pair(str(tmp_path), i)
        assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
        assert json.load(open(pub_path)) == {"party": i, "public_key": pub}
        pubs.append(pub_path)
    with pytest.raises(ChannelError, match="exists"):
        write_key_pair(str(tmp_path), 1)
    parties = str(tmp_path / "parties.json")
    write_parties_file(parties, pubs[::-1], hosts=["a", "b", "c"])
    keys = load_parties(parties)
    for i in range(3):
        key = load_private_key(str(tmp_path / "party{party}.key"), i)
        from mpcgpu.comm.channels import public_bytes

        assert public_bytes(key) == keys[i]
    assert [e["host"] for e in json.load(open(parties))["parties"]] == ["a", "b", "c"]
    with pytest.raises(ChannelError, match="parties 0, 1 and 2"):
        write_parties_file(str(tmp_path / "p2.json"), pubs[:2])
    assert not (tmp_path / "p2.json").exists()
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]  # write-then-rename left nothing


def test_bad_key_and_parties_files_name_the_problem(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "mpcgpu-parties-1", "parties": [{"party": 0, "public_key": "xx"}]}')
    with pytest.raises(ChannelError, match="malformed"):
        load_parties(str(bad))
    with pytest.raises(ChannelError, match="cannot read the parties file"):
        load_parties(str(tmp_path / "missing.json"))
    with pytest.raises(ChannelError, match="party 2 cannot read its private key"):
        load_private_key(str(tmp_path / "nope{party}.key"), 2)
    (tmp_path / "junk.key").write_text("not a key")
    with pytest.raises(ChannelError, match="party 1: .*not an Ed25519 private key"):
        load_private_key(str(tmp_path / "junk.key"), 1)
    with pytest.raises(ChannelError, match="party 0 has no private key"):
        load_private_key(None, 0)


def test_keygen_command(tmp_path, capsys):
    assert cli_main(["keygen", "--out", str(tmp_path), "--all"]) == 0
    out = capsys.readouterr().out
    assert "parties.json" in out and "party 2" in out
    assert len(load_parties(str(tmp_path / "parties.json"))) == 3
    assert cli_main(["keygen", "--out", str(tmp_path), "--party", "0"]) == 1  # exists: refused
    assert "exists" in capsys.readouterr().err
    assert cli_main(["keygen", "--out", str(tmp_path)]) == 1
    with pytest.raises(SystemExit):
        cli_main(["keygen", "--help"])
    assert "parties file" in capsys.readouterr().out


# -- the key exchange (its arithmetic; the messages move over MPI in the three-rank tests) --
def run_handshake(tmp_path, mode, tweak=None):
    config = ChannelConfig("ephemeral")
    if mode == "authenticated":
        cli_main(["keygen", "--out", str(tmp_path), "--all"])
        config = ChannelConfig("authenticated", str(tmp_path / "party{party}.key"), str(tmp_path / "parties.json"))
    hs = [Handshake(r, config, f"host{r}") for r in range(3)]
    if tweak:
        tweak(hs)
    for r in range(3):
        assert hs[r].receive_hellos({p: hs[p].hello[r] for p in hs[r].peers}) == ["host0", "host1", "host2"]
    if mode == "authenticated":
        sigs = [h.signatures() for h in hs]
        for r in range(3):
            hs[r].verify({p: sigs[p][r] for p in hs[r].peers})
    return [h.directions() for h in hs]


@pytest.mark.parametrize("mode", ["ephemeral", "authenticated"])
def test_handshake_gives_each_direction_its_own_matching_key(tmp_path, mode):
    dirs = run_handshake(tmp_path, mode)
    x = np.arange(100, dtype=np.uint64)
    for i in range(3):
        for j in range(3):
            if i == j:
                continue
            send, recv = dirs[i][j][0], dirs[j][i][1]
            assert np.array_equal(recv.open(send.seal(x), x.shape, x.dtype), x)
    # the four direction keys of two runs, and of the pairs, all differ
    again = run_handshake(tmp_path / "again", mode)
    wires = {bytes(d[p][0].seal(x)) for run in (dirs, again) for d in run for p in d}
    assert len(wires) == 12


def _splice(tmp_path, mode):
    """Two jobs (A, B) on the same three servers with the same keys; someone on the wire
    makes party 0 of A and party 1 of B each other's peer (each still talks to its own
    job's party 2).  Returns the two spliced parties (A0, B1)."""
    config = ChannelConfig("ephemeral")
    if mode == "authenticated":
        cli_main(["keygen", "--out", str(tmp_path), "--all"])
        config = ChannelConfig("authenticated", str(tmp_path / "party{party}.key"), str(tmp_path / "parties.json"))
    a = [Handshake(r, config, "h") for r in range(3)]
    b = [Handshake(r, config, "h") for r in range(3)]
    a[0].receive_hellos({1: b[1].hello[0], 2: a[2].hello[0]})
    b[1].receive_hellos({0: a[0].hello[1], 2: b[2].hello[1]})
    for hs in (a[2], b[2]):
        hs.receive_hellos({p: (a if hs is a[2] else b)[p].hello[2] for p in (0, 1)})
    return a, b


def test_job_id_is_agreed_by_the_three_parties_and_fresh_per_job(tmp_path):
    def job():
        hs = [Handshake(r, ChannelConfig("ephemeral"), "h") for r in range(3)]
        for r in range(3):
            hs[r].receive_hellos({p: hs[p].hello[r] for p in hs[r].peers})
        return hs

    one, two = job(), job()
    assert len({h.job_id for h in one}) == 1 and len(one[0].job_id) == 32
    assert one[0].job_id != two[0].job_id


@pytest.mark.parametrize("mode", ["ephemeral", "authenticated"])
def test_parties_of_two_jobs_cannot_be_spliced(tmp_path, mode):
    a, b = _splice(tmp_path, mode)
    assert a[0].job_id != b[1].job_id  # each computes the job id of the nonces it saw
    if mode == "authenticated":  # the signatures cover the job id: the key exchange fails
        with pytest.raises(ChannelError, match="party 1 failed to authenticate to party 0"):
            a[0].verify({1: b[1].signatures()[0], 2: a[2].signatures()[0]})
        with pytest.raises(ChannelError, match="party 0 failed to authenticate to party 1"):
            b[1].verify({0: a[0].signatures()[1], 2: b[2].signatures()[1]})
    # and even with the signatures skipped, no message of one opens in the other
    x = np.arange(10, dtype=np.uint64)
    a0, b1 = a[0].directions(), b[1].directions()
    with pytest.raises(ChannelError, match="message 0 from party 0 failed authentication"):
        b1[0][1].open(a0[1][0].seal(x), x.shape, x.dtype)
    with pytest.raises(ChannelError, match="message 0 from party 1 failed authentication"):
        a0[1][1].open(b1[0][0].seal(x), x.shape, x.dtype)


def test_directions_of_different_jobs_refuse_each_others_messages():
    key, x = bytes(range(32)), np.arange(10, dtype=np.uint64)
    job_a, job_b = bytes(32), bytes([1]) + bytes(31)
    sealed = Direction(key, 0, 1, job_a).seal(x)
    assert np.array_equal(Direction(key, 0, 1, job_a).open(sealed, x.shape, x.dtype), x)
    with pytest.raises(ChannelError, match="for another job"):
        Direction(key, 0, 1, job_b).open(sealed, x.shape, x.dtype)


def test_host_names_are_reported_not_trusted():
    hs = [Handshake(r, ChannelConfig("ephemeral"), "x" * 200 if r == 1 else f"host{r}") for r in range(3)]
    hosts = hs[0].receive_hellos({p: hs[p].hello[0] for p in (1, 2)})
    assert hosts == ["host0", "x" * HOST_BYTES, "host2"] and HOST_BYTES == 47


def test_handshake_rejects_an_impostor_signature(tmp_path):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    def impostor(hs):
        hs[1].identity = Ed25519PrivateKey.generate()  # presents party 1's public key, signs with another

    with pytest.raises(ChannelError, match="party 1 failed to authenticate to party"):
        run_handshake(tmp_path, "authenticated", impostor)


def test_handshake_rejects_mismatched_modes_and_keys(tmp_path):
    cli_main(["keygen", "--out", str(tmp_path / "a"), "--all"])
    cli_main(["keygen", "--out", str(tmp_path / "b"), "--party", "1"])
    a = str(tmp_path / "a")
    good = ChannelConfig("authenticated", a + "/party{party}.key", a + "/parties.json")
    with pytest.raises(ChannelError, match="party 1: the private key .* does not belong to party 1"):
        Handshake(1, ChannelConfig("authenticated", str(tmp_path / "b/party1.key"), good.parties), "h")
    h0, h1 = Handshake(0, good, "h"), Handshake(1, ChannelConfig("ephemeral"), "h")
    with pytest.raises(ChannelError, match="party 1 runs ephemeral channels"):
        h0.receive_hellos({1: h1.hello[0], 2: h1.hello[0]})


def test_config_from_arguments_and_environment():
    from mpcgpu.settings import resolve

    none = resolve(env={})
    assert ChannelConfig.resolve(settings=none).mode == "ephemeral"
    assert ChannelConfig.resolve(insecure=True, settings=none).mode == "insecure"
    assert ChannelConfig.resolve(parties="p.json", key="k", settings=none).mode == "authenticated"
    with pytest.raises(ChannelError, match="no parties file"):
        ChannelConfig.resolve(key="k", settings=none)
    cfg = ChannelConfig.from_settings(resolve(env={"MPCGPU_INSECURE_CHANNELS": "1", "MPCGPU_PEER_TIMEOUT": "10"}))
    assert cfg.mode == "insecure" and cfg.peer_timeout == 10.0 and "INSECURE" in cfg.describe()
    with pytest.raises(ChannelError, match="MPCGPU_PEER_TIMEOUT='soon'"):
        resolve(env={"MPCGPU_PEER_TIMEOUT": "soon"})
    with pytest.raises(ChannelError, match=">= 0"):
        ChannelConfig.resolve(peer_timeout=-1, settings=none)
    with pytest.raises(ChannelError, match="MPCGPU_INSECURE_CHANNELS='maybe'"):
        resolve(env={"MPCGPU_INSECURE_CHANNELS": "maybe"})
    assert "NOT authenticated" in ChannelConfig("ephemeral").describe()
    assert "staged through host" in ChannelConfig("ephemeral").describe(gpu_staged=True)


@pytest.mark.parametrize("command", ["infer", "train", "bench"])
def test_compute_jobs_take_the_channel_options(command, monkeypatch, capsys):
    from mpcgpu.cli import build_parser
    from mpcgpu.jobs.channel_args import channel_config, cli_settings

    base = {"infer": ["--model", "m", "--data", "d"], "train": ["--model", "lenet", "--data", "d"]}
    base["bench"] = ["inference"]
    parser = build_parser()
    args = parser.parse_args([command, *base[command]])
    assert cli_settings(args) == {}
    assert channel_config(args, env={}) == ChannelConfig("ephemeral")
    args = parser.parse_args([command, *base[command], "--insecure-channels", "--peer-timeout", "10"])
    assert cli_settings(args) == {"insecure_channels": True, "peer_timeout": 10.0}
    assert channel_config(args, env={}) == ChannelConfig("insecure", None, None, 10.0)
    # the command line over the environment
    env = {"MPCGPU_PEER_TIMEOUT": "99", "MPCGPU_PARTIES": "env.json"}
    assert channel_config(args, env=env) == ChannelConfig("insecure", None, None, 10.0)
    args = parser.parse_args([command, *base[command], "--key", "k{party}", "--parties", "p.json", "--device", "cpu"])
    assert cli_settings(args) == {"key": "k{party}", "parties": "p.json", "device": "cpu"}
    assert channel_config(args, env=env) == ChannelConfig("authenticated", "k{party}", "p.json", 99.0)
    with pytest.raises(SystemExit):
        parser.parse_args([command, "--help"])
    assert "--peer-timeout" in capsys.readouterr().out


def test_info_shows_the_channels_a_job_would_use(monkeypatch, capsys, tmp_path):
    for name in ("MPCGPU_KEY", "MPCGPU_PARTIES", "MPCGPU_INSECURE_CHANNELS"):
        monkeypatch.delenv(name, raising=False)
    assert cli_main(["info"]) == 0
    assert "encrypted but NOT authenticated" in capsys.readouterr().out
    monkeypatch.setenv("MPCGPU_INSECURE_CHANNELS", "1")
    assert cli_main(["info"]) == 0
    assert "channels: INSECURE" in capsys.readouterr().out
    monkeypatch.delenv("MPCGPU_INSECURE_CHANNELS")
    monkeypatch.setenv("MPCGPU_PARTIES", str(tmp_path / "missing.json"))
    assert cli_main(["info"]) == 0
    out = capsys.readouterr().out
    assert "authenticated by the parties file" in out and "cannot read the parties file" in out


def test_object_messages_carry_data_never_code():
    """What the object collectives (bcast_object and friends) unpickle from a peer: plain
    data round-trips; a pickle that names a callable (code to run) is refused with the
    peer's name, before anything runs."""
    import pickle

    from mpcgpu.comm import plaindata
    from mpcgpu.errors import ProtocolError

    samples = [
        None,
        "text",
        (1, 2.5, True, -(2**70)),
        {"a": [1, np.float64(2.0)], "b": {3, 4}},
        np.arange(7, dtype=np.uint64),
        np.zeros((2, 3))[:, :2],
        np.dtype("int32"),
        np.int64(-3),
        b"\x00\xff",
        complex(1, 2),
    ]
    for obj in samples:
        back = plaindata.loads(pickle.dumps(obj), 1)
        assert type(back) is type(obj)
        if isinstance(obj, np.ndarray):
            assert back.dtype == obj.dtype and np.array_equal(back, obj)
        else:
            assert back == obj

    ran = []

    class Code:
        def __reduce__(self):
            return (ran.append, ("ran",))

    for payload in (pickle.dumps(Code()), pickle.dumps(os.system), pickle.dumps(eval)):
        with pytest.raises(ProtocolError, match="party 2 sent a message that is not plain data"):
            plaindata.loads(payload, 2)
    assert ran == []
    with pytest.raises(ProtocolError, match="party 1"):
        plaindata.loads(b"\x80\x05garbage", 1)
