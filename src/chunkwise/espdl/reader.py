"""Read an ESP-DL FlatBuffer (schema ``espdl.fbs``) into the IR.

Field slots follow the schema's declaration order (a union takes two slots: type, value).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from ..errors import FormatError, KeyRequiredError
from ..ir.graph import ATTR_KINDS, DTYPE_CODES, Attribute, Graph, Node, Tensor, ValueInfo, np_dtype
from ..ir.layout import unpack_graph_weights
from ..limits import check_alloc
from . import container
from .fbs import Buffer, Table

_LAYOUT_RE = re.compile(r"layout\s*==>\s*(\S+)")

# slots (schema order)
M_IR, M_OPSET, M_PRODUCER, M_PRODVER, M_DOMAIN, M_VERSION, M_DOC, M_GRAPH, M_META, M_FUNCS = range(10)
G_NODE, G_NAME, G_INIT, G_DOC, G_IN, G_OUT, G_VI, G_QA, G_TIN, G_TOUT = range(10)
N_IN, N_OUT, N_NAME, N_OP, N_DOMAIN, N_ATTR, N_DOC = range(7)
(A_NAME, A_REF, A_DOC, A_TYPE, A_F, A_I, A_S, A_T, A_G, A_TP, A_FLOATS, A_INTS, A_STRINGS,
 A_TENSORS, A_GRAPHS, A_TPS) = range(16)
V_NAME, V_TYPE, V_DOC, V_EXP = range(4)
(T_DIMS, T_DTYPE, T_FLOAT, T_I32, T_STR, T_I64, T_NAME, T_DOC, T_RAW, T_EXT, T_LOC, T_DOUBLE,
 T_U64, T_EXP) = range(14)


def layout_of(doc_string: str) -> str | None:
    m = _LAYOUT_RE.search(doc_string or "")
    return m.group(1) if m else None


def _dims(t: Table, label: str) -> tuple[int, ...]:
    dims = t.array(T_DIMS, "dims", "int64")
    if (dims < 0).any():
        raise t.buf.fail(label + ".dims", f"negative dimension in {dims.tolist()}")
    return tuple(int(d) for d in dims)


def read_tensor(t: Table, unpack_data: bool = True) -> Tensor:
    name = t.string(T_NAME, "name")
    label = f"tensor {name!r}"
    code = t.scalar(T_DTYPE, "data_type", "i", 0)
    if code not in DTYPE_CODES:
        raise t.buf.fail(label + ".data_type", f"unknown data type code {code}")
    dtype = DTYPE_CODES[code]
    dims = _dims(t, label)
    doc = t.string(T_DOC, "doc_string")
    exps = tuple(int(e) for e in t.array(T_EXP, "exponents", "int64"))
    if t.scalar(T_LOC, "data_location", "i", 0) != 0:
        raise t.buf.fail(label + ".data_location", "external tensor data is not supported")
    tensor = Tensor(name=name, dtype=dtype, dims=dims, exponents=exps, layout=layout_of(doc), doc_string=doc)
    count = math.prod(dims)  # Python ints: a hostile dims vector must not wrap around in int64
    if t.present(T_RAW, "raw_data"):
        raw = t.raw_blocks(T_RAW, "raw_data")
        if dtype in ("undefined", "string"):
            raise t.buf.fail(label + ".raw_data", f"raw data for a {dtype} tensor")
        dt = np_dtype(dtype)
        need = count * dt.itemsize
        if len(raw) < need or len(raw) >= need + 16:
            raise t.buf.fail(
                label + ".raw_data",
                f"dims {list(dims)} of {dtype} need {need} bytes but raw_data holds {len(raw)}",
            )
        check_alloc(need, f"tensor {name!r}")
        arr = np.frombuffer(raw, dtype=dt.newbyteorder("<"), count=count).astype(dt, copy=True)
        tensor.data = arr.reshape(dims)
        tensor.storage = "raw"
        return tensor
    tensor.storage = "typed"
    for slot, fname, src in ((T_FLOAT, "float_data", "float32"), (T_I32, "int32_data", "int32"),
                             (T_I64, "int64_data", "int64"), (T_DOUBLE, "double_data", "float64"),
                             (T_U64, "uint64_data", "uint64")):
        if t.present(slot, fname):
            vals = t.array(slot, fname, src)
            if len(vals) != count:
                raise t.buf.fail(label + "." + fname,
                                 f"dims {list(dims)} need {count} values but {fname} holds {len(vals)}")
            if dtype in ("undefined", "string"):
                raise t.buf.fail(label + "." + fname, f"numeric data for a {dtype} tensor")
            tensor.data = vals.astype(np_dtype(dtype)).reshape(dims)
            tensor.storage = "typed:" + fname
            return tensor
    if t.present(T_STR, "string_data"):
        tensor.data = np.array(t.byte_strings(T_STR, "string_data"), dtype=object)
        tensor.storage = "typed:string_data"
        return tensor
    tensor.storage = "none"
    return tensor


def _read_type(vi: Table) -> tuple[str, tuple | None]:
    tp = vi.table(V_TYPE, "value_info_type")
    if tp is None:
        return "undefined", None
    if tp.scalar(0, "value_type", "B", 0) != 1:  # only tensor_type is meaningful for ESP-DL
        return "undefined", None
    tt = tp.table(1, "tensor_type")
    if tt is None:
        return "undefined", None
    code = tt.scalar(0, "elem_type", "i", 0)
    dtype = DTYPE_CODES.get(code)
    if dtype is None:
        raise tt.buf.fail(tt.name + ".elem_type", f"unknown data type code {code}")
    shape_t = tt.table(1, "shape")
    if shape_t is None:
        return dtype, None
    shape: list[int | str] = []
    for d in shape_t.tables(0, "dim"):
        v = d.table(0, "value")
        if v is None:
            shape.append("?")
            continue
        kind = v.scalar(0, "dim_type", "b", 0)
        if kind == 1:
            shape.append(int(v.scalar(1, "dim_value", "q", 0)))
        else:
            shape.append(v.string(2, "dim_param") or "?")
    return dtype, tuple(shape)


def read_value_info(vi: Table) -> ValueInfo:
    dtype, shape = _read_type(vi)
    return ValueInfo(
        name=vi.string(V_NAME, "name"),
        dtype=dtype,
        shape=shape,
        exponents=tuple(int(e) for e in vi.array(V_EXP, "exponents", "int64")),
        doc_string=vi.string(V_DOC, "doc_string"),
    )


def read_attribute(a: Table) -> tuple[str, Attribute]:
    name = a.string(A_NAME, "name")
    code = a.scalar(A_TYPE, "attr_type", "i", 0)
    kind = ATTR_KINDS.get(code)
    if kind is None:
        raise a.buf.fail(f"{a.name}({name}).attr_type", f"unknown attribute type {code}")
    if kind == "float":
        value = float(a.scalar(A_F, "f", "f", 0.0))
    elif kind == "int":
        value = int(a.scalar(A_I, "i", "q", 0))
    elif kind == "string":
        value = bytes(a.array(A_S, "s", "uint8").tobytes())
    elif kind == "tensor":
        t = a.table(A_T, "t")
        value = read_tensor(t) if t is not None else None
    elif kind == "graph":
        g = a.table(A_G, "g")
        value = read_graph(g) if g is not None else None
    elif kind == "floats":
        value = [float(v) for v in a.array(A_FLOATS, "floats", "float32")]
    elif kind == "ints":
        value = [int(v) for v in a.array(A_INTS, "ints", "int64")]
    elif kind == "strings":
        value = a.byte_strings(A_STRINGS, "strings")
    elif kind == "tensors":
        value = [read_tensor(t) for t in a.tables(A_TENSORS, "tensors")]
    elif kind == "graphs":
        value = [read_graph(g) for g in a.tables(A_GRAPHS, "graphs")]
    else:
        value = None
    return name, Attribute(kind, value, a.string(A_DOC, "doc_string"), a.string(A_REF, "ref_attr_name"))


def read_node(n: Table) -> Node:
    attrs = {}
    for a in n.tables(N_ATTR, "attribute"):
        k, v = read_attribute(a)
        attrs[k] = v
    return Node(
        op_type=n.string(N_OP, "op_type"),
        name=n.string(N_NAME, "name"),
        inputs=n.strings(N_IN, "input"),
        outputs=n.strings(N_OUT, "output"),
        attrs=attrs,
        domain=n.string(N_DOMAIN, "domain"),
        doc_string=n.string(N_DOC, "doc_string"),
    )


def _pairs(tables: list[Table]) -> list[tuple[str, str]]:
    return [(t.string(0, "key"), t.string(1, "value")) for t in tables]


def read_graph(g: Table) -> Graph:
    graph = Graph(name=g.string(G_NAME, "name"), doc_string=g.string(G_DOC, "doc_string"))
    graph.nodes = [read_node(n) for n in g.tables(G_NODE, "node")]
    for t in g.tables(G_INIT, "initializer"):
        tensor = read_tensor(t)
        graph.initializers[tensor.name] = tensor
    graph.inputs = [read_value_info(v) for v in g.tables(G_IN, "input")]
    graph.outputs = [read_value_info(v) for v in g.tables(G_OUT, "output")]
    for v in g.tables(G_VI, "value_info"):
        vi = read_value_info(v)
        graph.value_info[vi.name] = vi
    graph.quantization_annotation = [
        (qa.string(0, "tensor_name"), _pairs(qa.tables(1, "quant_parameter_tensor_names")))
        for qa in g.tables(G_QA, "quantization_annotation")
    ]
    for t in g.tables(G_TIN, "test_inputs_value"):
        tensor = read_tensor(t)
        graph.test_inputs[tensor.name] = tensor
    for t in g.tables(G_TOUT, "test_outputs_value"):
        tensor = read_tensor(t)
        graph.test_outputs[tensor.name] = tensor
    return graph


def read_flatbuffer(fb: bytes | memoryview, path: str | None = None) -> Graph:
    buf = Buffer(fb, path)
    if buf.size < 8:
        raise FormatError(f"FlatBuffer is {buf.size} bytes, too short", field="Model", path=path)
    m = buf.root("Model")
    g = m.table(M_GRAPH, "graph")
    if g is None:
        raise buf.fail("Model.graph", "the model has no graph")
    graph = read_graph(g)
    graph.ir_version = int(m.scalar(M_IR, "ir_version", "i", 0))
    graph.opset_import = [(o.string(0, "domain"), int(o.scalar(1, "version", "q", 0)))
                          for o in m.tables(M_OPSET, "opset_import")]
    graph.producer_name = m.string(M_PRODUCER, "producer_name")
    graph.producer_version = m.string(M_PRODVER, "producer_version")
    graph.domain = m.string(M_DOMAIN, "domain")
    graph.model_version = int(m.scalar(M_VERSION, "model_version", "q", 0))
    graph.model_doc_string = m.string(M_DOC, "doc_string")
    graph.metadata = dict(_pairs(m.tables(M_META, "metadata_props")))
    return graph


def read_model_bytes(blob: bytes | memoryview, *, key: bytes | None = None, model: str | int | None = None,
                     path: str | None = None) -> tuple[Graph, dict]:
    """Parse a whole file's bytes. Returns the graph and facts about the container."""
    view = memoryview(blob)
    fmt, entries = container.list_entries(view, path)
    entry = container.select(entries, model, path)
    model_fmt, mode, fb = container.unwrap(entry, key, path)
    try:
        graph = read_flatbuffer(fb, path)
    except FormatError as e:
        if mode == 1:
            raise KeyRequiredError(
                f"{path or 'model'}: decryption with the given key does not yield a valid model: "
                "the AES key is wrong"
            ) from e
        raise
    try:
        unpack_graph_weights(graph)
    except FormatError:
        raise
    except (ValueError, TypeError, IndexError, KeyError, ZeroDivisionError) as e:
        # untrusted attributes/dims that contradict a weight's layout (e.g. a depthwise weight whose
        # dims do not match its group, or a non-integer group)
        raise FormatError(f"packed weights do not match their dims/layout/attributes: {e}",
                          field="weights", path=path) from None
    info = {"container": fmt, "format": model_fmt, "encrypted": bool(mode), "entry": entry.name,
            "models": [e.name for e in entries]}
    return graph, info


def read_file(path: str | Path, *, key: bytes | None = None, model: str | int | None = None) -> tuple[Graph, dict]:
    p = Path(path)
    try:
        blob = p.read_bytes()
    except FileNotFoundError:
        raise FormatError("no such file", path=str(p)) from None
    except IsADirectoryError:
        raise FormatError("is a directory, not an .espdl file", path=str(p)) from None
    except OSError as e:
        raise FormatError(f"cannot read: {e.strerror or e}", path=str(p)) from None
    return read_model_bytes(blob, key=key, model=model, path=str(p))
