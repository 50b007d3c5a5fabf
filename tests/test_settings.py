"""The settings (mpcgpu.settings, issue 19): one frozen object, resolved once with the
precedence argument > command line > environment > default; every bad value a clear error
naming the variable and the allowed values; no module but settings.py reads the environment."""

import ast
import dataclasses
import re
from pathlib import Path

import pytest

import mpcgpu
from mpcgpu import settings
from mpcgpu.errors import BackendError, ChannelError, MPCError
from mpcgpu.settings import BY_NAME, SETTINGS, Settings, resolve

ROOT = Path(mpcgpu.__file__).resolve().parent
README = ROOT.parent / "README.md"


# -- the source scan -----------------------------------------------------------------------
def environment_reads(source: str) -> list:
    """``[(line, what)]``: every read of the process environment in ``source``: ``os.environ``,
    ``os.getenv``, ``os.putenv``, ``environ[...]``, ``from os import environ/getenv``."""
    found = []
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "putenv", "environb"):
            found.append((node.lineno, f".{node.attr}"))
        elif isinstance(node, ast.ImportFrom) and node.module == "os":
            for alias in node.names:
                if alias.name in ("environ", "getenv", "putenv", "environb"):
                    found.append((node.lineno, f"from os import {alias.name}"))
        elif isinstance(node, ast.Name) and node.id in ("environ", "getenv"):
            found.append((node.lineno, node.id))
    for i, line in enumerate(source.splitlines(), 1):  # also through getattr or a string
        code = line.split("#", 1)[0]
        if re.search(r"environ\[|getenv\(|getattr\(\s*os\s*,\s*[\"']environ", code):
            found.append((i, code.strip()))
    return sorted(set(found))


def test_only_settings_reads_the_environment():
    offenders = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT).as_posix()
        if rel == "settings.py":
            continue
        reads = environment_reads(path.read_text())
        if reads:
            offenders[rel] = reads
    assert not offenders, f"environment read outside mpcgpu/settings.py: {offenders}"
    assert environment_reads((ROOT / "settings.py").read_text())  # the scan sees the real one


@pytest.mark.parametrize(
    "snippet",
    [
        "import os\nx = os.environ.get('A')\n",
        "import os\nx = os.getenv('A')\n",
        "from os import environ\n",
        "from os import getenv as g\n",
        "import os\nenv = os.environ\nx = env['A']\n",
        "import os as o\nx = o.environ['A']\n",
        "import os\nx = getattr(os, 'environ')\n",
    ],
)
def test_the_scan_finds_every_form_of_a_read(snippet):
    assert environment_reads(snippet)


def test_the_scan_passes_code_without_a_read():
    assert environment_reads("import os\nx = os.path.join('a', 'b')\nenviron_like = 1\n") == []


def test_every_mpcgpu_variable_named_in_the_code_is_a_setting_and_documented():
    """A new ``MPCGPU_*`` variable in the code must be a setting (or it is read nowhere), and
    the README's table lists every setting's variable."""
    known = {v for s in SETTINGS for v in s.env}
    named = set()
    for path in ROOT.rglob("*.py"):
        named.update(re.findall(r"\bMPCGPU_[A-Z_]+\b", path.read_text()))
    assert named - known == set()
    readme = README.read_text()
    table = readme[readme.index("## Settings and environment variables") : readme.index("## Layout")]
    for s in SETTINGS:
        assert f"`{s.env[0]}" in table, s.env[0]
        assert f"(`{s.name}`)" in table, s.name


# -- precedence ------------------------------------------------------------------------------
def test_defaults_from_an_empty_environment():
    s = resolve(env={})
    assert s == Settings()
    assert (s.device, s.kernels, s.ring_kernel, s.compact_weights, s.wait) == ("auto", "auto", "auto", None, "auto")
    assert (s.cuda_aware, s.tune_malloc, s.insecure_prg_seed) == (None, True, None)
    assert (s.key, s.parties, s.insecure_channels, s.peer_timeout) == (None, None, False, 600.0)
    assert (s.fault, s.fault_kill_after_step, s.local_rank, s.launch_rank) == (None, None, 0, 0)
    assert s.cache_home.endswith(".cache")
    assert {s.source(n) for n in BY_NAME} == {"default"}


