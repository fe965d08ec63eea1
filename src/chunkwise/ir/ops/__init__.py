"""One definition per operator, asked by every stage.

An :class:`OpDef` says what an operator *is*, independent of any stage: its typed attributes with
ONNX defaults, how time flows through it (:class:`TimeRule`), which memory layout it needs
(:class:`Layout`), how the quantizer picks its output exponent (:class:`ExpPolicy`), whether it maps
zero to zero and whether its output is non-negative, its float function (activations ESP-DL runs as
tables) and which of its inputs are indices/shapes rather than data. Stages never keep their own
op-name lists: the streaming analysis, the quantizer's layout and exponent passes, the float twin,
attribute checking and the compiled lowering dispatch on these traits.

Definitions live in one small module per family (``conv``, ``pool``, ``activation``, ``elementwise``,
``movement``, ``reduce``, ``norm``, ``rnn``, ``quant``, ``stream``, ``logic``), declared next to each
other like tinygrad's op groups. Facts that don't fit a trait are hooks on the definition (``axes``,
``zero_to_zero``, ``nonneg``, ``float_fn``), so a new operator is one definition, one kernel, its tests.

What a stage cannot do with an op is said on the definition too (``refuse={"stream": "why"}``):
:func:`coverage` turns that, and what each stage registered, into the operator x stage table of
``docs/coverage.md`` (``python -m chunkwise.ir.ops > docs/coverage.md``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable

import numpy as np

from ...errors import UnsupportedError

REQUIRED = object()  # an attribute default meaning "the node must carry it"


class TimeRule(str, Enum):
    """How the frame (time) axis flows through an op: what the streaming converter does with it."""

    FRAME = "frame"            # one streamed data input, frame-local (unary activations, requantize, ...)
    BINARY = "binary"          # element-wise, broadcasting: streamed inputs must align in axis, rate and delay
    WINDOW = "window"          # sliding window along spatial axes (Conv, pools): past frames come from a cache
    PAD = "pad"                # zero padding of the frame axis becomes cache state
    TRANSPOSE = "transpose"    # moves the frame axis
    SLICE = "slice"            # identity, tail (last K frames) or right chop on the frame axis
    RESHAPE = "reshape"        # keeps the frame axis if the reshape does not merge it with others
    AXES = "axes"              # acts along the axes ``OpDef.axes`` names; streams iff the frame axis is not one
    CONTRACT = "contract"      # Gemm/MatMul: contracts the last axis of input 0; per frame unless that is time
    UPSAMPLE = "upsample"      # InsertZeros: frame rate multiplied by the stride along the frame axis
    RECURRENT = "recurrent"    # GRU/LSTM: state carried between chunks as extra inputs/outputs
    CACHE = "cache"            # StreamingCache itself: the model already streams
    REFUSE = "refuse"          # needs the whole sequence (``refuse["stream"]`` says why)


class Layout(str, Enum):
    """What the quantizer's layout pass (ONNX NCHW -> ESP-DL NHWC) does with an op."""

    SPATIAL = "spatial"        # runs on channel-last activations (Conv, pools, Resize, ...)
    ELEMENTWISE = "elementwise"  # unary: follows its input's layout
    BROADCAST = "broadcast"    # binary: one layout for all inputs, constants permuted to it
    AXIS = "axis"              # follows its input's layout, its axis attribute/inputs remapped
    ORIGIN = "origin"          # needs the original ONNX order of its inputs (Gemm, Reshape, GRU, ...)


class ExpPolicy(str, Enum):
    """How the quantizer picks an op's output exponent (ESP-PPQ's ESPDL quantization setting)."""

    CALIBRATED = "calibrated"  # from calibration statistics of the output
    PASSIVE = "passive"        # the input exponent passes through (data movement, MaxPool)
    ALIGN = "align"            # inputs take the output exponent (Add, Sub, Concat)
    FOLLOW = "follow"          # shares its producer's output exponent when it is its only reader (Relu, Clip)
    NONE = "none"              # not quantized (bool / index outputs, float internals)


