"""Write the IR as an ESP-DL FlatBuffer (schema ``espdl.fbs``), wrapped in EDL2."""

from __future__ import annotations

from pathlib import Path

import flatbuffers
import numpy as np

from ..errors import FormatError
from ..ir.graph import ATTR_CODES, DTYPE_NAMES, Attribute, Graph, Node, Tensor, ValueInfo, np_dtype
from ..ir.layout import packed_data
from . import container
from . import reader as R

_TYPED_FIELDS = {"float_data": (R.T_FLOAT, "float32"), "int32_data": (R.T_I32, "int32"),
                 "int64_data": (R.T_I64, "int64"), "double_data": (R.T_DOUBLE, "float64"),
                 "uint64_data": (R.T_U64, "uint64")}


class _Writer:
    def __init__(self, packed: dict[str, np.ndarray]):
        self.b = flatbuffers.Builder(1024 * 64)
        self.packed = packed

    # ---- primitives ----------------------------------------------------------------------
    def string(self, s: str | None) -> int:
        return self.b.CreateString(s) if s else 0

    def numbers(self, values, dtype: str) -> int:
        arr = np.ascontiguousarray(np.asarray(values, dtype=np.dtype(dtype).newbyteorder("<")))
        return self.b.CreateNumpyVector(arr)

    def offsets(self, offs: list[int]) -> int:
        self.b.StartVector(4, len(offs), 4)
        for o in reversed(offs):
            self.b.PrependUOffsetTRelative(o)
        return self.b.EndVector()

    def strings(self, items: list[str]) -> int:
        return self.offsets([self.b.CreateString(s) for s in items])

    def aligned_bytes(self, data: bytes) -> int:
        pad = (-len(data)) % 16
        data = data + bytes(pad)
        n = len(data) // 16
        b = self.b
        b.StartVector(16, n, 16)
        b.head = b.head - len(data)
        b.Bytes[b.head:b.head + len(data)] = data
        return b.EndVector()

    def table(self, nfields: int, fields: list[tuple]) -> int:
        """fields: (slot, kind, value); kinds: off, i32, i64, u8, i8, struct_f, struct_i."""
        b = self.b
        b.StartObject(nfields)
        for slot, kind, value in fields:
            if kind == "off":
                if value:
                    b.PrependUOffsetTRelativeSlot(slot, value, 0)
            elif kind == "i32":
                b.PrependInt32Slot(slot, int(value), 0)
            elif kind == "i64":
                b.PrependInt64Slot(slot, int(value), 0)
            elif kind == "u8":
                b.PrependUint8Slot(slot, int(value), 0)
            elif kind == "i8":
                b.PrependInt8Slot(slot, int(value), 0)
            elif kind == "struct_f":
                b.Prep(4, 0)
                b.PrependFloat32(float(value))
                b.PrependStructSlot(slot, b.Offset(), 0)
            elif kind == "struct_i":
                b.Prep(8, 0)
                b.PrependInt64(int(value))
                b.PrependStructSlot(slot, b.Offset(), 0)
        return b.EndObject()

    # ---- schema tables -------------------------------------------------------------------
    def tensor(self, t: Tensor, packed: np.ndarray | None = None) -> int:
        name = self.string(t.name)
        doc = self.string(t.doc_string)
        dims = self.numbers(list(t.dims), "int64")
        exps = self.numbers(list(t.exponents), "int64")
        data_field = []
        if t.data is not None and t.storage == "raw":
            flat = packed if packed is not None else np.ascontiguousarray(t.data).ravel()
            flat = flat.astype(np_dtype(t.dtype).newbyteorder("<"), copy=False)
            data_field = [(R.T_RAW, "off", self.aligned_bytes(flat.tobytes()))]
        elif t.data is not None and t.storage.startswith("typed:"):
            fname = t.storage.split(":", 1)[1]
            if fname == "string_data":
                data_field = [(R.T_STR, "off", self.offsets([self.b.CreateByteVector(bytes(s)) for s in t.data]))]
            else:
                slot, src = _TYPED_FIELDS[fname]
                data_field = [(slot, "off", self.numbers(t.data.ravel(), src))]
        if t.dtype not in DTYPE_NAMES:
            raise FormatError(f"tensor {t.name!r} has dtype {t.dtype!r}", field="data_type")
        return self.table(14, [(R.T_DIMS, "off", dims), (R.T_DTYPE, "i32", DTYPE_NAMES[t.dtype]),
                               (R.T_NAME, "off", name), (R.T_DOC, "off", doc), (R.T_EXP, "off", exps)]
                          + data_field)

    def value_info(self, v: ValueInfo) -> int:
        shape_off = 0
        if v.shape is not None:
            dims = []
            for d in v.shape:
                if isinstance(d, (int, np.integer)):
                    dv = self.table(3, [(0, "i8", 1), (1, "i64", d)])
                elif d == "?":
                    dv = self.table(3, [])
                else:
                    p = self.string(str(d))
                    dv = self.table(3, [(0, "i8", 2), (2, "off", p)])
                dims.append(self.table(2, [(0, "off", dv)]))
            shape_off = self.table(1, [(0, "off", self.offsets(dims))])
        tt = self.table(2, [(0, "i32", DTYPE_NAMES[v.dtype]), (1, "off", shape_off)])
        tp = self.table(3, [(0, "u8", 1), (1, "off", tt)])
        name, doc = self.string(v.name), self.string(v.doc_string)
        exps = self.numbers(list(v.exponents), "int64")
        return self.table(4, [(R.V_NAME, "off", name), (R.V_TYPE, "off", tp), (R.V_DOC, "off", doc),
                              (R.V_EXP, "off", exps)])

    def attribute(self, key: str, a: Attribute) -> int:
        name, doc, ref = self.string(key), self.string(a.doc_string), self.string(a.ref_attr_name)
        f: list[tuple] = [(R.A_NAME, "off", name), (R.A_REF, "off", ref), (R.A_DOC, "off", doc),
                          (R.A_TYPE, "i32", ATTR_CODES[a.kind])]
        k, v = a.kind, a.value
        if k == "float":
            f.append((R.A_F, "struct_f", v))
        elif k == "int":
            f.append((R.A_I, "struct_i", v))
        elif k == "string":
            f.append((R.A_S, "off", self.b.CreateByteVector(bytes(v))))
        elif k == "tensor" and v is not None:
            f.append((R.A_T, "off", self.tensor(v)))
        elif k == "graph" and v is not None:
            f.append((R.A_G, "off", self.graph(v)))
        elif k == "floats":
            f.append((R.A_FLOATS, "off", self.numbers(v, "float32")))
        elif k == "ints":
            f.append((R.A_INTS, "off", self.numbers(v, "int64")))
        elif k == "strings":
            f.append((R.A_STRINGS, "off", self.offsets([self.b.CreateString(bytes(s)) for s in v])))
        elif k == "tensors":
            f.append((R.A_TENSORS, "off", self.offsets([self.tensor(t) for t in v])))
        elif k == "graphs":
            f.append((R.A_GRAPHS, "off", self.offsets([self.graph(g) for g in v])))
        return self.table(16, f)

    def node(self, n: Node) -> int:
        attrs = self.offsets([self.attribute(k, a) for k, a in n.attrs.items()])
        return self.table(7, [(R.N_IN, "off", self.strings(n.inputs)), (R.N_OUT, "off", self.strings(n.outputs)),
                              (R.N_NAME, "off", self.string(n.name)), (R.N_OP, "off", self.string(n.op_type)),
                              (R.N_DOMAIN, "off", self.string(n.domain)), (R.N_ATTR, "off", attrs),
                              (R.N_DOC, "off", self.string(n.doc_string))])

    def pairs(self, items) -> int:
        return self.offsets([self.table(2, [(0, "off", self.string(k)), (1, "off", self.string(v))])
                             for k, v in items])

    def graph(self, g: Graph) -> int:
        inits = self.offsets([self.tensor(t, self.packed.get(t.name)) for t in g.initializers.values()])
        tin = self.offsets([self.tensor(t) for t in g.test_inputs.values()]) if g.test_inputs else 0
        tout = self.offsets([self.tensor(t) for t in g.test_outputs.values()]) if g.test_outputs else 0
        vi = self.offsets([self.value_info(v) for v in g.value_info.values()])
        qa = 0
        if g.quantization_annotation:
            qa = self.offsets([self.table(2, [(0, "off", self.string(name)), (1, "off", self.pairs(p))])
                               for name, p in g.quantization_annotation])
        nodes = self.offsets([self.node(n) for n in g.nodes])
        ins = self.offsets([self.value_info(v) for v in g.inputs])
        outs = self.offsets([self.value_info(v) for v in g.outputs])
        return self.table(10, [(R.G_NODE, "off", nodes), (R.G_NAME, "off", self.string(g.name)),
                               (R.G_INIT, "off", inits), (R.G_DOC, "off", self.string(g.doc_string)),
                               (R.G_IN, "off", ins), (R.G_OUT, "off", outs), (R.G_VI, "off", vi),
                               (R.G_QA, "off", qa), (R.G_TIN, "off", tin), (R.G_TOUT, "off", tout)])

    def model(self, g: Graph) -> bytes:
        graph = self.graph(g)
        opset = self.offsets([self.table(2, [(0, "off", self.string(d)), (1, "i64", v)]) for d, v in g.opset_import])
        meta = self.pairs(g.metadata.items()) if g.metadata else 0
        root = self.table(10, [(R.M_IR, "i32", g.ir_version), (R.M_OPSET, "off", opset),
                               (R.M_PRODUCER, "off", self.string(g.producer_name)),
                               (R.M_PRODVER, "off", self.string(g.producer_version)),
                               (R.M_DOMAIN, "off", self.string(g.domain)),
                               (R.M_VERSION, "i64", g.model_version),
                               (R.M_DOC, "off", self.string(g.model_doc_string)),
                               (R.M_GRAPH, "off", graph), (R.M_META, "off", meta)])
        self.b.Finish(root, None)
        return bytes(self.b.Output())


def to_flatbuffer(graph: Graph) -> bytes:
    return _Writer(packed_data(graph)).model(graph)


def to_bytes(graph: Graph, key: bytes | None = None) -> bytes:
    """The complete EDL2 file for a graph."""
    return container.wrap_edl2(to_flatbuffer(graph), key)


def write_file(graph: Graph, path: str | Path, key: bytes | None = None) -> None:
    container.atomic_write(path, to_bytes(graph, key))