def test_argument_over_command_line_over_environment_over_default():
    env = {"MPCGPU_DEVICE": "strict", "MPCGPU_PEER_TIMEOUT": "30", "MPCGPU_WAIT": "spin", "MPCGPU_FUSED": "0"}
    s = resolve(
        explicit={"device": "cpu"},
        cli={"device": "cuda", "peer_timeout": 10, "key": "k.pem"},
        env=env,
    )
    assert (s.device, s.source("device")) == ("cpu", "argument")  # over cli and env
    assert (s.peer_timeout, s.source("peer_timeout")) == (10.0, "command line")  # over env
    assert (s.key, s.source("key")) == ("k.pem", "command line")
    assert (s.wait, s.source("wait")) == ("spin", "environment")
    assert (s.kernels, s.source("kernels")) == ("array", "environment")
    assert (s.ring_kernel, s.source("ring_kernel")) == ("auto", "default")
    # None means "not given" at every level (argparse's defaults)
    s = resolve(explicit={"device": None}, cli={"device": None, "peer_timeout": None}, env=env)
    assert (s.device, s.source("device"), s.peer_timeout) == ("strict", "environment", 30.0)


def test_an_empty_variable_counts_as_unset():
    s = resolve(env={"MPCGPU_DEVICE": "", "MPCGPU_FUSED": "  ", "XDG_CACHE_HOME": ""})
    assert s == Settings() and s.source("device") == "default"


def test_the_process_environment_is_the_default_source(monkeypatch):
    monkeypatch.setenv("MPCGPU_RING_KERNEL", "limbs")
    assert resolve().ring_kernel == "limbs" and resolve().source("ring_kernel") == "environment"
    assert resolve(env={}).ring_kernel == "auto"  # an explicit mapping replaces it


@pytest.mark.parametrize(
    "name, raw, value",
    [
        ("MPCGPU_DEVICE", "CPU", ("device", "cpu")),
        ("MPCGPU_FUSED", "off", ("kernels", "array")),
        ("MPCGPU_FUSED", "1", ("kernels", "auto")),
        ("MPCGPU_FUSED", "numba", ("kernels", "numba")),
        ("MPCGPU_FUSED", "Array", ("kernels", "array")),
        ("MPCGPU_RING_KERNEL", "native", ("ring_kernel", "native")),
        ("MPCGPU_COMPACT_WEIGHTS", "1", ("compact_weights", True)),
        ("MPCGPU_COMPACT_WEIGHTS", "0", ("compact_weights", False)),
        ("MPCGPU_COMPACT_WEIGHTS", "auto", ("compact_weights", None)),
        ("MPCGPU_WAIT", "sleep", ("wait", "sleep")),
        ("MPCGPU_CUDA_AWARE", "yes", ("cuda_aware", True)),
        ("MPCGPU_CUDA_AWARE", "0", ("cuda_aware", False)),
        ("MPCGPU_TUNE_MALLOC", "0", ("tune_malloc", False)),
        ("MPCGPU_INSECURE_PRG_SEED", "tests-7", ("insecure_prg_seed", "tests-7")),
        ("MPCGPU_KEY", "party{party}.key", ("key", "party{party}.key")),
        ("MPCGPU_PARTIES", "p.json", ("parties", "p.json")),
        ("MPCGPU_INSECURE_CHANNELS", "true", ("insecure_channels", True)),
        ("MPCGPU_PEER_TIMEOUT", "0", ("peer_timeout", 0.0)),
        ("MPCGPU_PEER_TIMEOUT", "2.5", ("peer_timeout", 2.5)),
        ("MPCGPU_FAULT", "a2b:1", ("fault", ("a2b", 1, 1))),
        ("MPCGPU_FAULT", "write-output:2:3", ("fault", ("write-output", 2, 3))),
        ("MPCGPU_FAULT_KILL_AFTER_STEP", "7:1", ("fault_kill_after_step", (7, 1))),
        ("XDG_CACHE_HOME", "/tmp/c", ("cache_home", "/tmp/c")),
        ("OMPI_COMM_WORLD_LOCAL_RANK", "3", ("local_rank", 3)),
        ("SLURM_PROCID", "2", ("launch_rank", 2)),
    ],
)
def test_each_variable_parses(name, raw, value):
    s = resolve(env={name: raw})
    field, expected = value
    assert getattr(s, field) == expected and s.source(field) == "environment"