@dataclass(frozen=True)
class Attr:
    kind: str                  # ESP-DL AttributeType name: int, float, string, ints, floats, strings, tensor
    default: Any = None        # ONNX default; REQUIRED when the node must carry it; None: optional, no default


def _false(*_a) -> bool:
    return False


def _true(*_a) -> bool:
    return True


@dataclass(frozen=True)
class OpDef:
    name: str
    family: str
    attrs: dict[str, Attr] = field(default_factory=dict)
    time: TimeRule = TimeRule.FRAME
    layout: Layout = Layout.ELEMENTWISE
    exponent: ExpPolicy = ExpPolicy.CALIBRATED
    espdl: bool = True                     # ESP-DL has a module (dl_module_creator.hpp); False: ONNX-only
    lut: bool = False                      # an int8 activation ESP-PPQ exports as a 256-entry table
    index_inputs: frozenset = frozenset()  # inputs that are indices/shapes, never quantized data
    # facts as hooks: (node, consts) where consts maps initializer names to arrays
    zero_to_zero: Callable = _false        # f(0 input(s)) == 0 exactly (a zero cache may move above it)
    nonneg: Callable = _false              # (node, consts, inputs_nonneg: list[bool]) -> output >= 0
    axes: Callable | None = None           # (node, rank, consts) -> axes it acts along (TimeRule.AXES)
    float_fn: Callable | None = None       # (attrs dict) -> float32 function, for activations run as tables
    refuse: dict[str, str] = field(default_factory=dict)  # stage -> why that stage cannot do it
    # the named quantizer pass that removes it before export (an ONNX-only op the quantizer still takes, or,
    # with refuse["quantize"], takes only inside the pattern that pass fuses)
    rewritten_by: str = ""
    int8_only: bool = False                # ESP-DL has no (working) int16 kernel: the quantizer keeps it int8
    int16_native: bool = False             # int16: ESP-DL runs the op itself with a full 65536-entry table
    float_compute: bool = False            # ESP-PPQ leaves it unquantized: it runs in float32 (quant_type F32)
    quant_out: str = ""                    # its output's type when not the node's integer width: float32, bool
    ranks: tuple = ()                      # the input ranks ESP-DL's kernel takes (empty: any)
    doc: str = ""

    # ---- attributes ---------------------------------------------------------------------------
    def attr(self, node, name: str):
        """The attribute value, or its ONNX default. Unknown names are a programming error."""
        spec = self.attrs.get(name)
        if spec is None:
            raise KeyError(f"{self.name} has no attribute {name!r} in its definition")
        v = node.attr(name)
        if v is None:
            if spec.default is REQUIRED:
                raise UnsupportedError(f"attribute {name!r} is required", node=node.name, op=node.op_type)
            return spec.default
        return v

    def stage_refusal(self, stage: str) -> str | None:
        return self.refuse.get(stage)


_DEFS: dict[str, OpDef] = {}


def define(name: str, family: str, **traits) -> OpDef:
    """Register one operator definition (called by the family modules at import)."""
    if name in _DEFS:
        raise ValueError(f"operator {name!r} is defined twice")
    attrs = dict(COMMON_ATTRS)
    attrs.update(traits.pop("attrs", {}))
    if "index_inputs" in traits:
        traits["index_inputs"] = frozenset(traits["index_inputs"])
    d = OpDef(name=name, family=family, attrs=attrs, **traits)
    _DEFS[name] = d
    return d


# ESP-DL / ESP-PPQ attributes any quantized node may carry
COMMON_ATTRS = {
    "quant_type": Attr("string", "S8"),
    "original_op_type": Attr("string"),
    "lut": Attr("string"),
    "int16_lut_step": Attr("int"),
}


def _load() -> None:
    from . import (activation, conv, elementwise, logic, movement, norm, pool, quant, reduce,  # noqa: F401
                   rnn, stream)


def opdef(op_type: str, *, node: str | None = None) -> OpDef:
    """The definition of ``op_type``; an UnsupportedError listing every known operator otherwise."""
    if not _DEFS:
        _load()
    d = _DEFS.get(op_type)
    if d is None:
        raise UnsupportedError("unknown operator", node=node, op=op_type, supported=sorted(_DEFS))
    return d


