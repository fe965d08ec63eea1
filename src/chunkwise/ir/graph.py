"""The in-memory graph every stage reads and writes.

Conventions
-----------
* ``Tensor.data`` is always the *logical* array, shaped ``Tensor.dims``. For conv/gemm weights
  ESP-DL stores a packed memory order (``Tensor.layout`` such as ``(N/16)HWC16``); the espdl
  reader unpacks it and the writer packs it again (see :mod:`chunkwise.ir.layout`). Logical conv
  weights are ``[kH, kW, Cin, Cout]`` (1-D: ``[kW, Cin, Cout]``); depthwise ``[kH, kW, C, 1]``.
* Activations are NHWC (2-D) / NWC (1-D), as ESP-DL runs them.
* ``exponents``: value = integer * 2**exponent; one entry (per tensor) or one per output channel.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

# ESP-DL TensorDataType codes <-> numpy dtype names.
DTYPE_CODES: dict[int, str] = {
    0: "undefined",
    1: "float32",
    2: "uint8",
    3: "int8",
    4: "uint16",
    5: "int16",
    6: "int32",
    7: "int64",
    8: "string",
    9: "bool",
    10: "float16",
    11: "float64",
    12: "uint32",
    13: "uint64",
}
DTYPE_NAMES: dict[str, int] = {v: k for k, v in DTYPE_CODES.items()}


def np_dtype(name: str) -> np.dtype:
    """numpy dtype of an IR dtype name (``bool`` is one byte, as ESP-DL stores it)."""
    if name in ("undefined", "string"):
        raise ValueError(f"dtype {name!r} has no numeric representation")
    return np.dtype(name)


# Attribute kinds (ESP-DL AttributeType).
ATTR_KINDS: dict[int, str] = {
    0: "undefined",
    1: "float",
    2: "int",
    3: "string",
    4: "tensor",
    5: "graph",
    6: "floats",
    7: "ints",
    8: "strings",
    9: "tensors",
    10: "graphs",
    11: "type_proto",
    12: "type_protos",
}
ATTR_CODES: dict[str, int] = {v: k for k, v in ATTR_KINDS.items()}


@dataclass
class Attribute:
    """A typed node attribute. ``value`` is float/int/bytes/Tensor/Graph or a list of those."""

    kind: str
    value: Any
    doc_string: str = ""
    ref_attr_name: str = ""

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Attribute):
            return NotImplemented
        return (
            self.kind == other.kind
            and self.doc_string == other.doc_string
            and self.ref_attr_name == other.ref_attr_name
            and _values_equal(self.value, other.value)
        )


def _values_equal(a: Any, b: Any) -> bool:
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_values_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (np.isnan(a) and np.isnan(b))
    return a == b


@dataclass
class Tensor:
    """A constant tensor (initializer, test value or tensor attribute)."""

    name: str
    dtype: str
    dims: tuple[int, ...]
    data: np.ndarray | None = None
    exponents: tuple[int, ...] = ()
    layout: str | None = None
    doc_string: str = ""
    storage: str = "raw"  # "raw" (raw_data, 16-byte blocks) or "typed" (float_data, int64_data, ...)

    @property
    def exponent(self) -> int:
        """The single (per-tensor) exponent; an error for per-channel tensors."""
        if len(self.exponents) != 1:
            raise ValueError(f"tensor {self.name!r} has {len(self.exponents)} exponents, not one")
        return int(self.exponents[0])

    @property
    def nbytes(self) -> int:
        return 0 if self.data is None else int(self.data.nbytes)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Tensor):
            return NotImplemented
        same_meta = (
            self.name == other.name
            and self.dtype == other.dtype
            and tuple(self.dims) == tuple(other.dims)
            and tuple(self.exponents) == tuple(other.exponents)
            and self.layout == other.layout
            and self.doc_string == other.doc_string
            and self.storage == other.storage
        )
        if not same_meta:
            return False
        if self.data is None or other.data is None:
            return self.data is None and other.data is None
        return (
            self.data.dtype == other.data.dtype
            and self.data.shape == other.data.shape
            and self.data.tobytes() == other.data.tobytes()
        )


@dataclass
class ValueInfo:
    """Type information of a graph input/output/intermediate value."""

    name: str
    dtype: str = "undefined"
    shape: tuple[int | str, ...] | None = None
    exponents: tuple[int, ...] = ()
    doc_string: str = ""

    @property
    def exponent(self) -> int:
        if len(self.exponents) != 1:
            raise ValueError(f"value {self.name!r} has {len(self.exponents)} exponents, not one")
        return int(self.exponents[0])


@dataclass
class Node:
    op_type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Attribute] = field(default_factory=dict)
    domain: str = ""
    doc_string: str = ""

    def attr(self, name: str, default: Any = None) -> Any:
        a = self.attrs.get(name)
        if a is None:
            return default
        v = a.value
        if a.kind == "string" and isinstance(v, bytes):
            return v.decode("utf-8", errors="replace")
        return v

    def set_attr(self, name: str, value: Any, kind: str | None = None) -> None:
        self.attrs[name] = make_attribute(value, kind)


def make_attribute(value: Any, kind: str | None = None) -> Attribute:
    """Build an Attribute, inferring its kind from the Python value when not given."""
    if kind is None:
        if isinstance(value, bool) or isinstance(value, (int, np.integer)):
            kind = "int"
        elif isinstance(value, (float, np.floating)):
            kind = "float"
        elif isinstance(value, (str, bytes)):
            kind = "string"
        elif isinstance(value, Tensor):
            kind = "tensor"
        elif isinstance(value, (list, tuple)):
            if all(isinstance(v, (int, np.integer)) for v in value):
                kind = "ints"
            elif all(isinstance(v, (int, float, np.integer, np.floating)) for v in value):
                kind = "floats"
            elif all(isinstance(v, (str, bytes)) for v in value):
                kind = "strings"
            else:
                raise TypeError(f"cannot infer attribute kind of {value!r}")
        else:
            raise TypeError(f"cannot infer attribute kind of {value!r}")
    if kind == "int":
        value = int(value)
    elif kind == "float":
        value = float(np.float32(value))
    elif kind == "string" and isinstance(value, str):
        value = value.encode("utf-8")
    elif kind == "ints":
        value = [int(v) for v in value]
    elif kind == "floats":
        value = [float(np.float32(v)) for v in value]
    elif kind == "strings":
        value = [v.encode("utf-8") if isinstance(v, str) else v for v in value]
    return Attribute(kind, value)


@dataclass
class Graph:
    """A model graph plus the model-level fields of the .espdl file."""

    name: str = ""
    nodes: list[Node] = field(default_factory=list)
    initializers: dict[str, Tensor] = field(default_factory=dict)
    inputs: list[ValueInfo] = field(default_factory=list)
    outputs: list[ValueInfo] = field(default_factory=list)
    value_info: dict[str, ValueInfo] = field(default_factory=dict)
    test_inputs: dict[str, Tensor] = field(default_factory=dict)
    test_outputs: dict[str, Tensor] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    doc_string: str = ""
    # model-level fields kept for faithful round trips
    ir_version: int = 0
    opset_import: list[tuple[str, int]] = field(default_factory=list)
    producer_name: str = ""
    producer_version: str = ""
    domain: str = ""
    model_version: int = 0
    model_doc_string: str = ""
    quantization_annotation: list[tuple[str, list[tuple[str, str]]]] = field(default_factory=list)

    # ---- lookups -------------------------------------------------------------------------
    @property
    def input_names(self) -> list[str]:
        return [v.name for v in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [v.name for v in self.outputs]

    def info(self, name: str) -> ValueInfo | None:
        """ValueInfo of any activation (input, output or intermediate)."""
        for v in self.inputs:
            if v.name == name:
                return v
        for v in self.outputs:
            if v.name == name:
                return v
        return self.value_info.get(name)

    def producers(self) -> dict[str, Node]:
        return {o: n for n in self.nodes for o in n.outputs if o}

    def consumers(self) -> dict[str, list[Node]]:
        out: dict[str, list[Node]] = {}
        for n in self.nodes:
            for i in n.inputs:
                if i:
                    out.setdefault(i, []).append(n)
        return out

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def copy(self) -> "Graph":
        return copy.deepcopy(self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Graph):
            return NotImplemented
        return self.diff(other) == []

    def diff(self, other: "Graph") -> list[str]:
        """Human-readable differences (empty when equal): used by round-trip tests."""
        out: list[str] = []
        scalar_fields = ["name", "doc_string", "ir_version", "opset_import", "producer_name",
                         "producer_version", "domain", "model_version", "model_doc_string",
                         "metadata", "quantization_annotation"]
        for f in scalar_fields:
            if getattr(self, f) != getattr(other, f):
                out.append(f"{f}: {getattr(self, f)!r} != {getattr(other, f)!r}")
        for f in ["inputs", "outputs"]:
            if getattr(self, f) != getattr(other, f):
                out.append(f"{f} differ")
        if self.value_info != other.value_info:
            out.append("value_info differs")
        if len(self.nodes) != len(other.nodes):
            out.append(f"node count {len(self.nodes)} != {len(other.nodes)}")
        for a, b in zip(self.nodes, other.nodes):
            if a != b:
                out.append(f"node {a.name!r} differs")
        for f in ["initializers", "test_inputs", "test_outputs"]:
            da, db = getattr(self, f), getattr(other, f)
            if list(da) != list(db):
                out.append(f"{f} names differ")
            for k in da:
                if k in db and da[k] != db[k]:
                    out.append(f"{f}[{k!r}] differs")
        return out


def iter_tensors(graph: Graph) -> Iterable[Tensor]:
    yield from graph.initializers.values()
    yield from graph.test_inputs.values()
    yield from graph.test_outputs.values()
