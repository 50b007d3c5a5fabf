"""ONNX graphs built in the test itself (onnx.helper), with onnxruntime as the reference.

Every supported operator appears in at least one graph; weights are random (seeded),
batch norms have non-trivial statistics and an eps other than the default.
"""

from __future__ import annotations

import numpy as np

OPSET = 17


def _t(name, arr):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(arr, np.float32), name)


class Builder:
    """A tiny graph builder: ``b.op("Conv", [x, w], attrs)`` returns the output name."""

    def __init__(self, seed=0):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.n = [], [], 0

    def const(self, arr, dtype=np.float32):
        from onnx import numpy_helper

        name = f"c{len(self.inits)}"
        self.inits.append(numpy_helper.from_array(np.asarray(arr, dtype), name))
        return name

    def w(self, *shape, scale=None):
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
        scale = scale or np.sqrt(2.0 / fan_in)
        return self.const(self.rng.standard_normal(shape) * scale)

    def op(self, kind, inputs, outputs=1, **attrs):
        from onnx import helper

        outs = [f"t{self.n}_{i}" for i in range(outputs)]
        self.n += 1
        self.nodes.append(helper.make_node(kind, list(inputs), outs, name=f"n{self.n}_{kind}", **attrs))
        return outs[0] if outputs == 1 else outs

    def bn(self, x, c, eps=1e-3):
        r = self.rng
        ins = [
            self.const(r.uniform(0.5, 1.5, c)),
            self.const(r.normal(0, 0.1, c)),
            self.const(r.normal(0, 0.2, c)),
            self.const(r.uniform(0.5, 2.0, c)),
        ]
        return self.op("BatchNormalization", [x] + ins, epsilon=eps)

    def model(self, x_shape, out, out_dim):
        from onnx import TensorProto, helper

        g = helper.make_graph(
            self.nodes,
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"] + list(x_shape))],
            [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", out_dim])],
            self.inits,
        )
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)])
        m.ir_version = 8
        import onnx

        onnx.checker.check_model(m)
        return m


def chain_net(seed=0):
    """Conv (pads, stride, groups, no bias) . BatchNorm (eps 1e-3) . Relu . MaxPool (pads) .
    Conv . Relu . AveragePool . Flatten . Gemm (transB=1) . Relu . Dropout . MatMul + Add .
    Softmax; input 3x12x12, 5 classes."""
    b = Builder(seed)
    y = b.op("Conv", ["x", b.w(6, 3, 3, 3)], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1])
    y = b.bn(y, 6, eps=1e-3)
    y = b.op("Relu", [y])
    y = b.op("MaxPool", [y], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])  # 6x6
    y = b.op("Conv", [y, b.w(8, 3, 3, 3), b.const(b.rng.normal(0, 0.1, 8))], kernel_shape=[3, 3], group=2)  # 4x4
    y = b.op("Relu", [y])
    y = b.op("AveragePool", [y], kernel_shape=[2, 2], strides=[2, 2])  # 2x2
    y = b.op("Flatten", [y], axis=1)  # 32
    y = b.op("Gemm", [y, b.w(16, 32), b.const(b.rng.normal(0, 0.1, 16))], transB=1, alpha=0.5, beta=2.0)
    y = b.op("Relu", [y])
    y = b.op("Dropout", [y, b.const(np.array(0.25, np.float32))])
    y = b.op("MatMul", [y, b.const(b.rng.standard_normal((16, 5)) * 0.3)])
    y = b.op("Add", [y, b.const(b.rng.normal(0, 0.1, 5))])
    y = b.op("Softmax", [y], axis=-1)
    return b.model((3, 12, 12), y, 5)


