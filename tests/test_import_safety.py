"""Model import is the owner's attack surface (issue 20, point 7): ONNX external data is
read only from inside the model's folder, checked before any of it is read; onnx and
torch must be releases without the known holes; a spec nested absurdly deep, and an
absurd input shape for the onnxruntime comparison, are clear errors."""

from __future__ import annotations

import os
import sys
import types

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import external_data_helper  # noqa: E402
from onnx_graphs import Builder  # noqa: E402

from mpcgpu.errors import MPCError  # noqa: E402
from mpcgpu.interop import safety  # noqa: E402
from mpcgpu.interop.importer import import_model  # noqa: E402
from mpcgpu.interop.onnx_import import import_onnx, load_onnx  # noqa: E402
from mpcgpu.interop.torch_names import read_state_dict  # noqa: E402
from mpcgpu.nn import spec as S  # noqa: E402
from mpcgpu.nn.models import architecture  # noqa: E402
from mpcgpu.nn.spec_io import from_json  # noqa: E402


def _small_graph(x_shape=(2, 4, 4), classes=3):
    """GlobalAveragePool . Flatten . Gemm: weights of a few hundred bytes."""
    b = Builder(0)
    y = b.op("GlobalAveragePool", ["x"])
    y = b.op("Flatten", [y], axis=1)
    y = b.op("Gemm", [y, b.w(classes, x_shape[0]), b.const(np.arange(classes) / 10)], transB=1)
    return b.model(x_shape, y, classes)


