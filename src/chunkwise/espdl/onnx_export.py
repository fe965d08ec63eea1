"""Export the IR as an ONNX model, for looking at it (Netron) — not for running it elsewhere.

What is written
---------------
* every node with its op type, name, inputs, outputs and attributes (strings as strings, tensor
  attributes as tensors, sub-graphs as sub-graphs);
* every initializer with its *logical* data (conv weights ``[kH, kW, Cin, Cout]``, not ESP-DL's
  packed memory order) as an integer tensor of its own dtype, or, with ``dequantize=True``, as
  float32 ``int * 2**exponent``; exponents and layout go into the tensor's ``doc_string``;
* graph inputs/outputs and intermediate value infos with their shapes (NHWC / NWC, as ESP-DL runs
  them; pass ``shapes=`` to use the emulator planner's shapes) and exponents in ``doc_string``.

Domains
-------
ONNX's checker refuses a standard op that carries an attribute its schema does not define, and
ESP-DL adds some to standard ops (``activation``, ``quant_type``, ``lut`` ...). So:

* a node whose op type is an ONNX op (at opset :data:`ONNX_OPSET`) keeps the default domain; its
  ESP-DL-only attributes are moved into the node's ``metadata_props`` (key = attribute name, value =
  readable text) and listed in its ``doc_string``, so Netron still shows them;
* if the node still does not validate (missing required attribute, wrong input count, ...), or its
  op type is not an ONNX op (``StreamingCache``, ``LUT``, ``RequantizeLinear`` ...), it is written in
  domain :data:`ESPDL_DOMAIN` with all its attributes unchanged.

The result passes ``onnx.checker.check_model`` (structure; no shape inference: NHWC shapes and
integer weights would not satisfy ONNX's type rules for e.g. Conv).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from .. import __version__
from ..errors import UnsupportedError
from ..ir.graph import Attribute, Graph, Node, Tensor, ValueInfo
from ..limits import check_alloc

ONNX_OPSET = 18  # ESP-PPQ exports use opset-18 forms (Reduce* axes as an input, LayerNormalization)
ESPDL_DOMAIN = "esp-dl"
IR_VERSION = 10  # node metadata_props exist from IR version 10

_DTYPES = {
    "undefined": TensorProto.UNDEFINED, "float32": TensorProto.FLOAT, "uint8": TensorProto.UINT8,
    "int8": TensorProto.INT8, "uint16": TensorProto.UINT16, "int16": TensorProto.INT16,
    "int32": TensorProto.INT32, "int64": TensorProto.INT64, "string": TensorProto.STRING,
    "bool": TensorProto.BOOL, "float16": TensorProto.FLOAT16, "float64": TensorProto.DOUBLE,
    "uint32": TensorProto.UINT32, "uint64": TensorProto.UINT64,
}
_LIST_KINDS = {"ints": AttributeProto.INTS, "floats": AttributeProto.FLOATS, "strings": AttributeProto.STRINGS,
               "tensors": AttributeProto.TENSORS, "graphs": AttributeProto.GRAPHS}


def _exp_text(exps) -> str:
    return f"exponents: {[int(e) for e in exps]}" if len(exps) else ""


def _dequantized(t: Tensor) -> np.ndarray:
    data = np.asarray(t.data)
    exps = np.asarray(t.exponents, dtype=np.float64)
    if exps.size == 1:
        scale = np.float64(2.0) ** exps[0]
    elif data.ndim and exps.size == data.shape[-1]:
        scale = np.float64(2.0) ** exps  # per output channel: the last logical axis
    elif data.ndim and exps.size == data.shape[0]:
        scale = (np.float64(2.0) ** exps).reshape((-1,) + (1,) * (data.ndim - 1))
    else:
        return data
    return (data.astype(np.float64) * scale).astype(np.float32)


def tensor_proto(t: Tensor, *, dequantize: bool = False) -> TensorProto:
    """A TensorProto with the tensor's logical data (zeros of its dims when the file has none)."""
    doc = "; ".join(x for x in (_exp_text(t.exponents), f"layout: {t.layout}" if t.layout else "",
                                t.doc_string if t.doc_string and not t.layout else "") if x)
    if t.dtype == "string":
        values = list(t.data.ravel()) if t.data is not None else []
        p = helper.make_tensor(t.name, TensorProto.STRING, list(t.dims), [bytes(v) for v in values])
    else:
        if t.dtype not in _DTYPES or t.dtype == "undefined":
            raise UnsupportedError(f"tensor {t.name!r} has dtype {t.dtype!r}, which ONNX export cannot write")
        data = t.data
        if data is None:
            n = int(np.prod(t.dims, dtype=np.int64)) if t.dims else 1
            check_alloc(n * np.dtype(t.dtype).itemsize, f"tensor {t.name!r}")
            data = np.zeros(t.dims, dtype=t.dtype)
            doc = "; ".join(x for x in (doc, "no data in the .espdl file: zeros written") if x)
        elif dequantize and t.exponents and data.dtype.kind in "iu":
            data = _dequantized(t)
        p = numpy_helper.from_array(np.ascontiguousarray(data), t.name)
    if doc:
        p.doc_string = doc
    return p


