"""Operator registry: one small kernel per op, prepared once per input shape.

A kernel is a function ``prepare(node, ctx, ins, outs) -> Prepared`` registered with
:func:`kernel`. ``ins`` are :class:`Spec` of the node's inputs (shape, dtype, exponents and, for
initializers, the constant array); ``outs`` give each output's dtype and exponents (from the
model's value info). ``prepare`` validates every attribute and shape, computes output shapes, does
all constant work (weight reshapes, tables), and returns a ``run(*arrays) -> tuple`` that does only
arithmetic. Unsupported attributes raise :class:`UnsupportedError` naming the node.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..errors import UnsupportedError
from ..limits import check_alloc
from ..ir.graph import Graph, Node, Tensor

KERNELS: dict[str, Callable] = {}

def attr_kinds() -> dict[str, str]:
    """The kind of every attribute name, from the operator definitions (:mod:`chunkwise.ir.ops`): the
    engine refuses a node whose attribute has another kind before its kernel reads it."""
    from ..ir.ops import attr_kinds as from_defs

    return from_defs()


@dataclass(frozen=True)
class Spec:
    name: str
    shape: tuple[int, ...] | None
    dtype: str
    exps: tuple[int, ...] = ()
    const: np.ndarray | None = None

    @property
    def exp(self) -> int:
        if len(self.exps) != 1:
            raise UnsupportedError(f"{self.name!r} has {len(self.exps)} exponents, expected one")
        return int(self.exps[0])

    @property
    def is_const(self) -> bool:
        return self.const is not None


@dataclass
class Prepared:
    shapes: list[tuple[int, ...]]
    run: Callable
    reset: Callable | None = None
    dtypes: list[str] | None = None  # override output dtypes when the value info does not say
    macs: int = 0
    state_bytes: int = 0
    info: dict = field(default_factory=dict)


class Scratch:
    """Work buffers shared by the nodes of one plan, which run one after another.

    A kernel reserves a named buffer in ``prepare`` (:meth:`reserve`) and takes a view of it in ``run``
    (:meth:`get`): the buffer is allocated once, at the largest size any node reserved, so running a
    prepared plan again allocates no work memory. Two nodes may use the same name only if neither
    keeps data in it between runs.
    """

    def __init__(self) -> None:
        self._need: dict[tuple[str, str], int] = {}
        self._bufs: dict[tuple[str, str], np.ndarray] = {}

    def reserve(self, name: str, size: int, dtype) -> None:
        check_alloc(int(size) * np.dtype(dtype).itemsize, f"work buffer {name!r}")
        key = (name, np.dtype(dtype).str)
        self._need[key] = max(self._need.get(key, 0), int(size))

    def get(self, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        key = (name, np.dtype(dtype).str)
        size = math.prod(int(s) for s in shape)
        buf = self._bufs.get(key)
        if buf is None or buf.size < size:
            buf = np.empty(max(size, self._need.get(key, 0)), dtype=dtype)
            self._bufs[key] = buf
        return buf[:size].reshape(shape)

    @property
    def nbytes(self) -> int:
        return sum(n * np.dtype(k[1]).itemsize for k, n in self._need.items())


@dataclass
class Ctx:
    """What a kernel may know besides its inputs: the target and its rounding rule, and the plan's
    shared work buffers."""

    target: str
    mode: int
    node: Node | None = None
    graph: "Graph | None" = None
    scratch: Scratch = field(default_factory=Scratch)

    def output_buffer(self, shape: tuple[int, ...], dtype) -> np.ndarray:
        """A buffer for one of this node's outputs, allocated once, when the plan is prepared: the kernel
        writes it on every run and returns it. The plan copies the values it hands out to callers, so
        a kernel that uses this must not return an input or another node's array in its place."""
        return self.zeros(shape, dtype, "output")

    def zeros(self, shape: tuple[int, ...], dtype, what: str) -> np.ndarray:
        """A zeroed array for ``prepare`` (state, padding, accumulators), refused before allocation when
        it exceeds the tensor size limit (a hostile model can ask for any shape)."""
        size = math.prod(int(s) for s in shape) * np.dtype(dtype).itemsize
        check_alloc(size, f"{what} {list(shape)} of node {self.node.name if self.node else '?'!r}")
        return np.zeros(shape, dtype=dtype)

    def initializer(self, name: str) -> "Tensor":
        """An initializer named by an attribute (e.g. the ``lut`` table of an activation)."""
        t = self.graph.initializers.get(name) if self.graph is not None else None
        if t is None or t.data is None:
            raise self.fail(f"initializer {name!r} named by an attribute is missing")
        return t

    def fail(self, message: str, supported=None) -> UnsupportedError:
        n = self.node
        return UnsupportedError(message, node=n.name if n else None, op=n.op_type if n else None,
                                supported=supported)

    def attr(self, name: str, default=None):
        return self.node.attr(name, default)

    def quant_type(self) -> str:
        q = self.node.attr("quant_type", "S8")
        return q

    def require(self, cond: bool, message: str, supported=None) -> None:
        if not cond:
            raise self.fail(message, supported)


