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

from ..registry import Prepared, kernel, lowering, no_lowering
from .elementwise import (BINARY, OP_EQ, OP_GE, OP_GT, OP_LE, OP_LT, Broadcast, binary_flat, binary_inputs,
                          compute_dtype, one_exp)

_COMPARE = {
    "Equal": OP_EQ,
    "Greater": OP_GT,
    "GreaterOrEqual": OP_GE,
    "Less": OP_LT,
    "LessOrEqual": OP_LE,
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
    op = _COMPARE[node.op_type]
    shape = bc.shape
    dims = bc.dims
    size = int(np.prod(shape, dtype=np.int64))

    def run(x, y):  # 0 / 1 as raw integers (ESP-DL compares the stored values)
        out = np.empty(size, dtype=np.int8)
        binary_flat(np.ascontiguousarray(x).reshape(-1), np.ascontiguousarray(y).reshape(-1), out, dims, op, 0,
                    np.float32(1.0), 0, 0, 1)
        return (out.astype(odt).reshape(shape),)

    return Prepared([shape], run, dtypes=[odt], info={**info, "binary": (op, dims, 0, np.float32(1.0), 0, 1)})


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


# ---- compiled lowering (emu/program.py) -------------------------------------------------------------
@lowering(*_COMPARE)
def lower_compare(b, step):
    op, dims, shift, scale, lo, hi = step.prepared.info["binary"]
    x, y = step.inputs[:2]
    b.emit(BINARY, a=b.slot(x), b=b.slot(y), out=b.slot(step.outputs[0]), dims=b.c64(dims), op=op, shift=shift,
           scale=b.cf([scale]), lo=lo, hi=hi)


no_lowering("And", "Or", "Xor", "Not", reason="ESP-DL registers no module for it (the chip cannot load it); "
            "runs on the per-node path")
