"""Imported models run privately, on three ranks (issue 13 A): ONNX graphs built here and a
torchvision-named ResNet-50 state dict are imported, shared with `mpcgpu share`, and the
servers rebuild the architecture from the shards alone; the private outputs agree with
onnxruntime (or the plaintext executor) to the fixed-point floor.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
import reference
from mpcgpu.nn import spec_io
import pytest

from mpcgpu.jobs import infer
from mpcgpu.nn import spec as S
from mpcgpu.nn.plain import PlainModel
from mpcgpu.nn.weights import save_weights
from mpcgpu.sharing.arithmetic import share

from onnx_graphs import apply_output, chain_net, ort_run, random_state_dict, residual_net, torchvision_resnet_names

pytestmark = pytest.mark.mpi(min_size=3)
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

#: the fixed-point floor at f = 16 after a few layers (the bound of tests/test_nn_private_mpi.py)
TOL = 2e-3


@pytest.fixture(scope="module")
def work(rt):
    d = tempfile.mkdtemp(prefix="mpcgpu-interop-") if rt.rank == 0 else None
    d = rt.comm.bcast_object(d)
    yield d
    rt.comm.barrier()
    if rt.rank == 0:
        shutil.rmtree(d, ignore_errors=True)


def _import_and_share(rt, work, stem, make):
    """Rank 0: import, write the weights file, share it; every rank: the plaintext pair."""
    from mpcgpu.data.split import split_file
    from mpcgpu.interop.onnx_import import import_onnx

    model, params = None, None
    if rt.rank == 0:
        model, params = import_onnx(make(), name=stem)
        save_weights(os.path.join(work, f"{stem}.h5"), stem, params, spec=model)
        split_file(os.path.join(work, f"{stem}.h5"), os.path.join(work, "shards"), progress=False)
    rt.comm.barrier()
    # peers send plain data only: the architecture travels as its JSON form
    spec, params = rt.comm.bcast_object((spec_io.to_dict(model) if model is not None else None, params))
    return spec_io.from_dict(spec), params


@pytest.mark.parametrize(
    "stem,make",
    [
        ("chain", chain_net),
        ("residual", residual_net),
        ("residual_sm", lambda: residual_net(7, final="Softmax")),
        ("residual_eps", lambda: residual_net(9, final=None, big_eps=True)),  # a lost eps would show
    ],
)
def test_imported_onnx_graphs_run_privately(rt, work, stem, make):
    model, params = _import_and_share(rt, work, stem, make)
    pm = infer.load_model(rt, os.path.join(work, "shards", stem))
    assert pm.spec == model  # the servers rebuilt the architecture from the shards alone
    rng = np.random.default_rng(11)
    x = rng.standard_normal((5,) + model.input_shape)
    x[0] = 0.0
    z = pm.forward(share(x if rt.rank == 0 else None, src=0), exact=True).reveal()
    ref = ort_run(make(), x)  # every rank computes the reference (deterministic)
    logits = PlainModel(model, params).forward(x, need_grad=False)
    assert np.abs(z - logits).max() <= TOL * max(1.0, np.abs(logits).max())
    assert np.abs(apply_output(z, model.output) - ref).max() <= TOL * max(1.0, np.abs(ref).max())


@pytest.mark.parametrize("kind", ["lenet", "resblocks"])
def test_pytorch_models_via_onnx_run_privately(rt, kind):
    """With PyTorch installed (optional): a LeNet and a ResNet-block network exported by
    torch.onnx, imported, shared; private outputs agree with PyTorch float64."""
    try:
        import torch  # noqa: F401
    except ImportError:
        pytest.skip("PyTorch is not installed (optional)")
    from mpcgpu.interop.onnx_import import import_onnx
    from mpcgpu.nn.private import PrivateModel, share_params

    from onnx_graphs import torch_models, torch_run

    model, proto, shape = torch_models(kind)
    spec, params = import_onnx(proto, name=kind)
    x = np.random.default_rng(4).standard_normal((3,) + shape)
    ref = torch_run(model, x)
    pm = PrivateModel(spec, share_params(spec, params if rt.rank == 0 else None, src=0))
    z = pm.forward(share(x if rt.rank == 0 else None, src=0), exact=True).reveal()
    assert np.abs(apply_output(z, spec.output) - ref).max() <= TOL * max(1.0, np.abs(ref).max())


def test_infer_job_runs_an_imported_model_at_its_own_size(rt, work):
    """`mpcgpu infer` on an imported 3x12x12, 5-class network: predictions = onnxruntime's argmax."""
    from mpcgpu.data.split import split_arrays

    _import_and_share(rt, work, "chain_job", chain_net)
    x = np.random.default_rng(3).standard_normal((24, 3, 12, 12))
    ref = ort_run(chain_net(), x)
    labels = ref.argmax(axis=1)
    if rt.rank == 0:
        split_arrays(
            os.path.join(work, "shards"), "chain_data", {"images": x, "labels": labels}, kind="dataset", name="d"
        )
    rt.comm.barrier()
    out = os.path.join(work, "pred.npy")
    args = reference.infer_args(
        os.path.join(work, "shards", "chain_job"),
        os.path.join(work, "shards", "chain_data"),
        batch_size=10,
        out=out,
    )
    assert infer.run(args) == 0
    if rt.rank == 0:
        pred = np.load(out)
        top2 = np.sort(ref, axis=1)[:, -2:]
        clear = (top2[:, 1] - top2[:, 0]) > 1e-2
        assert clear.sum() >= 20
        assert (pred[clear] == labels[clear]).all()


