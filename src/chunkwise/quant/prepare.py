"""Graph preparation: ONNX -> a small float graph, then float-exact simplification passes.

The passes here keep the float function unchanged (so onnxruntime can still run the result for
calibration): shape inference, Constant nodes to initializers, constant folding, Identity/Dropout
removal, BatchNorm folded into the preceding Conv/Gemm (an isolated BatchNorm becomes a depthwise 1x1
Conv, as ESP-PPQ does), zero constant Pad merged into the following Conv's pads, Clip bounds given as
attributes moved to inputs. ESP-DL specific rewrites (Swish, fused Relu, layout) happen in export.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from ..errors import FormatError, UnsupportedError


def supported_float_ops() -> set[str]:
    """Float ONNX operators the quantizer takes, from their definitions (:mod:`chunkwise.ir.ops`): an op with
    an ESP-DL module, or one a named quantizer pass rewrites away (``rewritten_by``), unless the definition
    refuses it (``refuse["quantize"]``)."""
    from ..ir.ops import all_defs

    return {d.name for d in all_defs() if (d.espdl or d.rewritten_by) and "quantize" not in d.refuse}


def pattern_ops() -> set[str]:
    """Operators a named rewrite removes (``rewritten_by``): taken before the rewrites even when refused on
    their own (Erf inside GELU, Reciprocal inside RMSNorm), checked again after them."""
    from ..ir.ops import all_defs

    return {d.name for d in all_defs() if d.rewritten_by}


# float-exact passes of other modules (.products, .rnn), run after the ones here: f(fg) -> None
PREPARE_PASSES: list = []


@dataclass
class FNode:
    op: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict = field(default_factory=dict)
    bits: int | None = None  # the width it computes in (8, 16; 32: float32), set by the quantizer's bit pass


@dataclass
class ValueAnn:
    """What the quantizer decided for one value: its width (1: bool, 8, 16, 32: float32), its power-of-two
    exponent and its storage order (the perm of its ONNX shape: ``[0, 2, 3, 1]`` is NHWC)."""

    bits: int | None = None
    exp: int | None = None
    perm: list[int] | None = None


class AnnField(MutableMapping):
    """One field of the value annotations as a mapping ``value -> field`` (only values where it is set)."""

    def __init__(self, ann: dict[str, ValueAnn], key: str):
        self.ann, self.key = ann, key

    def __getitem__(self, v):
        a = self.ann.get(v)
        x = None if a is None else getattr(a, self.key)
        if x is None:
            raise KeyError(v)
        return x

    def __setitem__(self, v, x):
        a = self.ann.get(v)
        if a is None:
            a = self.ann[v] = ValueAnn()
        setattr(a, self.key, x)

    def __delitem__(self, v):
        self[v]  # noqa: B018  (KeyError when unset)
        setattr(self.ann[v], self.key, None)

    def __iter__(self):
        return (v for v, a in self.ann.items() if getattr(a, self.key) is not None)

    def __len__(self):
        return sum(1 for _ in self)


class NodeBits(MutableMapping):
    """The nodes' widths (``FNode.bits``) as a mapping ``node name -> bits``."""

    def __init__(self, fg: "FGraph"):
        self.fg = fg

    def _node(self, name):
        for n in self.fg.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def __getitem__(self, name):
        b = self._node(name).bits
        if b is None:
            raise KeyError(name)
        return b

    def __setitem__(self, name, b):
        self._node(name).bits = b

    def __delitem__(self, name):
        self._node(name).bits = None

    def __iter__(self):
        return (n.name for n in self.fg.nodes if n.bits is not None)

    def __len__(self):
        return sum(1 for n in self.fg.nodes if n.bits is not None)


class QInfo:
    """The quantization annotations of a graph seen as mappings: ``bits`` (node name -> width), ``vbits``
    (value -> width), ``exp`` (value -> exponent). They live on the graph (``FNode.bits``, ``FGraph.ann``)."""

    def __init__(self, fg: "FGraph"):
        self.bits = NodeBits(fg)
        self.vbits = AnnField(fg.ann, "bits")
        self.exp = AnnField(fg.ann, "exp")