def _save_external(folder, proto=None, location="weights.bin"):
    """``folder/model.onnx`` with every initializer in ``folder/location`` (``proto`` is
    left as it is: saving as external data converts the proto it is given)."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "model.onnx")
    copy = onnx.ModelProto()
    copy.CopyFrom(proto or _small_graph())
    onnx.save_model(copy, path, save_as_external_data=True, location=location, size_threshold=0)
    return path


def _rewrite(path, **changes):
    """Change the external-data entries of every initializer of ``path`` (no data read)."""
    proto = onnx.load(path, load_external_data=False)
    for init in proto.graph.initializer:
        for entry in init.external_data:
            if entry.key in changes:
                entry.value = str(changes[entry.key])
        for key in set(changes) - {e.key for e in init.external_data}:
            e = init.external_data.add()
            e.key, e.value = key, str(changes[key])
    with open(path, "wb") as fh:
        fh.write(proto.SerializeToString())


def _watch_reads(monkeypatch):
    """Every later attempt of onnx to read external data, recorded (and stopped)."""
    seen = []

    def record(*args, **kwargs):
        seen.append(args)
        raise AssertionError("external data was read")

    monkeypatch.setattr(external_data_helper, "load_external_data_for_model", record)
    monkeypatch.setattr(onnx, "load_external_data_for_model", record, raising=False)
    if hasattr(external_data_helper, "_open_external_data_fd"):
        monkeypatch.setattr(external_data_helper, "_open_external_data_fd", record)
    if hasattr(external_data_helper, "load_external_data_for_tensor"):
        monkeypatch.setattr(external_data_helper, "load_external_data_for_tensor", record)
    return seen


def test_a_legitimate_external_data_model_imports(tmp_path):
    proto = _small_graph()
    path = _save_external(str(tmp_path / "model"), proto)
    assert os.path.getsize(tmp_path / "model" / "model.onnx") < 600  # the weights are elsewhere
    model, params, notes = import_model(path)  # with the onnxruntime comparison
    ref_model, ref_params = import_onnx(proto, name="model")
    assert model == ref_model and params.keys() == ref_params.keys()
    for k in params:
        np.testing.assert_array_equal(params[k], ref_params[k])
    assert any("onnxruntime" in n for n in notes)


@pytest.mark.parametrize("location", ["../../etc/hostname", "../outside.bin", "sub/../../outside.bin"])
def test_external_data_outside_the_folder_is_refused_before_any_read(tmp_path, monkeypatch, location):
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"SECRET" * 64)
    path = _save_external(str(tmp_path / "model"))
    _rewrite(path, location=location, offset=0, length=8)
    reads = _watch_reads(monkeypatch)
    with pytest.raises(MPCError, match="outside the model's folder"):
        load_onnx(path)
    assert reads == []


def test_absolute_symlinked_and_hard_linked_data_is_refused(tmp_path, monkeypatch):
    outside = tmp_path / "secret.bin"
    outside.write_bytes(b"\0" * 4096)
    folder = tmp_path / "model"
    path = _save_external(str(folder))
    _rewrite(path, location=str(outside))
    reads = _watch_reads(monkeypatch)
    with pytest.raises(MPCError, match="absolute path"):
        load_onnx(path)
    os.symlink(outside, folder / "link.bin")  # inside by name, outside once resolved
    _rewrite(path, location="link.bin")
    with pytest.raises(MPCError, match="outside the model's folder"):
        load_onnx(path)
    os.link(outside, folder / "hard.bin")
    _rewrite(path, location="hard.bin")
    with pytest.raises(MPCError, match="hard links"):
        load_onnx(path)
    assert reads == []


def test_bad_external_data_entries_are_refused(tmp_path, monkeypatch):
    path = _save_external(str(tmp_path / "model"))
    size = os.path.getsize(tmp_path / "model" / "weights.bin")
    other = _save_external(str(tmp_path / "other"), location="missing.bin")
    os.remove(tmp_path / "other" / "missing.bin")
    reads = _watch_reads(monkeypatch)
    _rewrite(path, offset=size - 4, length=64)
    with pytest.raises(MPCError, match="outside the file"):
        load_onnx(path)
    _rewrite(path, offset=0, length=4, __class__="x")  # attribute injection (CVE-2026-34445)
    with pytest.raises(MPCError, match="unknown external-data key"):
        load_onnx(path)
    with pytest.raises(MPCError, match="missing.bin"):
        load_onnx(other)
    assert reads == []


def test_external_data_of_a_constant_node_is_checked_too(tmp_path, monkeypatch):
    from onnx import helper, numpy_helper

    proto = _small_graph()
    value = numpy_helper.from_array(np.ones(3, np.float32), "k")
    external_data_helper.set_external_data(value, "../outside.bin", 0, 12)
    value.ClearField("raw_data")
    proto.graph.node.insert(0, helper.make_node("Constant", [], ["k"], value=value))
    folder = tmp_path / "model"
    folder.mkdir()
    with open(folder / "model.onnx", "wb") as fh:
        fh.write(proto.SerializeToString())
    reads = _watch_reads(monkeypatch)
    with pytest.raises(MPCError, match="outside the model's folder"):
        load_onnx(folder / "model.onnx")
    assert reads == []


def test_a_proto_with_unloaded_external_data_is_refused(tmp_path, monkeypatch):
    path = _save_external(str(tmp_path / "model"))
    assert import_onnx(load_onnx(path))[0].num_classes == 3  # loaded from its file: fine
    proto = onnx.load(path, load_external_data=False)
    monkeypatch.chdir(tmp_path / "model")  # where onnx would look for it
    reads = _watch_reads(monkeypatch)
    with pytest.raises(MPCError, match="refers to external data"):
        import_onnx(proto)
    assert reads == []


@pytest.mark.parametrize(
    "text, want",
    [
        ("1.21.0", (1, 21, 0, 1)),
        ("1.21.0rc2", (1, 21, 0, 0)),
        ("2.10.0+cu121", (2, 10, 0, 1)),
        ("2.6", (2, 6, 0, 1)),
        ("2.11.0.dev20260101", (2, 11, 0, 0)),
    ],
)
def test_version_strings(text, want):
    assert safety.version_tuple(text) == want


@pytest.mark.parametrize("version, ok", [("1.20.1", False), ("1.21.0rc4", False), ("1.21.0", True), ("1.23.2", True)])
def test_onnx_with_the_path_traversal_bugs_is_refused(tmp_path, monkeypatch, version, ok):
    path = _save_external(str(tmp_path / "model"))
    monkeypatch.setattr(onnx, "__version__", version)
    if ok:
        assert len(load_onnx(path).graph.initializer) == 2
    else:
        with pytest.raises(MPCError, match=r"onnx >= 1\.21\.0"):
            load_onnx(path)


@pytest.mark.parametrize("version, ok", [("2.5.1", False), ("2.6.0", False), ("2.10.0rc1", False), ("2.10.0", True)])
def test_torch_load_needs_a_safe_torch(tmp_path, monkeypatch, version, ok):
    calls = []
    fake = types.ModuleType("torch")
    fake.__version__ = version
    fake.load = lambda *args, **kwargs: calls.append(kwargs) or ["not", "a", "dict"]
    monkeypatch.setitem(sys.modules, "torch", fake)
    (tmp_path / "m.pt").write_bytes(b"PK\x03\x04 whatever")
    if ok:
        with pytest.raises(MPCError, match="holds a list"):
            read_state_dict(tmp_path / "m.pt")
        assert calls == [{"map_location": "cpu", "weights_only": True}]
    else:
        with pytest.raises(MPCError, match=r"torch >= 2\.10\.0"):
            read_state_dict(tmp_path / "m.pt")
        assert calls == []


def test_a_deep_spec_is_a_clear_error():
    deep = "[" * 200_000 + "]" * 200_000
    with pytest.raises(MPCError, match="more than 100 deep"):
        from_json(deep)
    # a shard's /public/spec goes through the same parser
    with pytest.raises(MPCError, match="more than 100 deep"):
        architecture("m", {"spec": '{"net": ' + "{" * 50_000 + "}" * 50_000 + "}"})
    # brackets inside strings do not count, and 100 levels are still read (and refused by content)
    with pytest.raises(MPCError, match="format"):
        from_json('{"name": "' + "[" * 500 + '"}')
    with pytest.raises(MPCError, match="must be a JSON object"):
        from_json("[" * 100 + "]" * 100)


def test_an_absurd_input_shape_is_refused_before_inputs_are_built(tmp_path, monkeypatch):
    path = tmp_path / "huge.onnx"
    onnx.save_model(_small_graph((3, 1_000_000, 1_000_000)), str(path))

    def no_inputs(*args, **kwargs):
        raise AssertionError("random inputs were drawn")

    monkeypatch.setattr(np.random, "default_rng", no_inputs)
    with pytest.raises(MPCError, match="--no-check"):
        import_model(path)
    model, _, _ = import_model(path, check=False)  # the architecture itself is fine
    assert model.input_shape == (3, 1_000_000, 1_000_000)


def test_run_size_counts_the_largest_activation():
    net = S.Sequential((S.Conv2d(3, 64, 3, padding=1), S.AdaptiveAvgPool2d((1, 1)), S.Flatten(), S.Linear(64, 2)))
    safety.check_run_size(S.Model("ok", (3, 224, 224), 2, net), 2)
    big = S.Model("big", (3, 4096, 4096), 2, net)  # the input fits, the convolution's output not
    with pytest.raises(MPCError, match=r"in the output of 0 .*--no-check"):
        safety.check_run_size(big, 2)
    with pytest.raises(MPCError, match="1 to 3 dimensions"):
        safety.check_run_size(S.Model("wide", (70_000,), 2, S.Sequential((S.Linear(70_000, 2),))), 2)
