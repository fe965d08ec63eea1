"""Seeded random causal models: the measuring stick for the streaming converter and the compiled path.

``chunkwise.ir.build.random_causal_graph`` builds only what ``chunkwise stream`` handles today (the fuzzer,
tests and demo rely on that). The generators here follow what real exports of causal sequence models
contain, whether or not the quantizer, the converter or the compiler handle it yet:

* :func:`random_onnx_model` -- a float ONNX model (opset 13, built with ``onnx.helper``, no torch) in the
  patterns PyTorch's exporter writes: input ``[1, C, T]`` (NCW) or ``[1, 1, T, F]`` (NCHW, time = axis 2);
  causal convs (plain, depthwise, dilated, strided) whose left padding is written as conv pads + a Slice
  that chops the right end, or as a ``Pad`` node (``F.pad``) before the conv; ``Pad`` before MaxPool /
  AveragePool; WaveNet gates ``tanh(conv_a(p)) * sigmoid(conv_b(p))`` on one padded tensor ``p``; GLU
  (Split + Sigmoid + Mul); residual Adds; BatchNorm; Relu, LeakyRelu, PRelu, Sigmoid, Tanh, Clip(0, 6),
  HardSwish (opset 13: ``x * HardSigmoid(x)``), ``x * sigmoid(x)``; channel Concat of branches with
  different kernels; per-frame Linear (Transpose + MatMul + Add, or Reshape + Gemm); LayerNorm decomposed as
  PyTorch exports it at opset 13 (ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div/Mul/Add); ConvTranspose
  up-sampling along time (stride 2..4) or along frequency; a CRNN reshape from 2-D to 1-D; an optional
  tail head ``Gather(index -1 on time) -> Gemm``.
* :func:`random_calib` -- smoothed-noise calibration data for such a model.
* :func:`random_ir_graph` -- a quantized (int8) ESP-DL graph built with
  :class:`chunkwise.ir.build.GraphBuilder`, with the same variety in ESP-PPQ's export forms: Conv with a
  fused Relu, depthwise, conv pads folded from ``F.pad`` or the right-chop Slice, a standalone pad as
  ``Transpose -> Pad -> Transpose`` (how ESP-PPQ exports it) or as a plain ``Pad``, a Pad feeding several
  consumers, pools after Pad, LUT activations, LeakyRelu/PRelu/Clip with and without tables,
  RequantizeLinear aligning branches, Concat on channels, Split, Mul gates, Add residuals, Gemm/MatMul per
  frame, LayerNormalization over features, InsertZeros + Conv for ConvTranspose, Gather of the last frame.
  Every graph runs offline in the emulator.

Both return ``(model, facts)``; ``facts``:

* ``frame_axis_onnx`` (2) / ``frame_axis`` (the frame axis of the model's own layout: 2 for ONNX, 1 for
  ESP-DL), ``T`` (offline frames), ``two_d``;
* ``ops``: sorted op types; ``features``: sorted pattern tags (``conv_chop``, ``pad_shared``, ...);
* ``stride``: the cumulative decimation the chunk must be a multiple of; ``up``: total up-sampling;
  ``rate``: ``[num, den]``, input frames per output frame (per-frame outputs);
* ``chunk_candidates``: chunk sizes (multiples of ``stride`` dividing ``T``, at least 2 chunks), smallest
  first.

The generators are deterministic for a seed (weights included) and independent of each other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 13
IR_VERSION = 8
INT64_MAX = 2**63 - 1
T_RANGE = (32, 96)

# block kinds and their weights; "crnn" and "upF" only while the tensor is 2-D
BLOCKS = {"conv": 3.0, "dw": 2.0, "gate": 1.5, "res": 1.5, "pool": 1.5, "concat": 1.0, "glu": 0.7,
          "linear": 1.0, "layernorm": 0.7, "convT": 0.6, "crnn": 0.8, "upF": 0.4}
ACTS = {"Relu": 3.0, "LeakyRelu": 1.0, "PRelu": 0.5, "Sigmoid": 0.7, "Tanh": 0.7, "Clip": 1.0,
        "HardSwish": 0.7, "Swish": 1.0, None: 1.5}
CHANNELS = (4, 8, 12, 16, 24, 32)


def _pick(rng, table: dict):
    keys = list(table)
    w = np.array([table[k] for k in keys], dtype=np.float64)
    return keys[int(rng.choice(len(keys), p=w / w.sum()))]


# ---- the plan: random block specs, shared by both generators ------------------------------------------

def _plan(seed: int, ir: bool) -> dict:
    """Random block specs; every stride decision is made here so ``T`` can be a multiple of the chunk unit."""
    rng = np.random.default_rng([seed, 2 if ir else 1, 20261129])
    two_d = bool(rng.random() < 0.35)
    plan = {"two_d": two_d, "F": int(rng.choice([8, 10, 12, 16])) if two_d else None,
            "cin": 1 if two_d else int(rng.choice([4, 8, 12, 16, 20])), "blocks": []}
    rate = Fraction(1)
    numerators = {1}
    cur_2d, up_used, f_strided = two_d, False, False
    pad_styles = ("chop", "pad", "padT", "fused") if ir else ("chop", "pad")
    for i in range(int(rng.integers(2, 7))):
        kinds = dict(BLOCKS)
        if not cur_2d:
            kinds.pop("crnn")
            kinds.pop("upF")
        if up_used:
            kinds.pop("convT")
        kind = _pick(rng, kinds)
        if two_d and i == 0:  # a one-channel spectrogram: the first layer makes channels, as in real models
            kind = "conv"
        k = int(rng.integers(1, 6))
        d = int(rng.integers(1, 5)) if k > 1 else 1
        s = 2 if kind in ("conv", "dw", "pool") and rate * 2 <= 8 and rng.random() < 0.3 else 1
        style = str(rng.choice(pad_styles))
        if style == "chop" and s != 1:
            style = "pad"
        b = {"kind": kind, "k": k, "d": d, "s": s, "style": style, "act": _pick(rng, ACTS),
             "cout": int(rng.choice(CHANNELS)), "bn": bool(rng.random() < 0.4),
             "kf": int(rng.choice([1, 3])) if cur_2d else 1, "fs": 1, "f_in_pad": bool(rng.random() < 0.5),
             "fuse_relu": bool(rng.random() < 0.7), "lut": bool(rng.random() < 0.5),
             "requant": bool(rng.random() < 0.5), "variant": int(rng.integers(0, 3))}
        if kind == "conv" and cur_2d and not f_strided and rng.random() < 0.2:
            b["fs"] = 2
            b["kf"] = 3
            f_strided = True
        if kind == "pool":
            b["op"] = str(rng.choice(["MaxPool", "AveragePool"]))
            b["k"] = int(rng.integers(2, 5))
            b["style"] = str(rng.choice(("pad", "padT", "fused") if ir else ("pad",)))
        elif kind == "gate":
            b["k"] = max(k, 2)
            b["d"] = int(rng.integers(1, 5))
            b["style"] = str(rng.choice(("pad", "padT") if ir else ("pad",)))
            b["res"] = bool(rng.random() < 0.6)
        elif kind == "concat":
            b["ks"] = [int(v) for v in rng.choice([1, 2, 3, 5, 7], size=int(rng.integers(2, 4)), replace=False)]
            b["styles"] = [str(rng.choice(pad_styles)) for _ in b["ks"]]
            b["acts"] = [_pick(rng, ACTS) for _ in b["ks"]]
            b["couts"] = [int(rng.choice((4, 8, 12, 16))) for _ in b["ks"]]
        elif kind == "linear":
            modes = ["matmul", "gemm"] + (["features"] if cur_2d else [])
            b["mode"] = str(rng.choice(modes))
        elif kind == "convT":
            S = int(rng.integers(2, 5))
            b["S"] = S
            b["K"] = int(rng.choice([S, 2 * S]))
            up_used = True
        elif kind == "layernorm":
            b["over_f"] = bool(cur_2d and rng.random() < 0.5)
        elif kind == "crnn":
            b["cout"] = int(rng.choice([2, 4]))
            cur_2d = False
        if kind == "convT":
            rate /= b["S"]
        rate *= s
        numerators.add(rate.numerator)
        plan["blocks"].append(b)
    plan["tail"] = str(rng.choice(["gather", "slice"] if ir else ["gather"])) if rng.random() < 0.3 else None
    plan["classes"] = int(rng.choice([2, 5, 10]))
    plan["tail_k"] = int(rng.integers(1, 4))
    unit = math.lcm(*numerators)
    ts = [t for t in range(T_RANGE[0], T_RANGE[1] + 1) if t % (12 * unit) == 0] or \
         [t for t in range(T_RANGE[0], T_RANGE[1] + 1) if t % unit == 0]
    plan["T"] = int(rng.choice(ts))
    plan["unit"] = unit
    plan["rate"] = rate
    plan["up"] = max((b["S"] for b in plan["blocks"] if b["kind"] == "convT"), default=1)
    return plan


def _chunk_candidates(T: int, unit: int) -> list[int]:
    return [c for c in range(unit, T // 2 + 1, unit) if T % c == 0][:4]


def _facts(plan: dict, ops, features, frame_axis: int) -> dict:
    return {"frame_axis_onnx": 2, "frame_axis": frame_axis, "T": plan["T"], "two_d": plan["two_d"],
            "ops": sorted(set(ops)), "features": sorted(set(features)), "stride": plan["unit"],
            "up": plan["up"], "rate": [plan["rate"].numerator, plan["rate"].denominator],
            "chunk_candidates": _chunk_candidates(plan["T"], plan["unit"]),
            "blocks": [b["kind"] for b in plan["blocks"]], "tail": plan["tail"]}


# ---- (a) float ONNX ----------------------------------------------------------------------------------

@dataclass
class _V:
    """A value in NCW / NCHW: channels, frames, features (None for 1-D), input frames per frame."""

    name: str
    c: int
    t: int
    f: int | None
    rate: Fraction


class _Onnx:
    def __init__(self, seed: int):
        self.rng = np.random.default_rng([seed, 3, 20261129])
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.features: list[str] = []
        self._n = 0

    def _uid(self) -> int:
        self._n += 1
        return self._n

    def const(self, value, base: str) -> str:
        name = f"onnx::{base}_{self._uid()}"
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs, n_out: int = 1, **attrs):
        name = f"/block{self._uid()}/{op}"
        outs = [f"{name}_output_{k}" for k in range(n_out)]
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=name, **attrs))
        return outs[0] if n_out == 1 else outs

    def weight(self, shape, fan_in: int) -> np.ndarray:
        return (self.rng.standard_normal(shape) * np.sqrt(2.0 / max(fan_in, 1))).astype(np.float32)

    def bias(self, n: int) -> np.ndarray:
        return (self.rng.standard_normal(n) * 0.1).astype(np.float32)

    # ---- pieces ----
    def pad(self, v: _V, left: int, fpad: int = 0) -> _V:
        """``F.pad``: zeros before the first frame (and ``fpad`` on both sides of the features)."""
        two = v.f is not None
        pads = [0, 0, left] + ([fpad] if two else []) + [0, 0, 0] + ([fpad] if two else [])
        ins = [v.name, self.const(np.array(pads, np.int64), "Pad")]
        if self.rng.random() < 0.5:
            ins.append(self.const(np.array(0.0, np.float32), "Pad_value"))
        y = self.node("Pad", ins, mode="constant")
        return _V(y, v.c, v.t + left, v.f + 2 * fpad if two else None, v.rate)

    def slice_time(self, v: _V, end: int) -> _V:
        y = self.node("Slice", [v.name, self.const(np.array([0], np.int64), "Slice_starts"),
                                self.const(np.array([end], np.int64), "Slice_ends"),
                                self.const(np.array([2], np.int64), "Slice_axes"),
                                self.const(np.array([1], np.int64), "Slice_steps")])
        t = (v.t + end) if end < 0 else min(end, v.t)
        return _V(y, v.c, t, v.f, v.rate)

    def conv(self, v: _V, cout: int, k: int = 1, d: int = 1, s: int = 1, depthwise: bool = False,
             style: str = "pad", kf: int = 1, fs: int = 1, bn: bool = False, f_in_pad: bool = False,
             padded: bool = False, f_padded: bool = False) -> _V:
        """A causal conv; ``padded``: ``v`` already carries the left padding (a shared Pad), ``f_padded``: and
        the feature padding."""
        P = d * (k - 1)
        two = v.f is not None
        pf = kf // 2 if two and not f_padded else 0
        left = right = 0
        if padded or P == 0:
            pass
        elif style == "chop":
            left = right = P
            self.features.append("conv_chop")
        else:
            v = self.pad(v, P, pf if f_in_pad else 0)
            if f_in_pad and pf:
                pf = 0
            self.features.append("conv_after_pad")
        cin = v.c
        group = cin if depthwise else 1
        cout = cin if depthwise else cout
        kshape = [k, kf] if two else [k]
        w = self.weight((cout, cin // group, *kshape), cin // group * k * kf)
        ins = [v.name, self.const(w, "Conv_w")]
        if not bn:
            ins.append(self.const(self.bias(cout), "Conv_b"))
        attrs = dict(kernel_shape=kshape, group=group, dilations=[d, 1] if two else [d],
                     strides=[s, fs] if two else [s], pads=[left, pf, right, pf] if two else [left, right])
        y = self.node("Conv", ins, **attrs)
        t = (v.t + left + right - P - 1) // s + 1
        f = (v.f + 2 * pf - kf) // fs + 1 if two else None
        if depthwise:
            self.features.append("depthwise")
        if d > 1:
            self.features.append("dilated")
        if s > 1:
            self.features.append("strided")
        if fs > 1:
            self.features.append("feature_stride")
        if bn:
            y = self.batchnorm(y, cout)
        out = _V(y, cout, t, f, v.rate * s)
        if style == "chop" and right:
            out = self.slice_time(out, -right)
        return out

    def batchnorm(self, x: str, c: int) -> str:
        r = self.rng
        vals = [(1.0 + 0.2 * r.standard_normal(c)), 0.1 * r.standard_normal(c), 0.1 * r.standard_normal(c),
                0.5 + r.random(c)]
        ins = [x] + [self.const(np.asarray(a, np.float32), f"BatchNormalization_{i}") for i, a in enumerate(vals)]
        self.features.append("batchnorm")
        return self.node("BatchNormalization", ins, epsilon=1e-5)

    def act(self, v: _V, act) -> _V:
        if act is None:
            return v
        x = v.name
        self.features.append(f"act_{act}")
        if act == "Relu":
            y = self.node("Relu", [x])
        elif act == "LeakyRelu":
            y = self.node("LeakyRelu", [x], alpha=float(self.rng.choice([0.01, 0.1, 0.2])))
        elif act == "PRelu":
            if self.rng.random() < 0.5:
                slope = np.full((1,), 0.25, np.float32)
            else:
                slope = (0.25 + 0.05 * self.rng.standard_normal((v.c, 1, 1) if v.f is not None else (v.c, 1)))
            y = self.node("PRelu", [x, self.const(np.asarray(slope, np.float32), "PRelu_slope")])
        elif act == "Sigmoid":
            y = self.node("Sigmoid", [x])
        elif act == "Tanh":
            y = self.node("Tanh", [x])
        elif act == "Clip":
            y = self.node("Clip", [x, self.const(np.array(0.0, np.float32), "Clip_min"),
                                   self.const(np.array(6.0, np.float32), "Clip_max")])
        elif act == "HardSwish":  # opset 13 has no HardSwish: PyTorch writes x * HardSigmoid(x)
            h = self.node("HardSigmoid", [x], alpha=1.0 / 6, beta=0.5)
            y = self.node("Mul", [x, h])
        elif act == "Swish":
            y = self.node("Mul", [x, self.node("Sigmoid", [x])])
        else:
            raise ValueError(act)
        return _V(y, v.c, v.t, v.f, v.rate)

    def add(self, a: _V, b: _V) -> _V:
        self.features.append("residual")
        return _V(self.node("Add", [a.name, b.name]), a.c, a.t, a.f, a.rate)

    def to_frames(self, v: _V) -> tuple[str, list[int]]:
        """NCW -> [1, T, C] / NCHW -> [1, T, F, C]; returns the name and the perm back."""
        if v.f is None:
            return self.node("Transpose", [v.name], perm=[0, 2, 1]), [0, 2, 1]
        return self.node("Transpose", [v.name], perm=[0, 2, 3, 1]), [0, 3, 1, 2]


def _emit_onnx(o: _Onnx, plan: dict, v: _V, b: dict) -> _V:
    kind = b["kind"]
    two = v.f is not None
    if kind in ("conv", "dw"):
        v = o.conv(v, b["cout"], b["k"], b["d"], b["s"], depthwise=kind == "dw", style=b["style"], kf=b["kf"],
                   fs=b["fs"], bn=b["bn"], f_in_pad=b["f_in_pad"])
        return o.act(v, b["act"])
    if kind == "gate":  # WaveNet: one padded tensor feeds the filter and the gate conv
        P = b["d"] * (b["k"] - 1)
        pf = b["kf"] // 2 if b["f_in_pad"] else 0
        p = o.pad(v, P, pf)
        o.features.append("pad_shared")
        c = b["cout"]
        kf = b["kf"] if two else 1
        fa = o.conv(p, c, b["k"], b["d"], kf=kf, padded=True, f_padded=bool(pf))
        fb = o.conv(p, c, b["k"], b["d"], kf=kf, padded=True, f_padded=bool(pf))
        y = o.node("Mul", [o.node("Tanh", [fa.name]), o.node("Sigmoid", [fb.name])])
        o.features.append("gate_tanh_sigmoid")
        g = _V(y, c, fa.t, fa.f, v.rate)
        if b["res"] and g.f == v.f:
            return o.add(v, o.conv(g, v.c, 1))
        return g
    if kind == "res":
        y = o.conv(v, v.c, b["k"], b["d"], style=b["style"], kf=b["kf"], bn=b["bn"])
        y = o.act(y, b["act"] or "Relu")
        y = o.conv(y, v.c, 1, kf=b["kf"])
        return o.add(v, y)
    if kind == "pool":
        k, s = b["k"], b["s"]
        p = o.pad(v, k - 1)
        attrs = dict(kernel_shape=[k, 1] if two else [k], strides=[s, 1] if two else [s],
                     pads=[0, 0, 0, 0] if two else [0, 0])
        if b["op"] == "AveragePool":
            attrs["count_include_pad"] = int(o.rng.integers(0, 2))
        else:
            attrs["ceil_mode"] = 0
        y = o.node(b["op"], [p.name], **attrs)
        o.features.append(f"{b['op'].lower()}_after_pad")
        if s > 1:
            o.features.append("strided")
        return _V(y, v.c, (v.t - 1) // s + 1, v.f, v.rate * s)
    if kind == "concat":
        outs = []
        for k, style, act, c in zip(b["ks"], b["styles"], b["acts"], b["couts"]):
            y = o.conv(v, c, k, 1, style=style, kf=b["kf"] if two else 1)
            outs.append(o.act(y, act))
        o.features.append("concat_channels")
        y = o.node("Concat", [u.name for u in outs], axis=1)
        return _V(y, sum(u.c for u in outs), v.t, outs[0].f, v.rate)
    if kind == "glu":
        c = max(2, b["cout"] // 2)
        y = o.conv(v, 2 * c, b["k"], b["d"], style=b["style"], kf=b["kf"] if two else 1)
        a, g = o.node("Split", [y.name, o.const(np.array([c, c], np.int64), "Split")], n_out=2, axis=1)
        o.features.append("glu_split")
        return _V(o.node("Mul", [a, o.node("Sigmoid", [g])]), c, y.t, y.f, v.rate)
    if kind == "linear":
        n = b["cout"]
        if b["mode"] == "features":  # nn.Linear over the feature axis of [1, C, T, F]: per frame
            f2 = int(o.rng.choice([4, 8, 12]))
            y = o.node("MatMul", [v.name, o.const(o.weight((v.f, f2), v.f), "MatMul_w")])
            y = o.node("Add", [y, o.const(o.bias(f2), "Add_b")])
            o.features.append("linear_features")
            return o.act(_V(y, v.c, v.t, f2, v.rate), b["act"])
        x, back = o.to_frames(v)
        if b["mode"] == "matmul":  # nn.Linear on [1, T, C]: MatMul + Add
            y = o.node("MatMul", [x, o.const(o.weight((v.c, n), v.c), "MatMul_w")])
            y = o.node("Add", [y, o.const(o.bias(n), "Add_b")])
            o.features.append("linear_matmul")
        else:  # x.reshape(-1, C) -> Linear -> reshape back
            y = o.node("Reshape", [x, o.const(np.array([-1, v.c], np.int64), "Reshape")])
            y = o.node("Gemm", [y, o.const(o.weight((n, v.c), v.c), "Gemm_w"), o.const(o.bias(n), "Gemm_b")],
                       transB=1)
            shape = [1, -1, n] if not two else [1, -1, v.f, n]
            y = o.node("Reshape", [y, o.const(np.array(shape, np.int64), "Reshape")])
            o.features.append("linear_gemm")
        y = o.node("Transpose", [y], perm=back)
        return o.act(_V(y, n, v.t, v.f, v.rate), b["act"])
    if kind == "layernorm":  # nn.LayerNorm(C) on [1, T, C] (or nn.LayerNorm(F) on [1, C, T, F]) at opset 13
        over_f = two and (b["over_f"] or v.c < 4)
        x, back = (v.name, None) if over_f else o.to_frames(v)
        n = v.f if over_f else v.c
        mean = o.node("ReduceMean", [x], axes=[-1], keepdims=1)
        dx = o.node("Sub", [x, mean])
        var = o.node("ReduceMean", [o.node("Pow", [dx, o.const(np.array(2.0, np.float32), "Pow")])], axes=[-1],
                     keepdims=1)
        std = o.node("Sqrt", [o.node("Add", [var, o.const(np.array(1e-5, np.float32), "Add_eps")])])
        y = o.node("Div", [dx, std])
        y = o.node("Mul", [y, o.const((1.0 + 0.1 * o.rng.standard_normal(n)).astype(np.float32), "Mul_g")])
        y = o.node("Add", [y, o.const(o.bias(n), "Add_b")])
        o.features.append("layernorm_decomposed")
        if over_f:
            o.features.append("layernorm_features")
            return _V(y, v.c, v.t, v.f, v.rate)
        return _V(o.node("Transpose", [y], perm=back), v.c, v.t, v.f, v.rate)
    if kind == "convT":  # causal up-sampler: ConvTranspose, then drop the last K - S frames
        S, K, n = b["S"], b["K"], b["cout"]
        kf = b["kf"] if two else 1
        pf = kf // 2
        w = o.weight((v.c, n, K, kf) if two else (v.c, n, K), v.c * K * kf // S)
        y = o.node("ConvTranspose", [v.name, o.const(w, "ConvTranspose_w"), o.const(o.bias(n), "ConvTranspose_b")],
                   kernel_shape=[K, kf] if two else [K], strides=[S, 1] if two else [S],
                   pads=[0, pf, 0, pf] if two else [0, 0])
        u = _V(y, n, (v.t - 1) * S + K, v.f, v.rate / S)
        if K > S:
            u = o.slice_time(u, -(K - S))
        o.features.append("convtranspose_time")
        return o.act(u, b["act"])
    if kind == "upF":  # ConvTranspose along frequency only: per frame
        if v.f > 16:
            return v
        w = o.weight((v.c, v.c, 1, 4), v.c * 2)
        y = o.node("ConvTranspose", [v.name, o.const(w, "ConvTranspose_w"), o.const(o.bias(v.c), "ConvTranspose_b")],
                   kernel_shape=[1, 4], strides=[1, 2], pads=[0, 1, 0, 1])
        o.features.append("convtranspose_freq")
        return o.act(_V(y, v.c, v.t, 2 * v.f, v.rate), b["act"])
    if kind == "crnn":  # [1, C, T, F] -> [1, T, C, F] -> [1, T, C*F] -> [1, C*F, T]
        v = o.conv(v, b["cout"], 1)
        y = o.node("Transpose", [v.name], perm=[0, 2, 1, 3])
        shape = [[1, v.t, v.c * v.f], [1, -1, v.c * v.f], [0, 0, -1]][b["variant"]]
        y = o.node("Reshape", [y, o.const(np.array(shape, np.int64), "Reshape")])
        y = o.node("Transpose", [y], perm=[0, 2, 1])
        o.features.append("reshape_2d_to_1d")
        return _V(y, v.c * v.f, v.t, None, v.rate)
    raise ValueError(kind)


def random_onnx_model(seed: int) -> tuple[onnx.ModelProto, dict]:
    """A seeded random float causal model (see the module docstring) and its facts."""
    plan = _plan(seed, ir=False)
    o = _Onnx(seed)
    T, two = plan["T"], plan["two_d"]
    shape = [1, 1, T, plan["F"]] if two else [1, plan["cin"], T]
    v = _V("input", shape[1], T, plan["F"], Fraction(1))
    o.features.append("2d" if two else "1d")
    for b in plan["blocks"]:
        v = _emit_onnx(o, plan, v, b)
    if plan["tail"] == "gather":  # x[:, :, -1] -> Linear
        y = o.node("Gather", [v.name, o.const(np.array(-1, np.int64), "Gather")], axis=2)
        k = v.c * (v.f or 1)
        if v.f is not None:
            y = o.node("Flatten", [y], axis=1)
        y = o.node("Gemm", [y, o.const(o.weight((plan["classes"], k), k), "Gemm_w"),
                            o.const(o.bias(plan["classes"]), "Gemm_b")], transB=1)
        o.features.append("tail_gather")
        out_shape = [1, plan["classes"]]
    else:
        y = v.name
        out_shape = [1, v.c, v.t] + ([v.f] if v.f is not None else [])
    for n in o.nodes:  # the graph output is called "output"
        outs = ["output" if u == y else u for u in n.output]
        del n.output[:]
        n.output.extend(outs)
    g = helper.make_graph(o.nodes, f"random_causal_{seed}",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
                          [helper.make_tensor_value_info("output", TensorProto.FLOAT, out_shape)],
                          initializer=o.inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="tests.randgraph")
    m.ir_version = IR_VERSION
    onnx.checker.check_model(m, full_check=True)
    if "batchnorm" in o.features:
        from chunkwise.quant.zoo import fit_batchnorm

        m = fit_batchnorm(m)
    ops = [n.op_type for n in m.graph.node]
    return m, _facts(plan, ops, o.features, 2)


def random_calib(model: onnx.ModelProto, seed: int = 0, n: int = 16) -> np.ndarray:
    """``n`` samples ``[n, ...input shape without batch]`` of smoothed noise (time = axis 2 of a sample
    batch), unit variance: a one-pole low-pass of white noise with a random pole per sample, plus a slow
    random sine, so neighbouring frames are correlated like real features."""
    inp = model.graph.input[0]
    shape = [d.dim_value for d in inp.type.tensor_type.shape.dim][1:]
    rng = np.random.default_rng([seed, 4, 20261129])
    x = rng.standard_normal((n, *shape))
    T = shape[1]
    a = rng.uniform(0.3, 0.9, size=n)
    a = a.reshape((n,) + (1,) * len(shape))
    y = np.empty_like(x)
    prev = x[:, :, 0] * 0.0
    for t in range(T):
        prev = a[:, :, 0] * prev + np.sqrt(1 - a[:, :, 0] ** 2) * x[:, :, t]
        y[:, :, t] = prev
    tt = np.arange(T).reshape((1, 1, T) + (1,) * (len(shape) - 2))
    freq = rng.uniform(0.02, 0.2, size=(n, 1, 1) + (1,) * (len(shape) - 2))
    y = y + 0.5 * np.sin(2 * np.pi * freq * tt + rng.uniform(0, 6.3, size=freq.shape))
    y /= y.std(axis=tuple(range(1, y.ndim)), keepdims=True)
    return y.astype(np.float32)


# ---- (b) quantized IR ----------------------------------------------------------------------------------

def _rms_builder(seed: int, target: str):
    """A GraphBuilder that tracks the expected RMS (in integer units) of every value and gives each Conv,
    Gemm, MatMul and Mul the output exponent that keeps its output near 40 (GraphBuilder assumes full-scale
    inputs, so deep random stacks would fade to all-zero tensors, and bit-exact checks would be vacuous)."""
    from chunkwise.ir.build import GraphBuilder

    class RmsBuilder(GraphBuilder):
        AUTO = {"Conv", "Gemm", "MatMul", "Mul"}
        INPUT_RMS = 37.0  # uniform integers in [-64, 64]: chunkwise.convert.streaming.random_input

        def __init__(self):
            super().__init__(seed=seed + 7919, target=target, name=f"random_ir_{seed}")
            self.rms: dict[str, float] = {}
            self.keep = False  # the caller's out_exp stands

        def r(self, name: str) -> float:
            return self.rms.get(name, self.INPUT_RMS)

        def _node(self, op, inputs, out_shape, out_exp, dtype="int8", **attrs):
            if op in self.AUTO and not self.keep:
                out_exp = self._auto_exp(op, inputs, attrs)
            out = super()._node(op, inputs, out_shape, out_exp, dtype, **attrs)
            self.rms[out] = float(np.clip(self._out_rms(op, inputs, out, attrs), 0.5, 127.0))
            return out

        def _weight_exps(self, name):
            return np.asarray(self.g.initializers[name].exponents, dtype=np.float64)

        def _auto_exp(self, op, inputs, attrs) -> int:
            x = inputs[0]
            e_in = self.exp(x)
            if op == "Mul":
                v = self.r(x) * self.r(inputs[1])
                return int(e_in + self.exp(inputs[1]) + round(math.log2(max(v, 1.0) / 40.0)))
            w = self.g.initializers[inputs[1]].data
            if op == "Conv":
                depthwise = int(attrs.get("group", 1)) > 1
                fan_in = int(np.prod(w.shape[:-2])) * (1 if depthwise else int(w.shape[-2]))
            else:
                fan_in = int(w.shape[-2])
            acc = self.r(x) * 58.0 * math.sqrt(fan_in) + 1.0  # int8 weights uniform in [-100, 100]: rms 58
            return int(e_in + self._weight_exps(inputs[1]).max() + round(math.log2(acc / 40.0)))

        def _out_rms(self, op, inputs, out, attrs) -> float:
            x = inputs[0]
            rx = self.r(x)
            e_in, e_out = self.exp(x), self.exp(out)
            gain = 2.0 ** (e_in - e_out)
            if op in ("Conv", "Gemm", "MatMul"):
                ew = self._weight_exps(inputs[1])
                v = 40.0 * float(np.mean(2.0 ** (ew - ew.max())))
                return v / math.sqrt(2) if attrs.get("activation") == "Relu" else v
            if op == "Mul":
                return self.r(x) * self.r(inputs[1]) * 2.0 ** (e_in + self.exp(inputs[1]) - e_out)
            if op in ("Add", "Sub"):
                return math.hypot(rx, self.r(inputs[1]))
            if op == "Sigmoid":
                return 75.0 * 2.0 ** (-7 - e_out)
            if op == "Tanh":
                return 110.0 * min(rx * 2.0 ** e_in, 1.0) * 2.0 ** (-7 - e_out)
            if op in ("Relu",):
                return rx * gain / math.sqrt(2)
            if op in ("LeakyRelu", "PRelu", "HardSwish", "Swish"):
                return rx * gain * 0.75
            if op == "Clip":
                return min(rx, 6.0 * 2.0 ** -e_in) * gain * 0.7
            if op == "AveragePool":
                return rx * 0.8
            if op == "LayerNormalization":
                return 2.0 ** -e_out
            if op == "InsertZeros":
                return rx / math.sqrt(float(np.prod(attrs.get("stride", [1]))))
            if op == "RequantizeLinear":
                return rx * gain
            if op == "Concat":
                return float(np.mean([self.r(i) for i in inputs]))
            return rx  # data movement, MaxPool

        def split(self, x, sizes, axis):
            outs = super().split(x, sizes, axis)
            for o in outs:
                self.rms[o] = self.r(x)
            return outs

    return RmsBuilder()


class _Ir:
    def __init__(self, seed: int, target: str):
        self.b = _rms_builder(seed, target)
        self.rng = np.random.default_rng([seed, 5, 20261129])
        self.features: list[str] = []

    def shape(self, x):
        return self.b.shapes[x]

    def exp(self, x):
        return self.b.exp(x)

    def pad_time(self, x: str, left: int, style: str, fpad: int = 0) -> str:
        """Zero padding of the frame axis (and ``fpad`` features) as a plain Pad or ESP-PPQ's
        Transpose -> Pad (NCW/NCHW) -> Transpose."""
        b = self.b
        r = len(self.shape(x))
        if style == "padT":
            to_c = [0, 2, 1] if r == 3 else [0, 3, 1, 2]
            back = [0, 2, 1] if r == 3 else [0, 2, 3, 1]
            y = b.transpose(x, to_c)
            pads = [0, 0, left] + ([fpad] if r == 4 else []) + [0, 0, 0] + ([fpad] if r == 4 else [])
            self.features.append("pad_transposed")
            return b.transpose(b.pad(y, pads), back)
        pads = [0, left] + ([fpad] if r == 4 else []) + [0] + [0, 0] + ([fpad] if r == 4 else []) + [0]
        self.features.append("pad_plain")
        return b.pad(x, pads)

    def conv(self, x: str, cout: int, k=1, d=1, s=1, depthwise=False, style="fused", kf=1, fs=1, act="Linear",
             padded=False, f_in_pad=False, out_exp=None, f_padded=False) -> str:
        b = self.b
        P = d * (k - 1)
        two = len(self.shape(x)) == 4
        pf = kf // 2 if two and not f_padded else 0
        left = right = 0
        if padded or P == 0:
            pass
        elif style == "chop":
            left = right = P
            self.features.append("conv_chop")
        elif style == "fused":
            left = P
            self.features.append("conv_pads_fused")
        else:
            x = self.pad_time(x, P, style, pf if f_in_pad else 0)
            if f_in_pad and pf:
                pf = 0
            self.features.append("conv_after_pad")
        if depthwise:
            self.features.append("depthwise")
        if d > 1:
            self.features.append("dilated")
        if s > 1:
            self.features.append("strided")
        if fs > 1:
            self.features.append("feature_stride")
        b.keep = out_exp is not None
        if two:
            y = b.conv_full(x, cout, (k, kf), (d, 1), (s, fs), (left, pf, right, pf), depthwise, act, out_exp)
        else:
            y = b.conv_full(x, cout, (k,), (d,), (s,), (left, right), depthwise, act, out_exp)
        b.keep = False
        if style == "chop" and right:
            y = b.slice_time(y, 0, -right)
        return y

    def act(self, x: str, act, lut: bool) -> str:
        b = self.b
        if act is None:
            return x
        self.features.append(f"act_{act}")
        e = self.exp(x)
        if act == "Relu":
            return b.relu(x)
        if act == "LeakyRelu":
            alpha = float(self.rng.choice([0.01, 0.1, 0.2]))
            if lut:
                return b.lut(x, "LeakyRelu", lambda v: np.where(v >= 0, v, v * alpha), e, alpha=alpha)
            return b.leaky_relu(x, alpha)
        if act == "PRelu":
            if len(self.shape(x)) == 4 and not lut:
                return b.prelu(x, self.rng.integers(16, 48, size=self.shape(x)[-1]), -7)
            return b.prelu(x, [32], -7, table=True)
        if act == "Sigmoid":
            return b.sigmoid(x)
        if act == "Tanh":
            return b.tanh(x)
        if act == "Clip":
            hi = int(min(127, round(6 * 2.0 ** -e)))
            if lut:
                return b.lut(x, "Clip", lambda v: np.clip(v, 0.0, 6.0), e)
            return b.clip(x, 0, hi)
        if act == "HardSwish":
            return b.lut(x, "HardSwish", lambda v: v * np.clip(v / 6 + 0.5, 0, 1), e)
        if act == "Swish":
            if lut:
                return b.lut(x, "Swish", lambda v: v * 0.5 * (1 + np.tanh(v / 2)), e)
            b.keep = True
            y = b.binary("Mul", x, b.sigmoid(x), out_exp=e)
            b.keep = False
            return y
        raise ValueError(act)

    def conv_act(self, x: str, cout: int, blk: dict, act=None, **kw) -> str:
        """A conv with its activation: Relu fused into the conv (as ESP-PPQ does) or a separate node."""
        act = blk["act"] if act is None else act
        if act == "Relu" and blk["fuse_relu"]:
            self.features.append("act_Relu_fused")
            return self.conv(x, cout, act="Relu", **kw)
        return self.act(self.conv(x, cout, **kw), act, blk["lut"])

    def align(self, x: str, e: int) -> str:
        if self.exp(x) == e:
            return x
        self.features.append("requantize")
        return self.b.requantize(x, e)

    def add(self, x: str, y: str, blk: dict) -> str:
        self.features.append("residual")
        return self.b.binary("Add", x, self.align(y, self.exp(x)))


def _emit_ir(r: _Ir, plan: dict, x: str, blk: dict) -> str:
    b = r.b
    kind = blk["kind"]
    shp = r.shape(x)
    two = len(shp) == 4
    c = shp[-1]
    kf = blk["kf"] if two else 1
    if kind in ("conv", "dw"):
        return r.conv_act(x, blk["cout"], blk, k=blk["k"], d=blk["d"], s=blk["s"], depthwise=kind == "dw",
                          style=blk["style"], kf=kf, fs=blk["fs"], f_in_pad=blk["f_in_pad"])
    if kind == "gate":  # one padded tensor feeds both convs
        P = blk["d"] * (blk["k"] - 1)
        pf = kf // 2 if blk["f_in_pad"] else 0
        p = r.pad_time(x, P, blk["style"], pf)
        r.features.append("pad_shared")
        kw = dict(k=blk["k"], d=blk["d"], kf=kf, padded=True, f_padded=bool(pf))
        g = b.binary("Mul", b.tanh(r.conv(p, blk["cout"], **kw)), b.sigmoid(r.conv(p, blk["cout"], **kw)))
        r.features.append("gate_tanh_sigmoid")
        if blk["res"] and r.shape(g)[:-1] == shp[:-1]:
            y = r.conv(g, c, out_exp=None if blk["requant"] else r.exp(x))
            return r.add(x, y, blk)
        return g
    if kind == "res":
        y = r.conv_act(x, c, blk, act=blk["act"] or "Relu", k=blk["k"], d=blk["d"], style=blk["style"], kf=kf)
        y = r.conv(y, c, kf=kf, out_exp=None if blk["requant"] else r.exp(x))
        return r.add(x, y, blk)
    if kind == "pool":
        k, s = blk["k"], blk["s"]
        if blk["style"] == "fused":
            if blk["op"] == "MaxPool":  # a zero-padded MaxPool is the pool of a Relu output in ESP-PPQ exports
                x = b.relu(x)
            y = b.pool(x, blk["op"], k, s, pads=(k - 1, 0))
            r.features.append(f"{blk['op'].lower()}_pads")
        else:
            y = b.pool(r.pad_time(x, k - 1, blk["style"]), blk["op"], k, s, pads=(0, 0))
            r.features.append(f"{blk['op'].lower()}_after_pad")
        if s > 1:
            r.features.append("strided")
        return y
    if kind == "concat":
        outs = []
        for k, style, act, co in zip(blk["ks"], blk["styles"], blk["acts"], blk["couts"]):
            outs.append(r.conv_act(x, co, {**blk, "act": act}, k=k, style=style, kf=kf))
        e = max(r.exp(u) for u in outs)
        outs = [r.align(u, e) for u in outs]
        r.features.append("concat_channels")
        return b.concat(outs, len(shp) - 1)
    if kind == "glu":
        h = max(2, blk["cout"] // 2)
        y = r.conv(x, 2 * h, k=blk["k"], d=blk["d"], style=blk["style"], kf=kf)
        a, g = b.split(y, [h, h], len(shp) - 1)
        r.features.append("glu_split")
        return b.binary("Mul", a, b.sigmoid(g))
    if kind == "linear":
        n = blk["cout"]
        relu = blk["act"] == "Relu" and blk["fuse_relu"]
        if blk["mode"] == "features":  # over F: [1,T,F,C] -> [1,T,C,F] -> MatMul -> back
            f2 = int(r.rng.choice([4, 8, 12]))
            y = b.matmul(b.transpose(x, [0, 1, 3, 2]), f2)
            r.features.append("linear_features")
            return r.act(b.transpose(y, [0, 1, 3, 2]), blk["act"], blk["lut"])
        if blk["mode"] == "matmul":
            y = b.matmul(x, n, act="Relu" if relu else "Linear")
            r.features.append("linear_matmul")
        elif blk["variant"] == 0:  # Gemm straight on [1, T, (F,) C] (ESP-DL's Gemm takes [..., K])
            y = b.gemm(x, n, act="Relu" if relu else "Linear")
            r.features.append("linear_gemm_nd")
        else:  # PyTorch's x.reshape(-1, C) -> Linear -> reshape back
            y = b.gemm(b.reshape(x, [-1, c]), n, act="Relu" if relu else "Linear")
            y = b.reshape(y, list(shp[:-1]) + [n] if blk["variant"] == 1 else [1, -1] + list(shp[2:-1]) + [n])
            r.features.append("linear_gemm")
        return y if relu else r.act(y, blk["act"], blk["lut"])
    if kind == "layernorm":
        r.features.append("layernorm")
        if two and (blk["over_f"] or c < 4):  # over the features: [1,T,F,C] -> [1,T,C,F] -> LN -> back
            r.features.append("layernorm_features")
            return b.transpose(b.layer_norm(b.transpose(x, [0, 1, 3, 2]), -5), [0, 1, 3, 2])
        return b.layer_norm(x, -5)
    if kind == "convT":  # InsertZeros + Conv (ESP-PPQ's ConvTranspose)
        S, K = blk["S"], blk["K"]
        r.features.append("convtranspose_time")
        if blk["variant"] == 0:  # PyTorch's trim: full conv, then drop the last K - S frames
            z = b.insert_zeros(x, [S, 1] if two else [S])
            pf = kf // 2
            y = b.conv_full(z, blk["cout"], (K, kf) if two else (K,), pads=(K - 1, pf, K - 1, pf) if two else
                            (K - 1, K - 1))
            t = r.shape(y)[1]
            want = shp[1] * S
            if t > want:
                y = b.slice_time(y, 0, want - t)
        else:  # output_padding S - 1 and left padding only: causal as written
            z = b.insert_zeros(x, [S, 1] if two else [S], [S - 1, 0] if two else [S - 1])
            y = r.conv(z, blk["cout"], k=K, style="fused", kf=kf)
        return r.act(y, blk["act"], blk["lut"])
    if kind == "upF":
        if shp[2] > 16:
            return x
        z = b.insert_zeros(x, [1, 2], [0, 1])
        r.features.append("insertzeros_freq")
        y = b.conv_full(z, c, (1, 3), (1, 1), (1, 1), (0, 1, 0, 1))
        return r.act(y, blk["act"], blk["lut"])
    if kind == "crnn":
        y = r.conv(x, blk["cout"])
        t, f, cc = r.shape(y)[1:]
        y = b.transpose(y, [0, 1, 3, 2])
        shape = [[1, t, cc * f], [1, -1, cc * f], [0, 0, -1]][blk["variant"]]
        r.features.append("reshape_2d_to_1d")
        return b.reshape(y, shape)
    raise ValueError(kind)


def random_ir_graph(seed: int, target: str = "esp32p4"):
    """A seeded random quantized causal ESP-DL graph (see the module docstring) and its facts."""
    plan = _plan(seed, ir=True)
    r = _Ir(seed, target)
    b = r.b
    T, two = plan["T"], plan["two_d"]
    x = b.input((1, T, plan["F"], 1) if two else (1, T, plan["cin"]), exp=-5)
    r.features.append("2d" if two else "1d")
    for blk in plan["blocks"]:
        x = _emit_ir(r, plan, x, blk)
    if plan["tail"]:
        t = r.shape(x)[1]
        if plan["tail"] == "gather":
            x = b.gather(x, t - 1, 1)  # ESP-DL does not wrap negative indices: the last frame as T - 1
            r.features.append("tail_gather")
        else:
            x = b.slice_time(x, -min(plan["tail_k"], t), INT64_MAX)
            r.features.append("tail_slice")
        if len(r.shape(x)) > 2:
            x = b.flatten(x)
        x = b.gemm(x, plan["classes"])
    b.output(x)
    ops = [n.op_type for n in b.g.nodes]
    return b.g, _facts(plan, ops, r.features, 1)
