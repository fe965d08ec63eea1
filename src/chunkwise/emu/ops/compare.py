"""Comparisons (Equal, Greater, GreaterOrEqual, Less, LessOrEqual) and logical ops (And, Or, Xor, Not).

ESP-DL (``dl_base_equal.cpp`` etc., ``dl_module_equal.hpp``): int8/int16 inputs only, compared as raw
integers (exponents are not looked at; ESP-PPQ gives both inputs the same one), bool output,
numpy broadcasting through the element-wise loops (see :mod:`.elementwise`).

And / Or / Xor / Not: ``dl_module_and.hpp`` etc. exist in ESP-DL but are not registered in
``dl_module_creator.hpp`` (and ``elemwise_not`` has no implementation), so a chip cannot load them;
they are emulated with ONNX semantics: logical operations on "non-zero is true". ESP-DL's C code is
logical (``&&``) while its esp32p4 assembly is bitwise (``esp.andq``): they agree on 0/1 inputs.
"""

from __future__ import annotations

import numpy as np

from ..registry import Prepared, kernel
from .elementwise import Broadcast, binary_inputs, compute_dtype, one_exp

_COMPARE = {
    "Equal": np.equal,
    "Greater": np.greater,
    "GreaterOrEqual": np.greater_equal,
    "Less": np.less,
    "LessOrEqual": np.less_equal,
}

_LOGIC = {
    "And": np.logical_and,
    "Or": np.logical_or,
    "Xor": np.logical_xor,
}

LOGIC_DTYPES = ("bool", "int8", "int16")


def _bool_out(ctx, outs, default="bool"):
    od = outs[0].dtype
    if od == "undefined":
        return default
    ctx.require(od in ("bool", "int8", "int16"), f"output dtype {od}", supported=["bool", "int8", "int16"])
    return od


@kernel(*_COMPARE)
def prepare_compare(node, ctx, ins, outs):
    a, b = binary_inputs(ctx, ins)
    dtype = compute_dtype(ctx, a, allowed=("int8", "int16"))
    ctx.require(b.dtype == dtype, f"inputs have dtypes {a.dtype} and {b.dtype}")
    ea, eb = one_exp(ctx, a, "input"), one_exp(ctx, b, "input")
    info = {} if ea == eb else {"note": f"input exponents {ea} and {eb} differ; ESP-DL compares raw integers"}
    odt = _bool_out(ctx, outs)
    bc = Broadcast(ctx, a.shape, b.shape)
    fn = _COMPARE[node.op_type]
    shape = bc.shape

    def run(x, y):
        return (np.ascontiguousarray(np.broadcast_to(fn(x, y), shape)).astype(odt),)

    return Prepared([shape], run, dtypes=[odt], info=info)


@kernel(*_LOGIC)
def prepare_logic(node, ctx, ins, outs):
    a, b = binary_inputs(ctx, ins)
    ctx.require(a.dtype in LOGIC_DTYPES and b.dtype in LOGIC_DTYPES,
                f"input dtypes {a.dtype}, {b.dtype}", supported=list(LOGIC_DTYPES))
    odt = _bool_out(ctx, outs, default=a.dtype)
    bc = Broadcast(ctx, a.shape, b.shape)
    fn = _LOGIC[node.op_type]
    shape = bc.shape

    def run(x, y):
        return (np.ascontiguousarray(np.broadcast_to(fn(x != 0, y != 0), shape)).astype(odt),)

    return Prepared([shape], run, dtypes=[odt])


@kernel("Not")
def prepare_not(node, ctx, ins, outs):
    ctx.require(len(ins) >= 1 and ins[0].name and ins[0].shape is not None, "missing input")
    x = ins[0]
    ctx.require(x.dtype in LOGIC_DTYPES, f"input dtype {x.dtype}", supported=list(LOGIC_DTYPES))
    odt = _bool_out(ctx, outs, default=x.dtype)
    shape = tuple(x.shape)

    def run(xa, *_):
        return ((xa == 0).astype(odt),)

    return Prepared([shape], run, dtypes=[odt])