def onnx_attribute(name: str, a: Attribute, dequantize: bool) -> AttributeProto | None:
    k, v = a.kind, a.value
    if k == "string":
        return helper.make_attribute(name, bytes(v))
    if k == "int":
        return helper.make_attribute(name, int(v))
    if k == "float":
        return helper.make_attribute(name, float(v))
    if k in ("ints", "floats", "strings"):
        vals = [int(x) for x in v] if k == "ints" else [float(x) for x in v] if k == "floats" else [bytes(x) for x in v]
        return helper.make_attribute(name, vals, attr_type=_LIST_KINDS[k])
    if k == "tensor" and v is not None:
        return helper.make_attribute(name, tensor_proto(v, dequantize=dequantize))
    if k == "tensors":
        return helper.make_attribute(name, [tensor_proto(t, dequantize=dequantize) for t in v],
                                     attr_type=AttributeProto.TENSORS)
    if k == "graph" and v is not None:
        return helper.make_attribute(name, _graph_proto(v, None, dequantize))
    if k == "graphs":
        return helper.make_attribute(name, [_graph_proto(g, None, dequantize) for g in v],
                                     attr_type=AttributeProto.GRAPHS)
    return None


def _readable(a: Attribute) -> str:
    v = a.value
    if a.kind == "string":
        return bytes(v).decode("utf-8", errors="replace")
    if a.kind == "strings":
        return str([bytes(x).decode("utf-8", errors="replace") for x in v])
    if a.kind in ("tensor",) and v is not None:
        return f"tensor {v.dtype}{list(v.dims)}"
    return str(v)


def _schema(op_type: str, opset: int):
    try:
        return onnx.defs.get_schema(op_type, opset, "")
    except Exception:  # onnx raises SchemaError (not exported consistently across versions)
        return None


def _checker_context(opset: int):
    ctx = onnx.checker.C.CheckerContext()
    ctx.ir_version = IR_VERSION
    ctx.opset_imports = {"": opset, ESPDL_DOMAIN: 1}
    return ctx


def _node_proto(n: Node, opset: int, dequantize: bool, ctx) -> onnx.NodeProto:
    attrs: dict[str, AttributeProto] = {}
    dropped: list[str] = []
    for k, a in n.attrs.items():
        p = onnx_attribute(k, a, dequantize)
        if p is None:
            dropped.append(f"{k} ({a.kind})")
        else:
            attrs[k] = p

    def custom() -> onnx.NodeProto:
        p = helper.make_node(n.op_type, list(n.inputs), list(n.outputs), name=n.name,
                             domain=n.domain or ESPDL_DOMAIN)
        p.attribute.extend(attrs.values())
        doc = [n.doc_string] if n.doc_string else []
        if dropped:
            doc.append("attributes not exported: " + ", ".join(dropped))
        if doc:
            p.doc_string = "\n".join(doc)
        return p

    schema = _schema(n.op_type, opset) if not n.domain else None
    if schema is None:
        return custom()
    known = set(schema.attributes)
    extra = [k for k in attrs if k not in known]
    p = helper.make_node(n.op_type, list(n.inputs), list(n.outputs), name=n.name)
    p.attribute.extend(a for k, a in attrs.items() if k in known)
    notes = []
    for k in extra:
        text = _readable(n.attrs[k])
        entry = p.metadata_props.add()
        entry.key, entry.value = k, text
        notes.append(f"{k}={text}")
    doc = [n.doc_string] if n.doc_string else []
    if notes:
        doc.append("ESP-DL attributes: " + ", ".join(notes))
    if dropped:
        doc.append("attributes not exported: " + ", ".join(dropped))
    if doc:
        p.doc_string = "\n".join(doc)
    try:
        onnx.checker.check_node(p, ctx)
    except onnx.checker.ValidationError:
        return custom()
    return p


