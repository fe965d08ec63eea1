"""Plan and run a graph: every node is prepared once for concrete input shapes, then run many times.

Shapes are propagated by the kernels themselves (value-info shapes in streaming exports are often
stale), dtypes and exponents come from the model's value info.

Memory: the kernels that move most data (Conv, Gemm, MatMul, pools, Add/Sub/Mul, table lookups,
Concat, Split, Resize, InsertZeros, RequantizeLinear) write into output buffers allocated when the plan
is prepared (``Ctx.output_buffer``) and share the plan's work buffers (``Ctx.scratch``), so a prepared
plan runs without allocating them again; ``run`` copies only what it hands out. (Peak allocation during
a run: MobileNetV2 0.03 MiB, YOLO11n 0.75 MiB, PP-OCR det 2.1 MiB, in the small ops that still compute
with numpy expressions.)
"""

from __future__ import annotations

import inspect
import math
import threading
from dataclasses import dataclass

import numpy as np

from ..errors import ChunkwiseError, ShapeError, UnsupportedError
from ..ir.graph import Graph, Node
from ..limits import check_alloc
from ..ir.ops import check_attr_kinds
from .registry import Ctx, Prepared, Scratch, Spec, get_kernel
from .rounding import rounding_mode


@dataclass
class Step:
    node: Node
    prepared: Prepared
    inputs: list[str]
    outputs: list[str]


class NodeArgs(list):
    """The ``ins`` / ``outs`` list given to a kernel's prepare(): asking for an input or output the
    node does not have (a ``Conv`` with one input, a node with no outputs) is the model's fault and
    raises :class:`UnsupportedError` naming the node, instead of an IndexError inside the kernel."""

    def __init__(self, node: Node, what: str):
        super().__init__()
        self.node = node
        self.what = what

    def __getitem__(self, i):
        if isinstance(i, int) and not -len(self) <= i < len(self):
            raise UnsupportedError(f"{self.what} {i} is missing: the node has {len(self)} {self.what}(s)",
                                   node=self.node.name, op=self.node.op_type)
        return super().__getitem__(i)


def _check_node(node: Node) -> None:
    """What holds for every operator, checked before its kernel sees the node: at least one output,
    a first input that is not omitted, and attributes of the kind ONNX / ESP-DL define for their name."""
    if not node.outputs:
        raise UnsupportedError("the node has no outputs", node=node.name, op=node.op_type)
    if node.inputs and not node.inputs[0]:
        raise UnsupportedError("input 0 is empty (omitted); it is required", node=node.name, op=node.op_type)
    check_attr_kinds(node)
    for k, a in node.attrs.items():
        if a.kind in ("int", "float", "string", "ints", "floats") and a.value is None:
            raise UnsupportedError(f"attribute {k!r} has no value", node=node.name, op=node.op_type)


MAX_EXPONENT = 64  # |exponent| above this is refused: 2**e overflows float math and shifts exceed 63 bits


def check_exponents(name: str, exps, node: Node | None = None) -> None:
    for e in exps:
        if not -MAX_EXPONENT <= int(e) <= MAX_EXPONENT:
            raise UnsupportedError(f"exponent {int(e)} of {name!r} is outside [-{MAX_EXPONENT}, {MAX_EXPONENT}]",
                                   node=node.name if node else None, op=node.op_type if node else None)


def _name_node(e: ChunkwiseError, node: Node) -> None:
    """Prefix an error raised without node context (e.g. by a shared helper) with the node."""
    if isinstance(e, UnsupportedError) and e.node is not None:
        return
    text = str(e)
    if repr(node.name) not in text and e.args:
        e.args = (f"node {node.name!r} ({node.op_type}): {text}",) + tuple(e.args[1:])


def _check_arity(node: Node, prepared: Prepared) -> None:
    """The node must pass its kernel's ``run`` as many arrays as it has inputs (``Neg`` with two
    inputs, ``Conv`` with four ...): refused here instead of failing inside ``run``."""
    try:
        inspect.signature(prepared.run).bind(*([None] * len(node.inputs)))
    except TypeError:
        raise UnsupportedError(f"{len(node.inputs)} input(s) is not a valid input count for this operator",
                               node=node.name, op=node.op_type) from None
    except ValueError:  # no signature (a builtin or numba dispatcher): nothing to check
        pass