def residual_net(seed=0, final="LogSoftmax", big_eps=False):
    """Stem conv . two residual blocks (identity shortcut; conv+BN shortcut with stride 2;
    ReLU after each Add) . a block without the ReLU . GlobalAveragePool . Reshape [0, -1]
    . Gemm (transB=0); input 3x8x8, 4 classes, ending in ``final`` (or nothing).
    ``big_eps``: the first batch norm of each block has eps 0.5 (a lost eps shows)."""
    b = Builder(seed)
    y = b.op("Conv", ["x", b.w(8, 3, 3, 3)], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    y = b.op("Relu", [y])

    def block(x, cin, cout, stride, relu=True):
        h = b.op("Conv", [x, b.w(cout, cin, 3, 3)], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[stride] * 2)
        h = b.op("Relu", [b.bn(h, cout, eps=0.5 if big_eps else 2e-5)])
        h = b.op("Conv", [h, b.w(cout, cout, 3, 3, scale=0.05)], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
        h = b.bn(h, cout, eps=1e-4)
        s = x
        if stride != 1 or cin != cout:
            s = b.bn(b.op("Conv", [x, b.w(cout, cin, 1, 1)], kernel_shape=[1, 1], strides=[stride] * 2), cout)
        out = b.op("Add", [s, h])  # the shortcut first: the importer finds the body itself
        return b.op("Relu", [out]) if relu else out

    y = block(y, 8, 8, 1)
    y = block(y, 8, 16, 2)
    y = block(y, 16, 16, 1, relu=False)
    y = b.op("GlobalAveragePool", [y])
    y = b.op("Reshape", [y, b.const(np.array([0, -1]), np.int64)])
    y = b.op("Gemm", [y, b.w(16, 4)], transB=0)
    if final:
        y = b.op(final, [y], axis=1)
    return b.model((3, 8, 8), y, 4)


def ort_run(model, x):
    """onnxruntime's output for a float batch (float32 inside, as the model says)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: np.asarray(x, np.float32)})[0].astype(np.float64)


def apply_output(z, mode):
    """What the model's last node did to the logits (Model.output)."""
    if mode == "logits":
        return z
    m = z - z.max(axis=1, keepdims=True)
    if mode == "log_softmax":
        return m - np.log(np.exp(m).sum(axis=1, keepdims=True))
    e = np.exp(m)
    return e / e.sum(axis=1, keepdims=True)


def torchvision_resnet_names(blocks, num_classes):
    """torchvision.models.resnet's state_dict names and shapes, written out from its code
    (Bottleneck, expansion 4, downsample on the first block of each stage), independently
    of the zoo."""
    out = {"conv1.weight": (64, 3, 7, 7)}

    def bn(prefix, c):
        for n in ("weight", "bias", "running_mean", "running_var"):
            out[f"{prefix}.{n}"] = (c,)
        out[f"{prefix}.num_batches_tracked"] = ()

    bn("bn1", 64)
    inplanes = 64
    for stage, (n, planes) in enumerate(zip(blocks, (64, 128, 256, 512)), start=1):
        for i in range(n):
            p = f"layer{stage}.{i}"
            out[f"{p}.conv1.weight"] = (planes, inplanes, 1, 1)
            bn(f"{p}.bn1", planes)
            out[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            bn(f"{p}.bn2", planes)
            out[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1)
            bn(f"{p}.bn3", planes * 4)
            if i == 0:
                out[f"{p}.downsample.0.weight"] = (planes * 4, inplanes, 1, 1)
                bn(f"{p}.downsample.1", planes * 4)
            inplanes = planes * 4
    out["fc.weight"] = (num_classes, 2048)
    out["fc.bias"] = (num_classes,)
    return out


def random_state_dict(shapes, seed=0):
    rng = np.random.default_rng(seed)
    sd = {}
    for k, s in shapes.items():
        if k.endswith("num_batches_tracked"):
            sd[k] = np.array(7, np.int64)
        elif k.endswith("running_var"):
            sd[k] = rng.uniform(0.5, 2.0, s).astype(np.float32)
        elif k.endswith("bn3.weight"):  # small last gamma per block: activations stay in range
            sd[k] = rng.uniform(0.1, 0.3, s).astype(np.float32)
        else:
            fan = int(np.prod(s[1:])) if len(s) > 1 else 1
            sd[k] = (rng.standard_normal(s) * np.sqrt(1.0 / fan)).astype(np.float32)
    return sd


# ------------------------------------------------------------------ PyTorch (optional)
def torch_models(kind, seed=0):
    """A PyTorch LeNet or a ResNet basic block network (eval mode, seeded, batch norms with
    random statistics and eps 1e-3) and its ONNX export (legacy exporter, batch axis N)."""
    import io

    import onnx
    import torch
    from torch import nn

    torch.manual_seed(seed)

    class LeNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(1, 6, 5), nn.Conv2d(6, 16, 5)
            self.fc1, self.fc2 = nn.Linear(256, 32), nn.Linear(32, 10)

        def forward(self, x):
            x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
            x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
            return self.fc2(torch.relu(self.fc1(x.view(x.size(0), -1))))  # Shape/Gather/Concat/Reshape

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout, eps=1e-3)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout, eps=1e-3)
            self.down = None
            if stride != 1 or cin != cout:
                self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            h = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
            return torch.relu(h + (x if self.down is None else self.down(x)))

    class ResNetBlocks(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, 1, 1)
            self.b1, self.b2 = Block(8, 8, 1), Block(8, 16, 2)
            self.fc = nn.Linear(16, 4)

        def forward(self, x):
            x = self.b2(self.b1(torch.relu(self.stem(x))))
            return torch.log_softmax(self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)), 1)

    model, shape = (LeNet(), (1, 28, 28)) if kind == "lenet" else (ResNetBlocks(), (3, 16, 16))
    g = torch.Generator().manual_seed(seed)
    for mod in model.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.copy_(torch.randn(mod.num_features, generator=g) * 0.2)
            mod.running_var.copy_(torch.rand(mod.num_features, generator=g) * 1.5 + 0.5)
            mod.weight.data.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
    model.eval()
    buf = io.BytesIO()
    torch.onnx.export(
        model,
        torch.zeros((1,) + shape),
        buf,
        dynamo=False,
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "N"}, "y": {0: "N"}},
    )
    return model, onnx.load_from_string(buf.getvalue()), shape


def torch_run(model, x):
    """The PyTorch model in float64 on a batch."""
    import copy

    import torch

    with torch.no_grad():
        return copy.deepcopy(model).double()(torch.from_numpy(np.asarray(x, np.float64))).numpy()