def _value_info(v: ValueInfo, shape=None) -> onnx.ValueInfoProto:
    dims = shape if shape is not None else v.shape
    elem = _DTYPES.get(v.dtype, TensorProto.UNDEFINED)
    if dims is None:
        # ONNX requires a shape field; an empty one (rank 0) is the only way to write "unknown" here.
        p = helper.make_tensor_value_info(v.name, elem, [])
        doc = "shape unknown in the .espdl file"
    else:
        p = helper.make_tensor_value_info(
            v.name, elem, [int(d) if isinstance(d, (int, np.integer)) else (None if d == "?" else str(d))
                           for d in dims])
        doc = ""
    text = "; ".join(x for x in (_exp_text(v.exponents), doc, v.doc_string) if x)
    if text:
        p.doc_string = text
    return p


def _graph_proto(g: Graph, shapes: dict | None, dequantize: bool, opset: int = ONNX_OPSET) -> onnx.GraphProto:
    shapes = shapes or {}
    ctx = _checker_context(opset)
    nodes = [_node_proto(n, opset, dequantize, ctx) for n in g.nodes]
    inits = [tensor_proto(t, dequantize=dequantize) for t in g.initializers.values()]
    ins = [_value_info(v, shapes.get(v.name)) for v in g.inputs if v.name not in g.initializers]
    outs = [_value_info(v, shapes.get(v.name)) for v in g.outputs]
    io = {v.name for v in g.inputs} | {v.name for v in g.outputs}
    vis = []
    seen = set()
    for v in g.value_info.values():
        if v.name in io or v.name in g.initializers:
            continue
        seen.add(v.name)
        vis.append(_value_info(v, shapes.get(v.name)))
    for name, shp in shapes.items():  # planner shapes of values the file has no value info for
        if name in io or name in seen or name in g.initializers:
            continue
        vi = g.info(name)
        if vi is None:
            vis.append(_value_info(ValueInfo(name=name, dtype="undefined"), shp))
    gp = helper.make_graph(nodes, g.name or "espdl", ins, outs, inits, doc_string=g.doc_string or None,
                           value_info=vis)
    return gp


def to_onnx(graph: Graph, *, shapes: dict[str, list] | None = None, dequantize: bool = False,
            opset: int = ONNX_OPSET) -> onnx.ModelProto:
    """An ONNX ModelProto with the graph's nodes, attributes, weights and value infos.

    ``shapes``: optional ``{value name: shape}`` (e.g. from the emulator's planner) used instead of
    the file's value-info shapes. ``dequantize``: write weights as float32 ``int * 2**exponent``.
    """
    gp = _graph_proto(graph, shapes, dequantize, opset)
    model = helper.make_model(gp, opset_imports=[helper.make_opsetid("", opset),
                                                 helper.make_opsetid(ESPDL_DOMAIN, 1)],
                              producer_name="chunkwise", producer_version=__version__)
    model.ir_version = IR_VERSION
    model.doc_string = "Exported from an ESP-DL .espdl model by chunkwise for viewing; activations are NHWC/NWC."
    meta = dict(graph.metadata)
    for k, v in (("espdl.producer_name", graph.producer_name), ("espdl.producer_version", graph.producer_version),
                 ("espdl.doc_string", graph.model_doc_string)):
        if v:
            meta[k] = v
    helper.set_model_props(model, meta)
    return model