class Plan:
    """A graph prepared for one set of input shapes and one target."""

    def __init__(self, graph: Graph, target: str, input_shapes: dict[str, tuple[int, ...]]):
        self.graph = graph
        self.target = target
        self.mode = rounding_mode(target)
        self.specs: dict[str, Spec] = {}
        self.steps: list[Step] = []
        self.consts: dict[str, np.ndarray] = {}
        self.scratch = Scratch()  # work buffers shared by the steps (they run one at a time: see run())
        self._lock = threading.Lock()
        for name, t in graph.initializers.items():
            check_exponents(name, t.exponents)
            self.specs[name] = Spec(name, tuple(t.dims), t.dtype, tuple(t.exponents), t.data)
            if t.data is not None:
                self.consts[name] = t.data
        for v in graph.inputs:
            if v.name in graph.initializers:
                continue
            if v.name not in input_shapes:
                raise ShapeError(f"no shape for input {v.name!r}")
            check_exponents(v.name, v.exponents)
            self.specs[v.name] = Spec(v.name, tuple(input_shapes[v.name]), v.dtype, tuple(v.exponents))
        for node in graph.nodes:
            self._prepare(node)
        for v in graph.outputs:
            if v.name not in self.specs:
                raise ChunkwiseError(f"graph output {v.name!r} is produced by no node")

    def _prepare(self, node: Node) -> None:
        ctx = Ctx(self.target, self.mode, node, self.graph, self.scratch)
        _check_node(node)
        ins = NodeArgs(node, "input")
        for i, name in enumerate(node.inputs):
            if not name:
                ins.append(Spec("", None, "undefined"))
                continue
            if name not in self.specs:
                raise ChunkwiseError(f"node {node.name!r} ({node.op_type}): input {i} {name!r} is not produced "
                                     "by any earlier node, input or initializer")
            spec = self.specs[name]
            if spec.const is None and name in self.graph.initializers:
                raise UnsupportedError(f"input {i} {name!r} is an initializer that carries no data in the file",
                                       node=node.name, op=node.op_type)
            if spec.dtype in ("undefined", "string") and spec.const is None:
                raise UnsupportedError(f"input {i} {name!r} has no numeric dtype ({spec.dtype}) in the model",
                                       node=node.name, op=node.op_type)
            ins.append(spec)
        outs = NodeArgs(node, "output")
        for name in node.outputs:
            vi = self.graph.info(name)
            if vi is not None:
                check_exponents(name, vi.exponents, node)
            outs.append(Spec(name, None, vi.dtype if vi else "undefined", tuple(vi.exponents) if vi else ()))
        prepare = get_kernel(node, ctx)
        try:
            prepared = prepare(node, ctx, ins, outs)
        except ChunkwiseError as e:
            # kernels validate their node in prepare(); any other exception is a bug and propagates
            _name_node(e, node)
            raise
        _check_arity(node, prepared)
        if len(prepared.shapes) != len(node.outputs):
            raise UnsupportedError(f"kernel produced {len(prepared.shapes)} outputs, node has {len(node.outputs)}",
                                   node=node.name, op=node.op_type)
        for k, (name, shape) in enumerate(zip(node.outputs, prepared.shapes)):
            dtype = prepared.dtypes[k] if prepared.dtypes else outs[k].dtype
            if any(int(s) < 0 for s in shape):
                raise RuntimeError(f"{node.op_type} kernel planned a negative dimension {list(shape)} for {name!r}: "
                                   "its prepare() let an invalid input through (a bug)")
            # Python ints: a hostile attribute must not make the product wrap around in int64
            size = math.prod(int(s) for s in shape) * (np.dtype(dtype).itemsize if dtype != "undefined" else 1)
            check_alloc(size, f"output {name!r} of node {node.name!r}")
            self.specs[name] = Spec(name, tuple(int(s) for s in shape), dtype, outs[k].exps)
        self.steps.append(Step(node, prepared, list(node.inputs), list(node.outputs)))

    # ---- running -------------------------------------------------------------------------
    def reset(self) -> None:
        for s in self.steps:
            if s.prepared.reset is not None:
                s.prepared.reset()

    def run(self, feeds: dict[str, np.ndarray], keep: bool = False) -> dict[str, np.ndarray]:
        """Run on validated integer feeds. ``keep`` returns every intermediate value too.

        Steps share the plan's work buffers and stateful steps keep state, so runs of one plan are
        serialized (another thread waits)."""
        with self._lock:
            return self._run(feeds, keep)

    def _run(self, feeds: dict[str, np.ndarray], keep: bool) -> dict[str, np.ndarray]:
        values: dict[str, np.ndarray] = dict(self.consts)
        values.update(feeds)
        for s in self.steps:
            args = [values[i] if i else None for i in s.inputs]
            outs = s.prepared.run(*args)
            for name, arr in zip(s.outputs, outs):
                spec = self.specs[name]
                if arr.shape != spec.shape:
                    raise ChunkwiseError(
                        f"internal error: node {s.node.name!r} ({s.node.op_type}) produced {arr.shape} "
                        f"for {name!r}, planned {spec.shape}")
                values[name] = arr
        # kernels may write into buffers the plan owns (Ctx.output_buffer): hand out copies
        if keep:
            return {k: v.copy() for k, v in values.items() if k not in self.consts}
        return {v.name: values[v.name].copy() for v in self.graph.outputs}

    @property
    def macs(self) -> int:
        return sum(s.prepared.macs for s in self.steps)

    @property
    def state_bytes(self) -> int:
        return sum(s.prepared.state_bytes for s in self.steps)