def find(op_type: str) -> OpDef | None:
    if not _DEFS:
        _load()
    return _DEFS.get(op_type)


def all_defs() -> list[OpDef]:
    if not _DEFS:
        _load()
    return [_DEFS[k] for k in sorted(_DEFS)]


def names(**traits) -> set[str]:
    """Operators whose traits equal the given values, e.g. ``names(time=TimeRule.WINDOW)``."""
    return {d.name for d in all_defs() if all(getattr(d, k) == v for k, v in traits.items())}


def attr_kinds() -> dict[str, str]:
    """attribute name -> kind, over every definition (one kind per name: checked by the tests)."""
    global _KINDS
    if _KINDS is None:
        out: dict[str, str] = {}
        for d in all_defs():
            for k, a in d.attrs.items():
                out.setdefault(k, a.kind)
        _KINDS = out
    return dict(_KINDS)


_KINDS: dict[str, str] | None = None


def check_attr_kinds(node) -> None:
    """Refuse an attribute whose kind is not the one its definition (or any definition) gives the name."""
    d = find(node.op_type)
    kinds = d.attrs if d is not None else {}
    if _KINDS is None:
        attr_kinds()
    every = _KINDS
    for k, a in node.attrs.items():
        spec = kinds.get(k)
        want = spec.kind if spec is not None else every.get(k)
        if want is not None and a.kind != want and not (want == "float" and a.kind == "int"):
            raise UnsupportedError(f"attribute {k!r} is of kind {a.kind}, expected {want}",
                                   node=node.name, op=node.op_type)


# ---- facts shared by several definitions --------------------------------------------------------------

def const_of(consts, name: str):
    return None if not name or consts is None else consts.get(name)


def nonneg_input(node, consts, ins_nonneg) -> bool:
    """Output non-negative when the data input is (data movement, MaxPool, requantization)."""
    return bool(ins_nonneg and ins_nonneg[0])


def all_inputs_zero_safe(node, consts) -> bool:
    """A binary op maps zero to zero when every constant operand is zero-safe: checked by the op's hook."""
    return True


@dataclass(frozen=True)
class Window:
    """Geometry of a window op (Conv, pools) with ONNX defaults filled in, per spatial axis."""

    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads_begin: tuple[int, ...]
    pads_end: tuple[int, ...]

    @property
    def nsp(self) -> int:
        return len(self.kernel)

    def span(self, i: int) -> int:
        return self.dilations[i] * (self.kernel[i] - 1) + 1

    @property
    def pads(self) -> list[int]:
        """ONNX order: all begins, then all ends."""
        return list(self.pads_begin) + list(self.pads_end)

    def out_size(self, i: int, size: int) -> int:
        return (size + self.pads_begin[i] + self.pads_end[i] - self.span(i)) // self.strides[i] + 1


def window(node, nsp: int, weight_dims=None) -> Window:
    """The window geometry of ``node`` for ``nsp`` spatial axes: one parser for every stage.

    ``kernel_shape`` defaults to the weight's spatial dims (Conv; ESP-DL layout ``[kH, kW, Cin, Cout]``,
    1-D ``[kW, Cin, Cout]``). Lengths and ranges are validated; errors name the node.
    """

    def fail(msg, supported=None):
        return UnsupportedError(msg, node=node.name, op=node.op_type, supported=supported)

    def ints(name, n, default):
        v = node.attr(name)
        if v is None or (isinstance(v, list) and not v):
            return [default] * n
        if isinstance(v, (int, np.integer)):
            return [int(v)] * n
        v = [int(a) for a in v]
        if len(v) != n:
            raise fail(f"{name} {v} does not fit a {nsp}-D {node.op_type}")
        return v

    ks = node.attr("kernel_shape")
    if not ks:
        if weight_dims is None:
            raise fail("kernel_shape is required")
        ks = list(weight_dims[:nsp])
    ks = [int(k) for k in ks]
    if len(ks) != nsp:
        raise fail(f"kernel_shape {ks} does not fit a {nsp}-D {node.op_type}")
    strides = ints("strides", nsp, 1)
    dil = ints("dilations", nsp, 1)
    pads = ints("pads", 2 * nsp, 0)
    auto_pad = node.attr("auto_pad", "NOTSET") or "NOTSET"
    if auto_pad not in ("NOTSET", ""):
        raise fail(f"auto_pad={auto_pad!r}", supported=["NOTSET (explicit pads)"])
    if not all(k >= 1 for k in ks):
        raise fail(f"kernel_shape {ks} must be >= 1")
    if not (all(s >= 1 for s in strides) and all(d >= 1 for d in dil)):
        raise fail("strides and dilations must be >= 1")
    if not all(p >= 0 for p in pads):
        raise fail(f"negative pads {pads}")
    return Window(tuple(ks), tuple(strides), tuple(dil), tuple(pads[:nsp]), tuple(pads[nsp:]))