@dataclass
class FGraph:
    """A float graph in ONNX semantics (NCHW). ``consts`` hold every constant as a numpy array."""

    name: str
    nodes: list[FNode]
    consts: dict[str, np.ndarray]
    inputs: list[tuple[str, tuple[int, ...]]]
    outputs: list[str]
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    dtypes: dict[str, int] = field(default_factory=dict)  # ONNX elem types of activations
    opset: int = 17
    origin: dict[str, list[str]] = field(default_factory=dict)  # fused node -> the ONNX nodes it replaces
    ann: dict[str, ValueAnn] = field(default_factory=dict)  # value -> what the quantizer decided for it

    @property
    def qi(self) -> QInfo:
        """Widths and exponents (the annotations) as mappings."""
        return QInfo(self)

    @property
    def perm(self) -> AnnField:
        """value -> storage order (the annotations' ``perm``)."""
        return AnnField(self.ann, "perm")

    def producers(self) -> dict[str, FNode]:
        return {o: n for n in self.nodes for o in n.outputs if o}

    def consumers(self, name: str) -> list[FNode]:
        return [n for n in self.nodes if name in n.inputs]

    def is_output(self, name: str) -> bool:
        return name in self.outputs


# ---- ONNX <-> FGraph ----------------------------------------------------------------------------

def load_onnx(src) -> onnx.ModelProto:
    if isinstance(src, onnx.ModelProto):
        m = onnx.ModelProto()
        m.CopyFrom(src)
        return m
    p = Path(src)
    if not p.exists():
        raise FormatError("file not found", path=str(p))
    try:
        return onnx.load(str(p))
    except Exception as e:  # protobuf raises many types
        raise FormatError(f"not a readable ONNX model ({e})", path=str(p)) from None


def _attr_value(a: onnx.AttributeProto):
    v = helper.get_attribute_value(a)
    if isinstance(v, bytes):
        return v.decode("utf-8")
    if isinstance(v, onnx.TensorProto):
        return numpy_helper.to_array(v)
    if isinstance(v, list):
        return [x.decode("utf-8") if isinstance(x, bytes) else x for x in v]
    return v


def _static_shape(vi: onnx.ValueInfoProto) -> tuple[int, ...] | None:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    dims = []
    for d in t.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        else:
            return None
    return tuple(dims)


def from_onnx(model: onnx.ModelProto) -> FGraph:
    opset = 17
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            opset = int(o.version)
        elif o.domain not in ("ai.onnx.ml",):
            raise UnsupportedError(f"ONNX opset domain {o.domain!r}", supported=["ai.onnx (default domain)"])
    g = model.graph
    consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    inputs = []
    for vi in g.input:
        if vi.name in consts:
            continue
        dims = list(vi.type.tensor_type.shape.dim) if vi.type.tensor_type.HasField("shape") else None
        if dims and not dims[0].HasField("dim_value"):
            vi.type.tensor_type.shape.dim[0].dim_value = 1  # a symbolic batch: ESP-DL runs batch 1
        shp = _static_shape(vi)
        if shp is None:
            raise UnsupportedError(f"input {vi.name!r} has a dynamic or unknown shape "
                                   f"{[d.dim_param or d.dim_value for d in dims or []]}; give a model with a static "
                                   "input shape (e.g. re-export with fixed dims)")
        if vi.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            raise UnsupportedError(f"input {vi.name!r} is not float32", supported=["float32 inputs"])
        inputs.append((vi.name, shp))
    nodes = []
    used = set()
    for i, n in enumerate(g.node):
        name = n.name or f"{n.op_type}_{i}"
        while name in used:
            name = f"{name}_{i}"
        used.add(name)
        if n.domain not in ("", "ai.onnx"):
            raise UnsupportedError("custom-domain operator", supported=sorted(supported_float_ops()))
        nodes.append(FNode(n.op_type, name, list(n.input), list(n.output), {a.name: _attr_value(a) for a in n.attribute}))
    fg = FGraph(g.name or "main_graph", nodes, consts, inputs, [o.name for o in g.output], opset=opset)
    for o in g.output:  # declared output types (bool outputs of comparisons), until inference says more
        if o.type.tensor_type.elem_type:
            fg.dtypes[o.name] = o.type.tensor_type.elem_type
    return fg