def kernel(*op_types: str):
    """Register ``prepare`` for one or more op types."""

    def deco(fn):
        for op in op_types:
            KERNELS[op] = fn
        return fn

    return deco


# ---- compiled lowerings (see emu/program.py) ---------------------------------------------------------
#: op type -> ``lower(builder, step)``: encodes what the kernel's prepare() decided (``step.prepared.info``)
#: as instruction rows of a compiled program, or raises ``builder.refuse(reason)`` for one node
LOWERINGS: dict[str, Callable] = {}
#: op type -> why it has no compiled lowering (its nodes run on the per-node path, between compiled rows)
NOT_LOWERED: dict[str, str] = {}


def lowering(*op_types: str):
    """Register ``lower(builder, step)`` for one or more op types (beside the op's kernel)."""

    def deco(fn):
        for op in op_types:
            LOWERINGS[op] = fn
        return fn

    return deco


def no_lowering(*op_types: str, reason: str) -> None:
    """Declare that these op types run on the per-node path in compiled programs, and why."""
    for op in op_types:
        NOT_LOWERED[op] = reason


def lowering_status(op_type: str) -> tuple[bool, str]:
    """(True, "") when nodes of ``op_type`` can compile, else (False, why not)."""
    _load_all()
    if op_type in LOWERINGS:
        return True, ""
    if op_type in NOT_LOWERED:
        return False, NOT_LOWERED[op_type]
    if op_type in KERNELS:
        return False, "no compiled lowering declared"
    return False, "not supported by the emulator"


#: row layout name -> its arm: ``@njit arm(row, act, actf, c16, c32, c64, cf, mode)`` decoding one row and calling
#: the kernel's njit helper on views of the program's memory (emu/program.py dispatches to it)
ARMS: dict[str, Callable] = {}


def arm(layout):
    """Register the arm that runs rows of ``layout`` (a :func:`row_layout`)."""

    def deco(fn):
        ARMS[type(layout).__name__] = fn
        return fn

    return deco


def row_layout(name: str, fields: str):
    """Named columns of one opcode's instruction rows (column 0 holds the opcode): ``L = row_layout("CONV",
    "x out cout")`` gives ``L.x == 1, L.out == 2, L.cout == 3``; a namedtuple, so compiled code reads the
    columns as constants (``row[L.x]``)."""
    from collections import namedtuple

    names = fields.split()
    return namedtuple(name, names)(*range(1, len(names) + 1))


def supported_ops() -> list[str]:
    _load_all()
    return sorted(KERNELS)


_loaded = False


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    from . import ops  # noqa: F401  (registers every kernel module)

    _loaded = True


def get_kernel(node: Node, ctx: Ctx) -> Callable:
    _load_all()
    fn = KERNELS.get(node.op_type)
    if fn is None:
        raise UnsupportedError("operator is not supported by the emulator", node=node.name, op=node.op_type,
                               supported=sorted(KERNELS))
    return fn
