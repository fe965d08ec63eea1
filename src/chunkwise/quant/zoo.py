"""Small float ONNX models built with ``onnx.helper`` and seeded numpy weights (no torch).

They exercise the quantizer (and ship with the package for ``chunkwise demo``):

* :func:`build_tcn` -- a causal TCN like ESP-DL's streaming tutorial: input ``[1, C, T]`` (NCW).
* :func:`build_dscnn` -- a keyword-spotting DS-CNN with 2-D convs over time x MFCC.
* :func:`build_cnn2d` -- a small image CNN (pools, Clip, Concat, unaligned channel counts).
* :func:`build_random_tcn` -- random causal TCNs (kernel sizes, dilations, residuals) for fuzzing.

Every builder is deterministic for a given ``seed``.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
INT64_MAX = np.iinfo(np.int64).max


class _Builder:
    """Accumulates nodes and initializers with readable, unique names."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, name: str, inputs: list[str], **attrs) -> str:
        out = f"{name}_output_0"
        self.nodes.append(helper.make_node(op, inputs, [out], name=name, **attrs))
        return out

    def weight(self, shape, fan_in: int) -> np.ndarray:
        return (self.rng.standard_normal(shape) * np.sqrt(2.0 / max(fan_in, 1))).astype(np.float32)

    def conv(self, name: str, x: str, cin: int, cout: int, kernel: tuple[int, ...], *, group: int = 1,
             dilations=None, pads=None, strides=None, bias: bool = True) -> str:
        nsp = len(kernel)
        w = self.weight((cout, cin // group, *kernel), cin // group * int(np.prod(kernel)))
        ins = [x, self.const(f"{name}.weight", w)]
        if bias:
            ins.append(self.const(f"{name}.bias", (self.rng.standard_normal(cout) * 0.1).astype(np.float32)))
        return self.node("Conv", f"/{name}/Conv", ins, kernel_shape=list(kernel), group=group,
                         dilations=list(dilations or [1] * nsp), pads=list(pads or [0] * (2 * nsp)),
                         strides=list(strides or [1] * nsp))

    def bn(self, name: str, x: str, c: int) -> str:
        r = self.rng
        scale = (1.0 + 0.2 * r.standard_normal(c)).astype(np.float32)
        bias = (0.1 * r.standard_normal(c)).astype(np.float32)
        mean = (0.1 * r.standard_normal(c)).astype(np.float32)
        var = (0.5 + r.random(c)).astype(np.float32)
        ins = [x] + [self.const(f"{name}.{k}", v) for k, v in
                     (("scale", scale), ("bias", bias), ("mean", mean), ("var", var))]
        return self.node("BatchNormalization", f"/{name}/BatchNormalization", ins, epsilon=1e-5)

    def gemm(self, name: str, x: str, k: int, n: int) -> str:
        w = self.weight((n, k), k)  # torch Linear layout, transB=1
        b = (self.rng.standard_normal(n) * 0.1).astype(np.float32)
        return self.node("Gemm", f"/{name}/Gemm", [x, self.const(f"{name}.weight", w), self.const(f"{name}.bias", b)],
                         transB=1)

    def swish(self, name: str, x: str) -> str:
        s = self.node("Sigmoid", f"/{name}/Sigmoid", [x])
        return self.node("Mul", f"/{name}/Mul", [x, s])

    def model(self, name: str, inputs: list[tuple[str, list[int]]], outputs: list[tuple[str, list[int]]]):
        g = helper.make_graph(self.nodes, name,
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
                              initializer=self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="chunkwise.zoo")
        m.ir_version = IR_VERSION
        onnx.checker.check_model(m)
        return m


def fit_batchnorm(model: onnx.ModelProto, samples: int = 16, seed: int = 1) -> onnx.ModelProto:
    """Set every BatchNormalization's running mean/var to the statistics of its input on seeded noise.

    Random weights with random BN statistics give heavy-tailed activations that no trained network
    has; fitting the statistics (layer by layer, in graph order) makes the models behave like trained
    ones (per-channel normalised pre-activations).
    """
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    x = calibration_data(m, samples, seed)
    inits = {t.name: t for t in m.graph.initializer}
    for bn in [n for n in m.graph.node if n.op_type == "BatchNormalization"]:
        probe = onnx.ModelProto()
        probe.CopyFrom(m)
        del probe.graph.output[:]
        probe.graph.output.append(helper.make_tensor_value_info(bn.input[0], TensorProto.FLOAT, None))
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        sess = ort.InferenceSession(probe.SerializeToString(), so, providers=["CPUExecutionProvider"])
        name = m.graph.input[0].name
        acts = np.concatenate([sess.run(None, {name: x[i:i + 1]})[0] for i in range(samples)])
        axes = tuple(i for i in range(acts.ndim) if i != 1)
        mean, var = acts.mean(axis=axes), acts.var(axis=axes)
        var = np.maximum(var, np.median(var))  # nearly dead channels: no huge gains
        for idx, v in ((3, mean), (4, var)):
            t = inits[bn.input[idx]]
            t.CopyFrom(numpy_helper.from_array(v.astype(np.float32), t.name))
    return m


def _rename_output(b: _Builder, old: str, new: str) -> None:
    for n in b.nodes:
        for i, o in enumerate(n.output):
            if o == old:
                n.output[i] = new
        for i, o in enumerate(n.input):
            if o == old:
                n.input[i] = new


def build_tcn(seed: int = 0, *, in_channels: int = 16, frames: int = 24, hidden: int = 32, out_channels: int = 16,
              kernel: int = 3, dilations: tuple[int, ...] = (1, 2, 1), out_frames: int = 3, classes: int = 16,
              batchnorm: bool = True, swish: bool = True) -> onnx.ModelProto:
    """A causal TCN like the ESP-DL streaming tutorial's.

    ``input [1, in_channels, frames]`` (NCW) -> 1x1 conv -> blocks of (causal depthwise conv [+BN] + Relu,
    pointwise conv + Relu [, x*sigmoid(x)]) -> residual Add -> causal AveragePool -> 1x1 conv -> last
    ``out_frames`` frames -> Flatten -> Gemm -> ``output [1, classes]``.
    """
    b = _Builder(seed)
    x = b.conv("prev_conv", "input", in_channels, hidden, (1,))
    skip = x
    for i, d in enumerate(dilations):
        y = b.conv(f"layer.{i}.depthwise", x, hidden, hidden, (kernel,), group=hidden, dilations=[d],
                   pads=[(kernel - 1) * d, 0], bias=not batchnorm)
        if batchnorm:
            y = b.bn(f"layer.{i}.bn", y, hidden)
        y = b.node("Relu", f"/layer.{i}/Relu", [y])
        y = b.conv(f"layer.{i}.pointwise", y, hidden, hidden, (1,))
        y = b.node("Relu", f"/layer.{i}/Relu_1", [y])
        if swish:
            y = b.swish(f"layer.{i}.act", y)
        x = y
    x = b.node("Add", "/Add", [skip, x])
    x = b.node("AveragePool", "/avgpool/AveragePool", [x], kernel_shape=[kernel], pads=[kernel - 1, 0], strides=[1],
               count_include_pad=1)
    x = b.conv("out_conv", x, hidden, out_channels, (1,))
    x = b.node("Slice", "/Slice", [x, b.const("slice.starts", np.array([-out_frames], np.int64)),
                                   b.const("slice.ends", np.array([INT64_MAX], np.int64)),
                                   b.const("slice.axes", np.array([2], np.int64)),
                                   b.const("slice.steps", np.array([1], np.int64))])
    x = b.node("Flatten", "/Flatten", [x], axis=1)
    x = b.gemm("linear", x, out_channels * out_frames, classes)
    _rename_output(b, x, "output")
    m = b.model("tcn", [("input", [1, in_channels, frames])], [("output", [1, classes])])
    return fit_batchnorm(m) if batchnorm else m


def build_dscnn(seed: int = 0, *, frames: int = 49, mfcc: int = 10, channels: int = 32, blocks: int = 2,
                classes: int = 12) -> onnx.ModelProto:
    """A DS-CNN keyword spotter: ``input [1, 1, frames, mfcc]`` (NCHW, time x MFCC) -> ``output [1, classes]``.

    Includes a standalone ``Pad`` (merged into the next conv) and BatchNorms (folded).
    """
    b = _Builder(seed)
    x = b.node("Pad", "/pad/Pad", ["input", b.const("pad.pads", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))],
               mode="constant")
    x = b.conv("conv0", x, 1, channels, (3, 3), strides=[2, 1], bias=False)
    x = b.bn("bn0", x, channels)
    x = b.node("Relu", "/conv0/Relu", [x])
    for i in range(blocks):
        x = b.conv(f"ds{i}.dw", x, channels, channels, (3, 3), group=channels, pads=[1, 1, 1, 1], bias=False)
        x = b.bn(f"ds{i}.dw_bn", x, channels)
        x = b.node("Relu", f"/ds{i}/dw/Relu", [x])
        x = b.conv(f"ds{i}.pw", x, channels, channels, (1, 1), bias=False)
        x = b.bn(f"ds{i}.pw_bn", x, channels)
        x = b.node("Relu", f"/ds{i}/pw/Relu", [x])
    x = b.node("GlobalAveragePool", "/pool/GlobalAveragePool", [x])
    x = b.node("Flatten", "/Flatten", [x], axis=1)
    x = b.gemm("fc", x, channels, classes)
    _rename_output(b, x, "output")
    return fit_batchnorm(b.model("dscnn", [("input", [1, 1, frames, mfcc])], [("output", [1, classes])]))


def build_cnn2d(seed: int = 0, *, size: int = 16, classes: int = 10) -> onnx.ModelProto:
    """A small image CNN: ``input [1, 3, size, size]`` -> ``output [1, classes]``.

    Conv+Relu, MaxPool, two branches (Conv+Clip(0, 6) with 24 channels, Conv+Tanh with 8) joined by a
    Concat, a residual-free head with GlobalAveragePool, Reshape and Gemm.
    """
    b = _Builder(seed)
    x = b.conv("conv1", "input", 3, 16, (3, 3), pads=[1, 1, 1, 1])
    x = b.node("Relu", "/conv1/Relu", [x])
    x = b.node("MaxPool", "/pool1/MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    y1 = b.conv("branch1", x, 16, 24, (3, 3), pads=[1, 1, 1, 1])
    y1 = b.node("Clip", "/branch1/Clip", [y1, b.const("clip.min", np.array(0.0, np.float32)),
                                          b.const("clip.max", np.array(6.0, np.float32))])
    y2 = b.conv("branch2", x, 16, 8, (1, 1))
    y2 = b.node("Tanh", "/branch2/Tanh", [y2])
    x = b.node("Concat", "/Concat", [y1, y2], axis=1)
    x = b.conv("conv3", x, 32, 16, (3, 3), pads=[1, 1, 1, 1], strides=[2, 2])
    x = b.node("Relu", "/conv3/Relu", [x])
    x = b.node("GlobalAveragePool", "/gap/GlobalAveragePool", [x])
    x = b.node("Reshape", "/Reshape", [x, b.const("reshape.shape", np.array([1, 16], np.int64))])
    x = b.gemm("fc", x, 16, classes)
    _rename_output(b, x, "output")
    return b.model("cnn2d", [("input", [1, 3, size, size])], [("output", [1, classes])])


def build_random_tcn(seed: int = 0) -> onnx.ModelProto:
    """A random causal TCN: random channels, depth, kernel sizes, dilations, residuals and activations.

    Output is the full sequence ``[1, C, T]`` (NCW), so streaming converters can use it too.
    """
    r = np.random.default_rng(10_000 + seed)
    b = _Builder(seed)
    cin = int(r.choice([4, 8, 16]))
    frames = int(r.integers(12, 33))
    c = int(r.choice([8, 16, 24, 32]))
    x = b.conv("in_conv", "input", cin, c, (1,))
    for i in range(int(r.integers(1, 4))):
        k = int(r.choice([2, 3, 5]))
        d = int(r.choice([1, 2, 4]))
        dw = bool(r.integers(0, 2))
        y = b.conv(f"block{i}.conv", x, c, c, (k,), group=c if dw else 1, dilations=[d], pads=[(k - 1) * d, 0])
        act = str(r.choice(["Relu", "Swish", "Tanh"]))
        if act == "Swish":
            y = b.swish(f"block{i}.act", y)
        else:
            y = b.node(act, f"/block{i}/{act}", [y])
        if r.integers(0, 2):
            y = b.node("Add", f"/block{i}/Add", [x, y])
        x = y
    x = b.conv("out_conv", x, c, cin, (1,))
    _rename_output(b, x, "output")
    return b.model(f"random_tcn_{seed}", [("input", [1, cin, frames])], [("output", [1, cin, frames])])


def calibration_data(model: onnx.ModelProto, n: int = 32, seed: int = 0) -> np.ndarray:
    """``n`` seeded standard-normal samples for the (single) input of ``model``: ``[n, ...shape w/o batch]``."""
    inp = model.graph.input[0]
    shape = [d.dim_value for d in inp.type.tensor_type.shape.dim][1:]
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)
