"""Build quantized IR graphs directly (no quantizer): used by tests, benchmarks and the demo.

Every value gets a ValueInfo with its dtype and exponent; weights are random int8 with per-channel
exponents, biases int32 at ``e_in + e_w``; output exponents are picked so outputs use most of the
int8 range without saturating much. Conventions follow ESP-PPQ's exports (attribute names and kinds,
LUT tables for activations, weight layout annotations).
"""

from __future__ import annotations

import math

import numpy as np

from .graph import Graph, Node, Tensor, ValueInfo, make_attribute
from .layout import layout_doc, weight_layout


class GraphBuilder:
    def __init__(self, seed: int = 0, target: str = "esp32p4", name: str = "graph"):
        self.rng = np.random.default_rng(seed)
        self.g = Graph(name=name, producer_name="chunkwise", producer_version="0.1")
        self.g.metadata["target"] = target
        self.target = target
        self.shapes: dict[str, tuple[int, ...]] = {}
        self._n = 0

    # ---- plumbing ------------------------------------------------------------------------
    def _name(self, base: str) -> str:
        self._n += 1
        return f"{base}_{self._n}"

    def exp(self, name: str) -> int:
        return self.g.info(name).exponent

    def _value(self, name: str, shape, exp: int, dtype: str = "int8") -> str:
        self.g.value_info[name] = ValueInfo(name, dtype, tuple(shape), (int(exp),))
        self.shapes[name] = tuple(shape)
        return name

    def _init(self, base: str, data: np.ndarray, exps=(0,), layout: str | None = None) -> str:
        name = self._name(base)
        self.g.initializers[name] = Tensor(name, str(data.dtype), tuple(data.shape), data, tuple(int(e) for e in exps),
                                           layout, layout_doc(layout), "raw")
        return name

    def _node(self, op: str, inputs, out_shape, out_exp, dtype="int8", **attrs) -> str:
        out = self._name(op.lower() + "_out")
        node = Node(op, self._name(op), list(inputs), [out])
        for k, v in attrs.items():
            node.attrs[k] = v if hasattr(v, "kind") else make_attribute(v)
        node.attrs["quant_type"] = make_attribute("S8" if dtype == "int8" else "S16")
        self.g.nodes.append(node)
        return self._value(out, out_shape, out_exp, dtype)

    def input(self, shape, exp: int = -5, name: str = "input") -> str:
        self.g.inputs.append(ValueInfo(name, "int8", tuple(shape), (exp,)))
        self.shapes[name] = tuple(shape)
        return name

    def output(self, name: str) -> None:
        vi = self.g.value_info.pop(name)
        self.g.outputs.append(vi)

    # ---- ops -----------------------------------------------------------------------------
    def conv(self, x: str, cout: int | None = None, k=1, d=1, s=1, depthwise=False, act="Linear",
             pads: tuple[int, int] | None = None, k2: int = 1, pad2: int = 0, out_exp: int | None = None) -> str:
        """Conv along time (axis 1). 2-D inputs [N,T,F,C] use kernel ``k x k2`` (feature padding ``pad2``)."""
        shp = self.shapes[x]
        two_d = len(shp) == 4
        cin = shp[-1]
        cout = cin if depthwise else (cout or cin)
        L, R = pads if pads is not None else (d * (k - 1), 0)
        e_in = self.exp(x)
        cg = 1 if depthwise else cin
        fan_in = k * (k2 if two_d else 1) * cg
        w = self.rng.integers(-100, 101, size=((k, k2) if two_d else (k,)) + ((cin, 1) if depthwise else (cin, cout)))
        w = w.astype(np.int8)
        e_w = self.rng.integers(-9, -6, size=cout)
        bias = self.rng.integers(-2000, 2001, size=cout).astype(np.int32)
        # output exponent: accumulator std ~ 40 * 60 * sqrt(fan_in) at e_in + e_w
        e_out = int(e_in + int(e_w.max()) + math.ceil(math.log2(40 * 60 * math.sqrt(fan_in) / 40)))
        if out_exp is not None:
            e_out = out_exp
        layout = weight_layout(4 if two_d else 3, cout, "int8", self.target, depthwise)
        wn = self._init("w", w, e_w, layout)
        bn = self._init("b", bias, e_in + e_w)
        t = shp[1]
        t_out = (t + L + R - d * (k - 1) - 1) // s + 1
        if two_d:
            f_out = shp[2] + 2 * pad2 - (k2 - 1)
            out_shape = (shp[0], t_out, f_out, cout)
            attrs = dict(kernel_shape=[k, k2], dilations=[d, 1], strides=[s, 1], pads=[L, pad2, R, pad2])
        else:
            out_shape = (shp[0], t_out, cout)
            attrs = dict(kernel_shape=[k], dilations=[d], strides=[s], pads=[L, R])
        return self._node("Conv", [x, wn, bn], out_shape, e_out, activation=act, group=cin if depthwise else 1,
                          **attrs)

    def pad_time(self, x: str, left: int) -> str:
        shp = self.shapes[x]
        rank = len(shp)
        pads = [0] * (2 * rank)
        pads[1] = left
        pn = self._init("pads", np.array(pads, dtype=np.int64))
        cv = self._init("pad_value", np.array(0, dtype=np.int8), (self.exp(x),))
        out = list(shp)
        out[1] += left
        return self._node("Pad", [x, pn, cv], out, self.exp(x), mode="constant")

    def slice_time(self, x: str, start: int, end: int) -> str:
        shp = self.shapes[x]
        s = self._init("starts", np.array([start], dtype=np.int64))
        e = self._init("ends", np.array([end], dtype=np.int64))
        a = self._init("axes", np.array([1], dtype=np.int64))
        st = self._init("steps", np.array([1], dtype=np.int64))
        t = shp[1]
        s0 = start + t if start < 0 else start
        e0 = min(end + t if end < 0 else end, t)
        out = list(shp)
        out[1] = e0 - s0
        return self._node("Slice", [x, s, e, a, st], out, self.exp(x))

    def lut_act(self, x: str, op: str, fn, out_exp: int) -> str:
        e_in = self.exp(x)
        idx = np.arange(-128, 128, dtype=np.float64)
        table = np.clip(np.rint(fn(idx * 2.0 ** e_in) * 2.0 ** (-out_exp)), -128, 127).astype(np.int8)
        ln = self._init(f"{op}_lut", table, (out_exp,))
        return self._node(op, [x], self.shapes[x], out_exp, lut=make_attribute(ln))

    def sigmoid(self, x: str) -> str:
        return self.lut_act(x, "Sigmoid", lambda v: 1 / (1 + np.exp(-v)), -7)

    def relu(self, x: str) -> str:
        return self._node("Relu", [x], self.shapes[x], self.exp(x))

    def binary(self, op: str, a: str, b: str, out_exp: int | None = None) -> str:
        """Add/Sub need equal input exponents (ESP-DL adds the raw integers); Mul requantizes."""
        if op in ("Add", "Sub"):
            if self.exp(a) != self.exp(b):
                raise ValueError(f"{op} inputs must share an exponent ({self.exp(a)} vs {self.exp(b)})")
            out_exp = self.exp(a) if out_exp is None else out_exp
        if out_exp is None:
            out_exp = self.exp(a) + self.exp(b) + 7
        shape = tuple(np.broadcast_shapes(self.shapes[a], self.shapes[b]))
        return self._node(op, [a, b], shape, out_exp)

    def pool(self, x: str, op: str, k: int, s: int = 1, pads: tuple[int, int] | None = None) -> str:
        shp = self.shapes[x]
        L, R = pads if pads is not None else (k - 1, 0)
        t_out = (shp[1] + L + R - k) // s + 1
        two_d = len(shp) == 4
        attrs = dict(kernel_shape=[k, 1] if two_d else [k], strides=[s, 1] if two_d else [s],
                     pads=[L, 0, R, 0] if two_d else [L, R], ceil_mode=0)
        if op == "AveragePool":
            attrs["count_include_pad"] = 1
        out = list(shp)
        out[1] = t_out
        return self._node(op, [x], out, self.exp(x), **attrs)

    def transpose(self, x: str, perm) -> str:
        shp = self.shapes[x]
        return self._node("Transpose", [x], [shp[p] for p in perm], self.exp(x), perm=list(perm))

    def flatten(self, x: str) -> str:
        shp = self.shapes[x]
        return self._node("Flatten", [x], (shp[0], int(np.prod(shp[1:]))), self.exp(x), axis=1)

    def gemm(self, x: str, nout: int, act="Linear") -> str:
        shp = self.shapes[x]
        k = shp[-1]
        e_in = self.exp(x)
        w = self.rng.integers(-100, 101, size=(1, 1, k, nout)).astype(np.int8)
        e_w = self.rng.integers(-9, -6, size=nout)
        bias = self.rng.integers(-2000, 2001, size=nout).astype(np.int32)
        e_out = int(e_in + int(e_w.max()) + math.ceil(math.log2(60 * math.sqrt(k))))
        wn = self._init("w", w, e_w, weight_layout(4, nout, "int8", self.target))
        bn = self._init("b", bias, e_in + e_w)
        return self._node("Gemm", [x, wn, bn], tuple(shp[:-1]) + (nout,), e_out, activation=act, alpha=1.0,
                          beta=1.0, transB=0)

    # ---- more ops (the random causal graphs of tests/randgraph.py use these) -------------------------
    def conv_full(self, x: str, cout: int | None = None, kernel=(1,), dilations=None, strides=None, pads=None,
                  depthwise: bool = False, act: str = "Linear", out_exp: int | None = None) -> str:
        """Conv with every geometry given: ``kernel`` (kt,) or (kt, kf); ``pads`` ONNX order [begins.., ends..]."""
        shp = self.shapes[x]
        nsp = len(shp) - 2
        kernel = [int(k) for k in kernel]
        dil = [int(v) for v in (dilations or [1] * nsp)]
        st = [int(v) for v in (strides or [1] * nsp)]
        pads = [int(v) for v in (pads or [0] * (2 * nsp))]
        if not (len(kernel) == len(dil) == len(st) == nsp and len(pads) == 2 * nsp):
            raise ValueError(f"conv geometry {kernel} {dil} {st} {pads} does not fit input {shp}")
        cin = shp[-1]
        cout = cin if depthwise else (cout or cin)
        e_in = self.exp(x)
        fan_in = int(np.prod(kernel)) * (1 if depthwise else cin)
        w = self.rng.integers(-100, 101, size=tuple(kernel) + ((cin, 1) if depthwise else (cin, cout))).astype(np.int8)
        e_w = self.rng.integers(-9, -6, size=cout)
        bias = self.rng.integers(-2000, 2001, size=cout).astype(np.int32)
        e_out = int(e_in + int(e_w.max()) + math.ceil(math.log2(60 * math.sqrt(fan_in))))
        if out_exp is not None:
            e_out = out_exp
        wn = self._init("w", w, e_w, weight_layout(nsp + 2, cout, "int8", self.target, depthwise))
        bn = self._init("b", bias, e_in + e_w)
        out = [shp[0]]
        for i in range(nsp):
            out.append((shp[1 + i] + pads[i] + pads[i + nsp] - dil[i] * (kernel[i] - 1) - 1) // st[i] + 1)
        out.append(cout)
        return self._node("Conv", [x, wn, bn], out, e_out, activation=act, group=cin if depthwise else 1,
                          kernel_shape=kernel, dilations=dil, strides=st, pads=pads)

    def tanh(self, x: str) -> str:
        return self.lut_act(x, "Tanh", np.tanh, -7)

    def lut(self, x: str, op: str, fn, out_exp: int, **attrs) -> str:
        """An int8 activation run as ESP-DL's LUT module (table at the output exponent), with extra attributes."""
        out = self.lut_act(x, op, fn, out_exp)
        for k, v in attrs.items():
            self.g.nodes[-1].attrs[k] = make_attribute(v)
        return out

    def leaky_relu(self, x: str, alpha: float = 0.1, out_exp: int | None = None) -> str:
        """LeakyRelu without a table (ESP-DL computes it in float32)."""
        return self._node("LeakyRelu", [x], self.shapes[x], self.exp(x) if out_exp is None else out_exp,
                          alpha=float(alpha))

    def prelu(self, x: str, slopes, slope_exp: int = -7, table: bool = False) -> str:
        """PRelu with int8 slopes: one per channel (ESP-DL needs a 4-D NHWC input for that), or one slope,
        optionally run as a LUT (``table=True``, as ESP-PPQ exports a single-slope int8 PRelu)."""
        s = np.asarray(slopes, dtype=np.int8).ravel()
        sn = self._init("slope", s, (slope_exp,))
        out = self._node("PRelu", [x, sn], self.shapes[x], self.exp(x))
        if table:
            if s.size != 1:
                raise ValueError("a PRelu table needs a single slope")
            e_in = self.exp(x)
            a = float(s[0]) * 2.0 ** slope_exp
            idx = np.arange(-128, 128, dtype=np.float64) * 2.0 ** e_in
            vals = np.clip(np.rint(np.where(idx >= 0, idx, idx * a) * 2.0 ** (-e_in)), -128, 127).astype(np.int8)
            self.g.nodes[-1].attrs["lut"] = make_attribute(self._init("PRelu_lut", vals, (e_in,)))
        return out

    def clip(self, x: str, lo: int, hi: int) -> str:
        """Clip with integer bounds at the input exponent (ESP-DL reads them as raw integers)."""
        ln = self._init("clip_min", np.array(lo, dtype=np.int8), (self.exp(x),))
        hn = self._init("clip_max", np.array(hi, dtype=np.int8), (self.exp(x),))
        return self._node("Clip", [x, ln, hn], self.shapes[x], self.exp(x))

    def requantize(self, x: str, out_exp: int) -> str:
        """RequantizeLinear to ``out_exp`` with ESP-PPQ's scale / zero-point inputs (ESP-DL ignores them)."""
        sn = self._init("rq_scale", np.array(2.0 ** (out_exp - self.exp(x)), dtype=np.float32))
        zn = self._init("rq_zero", np.array(0, dtype=np.int8))
        return self._node("RequantizeLinear", [x, sn, zn], self.shapes[x], out_exp)

    def concat(self, xs, axis: int) -> str:
        shapes = [self.shapes[x] for x in xs]
        rank = len(shapes[0])
        ax = axis % rank
        out = list(shapes[0])
        out[ax] = sum(s[ax] for s in shapes)
        return self._node("Concat", list(xs), out, self.exp(xs[0]), axis=int(axis))

    def split(self, x: str, sizes, axis: int) -> list[str]:
        shp = self.shapes[x]
        ax = axis % len(shp)
        sn = self._init("split", np.array(sizes, dtype=np.int64))
        node = Node("Split", self._name("Split"), [x, sn], [])
        node.attrs["axis"] = make_attribute(int(axis))
        node.attrs["quant_type"] = make_attribute("S8")
        outs = []
        for sz in sizes:
            o = self._name("split_out")
            out = list(shp)
            out[ax] = int(sz)
            self._value(o, out, self.exp(x))
            node.outputs.append(o)
            outs.append(o)
        self.g.nodes.append(node)
        return outs

    def pad(self, x: str, pads) -> str:
        """Constant zero Pad, ``pads`` in ONNX order (begins of every axis, then ends)."""
        shp = self.shapes[x]
        r = len(shp)
        pads = [int(p) for p in pads]
        pn = self._init("pads", np.array(pads, dtype=np.int64))
        cv = self._init("pad_value", np.array(0, dtype=np.int8), (self.exp(x),))
        out = [shp[a] + pads[a] + pads[a + r] for a in range(r)]
        return self._node("Pad", [x, pn, cv], out, self.exp(x), mode="constant")

    def reshape(self, x: str, shape) -> str:
        shp = self.shapes[x]
        shape = [int(v) for v in shape]
        sn = self._init("shape", np.array(shape, dtype=np.int64))
        out = [shp[i] if v == 0 else v for i, v in enumerate(shape)]
        if -1 in out:
            known = int(np.prod([v for v in out if v != -1]))
            out[out.index(-1)] = int(np.prod(shp)) // known
        return self._node("Reshape", [x, sn], out, self.exp(x), allowzero=0)

    def matmul(self, x: str, nout: int, act: str = "Linear") -> str:
        """MatMul with a constant int8 B [K, N] (per-column exponents) over the last axis of ``x``."""
        shp = self.shapes[x]
        k = shp[-1]
        e_in = self.exp(x)
        w = self.rng.integers(-100, 101, size=(k, nout)).astype(np.int8)
        e_w = self.rng.integers(-9, -6, size=nout)
        e_out = int(e_in + int(e_w.max()) + math.ceil(math.log2(60 * math.sqrt(k))))
        bn = self._init("B", w, e_w, weight_layout(4, nout, "int8", self.target))
        return self._node("MatMul", [x, bn], tuple(shp[:-1]) + (nout,), e_out, activation=act)

    def gather(self, x: str, index: int, axis: int) -> str:
        """Gather one index (a scalar: the axis disappears), as PyTorch's ``x[:, -1]`` exports."""
        shp = self.shapes[x]
        ax = axis % len(shp)
        idx = self._init("indices", np.array(index, dtype=np.int64))
        out = list(shp[:ax]) + list(shp[ax + 1:])
        return self._node("Gather", [x, idx], out, self.exp(x), axis=int(axis))

    def insert_zeros(self, x: str, stride, output_padding=None) -> str:
        """ESP-PPQ's ConvTranspose lowering, first half: ``stride - 1`` zeros between input pixels."""
        shp = self.shapes[x]
        nsp = len(shp) - 2
        stride = [int(s) for s in stride]
        opad = [int(p) for p in (output_padding or [0] * nsp)]
        out = list(shp)
        for i in range(nsp):
            d = shp[1 + i]
            out[1 + i] = d + (stride[i] - 1) * (d - 1) + opad[i]
        return self._node("InsertZeros", [x], out, self.exp(x), stride=stride, output_padding=opad)

    def layer_norm(self, x: str, out_exp: int = -5) -> str:
        """LayerNormalization over the last axis with int8 Scale (~1) and B (~0)."""
        c = self.shapes[x][-1]
        sn = self._init("ln_scale", self.rng.integers(48, 80, size=c).astype(np.int8), (-6,))
        bn = self._init("ln_bias", self.rng.integers(-20, 21, size=c).astype(np.int8), (-6,))
        return self._node("LayerNormalization", [x, sn, bn], self.shapes[x], out_exp, axis=-1, epsilon=1e-5)


def random_causal_graph(seed: int, *, two_d: bool | None = None, frames: int | None = None,
                        head: str | None = None, max_layers: int = 5) -> tuple[Graph, dict]:
    """A random quantized causal network; returns (graph, facts used to build it)."""
    rng = np.random.default_rng(seed)
    b = GraphBuilder(seed=seed + 1000)
    two_d = bool(rng.integers(0, 2)) if two_d is None else two_d
    head = head or ("tail" if rng.integers(0, 3) == 0 else "per-frame")
    c = int(rng.choice([4, 8, 16]))
    total_stride = 1
    layers = []
    x = b.input((1, 0, 5, c) if two_d else (1, 0, c))  # frames filled in below
    n_layers = int(rng.integers(1, max_layers + 1))
    specs = []
    for _ in range(n_layers):
        kind = rng.choice(["conv", "dw", "pw", "res", "gate", "avg", "max", "chop", "pad"])
        k = int(rng.integers(1, 8))
        d = int(rng.integers(1, 9)) if k > 1 else 1
        s = int(rng.choice([1, 1, 1, 2])) if total_stride < 4 else 1
        specs.append((str(kind), k, d, s))
        if kind in ("conv", "dw", "avg", "max", "chop", "pad"):
            total_stride *= s
    n_chunks = int(rng.integers(2, 6))
    chunk = total_stride * int(rng.integers(1, max(1, 8 // total_stride) + 1))  # 1..8 frames
    T = frames or chunk * n_chunks
    shp = list(b.shapes[x])
    shp[1] = T
    b.g.inputs[0].shape = tuple(shp)
    b.shapes[x] = tuple(shp)
    for kind, k, d, s in specs:
        if kind == "conv":
            x = b.conv(x, int(rng.choice([4, 8, 16, 24])), k=k, d=d, s=s, act="Relu" if rng.integers(0, 2) else "Linear",
                       k2=3 if two_d else 1, pad2=1 if two_d else 0)
        elif kind == "dw":
            x = b.conv(x, k=k, d=d, s=s, depthwise=True, act="Relu")
        elif kind == "pw":
            x = b.conv(x, int(rng.choice([4, 8, 16])), k=1)
        elif kind == "res":
            y = b.conv(x, k=k, d=d, depthwise=True, act="Relu")
            y = b.conv(y, b.shapes[x][-1], k=1, out_exp=b.exp(x))
            x = b.binary("Add", x, y)
        elif kind == "gate":
            x = b.binary("Mul", x, b.sigmoid(x))
        elif kind == "avg":
            x = b.pool(x, "AveragePool", max(k, 1), s)
        elif kind == "max":
            x = b.pool(b.relu(x), "MaxPool", max(k, 1), s)
        elif kind == "chop":
            P = d * (k - 1)
            x = b.conv(x, int(rng.choice([4, 8])), k=k, d=d, pads=(P, P))
            if P:
                x = b.slice_time(x, 0, -P)
        elif kind == "pad":
            L = d * (k - 1)
            x = b.pad_time(x, L) if L else x
            x = b.conv(x, int(rng.choice([4, 8])), k=k, d=d, s=s, pads=(0, 0))
        layers.append(kind)
    if head == "tail":
        K = min(int(rng.integers(1, 4)), b.shapes[x][1])  # ESP-DL refuses a slice longer than the axis
        x = b.slice_time(x, -K, 2**63 - 1)
        x = b.flatten(x)
        x = b.gemm(x, int(rng.choice([2, 5, 10])))
    b.output(x)
    return b.g, {"chunk": chunk, "frames": T, "layers": [s[0] for s in specs], "two_d": two_d, "head": head,
                 "stride": total_stride}