def axis_attr(node, rank: int, default: int = 0) -> int:
    """A single ``axis`` attribute normalized to [0, rank)."""
    ax = node.attr("axis")
    ax = default if ax is None else int(ax)
    if not -rank <= ax < rank:
        raise UnsupportedError(f"axis {ax} is out of range for rank {rank}", node=node.name, op=node.op_type)
    return ax % rank


# ---- the coverage table -----------------------------------------------------------------------------

STAGES = ("quantize", "emulate", "compiled", "stream")


def stage_support() -> dict[str, Callable[[OpDef], bool]]:
    """For each stage, whether it implements an op: asked of the stage's own registry."""
    from ...emu import registry

    registry.supported_ops()  # loads every kernel module
    lowerings = getattr(registry, "LOWERINGS", None)
    if lowerings is None:
        from ...emu import program

        lowerings = getattr(program, "LOWER", {})
    from ...convert.timeaxis import RULES as time_rules
    from ...quant import supported_float_ops

    quant_ops = supported_float_ops()
    return {
        "quantize": lambda d: d.name in quant_ops,
        "emulate": lambda d: d.name in registry.KERNELS,
        "compiled": lambda d: d.name in lowerings,
        "stream": lambda d: d.espdl and d.time in time_rules,
    }


def _not_lowered(op: str) -> str | None:
    """The compiled stage's own reason for not lowering ``op`` (``emu.registry.no_lowering``), if any."""
    from ...emu.registry import NOT_LOWERED

    return NOT_LOWERED.get(op)


def coverage() -> list[dict]:
    """One row per operator: for each stage ``"yes"``, ``"no: <reason>"`` or ``"MISSING"`` (a stage
    lacks the op and its definition gives no reason: the coverage test fails on it)."""
    support = stage_support()
    rows = []
    for d in all_defs():
        row = {"op": d.name, "family": d.family, "espdl": d.espdl, "time": d.time.value}
        for s in STAGES:
            if support[s](d):
                row[s] = "yes"
            elif d.refuse.get(s):
                row[s] = "no: " + d.refuse[s]
            elif s == "compiled" and _not_lowered(d.name):
                row[s] = "no: " + _not_lowered(d.name)
            else:
                row[s] = "MISSING"
        rows.append(row)
    return rows


def coverage_markdown() -> str:
    rows = coverage()
    lines = ["# Operator coverage", "",
             "Generated from the operator definitions (`src/chunkwise/ir/ops/`) and each stage's registry by "
             "`python -m chunkwise.ir.ops > docs/coverage.md`; `tests/test_opdefs.py` fails when it is stale or "
             "when a stage lacks an operator without a reason.", "",
             "| op | family | loadable by ESP-DL | time | " + " | ".join(STAGES) + " |",
             "|---|---|---|---|" + "---|" * len(STAGES)]
    for r in rows:
        lines.append(f"| {r['op']} | {r['family']} | {'yes' if r['espdl'] else 'no'} | {r['time']} | "
                     + " | ".join(r[s] for s in STAGES) + " |")
    counts = {s: sum(1 for r in rows if r[s] == "yes") for s in STAGES}
    lines += ["", "Implemented: " + ", ".join(f"{s} {counts[s]}" for s in STAGES) + f" of {len(rows)} operators.", ""]
    return "\n".join(lines)