def test_the_first_numeric_launcher_variable_counts():
    s = resolve(env={"PMI_RANK": "x", "OMPI_COMM_WORLD_RANK": "2", "MPI_LOCALRANKID": "1", "SLURM_LOCALID": "0"})
    assert (s.launch_rank, s.local_rank) == (2, 1)


# -- validation ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, raw, error, allowed",
    [
        ("MPCGPU_DEVICE", "tpu", BackendError, "auto, cpu, cuda, strict"),
        ("MPCGPU_FUSED", "maybe", MPCError, "auto, array, numba, cupy"),
        ("MPCGPU_RING_KERNEL", "fast", BackendError, "limbs, native or auto"),
        ("MPCGPU_COMPACT_WEIGHTS", "2", MPCError, "0 (hold both components), 1 (compact) or auto"),
        ("MPCGPU_WAIT", "nap", MPCError, "spin, sleep or auto"),
        ("MPCGPU_CUDA_AWARE", "perhaps", MPCError, "1, 0 or auto"),
        ("MPCGPU_TUNE_MALLOC", "2", MPCError, "1 or 0"),
        ("MPCGPU_INSECURE_CHANNELS", "maybe", ChannelError, "1 or 0"),
        ("MPCGPU_PEER_TIMEOUT", "soon", ChannelError, ">= 0"),
        ("MPCGPU_PEER_TIMEOUT", "-1", ChannelError, ">= 0"),
        ("MPCGPU_PEER_TIMEOUT", "nan", ChannelError, ">= 0"),
        ("MPCGPU_FAULT", "a2b:-1", MPCError, "POINT:RANK[:N]"),
        ("MPCGPU_FAULT", "nowhere:1", MPCError, "POINT:RANK[:N]"),
        ("MPCGPU_FAULT", "a2b:1:0", MPCError, "POINT:RANK[:N]"),
        ("MPCGPU_FAULT_KILL_AFTER_STEP", "7", MPCError, "STEP:RANK"),
        ("MPCGPU_FAULT_KILL_AFTER_STEP", "7:-1", MPCError, "STEP:RANK"),
    ],
)
def test_a_bad_value_names_the_variable_and_the_allowed_values(name, raw, error, allowed):
    with pytest.raises(error) as info:
        resolve(env={name: raw})
    text = str(info.value)
    assert f"{name}={raw!r}" in text and allowed in text
    assert isinstance(info.value, MPCError)


def test_bad_arguments_and_command_line_values_are_named_too():
    with pytest.raises(MPCError, match=r"kernels='sometimes' \(argument; the setting MPCGPU_FUSED\): use auto"):
        resolve(explicit={"kernels": "sometimes"}, env={})
    with pytest.raises(ChannelError, match=r"--peer-timeout -5 \(the setting MPCGPU_PEER_TIMEOUT\)"):
        resolve(cli={"peer_timeout": -5}, env={})
    with pytest.raises(MPCError, match="unknown setting fusd"):
        resolve(explicit={"fusd": False}, env={})
    with pytest.raises(MPCError, match="unknown setting"):
        resolve(cli={"devices": "cpu"}, env={})
    # a bad environment value below a given one is never looked at
    assert resolve(explicit={"wait": "spin"}, env={"MPCGPU_WAIT": "nap"}).wait == "spin"


def test_problems_are_collected_on_request():
    problems = []
    s = resolve(env={"MPCGPU_WAIT": "nap", "MPCGPU_FUSED": "0"}, problems=problems)
    assert (s.wait, s.source("wait"), s.kernels) == ("auto", "default", "array")
    assert len(problems) == 1 and "MPCGPU_WAIT='nap'" in str(problems[0])


