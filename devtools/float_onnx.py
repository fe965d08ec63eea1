"""A runnable float twin of a quantized ESP-DL graph, for onnxruntime (benchmark peer, sanity checks).

:func:`to_float_onnx` turns an offline ``.espdl`` graph back into an ordinary float ONNX model:

* every quantized constant becomes float32 ``int * 2**exponent`` (per output channel where the
  tensor has one exponent per channel); index-like constants (shapes, slice bounds, split sizes,
  Resize scales/sizes) stay as they are;
* layouts: ESP-DL runs Conv-family ops channel-last (NHWC / NWC), ONNX channel-first. Each value
  carries a permutation ``q`` with ``espdl_value = transpose(twin_value, q)`` (``q`` is what ESP-PPQ
  calls the variable's permute). Conv-family ops (Conv, pools, Resize, DepthToSpace, ...) want their
  input channel-first; element-wise ops, Concat, Split, Slice, Softmax and keepdims reductions keep
  the permutation and get their axes remapped; an ESP-DL ``Transpose`` only composes permutations
  (no op); every other op (Reshape, Flatten, Gemm, MatMul, Pad, Gather, ...) gets its inputs in
  ESP-DL's own layout, where its attributes are correct as written. A ``Transpose`` is inserted only
  where a value has to change layout, so a graph exported by ESP-PPQ from a channel-first model
  comes back with (almost) none besides the one at the input and the ones at the outputs;
* weights: logical ``[kH, kW, Cin/g, Cout]`` -> OIHW, depthwise ``[kH, kW, C, 1]`` -> ``[C, 1, kH, kW]``,
  1-D likewise; Gemm ``[1, 1, K, N]`` -> ``[K, N]`` with ``transB=0``; a fused ``activation=Relu``
  becomes a ``Relu`` after the op;
* int8 LUT activations become their float function (``Swish`` -> ``x * Sigmoid(x)``, ``Gelu`` ->
  erf form, ``LUT`` by its ``original_op_type``); ``RequantizeLinear`` / ``QuantizeLinear`` /
  ``DequantizeLinear`` between quantized values vanish (the twin is float throughout);
* ``StreamingCache`` is refused: twins are for offline models.

``io_layout="espdl"`` (default) keeps the graph inputs and outputs in ESP-DL's layout (feed the same
arrays, dequantized, as to the emulator; compare outputs directly): one ``Transpose`` after each input
and before each output. ``io_layout="onnx"`` leaves them in the twin's (channel-first) layout, as the
float model the ``.espdl`` was quantized from had them.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from chunkwise.errors import UnsupportedError
from chunkwise.ir.graph import Graph, Node
from chunkwise.ir.ops import Layout, find
from chunkwise.espdl.onnx_export import onnx_attribute

OPSET = 18

# What each ESP-DL op is (layout class, index inputs, axis attribute ...) comes from its definition
# (chunkwise.ir.ops); the twin keeps no op-name lists. Ops whose definition says refuse["float_twin"]
# have no faithful single float ONNX op.


def _def(op: str):
    return find(op)


def _index_inputs(op: str) -> frozenset:
    d = _def(op)
    return d.index_inputs if d is not None else frozenset()


def _is(op: str, layout: Layout) -> bool:
    d = _def(op)
    return d is not None and d.layout is layout


_ESPDL_ONLY_ATTRS = {"quant_type", "lut", "activation", "original_op_type"}


def _cl_perm(rank: int) -> list[int]:
    return [0] + list(range(2, rank)) + [1]


def _ident(rank: int) -> list[int]:
    return list(range(rank))


def _inverse(p) -> list[int]:
    inv = [0] * len(p)
    for i, a in enumerate(p):
        inv[a] = i
    return inv


def _dequantize(t) -> np.ndarray:
    data = np.asarray(t.data)
    if data.dtype.kind not in "iu" or not t.exponents or t.dtype not in ("int8", "int16", "int32", "int64"):
        return data
    exps = np.asarray(t.exponents, dtype=np.float64)
    if exps.size == 1:
        return (data.astype(np.float64) * 2.0 ** exps[0]).astype(np.float32)
    if data.ndim and exps.size == data.shape[-1]:
        return (data.astype(np.float64) * 2.0 ** exps).astype(np.float32)
    if data.ndim and exps.size == data.shape[0]:
        return (data.astype(np.float64) * (2.0 ** exps).reshape((-1,) + (1,) * (data.ndim - 1))).astype(np.float32)
    raise UnsupportedError(f"constant {t.name!r}: {exps.size} exponents for dims {list(data.shape)}")


class _Twin:
    def __init__(self, graph: Graph, io_layout: str, input_shapes: dict | None, opset: int):
        self.g = graph
        self.io_layout = io_layout
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, onnx.TensorProto] = {}
        self.q: dict[str, list[int]] = {}  # espdl value -> its twin permutation
        self.tname: dict[str, str] = {}  # espdl value -> twin tensor name (in layout q)
        self.cache: dict[tuple[str, tuple[int, ...]], str] = {}
        self.consumers = graph.consumers()
        self.input_shapes = dict(input_shapes or {})
        self.n = 0
        self.outputs = {v.name for v in graph.outputs}

    # ---- helpers ------------------------------------------------------------------------------
    def fresh(self, base: str) -> str:
        self.n += 1
        return f"{base}__tw{self.n}"

    def const(self, name: str, arr: np.ndarray) -> str:
        if name in self.inits:
            name = self.fresh(name)
        self.inits[name] = numpy_helper.from_array(np.ascontiguousarray(arr), name)
        return name

    def is_const(self, name: str) -> bool:
        return name in self.g.initializers

    def rank(self, name: str) -> int:
        if name in self.q:
            return len(self.q[name])
        v = self.g.info(name)
        if v is None or v.shape is None:
            raise UnsupportedError(f"value {name!r} has no shape information")
        return len(v.shape)

    def out_name(self, name: str) -> str:
        """The twin tensor name a node writes for ESP-DL value ``name``."""
        return self.fresh(name) if name in self.outputs else name

    def emit(self, op: str, ins: list[str], outs: list[str], name: str = "", **attrs) -> None:
        self.nodes.append(helper.make_node(op, ins, outs, name=name or self.fresh(op), **attrs))

    def layout(self, name: str, want: list[int]) -> str:
        """Twin tensor holding ESP-DL value ``name`` in permutation ``want`` (a Transpose if needed)."""
        have = self.q[name]
        if list(have) == list(want):
            return self.tname[name]
        key = (name, tuple(want))
        if key not in self.cache:
            # twin_old axis have[i] == espdl axis i == twin_new axis want[i]
            r = [0] * len(have)
            for i in range(len(have)):
                r[want[i]] = have[i]
            out = self.fresh(name)
            self.emit("Transpose", [self.tname[name]], [out], perm=r)
            self.cache[key] = out
        return self.cache[key]

    def data_const(self, node: Node, i: int, name: str) -> str:
        t = self.g.initializers[name]
        if t.data is None:
            raise UnsupportedError(f"constant {name!r} has no data", node=node.name, op=node.op_type)
        if i in _index_inputs(node.op_type):
            return self.const(name, np.asarray(t.data))
        return self.const(name, _dequantize(t))

    def attrs(self, node: Node, op_type: str | None = None, drop=()) -> dict:
        op_type = op_type or node.op_type
        try:
            schema = onnx.defs.get_schema(op_type, self.opset, "")
            allowed = set(schema.attributes)
        except Exception:  # not an ONNX op: keep nothing ESP-DL-only
            allowed = None
        out = {}
        for k, a in node.attrs.items():
            if k in _ESPDL_ONLY_ATTRS or k in drop or (allowed is not None and k not in allowed):
                continue
            p = onnx_attribute(k, a, False)
            if p is not None:
                out[k] = helper.get_attribute_value(p)
        return out

    def set_out(self, name: str, twin: str, q: list[int]) -> None:
        self.tname[name] = twin
        self.q[name] = list(q)

    # ---- graph I/O ------------------------------------------------------------------------------
    def add_inputs(self) -> list[onnx.ValueInfoProto]:
        vis = []
        for v in self.g.inputs:
            if v.name in self.g.initializers:
                continue
            shape = tuple(self.input_shapes.get(v.name, v.shape or ()))
            r = len(shape)
            cl = r in (3, 4) and any(_is(c.op_type, Layout.SPATIAL) for c in self.consumers.get(v.name, []))
            q = _cl_perm(r) if cl else _ident(r)
            inv = _inverse(q)
            if self.io_layout == "espdl":
                vis.append(helper.make_tensor_value_info(v.name, TensorProto.FLOAT, list(shape)))
                if q != _ident(r):
                    t = self.fresh(v.name)
                    self.emit("Transpose", [v.name], [t], perm=inv)
                    self.set_out(v.name, t, q)
                else:
                    self.set_out(v.name, v.name, q)
            else:
                vis.append(helper.make_tensor_value_info(v.name, TensorProto.FLOAT, [shape[a] for a in inv]))
                self.set_out(v.name, v.name, q)
        return vis

    def add_outputs(self) -> list[onnx.ValueInfoProto]:
        vis = []
        for v in self.g.outputs:
            r = self.rank(v.name)
            want = _ident(r) if self.io_layout == "espdl" else self.q[v.name]
            t = self.layout(v.name, want)
            if t != v.name:
                self.emit("Identity", [t], [v.name])
            shape = list(v.shape) if v.shape is not None else [None] * r
            if self.io_layout == "onnx" and len(shape) == r:
                shape = [shape[a] for a in _inverse(want)]
            dtype = TensorProto.BOOL if v.dtype == "bool" else TensorProto.FLOAT
            vis.append(helper.make_tensor_value_info(v.name, dtype, shape))
        return vis

    # ---- nodes ------------------------------------------------------------------------------------
    def node(self, n: Node) -> None:
        op = n.op_type
        if op == "StreamingCache":
            raise UnsupportedError("StreamingCache: float twins are for offline models; convert the offline "
                                   "model instead", node=n.name, op=op)
        d = _def(op)
        if d is not None and d.refuse.get("float_twin"):
            raise UnsupportedError(f"{op} has no float twin: {d.refuse['float_twin']}", node=n.name, op=op)
        if op in ("Conv", "Gemm"):
            return self.conv(n) if op == "Conv" else self.gemm(n)
        layout = d.layout if d is not None else None
        if layout is Layout.SPATIAL:
            return self.channel_last(n)
        if op == "Transpose":
            x = n.inputs[0]
            r = self.rank(x)
            perm = [int(p) % r for p in (n.attr("perm") or list(range(r))[::-1])]
            qin = self.q[x]
            self.set_out(n.outputs[0], self.tname[x], [qin[p] for p in perm])
            if n.outputs[0] in self.outputs:  # keep graph outputs distinct tensors
                self.tname[n.outputs[0]] = self.tname[x]
            return
        if d is not None and d.family == "quant":  # (re)quantization is the identity in float
            x = n.inputs[0]
            self.set_out(n.outputs[0], self.tname[x], self.q[x])
            return
        if layout is Layout.ELEMENTWISE and len(n.inputs) == 2:  # PRelu: a broadcast slope
            return self.binary(n)
        if layout is Layout.ELEMENTWISE:
            return self.unary(n)
        if layout is Layout.BROADCAST and len(n.inputs) == 2:
            return self.binary(n)
        if layout is Layout.AXIS and op != "Slice" and (d.family != "reduce" or int(n.attr("keepdims", 1)) == 1):
            return self.axis_op(n)
        if op == "Slice":
            return self.slice(n)
        return self.generic(n)

    def conv(self, n: Node) -> None:
        x, wname = n.inputs[0], n.inputs[1]
        r = self.rank(x)
        xt = self.layout(x, _cl_perm(r))
        w = self.g.initializers.get(wname)
        if w is None or w.data is None:
            raise UnsupportedError("Conv weight must be a constant", node=n.name, op=n.op_type)
        wi = np.asarray(w.data)
        if wi.ndim == r - 1:  # defensive: some exports omit kH for 1-D
            wi = wi.reshape((1,) + wi.shape)
        nsp = wi.ndim - 2
        group = int(n.attr("group", 1) or 1)
        sp = list(range(nsp))
        if group > 1 and wi.shape[-1] == 1 and wi.shape[-2] == group:  # depthwise [.., C, 1] -> [C, 1, ..]
            oihw = wi.transpose([nsp, nsp + 1] + sp)
        else:  # [.., Cin/g, Cout] -> [Cout, Cin/g, ..]
            oihw = wi.transpose([nsp + 1, nsp] + sp)
        if r == 3 and oihw.ndim == 4:  # 1-D conv stored as [1, kW, ..]
            oihw = oihw.reshape(oihw.shape[0], oihw.shape[1], oihw.shape[3])
        exps = np.asarray(w.exponents, dtype=np.float64)
        scale = 2.0 ** exps.reshape((-1,) + (1,) * (oihw.ndim - 1)) if exps.size > 1 else 2.0 ** exps[0]
        wf = (oihw.astype(np.float64) * scale).astype(np.float32)
        ins = [xt, self.const(wname, wf)]
        if len(n.inputs) > 2 and n.inputs[2]:
            ins.append(self.data_const(n, 2, n.inputs[2]))
        out = n.outputs[0]
        attrs = self.attrs(n)
        attrs.setdefault("kernel_shape", list(oihw.shape[2:]))
        act = n.attr("activation", "Linear") or "Linear"
        tout = self.out_name(out)
        if act == "Linear":
            self.emit("Conv", ins, [tout], name=n.name, **attrs)
        elif act == "Relu":
            mid = self.fresh(out)
            self.emit("Conv", ins, [mid], name=n.name, **attrs)
            self.emit("Relu", [mid], [tout])
        else:
            raise UnsupportedError(f"fused activation {act!r}", node=n.name, op=n.op_type,
                                   supported=["Linear", "Relu"])
        self.set_out(out, tout, _cl_perm(r))

    def gemm(self, n: Node) -> None:
        x = n.inputs[0]
        xt = self.layout(x, _ident(self.rank(x)))
        w = self.g.initializers.get(n.inputs[1])
        if w is None or w.data is None:
            raise UnsupportedError("Gemm weight must be a constant", node=n.name, op=n.op_type)
        wd = _dequantize(w)
        wd = wd.reshape(wd.shape[-2], wd.shape[-1])  # [1, 1, K, N] -> [K, N]
        ins = [xt, self.const(n.inputs[1], wd)]
        if len(n.inputs) > 2 and n.inputs[2]:
            ins.append(self.data_const(n, 2, n.inputs[2]))
        attrs = self.attrs(n, drop=("transA", "transB"))
        attrs["transB"] = 0
        self._with_act(n, "Gemm", ins, attrs, _ident(2))

    def _with_act(self, n: Node, op: str, ins, attrs, q) -> None:
        out = n.outputs[0]
        tout = self.out_name(out)
        act = n.attr("activation", "Linear") or "Linear"
        if act == "Linear":
            self.emit(op, ins, [tout], name=n.name, **attrs)
        elif act == "Relu":
            mid = self.fresh(out)
            self.emit(op, ins, [mid], name=n.name, **attrs)
            self.emit("Relu", [mid], [tout])
        else:
            raise UnsupportedError(f"fused activation {act!r}", node=n.name, op=n.op_type,
                                   supported=["Linear", "Relu"])
        self.set_out(out, tout, q)

    def channel_last(self, n: Node) -> None:
        x = n.inputs[0]
        r = self.rank(x)
        ins = [self.layout(x, _cl_perm(r))]
        for i, name in enumerate(n.inputs[1:], start=1):
            ins.append("" if not name else self.data_const(n, i, name) if self.is_const(name)
                       else self.layout(name, _ident(self.rank(name))))
        self._with_act(n, n.op_type, ins, self.attrs(n), _cl_perm(r))

    def unary(self, n: Node) -> None:
        x = n.inputs[0]
        xt = self.tname[x]
        q = self.q[x]
        out = n.outputs[0]
        tout = self.out_name(out)
        op = n.op_type
        if op == "LUT":
            op = n.attr("original_op_type") or ""
            if not op:
                raise UnsupportedError("LUT without original_op_type", node=n.name, op=n.op_type)
        extra = [self.data_const(n, i, s) if self.is_const(s) else self.tname[s] if s else ""
                 for i, s in enumerate(n.inputs[1:], start=1)]
        if op == "Swish":
            s = self.fresh(out)
            self.emit("Sigmoid", [xt], [s])
            self.emit("Mul", [xt, s], [tout], name=n.name)
        elif op == "Gelu":
            c = self.const(self.fresh("sqrt_half"), np.array(np.sqrt(0.5), dtype=np.float32))
            half = self.const(self.fresh("half"), np.array(0.5, dtype=np.float32))
            one = self.const(self.fresh("one"), np.array(1.0, dtype=np.float32))
            a, b, e, f = (self.fresh(out) for _ in range(4))
            self.emit("Mul", [xt, c], [a])
            self.emit("Erf", [a], [b])
            self.emit("Add", [b, one], [e])
            self.emit("Mul", [xt, e], [f])
            self.emit("Mul", [f, half], [tout], name=n.name)
        else:
            try:
                onnx.defs.get_schema(op, self.opset, "")
            except Exception:
                raise UnsupportedError(f"no float form for {op!r}", node=n.name, op=n.op_type) from None
            self.emit(op, [xt] + extra, [tout], name=n.name, **self.attrs(n, op))
        self.set_out(out, tout, q)

    def _acts(self, n: Node) -> list[str]:
        return [s for s in n.inputs if s and not self.is_const(s)]

    def binary(self, n: Node) -> None:
        acts = self._acts(n)
        if not acts:
            return self.generic(n)
        r = max(self.rank(a) for a in acts)
        first = next(a for a in acts if self.rank(a) == r)
        q = self.q[first]
        for i, s in enumerate(n.inputs):  # a constant of higher rank broadcasts beyond q: use ESP-DL layout
            if s and self.is_const(s) and np.ndim(self.g.initializers[s].data) > r:
                return self.generic(n)
        ins = []
        inv = _inverse(q)
        for i, s in enumerate(n.inputs):
            if self.is_const(s):
                c = _dequantize(self.g.initializers[s]) if i not in _index_inputs(n.op_type) else \
                    np.asarray(self.g.initializers[s].data)
                if c.size > 1 and q != _ident(r):
                    c = c.reshape((1,) * (r - c.ndim) + c.shape).transpose(inv)
                ins.append(self.const(s, c))
            elif self.rank(s) == r:
                ins.append(self.layout(s, q))
            else:
                return self.generic(n)
        out = n.outputs[0]
        tout = self.out_name(out)
        self.emit(n.op_type, ins, [tout], name=n.name, **self.attrs(n))
        self.set_out(out, tout, q)

    def axis_op(self, n: Node) -> None:
        x = n.inputs[0]
        r = self.rank(x)
        q = self.q[x]
        op = n.op_type
        ins = []
        for i, s in enumerate(n.inputs):
            if not s:
                ins.append("")
            elif self.is_const(s):
                if _def(op).family == "reduce" and i == 1:
                    axes = [q[int(a) % r] for a in np.asarray(self.g.initializers[s].data).ravel()]
                    ins.append(self.const(s, np.array(sorted(axes), dtype=np.int64)))
                else:
                    ins.append(self.data_const(n, i, s))
            else:
                if self.rank(s) != r:
                    return self.generic(n)
                ins.append(self.layout(s, q))
        attrs = self.attrs(n)
        axis = _def(op).attrs.get("axis")
        if axis is not None:
            attrs["axis"] = q[int(n.attr("axis", axis.default)) % r]
        outs = [self.out_name(o) if o else "" for o in n.outputs]
        self.emit(op, ins, outs, name=n.name, **attrs)
        for o, t in zip(n.outputs, outs):
            if o:
                self.set_out(o, t, q)

    def slice(self, n: Node) -> None:
        x = n.inputs[0]
        r = self.rank(x)
        q = self.q[x]
        if not all(not s or self.is_const(s) for s in n.inputs[1:]):
            return self.generic(n)
        starts = np.asarray(self.g.initializers[n.inputs[1]].data).ravel()
        if len(n.inputs) > 3 and n.inputs[3]:
            axes = np.asarray(self.g.initializers[n.inputs[3]].data).ravel()
        else:
            axes = np.arange(len(starts))
        new_axes = np.array([q[int(a) % r] for a in axes], dtype=np.int64)
        ins = [self.tname[x], self.data_const(n, 1, n.inputs[1]), self.data_const(n, 2, n.inputs[2]),
               self.const(self.fresh("axes"), new_axes)]
        if len(n.inputs) > 4 and n.inputs[4]:
            ins.append(self.data_const(n, 4, n.inputs[4]))
        out = n.outputs[0]
        tout = self.out_name(out)
        self.emit("Slice", ins, [tout], name=n.name)
        self.set_out(out, tout, q)

    def generic(self, n: Node) -> None:
        """Inputs in ESP-DL's own layout, where the node's attributes and constants are right as written."""
        try:
            onnx.defs.get_schema(n.op_type, self.opset, "")
        except Exception:
            raise UnsupportedError(f"{n.op_type} has no float ONNX form", node=n.name, op=n.op_type) from None
        ins = []
        for i, s in enumerate(n.inputs):
            if not s:
                ins.append("")
            elif self.is_const(s):
                ins.append(self.data_const(n, i, s))
            else:
                ins.append(self.layout(s, _ident(self.rank(s))))
        outs = [self.out_name(o) if o else "" for o in n.outputs]
        act = n.attr("activation", "Linear") or "Linear"
        if act != "Linear" and len(outs) == 1:
            self._with_act(n, n.op_type, ins, self.attrs(n), _ident(self.rank(n.outputs[0])))
            return
        self.emit(n.op_type, ins, outs, name=n.name, **self.attrs(n))
        for o, t in zip(n.outputs, outs):
            if o:
                self.set_out(o, t, _ident(self.rank(o)))


def to_float_onnx(graph: Graph, *, io_layout: str = "espdl", input_shapes: dict | None = None,
                  opset: int = OPSET) -> onnx.ModelProto:
    """A float32 ONNX model computing what the quantized ``graph`` approximates (see the module doc).

    ``input_shapes`` overrides input shapes, given in ESP-DL layout (e.g. a shorter time window for a
    TCN: ``{"input.1": (1, 13, 16)}``); intermediate shapes are left to onnxruntime.
    """
    if io_layout not in ("espdl", "onnx"):
        raise ValueError(f"io_layout={io_layout!r}; use 'espdl' or 'onnx'")
    tw = _Twin(graph, io_layout, input_shapes, opset)
    ins = tw.add_inputs()
    for n in graph.nodes:
        tw.node(n)
    outs = tw.add_outputs()
    g = helper.make_graph(tw.nodes, (graph.name or "espdl") + "_float_twin", ins, outs,
                          initializer=list(tw.inits.values()))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], producer_name="chunkwise.float_onnx")
    m.ir_version = min(m.ir_version, 9)
    onnx.checker.check_model(m)
    return m