def to_onnx(fg: FGraph, extra_outputs: list[str] = ()) -> onnx.ModelProto:
    """An ONNX model of the float graph (for onnxruntime), exposing ``extra_outputs`` too."""
    nodes = [helper.make_node(n.op, n.inputs, n.outputs, name=n.name,
                              **{k: (numpy_helper.from_array(v) if isinstance(v, np.ndarray) else v)
                                 for k, v in n.attrs.items()}) for n in fg.nodes]
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in fg.consts.items()]
    ins = [helper.make_tensor_value_info(k, onnx.TensorProto.FLOAT, list(s)) for k, s in fg.inputs]
    outs = []
    for o in list(fg.outputs) + [e for e in extra_outputs if e not in fg.outputs]:
        outs.append(helper.make_tensor_value_info(o, fg.dtypes.get(o, onnx.TensorProto.FLOAT), None))
    g = helper.make_graph(nodes, fg.name, ins, outs, initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", fg.opset)])
    m.ir_version = 8
    return m


def infer_shapes(fg: FGraph) -> None:
    """Fill ``fg.shapes`` / ``fg.dtypes`` of every activation (static shapes required)."""
    m = shape_inference.infer_shapes(to_onnx(fg), strict_mode=False, data_prop=True)
    shapes, dtypes = {}, {}
    for vi in list(m.graph.input) + list(m.graph.value_info) + list(m.graph.output):
        s = _static_shape(vi)
        if s is not None:
            shapes[vi.name] = s
        if vi.type.tensor_type.elem_type:
            dtypes[vi.name] = vi.type.tensor_type.elem_type
    fg.shapes = shapes
    fg.dtypes = dtypes


# ---- passes -------------------------------------------------------------------------------------

def _replace_input(fg: FGraph, old: str, new: str) -> None:
    for n in fg.nodes:
        n.inputs = [new if i == old else i for i in n.inputs]
    fg.outputs = [new if o == old else o for o in fg.outputs]


def _bypass(fg: FGraph, node: FNode) -> None:
    """Remove a one-in one-out node, wiring its consumers to its input (keeps graph output names)."""
    src, dst = node.inputs[0], node.outputs[0]
    fg.nodes.remove(node)
    if fg.is_output(dst):
        prod = fg.producers().get(src)
        if prod is not None and src not in fg.outputs and not fg.consumers(src):
            prod.outputs = [dst if o == src else o for o in prod.outputs]
            return
        if prod is not None and src not in fg.outputs:
            # keep the graph output name: rename the producer's output and redirect other readers
            prod.outputs = [dst if o == src else o for o in prod.outputs]
            _replace_input(fg, src, dst)
            return
        fg.nodes.append(FNode("Identity", node.name, [src], [dst]))
        return
    _replace_input(fg, dst, src)


def constants_to_initializers(fg: FGraph) -> None:
    for n in list(fg.nodes):
        if n.op == "Constant":
            if "value" in n.attrs:
                v = np.asarray(n.attrs["value"])
            elif "value_float" in n.attrs:
                v = np.array(n.attrs["value_float"], np.float32)
            elif "value_int" in n.attrs:
                v = np.array(n.attrs["value_int"], np.int64)
            elif "value_floats" in n.attrs:
                v = np.array(n.attrs["value_floats"], np.float32)
            elif "value_ints" in n.attrs:
                v = np.array(n.attrs["value_ints"], np.int64)
            else:
                raise UnsupportedError(f"Constant without a numeric value (attrs {sorted(n.attrs)})", node=n.name,
                                       op="Constant")
            fg.consts[n.outputs[0]] = v
            fg.nodes.remove(n)


def remove_identities(fg: FGraph) -> None:
    for n in list(fg.nodes):
        if n.op == "Identity" and n.inputs[0] in fg.consts and not fg.is_output(n.outputs[0]):
            fg.consts[n.outputs[0]] = fg.consts[n.inputs[0]]  # a constant under another name
            fg.nodes.remove(n)
            continue
        if n.op in ("Identity", "Dropout") and n.inputs[0] not in fg.consts:
            if n.op == "Dropout" and len([o for o in n.outputs if o]) > 1:
                raise UnsupportedError("Dropout with a mask output", node=n.name, op=n.op)
            _bypass(fg, n)


def fold_constants(fg: FGraph) -> None:
    """Evaluate every node whose inputs are all constants (onnx.reference), including Shape of static shapes."""
    from onnx.reference import ReferenceEvaluator

    changed = True
    while changed:
        changed = False
        if not fg.shapes:
            infer_shapes(fg)
        for n in list(fg.nodes):
            if n.op == "Shape" and n.inputs[0] in fg.shapes:
                shp = np.array(fg.shapes[n.inputs[0]], np.int64)
                start, end = n.attrs.get("start", 0), n.attrs.get("end", None)
                fg.consts[n.outputs[0]] = shp[start:end]
                fg.nodes.remove(n)
                changed = True
                continue
            if not all((i == "" or i in fg.consts) for i in n.inputs) or n.op in ("Identity",):
                continue
            if any(fg.is_output(o) for o in n.outputs):
                continue
            sub = FGraph("fold", [n], {i: fg.consts[i] for i in n.inputs if i}, [], list(n.outputs), opset=fg.opset)
            m = to_onnx(sub)
            for o in m.graph.output:  # let the evaluator decide types
                o.type.tensor_type.elem_type = 0
            try:
                res = ReferenceEvaluator(m).run(None, {})
            except Exception as e:
                raise UnsupportedError(f"cannot fold constant node ({e})", node=n.name, op=n.op) from None
            for o, v in zip(n.outputs, res):
                if o:
                    fg.consts[o] = np.asarray(v)
            fg.nodes.remove(n)
            changed = True
        if changed:
            infer_shapes(fg)
    # drop constants nobody reads
    used = {i for n in fg.nodes for i in n.inputs}
    for k in list(fg.consts):
        if k not in used and k not in fg.outputs:
            del fg.consts[k]


def _bn_params(fg: FGraph, bn: FNode) -> tuple[np.ndarray, np.ndarray]:
    for i in bn.inputs[1:5]:
        if i not in fg.consts:
            raise UnsupportedError(f"BatchNormalization parameter {i!r} is not a constant", node=bn.name,
                                   op="BatchNormalization")
    if bn.attrs.get("training_mode", 0):
        raise UnsupportedError("BatchNormalization in training mode", node=bn.name, op="BatchNormalization")
    gamma, beta, mean, var = (fg.consts[i].astype(np.float64) for i in bn.inputs[1:5])
    eps = float(bn.attrs.get("epsilon", 1e-5))
    scale = gamma / np.sqrt(var + eps)
    return scale, beta - mean * scale


def fold_batchnorm(fg: FGraph) -> None:
    """BN after a Conv/Gemm with a single reader is folded into it; any other BN becomes a depthwise 1x1 Conv."""
    for bn in [n for n in fg.nodes if n.op == "BatchNormalization"]:
        if len([o for o in bn.outputs if o]) > 1:
            raise UnsupportedError("BatchNormalization with running-stat outputs", node=bn.name,
                                   op="BatchNormalization")
        scale, shift = _bn_params(fg, bn)
        prod = fg.producers().get(bn.inputs[0])
        x = bn.inputs[0]
        if (prod is not None and prod.op in ("Conv", "Gemm") and len(fg.consumers(x)) == 1 and not fg.is_output(x)
                and prod.inputs[1] in fg.consts):
            w = fg.consts[prod.inputs[1]].astype(np.float64)
            has_b = len(prod.inputs) > 2 and prod.inputs[2]
            if prod.op == "Conv":
                cout = w.shape[0]
                w = w * scale.reshape([-1] + [1] * (w.ndim - 1))
            else:
                tb = int(prod.attrs.get("transB", 0))
                cout = w.shape[0] if tb else w.shape[1]
                w = w * (scale.reshape(-1, 1) if tb else scale.reshape(1, -1))
            b = fg.consts[prod.inputs[2]].astype(np.float64) if has_b else np.zeros(cout)
            b = b * scale + shift
            wname, bname = f"{prod.name}_weight", f"{prod.name}_bias"
            fg.consts[wname] = w.astype(np.float32)
            fg.consts[bname] = b.astype(np.float32)
            prod.inputs = [prod.inputs[0], wname, bname]
            prod.outputs = [bn.outputs[0]]
            fg.nodes.remove(bn)
        else:
            shp = fg.shapes.get(x)
            if shp is None or len(shp) not in (3, 4):
                raise UnsupportedError(f"isolated BatchNormalization on a rank-{len(shp or ())} tensor",
                                       node=bn.name, op="BatchNormalization", supported=["rank 3 or 4 (N, C, ...)"])
            nsp = len(shp) - 2
            c = shp[1]
            wname, bname = f"{bn.name}_weight", f"{bn.name}_bias"
            fg.consts[wname] = scale.reshape([c, 1] + [1] * nsp).astype(np.float32)
            fg.consts[bname] = shift.astype(np.float32)
            bn.op = "Conv"
            bn.inputs = [x, wname, bname]
            bn.outputs = bn.outputs[:1]
            bn.attrs = {"kernel_shape": [1] * nsp, "strides": [1] * nsp, "dilations": [1] * nsp,
                        "pads": [0, 0] * nsp, "group": c}
    fold_constants(fg)


def merge_pad_into_conv(fg: FGraph) -> None:
    """A zero constant Pad on spatial axes whose only reader is a Conv or AveragePool: add its pads to the reader's."""
    for pad in [n for n in fg.nodes if n.op == "Pad"]:
        y = pad.outputs[0]
        readers = fg.consumers(y)
        if len(readers) != 1 or readers[0].op not in ("Conv", "AveragePool") or fg.is_output(y):
            continue
        conv = readers[0]
        if pad.attrs.get("mode", "constant") != "constant":
            continue
        if len(pad.inputs) < 2 or pad.inputs[1] not in fg.consts:
            continue
        if len(pad.inputs) > 2 and pad.inputs[2]:
            if pad.inputs[2] not in fg.consts or float(np.asarray(fg.consts[pad.inputs[2]]).ravel()[0]) != 0.0:
                continue
        if len(pad.inputs) > 3 and pad.inputs[3]:
            continue  # axes input: keep it simple
        p = [int(v) for v in fg.consts[pad.inputs[1]].ravel()]
        r = len(p) // 2
        if r < 3 or any(v < 0 for v in p) or p[0] or p[1] or p[r] or p[r + 1]:
            continue
        nsp = r - 2
        cp = list(conv.attrs.get("pads", [0] * (2 * nsp)))
        if conv.op == "AveragePool":
            # zero padding counted in the average: only equivalent with count_include_pad=1 or no own pads
            if any(cp) and not conv.attrs.get("count_include_pad", 0):
                continue
            conv.attrs["count_include_pad"] = 1
        if conv.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", ""):
            continue
        cp = [cp[i] + p[2 + i] for i in range(nsp)] + [cp[nsp + i] + p[r + 2 + i] for i in range(nsp)]
        conv.attrs["pads"] = cp
        conv.inputs[0] = pad.inputs[0]
        fg.nodes.remove(pad)
    fold_constants(fg)


def normalize_clip(fg: FGraph) -> None:
    for n in fg.nodes:
        if n.op == "Clip" and ("min" in n.attrs or "max" in n.attrs):
            lo, hi = n.attrs.pop("min", None), n.attrs.pop("max", None)
            ins = [n.inputs[0], "", ""]
            if lo is not None:
                ins[1] = f"{n.name}_min"
                fg.consts[ins[1]] = np.array(lo, np.float32)
            if hi is not None:
                ins[2] = f"{n.name}_max"
                fg.consts[ins[2]] = np.array(hi, np.float32)
            n.inputs = ins


def check_supported(fg: FGraph, *, after_rewrites: bool = False) -> None:
    """Every node is an operator the quantizer takes (before the pattern rewrites, also the operators
    only taken inside a fused pattern; after them, the operators a quantizer rule module registered, such as
    InsertZeros); the error names the node, the op, why (from the operator's definition) and what is
    supported."""
    from ..ir.ops import find
    from .export import OP_RULES

    supported = supported_float_ops()
    allowed = supported | (set(OP_RULES) if after_rewrites else pattern_ops())
    for n in fg.nodes:
        if n.op not in allowed:
            d = find(n.op)
            why = d.refuse.get("quantize") if d is not None else None
            raise UnsupportedError(f"operator is not supported by the quantizer{f' ({why})' if why else ''}",
                                   node=n.name, op=n.op, supported=sorted(supported))


def check_fgraph(fg: FGraph) -> None:
    """Every node input is a graph input, a constant or produced earlier; each value produced once; every
    graph output produced (the graph check run after each pass)."""
    from ..ir.passes import GraphCheckError

    known = set(fg.consts) | {n for n, _ in fg.inputs} | {""}
    for n in fg.nodes:
        for i in n.inputs:
            if i not in known:
                raise GraphCheckError(f"node {n.name!r} reads {i!r} before it is produced")
        for o in n.outputs:
            if o and o in known:
                raise GraphCheckError(f"value {o!r} is produced twice")
            known.add(o)
    for o in fg.outputs:
        if o not in known:
            raise GraphCheckError(f"graph output {o!r} is produced by no node")


def _signature(fg: FGraph):
    return ([(n.op, tuple(n.inputs), tuple(n.outputs), repr(sorted(n.attrs.items()))) for n in fg.nodes],
            sorted(fg.consts))


def step(name: str, fn, idle: str):
    """A prepare step ``fn(fg) -> None`` as a named pass: it reports what changed (node count) or ``idle``
    (why it did nothing)."""
    from ..ir.passes import FunctionPass, PassResult

    def run(fg: FGraph) -> PassResult:
        before = _signature(fg)
        n0 = len(fg.nodes)
        fn(fg)
        if _signature(fg) == before:
            return PassResult(fg, False, idle)
        return PassResult(fg, True, f"{n0} -> {len(fg.nodes)} nodes")

    return FunctionPass(name, run)


def _static_shapes(fg: FGraph) -> None:
    infer_shapes(fg)
    for n in fg.nodes:
        for o in n.outputs:
            if o and o not in fg.shapes:
                raise UnsupportedError(f"could not infer a static shape for {o!r}", node=n.name, op=n.op)


PREPARE_STEPS = [
    step("constants_to_initializers", constants_to_initializers, "no Constant node"),
    step("infer_shapes", infer_shapes, "shapes inferred, no node changed"),
    step("fold_constants", fold_constants, "no node with only constant inputs"),
    step("remove_identities", remove_identities, "no Identity/Dropout"),
    step("normalize_clip", normalize_clip, "no Clip with attribute bounds"),
    step("fold_batchnorm", fold_batchnorm, "no BatchNormalization"),
    step("merge_pad_into_conv", merge_pad_into_conv, "no zero Pad read only by a Conv/AveragePool"),
]


def prepare(src, log: list[str] | None = None) -> FGraph:
    """Load and simplify a float ONNX model (path or ModelProto). The result is float-equivalent.

    The steps run as named passes (:data:`PREPARE_STEPS`, then the ``PREPARE_PASSES`` other modules
    register) with the graph check after each; ``log`` gets one line per pass (what it did, or why not).
    The operator check and the static-shape check come last.
    """
    from ..ir.passes import Sequential

    model = load_onnx(src)
    fg = from_onnx(model)
    passes = list(PREPARE_STEPS) + [step(getattr(fn, "__name__", "prepare_pass"), fn, "nothing to do")
                                    for fn in PREPARE_PASSES]
    passes += [step("check_supported", check_supported, "every operator is supported"),
               step("static_shapes", _static_shapes, "every value has a static shape")]
    fg = Sequential(passes, check=check_fgraph)(fg, log)
    return fg