# -- the object ------------------------------------------------------------------------------
def test_settings_are_frozen_and_replace_makes_a_copy():
    s = resolve(env={"MPCGPU_FUSED": "0"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.kernels = "auto"
    t = s.replace(kernels="auto", wait="sleep", device=None)
    assert (s.kernels, t.kernels, t.wait, t.device) == ("array", "auto", "sleep", "auto")
    assert (t.source("kernels"), t.source("wait"), t.source("device")) == ("argument", "argument", "default")
    assert s.replace() == s and s.replace(kernels="auto") != s
    with pytest.raises(MPCError, match="MPCGPU_WAIT"):
        s.replace(wait="nap")
    with pytest.raises(MPCError, match="no setting"):
        s.source("nothing")


def test_every_field_is_a_setting_and_every_setting_a_field():
    names = [f.name for f in dataclasses.fields(Settings) if f.name != "sources"]
    assert names == [s.name for s in SETTINGS]
    assert set(settings.LIVE) <= set(names)


def test_rows_show_values_and_sources():
    s = resolve(cli={"device": "cpu"}, env={"MPCGPU_FAULT": "a2b:1", "MPCGPU_COMPACT_WEIGHTS": "0"})
    rows = {r[0]: r[1:] for r in s.rows()}
    assert rows["device"] == ("MPCGPU_DEVICE", "cpu", "command line")
    assert rows["fault"] == ("MPCGPU_FAULT", "a2b:1:1", "environment")
    assert rows["compact_weights"] == ("MPCGPU_COMPACT_WEIGHTS", "0", "environment")
    assert rows["key"] == ("MPCGPU_KEY", "-", "default")
    assert rows["local_rank"][0].startswith("MPI_LOCALRANKID")
    assert "a2b:1:1" in s.describe() and "(command line)" in s.describe()


def test_active_is_resolved_once_and_replaced_by_activate(monkeypatch):
    monkeypatch.setattr(settings, "_ACTIVE", None)
    monkeypatch.setenv("MPCGPU_WAIT", "sleep")
    first = settings.active()
    monkeypatch.setenv("MPCGPU_WAIT", "spin")
    assert settings.active() is first and first.wait == "sleep"  # not read again
    mine = resolve(env={})
    assert settings.activate(mine) is first and settings.active() is mine
    with pytest.raises(MPCError, match="Settings"):
        settings.activate({"kernels": "array"})


def test_the_environment_for_a_child_is_a_copy(monkeypatch):
    monkeypatch.setenv("MPCGPU_TEST_CHILD", "1")
    env = settings.environment()
    assert env["MPCGPU_TEST_CHILD"] == "1"
    env["MPCGPU_TEST_CHILD"] = "2"
    assert settings.environment()["MPCGPU_TEST_CHILD"] == "1"


def test_consumers_take_their_values_from_settings():
    from mpcgpu.util import faults
    from mpcgpu.comm.channels import ChannelConfig
    from mpcgpu.nn import models, private

    lenet = models.get_model("lenet")
    assert private.wants_compact(lenet, resolve(env={"MPCGPU_COMPACT_WEIGHTS": "1"}))
    assert not private.wants_compact(lenet, resolve(env={}))  # auto: a small model
    assert faults.parse("share:2:4") == ("share", 2, 4)
    with pytest.raises(MPCError, match="use POINT:RANK"):
        faults.parse("share")
    cfg = ChannelConfig.from_settings(resolve(cli={"parties": "p.json", "key": "k"}, env={}))
    assert (cfg.mode, cfg.parties, cfg.key) == ("authenticated", "p.json", "k")


def test_info_prints_the_settings_and_where_they_came_from(monkeypatch, capsys):
    from mpcgpu.cli import main as cli_main

    monkeypatch.setenv("MPCGPU_FUSED", "0")
    monkeypatch.setenv("MPCGPU_WAIT", "nap")
    monkeypatch.delenv("MPCGPU_DEVICE", raising=False)
    assert cli_main(["info", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith("  ") and "MPCGPU_" in line}
    assert lines["device"][1:] == ["MPCGPU_DEVICE", "cpu", "(command", "line)"]
    assert lines["kernels"][1:] == ["MPCGPU_FUSED", "array", "(environment)"]
    assert lines["ring_kernel"][1:] == ["MPCGPU_RING_KERNEL", "auto", "(default)"]
    assert "MPCGPU_WAIT='nap': use spin, sleep or auto" in out  # reported, not fatal for info
    assert "protocol kernels: array (" in out  # the set the setting chose
