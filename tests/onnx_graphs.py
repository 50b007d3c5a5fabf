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


def residual_net(seed=0, final="LogSoftmax"):
    """Stem conv . two residual blocks (identity shortcut; conv+BN shortcut with stride 2;
    ReLU after each Add) . a block without the ReLU . GlobalAveragePool . Reshape [0, -1]
    . Gemm (transB=0); input 3x8x8, 4 classes, ending in ``final`` (or nothing)."""
    b = Builder(seed)
    y = b.op("Conv", ["x", b.w(8, 3, 3, 3)], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    y = b.op("Relu", [y])

    def block(x, cin, cout, stride, relu=True):
        h = b.op("Conv", [x, b.w(cout, cin, 3, 3)], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[stride] * 2)
        h = b.op("Relu", [b.bn(h, cout, eps=2e-5)])
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