def _resnet50(rt, work, size, classes, stem):
    from mpcgpu.data.split import split_file
    from mpcgpu.interop.torch_names import import_state_dict

    model, params = None, None
    if rt.rank == 0:
        import safetensors.numpy

        sd = random_state_dict(torchvision_resnet_names((3, 4, 6, 3), classes), seed=size + classes)
        path = os.path.join(work, f"{stem}.safetensors")
        safetensors.numpy.save_file(sd, path)
        model, params, renamed, dropped = import_state_dict(path, "resnet50", num_classes=classes, input_size=size)
        assert renamed == [] and len(dropped) == 53
        save_weights(os.path.join(work, f"{stem}.h5"), stem, params, spec=model)
        os.remove(path)
        split_file(os.path.join(work, f"{stem}.h5"), os.path.join(work, "shards"), progress=False)
        os.remove(os.path.join(work, f"{stem}.h5"))
    rt.comm.barrier()
    pm = infer.load_model(rt, os.path.join(work, "shards", stem))
    assert pm.spec.input_shape == (3, size, size) and pm.spec.num_classes == classes
    x = np.random.default_rng(size).standard_normal((1, 3, size, size))
    z = pm.forward(share(x if rt.rank == 0 else None, src=0), exact=True).reveal()
    del pm
    # the plaintext reference on the owner (its weights are far larger than the object channel
    # carries), then only the logits to everyone
    ref = PlainModel(model, params).forward(x, need_grad=False) if rt.rank == 0 else None
    ref = rt.comm.bcast_object(ref)
    for p in range(3):
        if rt.rank == 0:
            os.remove(os.path.join(work, "shards", f"{stem}.party{p}.h5"))
    return z, ref


def test_torchvision_resnet50_at_64_with_10_classes_runs_privately(rt, work):
    z, ref = _resnet50(rt, work, 64, 10, "r50_64")
    assert z.shape == (1, 10)
    assert np.abs(z - ref).max() <= 5e-3 * max(1.0, np.abs(ref).max()), (np.abs(z - ref).max(), np.abs(ref).max())


@pytest.mark.slow
@pytest.mark.parametrize("size,classes", [(224, 1000), (224, 10)])
def test_torchvision_resnet50_at_224_runs_privately(rt, work, size, classes):
    z, ref = _resnet50(rt, work, size, classes, f"r50_{size}_{classes}")
    assert z.shape == (1, classes)
    assert np.abs(z - ref).max() <= 5e-3 * max(1.0, np.abs(ref).max())


def test_spec_errors_on_the_servers_stop_every_rank_with_a_message(rt, work):
    """A shard set whose stored architecture is corrupt is refused on every rank, naming it."""
    import h5py

    _import_and_share(rt, work, "broken", residual_net)
    path = os.path.join(work, "shards", f"broken.party{rt.rank}.h5")
    with h5py.File(path, "r+") as f:
        f["public"].attrs["spec"] = f["public"].attrs["spec"].replace('"eps":0.001', '"eps":-0.001')
    with pytest.raises(S.SpecError, match="eps"):
        infer.load_model(rt, os.path.join(work, "shards", "broken"), verify=False)
