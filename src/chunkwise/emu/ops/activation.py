"""Element-wise activations and math ops: Sigmoid, Tanh, Swish, HardSigmoid, HardSwish, Elu, Exp,
Log, Sqrt, Gelu and the int16 ``LUT`` op.

How ESP-DL runs them (``dl_module_<op>.hpp``, ``deserialize``):

* ``quant_type`` S8 with a ``lut`` attribute: the ``LUT`` module, ``y = table[x + 128]``
  (the table is at the output exponent).
* op type ``LUT`` (int16 exports, ``original_op_type`` names the function) and ``Gelu``: the
  ``LUT`` module. int16: nearest table entry, index ``round((x + 32768) / step)`` with
  ``step = 65536 / (len(table) - 1)`` and the target's rounding (``dl_base_lut.cpp``).
* otherwise (S8 without a table, S16 with the op's own type, F32): float arithmetic per element::

      t = float(x) * 2**e_in                 # float32, exact
      v = f(t)                               # float32 (see _fmath: libm, fma, double literals)
      y = clip(round(v * 2**-e_out))         # rounding.round_f32_sat (target rule)

  F32 returns ``v`` itself.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..registry import Prepared, arm, kernel, lowering, row_layout
from ..rounding import qrange, round_f32_sat
from ._fmath import expf, float_kernel, fma32, logf, sigmoid, sqrtf, tanh
from ._lut import lut_module, lut_s8, lut_s16, lut_table

SIGMOID, TANH, SWISH, HARDSIGMOID, HARDSWISH, ELU, EXP, LOG, SQRT = range(9)
FLOAT_OPS = {"Sigmoid": SIGMOID, "Tanh": TANH, "Swish": SWISH, "HardSigmoid": HARDSIGMOID,
             "HardSwish": HARDSWISH, "Elu": ELU, "Exp": EXP, "Log": LOG, "Sqrt": SQRT}

QUANT_DTYPES = {"S8": "int8", "S16": "int16", "F32": "float32"}
TABULATE_INT16_ABOVE = 1 << 18  # int16 tensors larger than this use a 65536-entry table of the same values


def quant_dtype(ctx, x) -> str:
    """The dtype the node computes in, from its ``quant_type`` (checked against the input's dtype)."""
    q = ctx.attr("quant_type")
    if q is None:
        q = {v: k for k, v in QUANT_DTYPES.items()}.get(x.dtype)
    ctx.require(q in QUANT_DTYPES, f"quant_type {q!r}", supported=sorted(QUANT_DTYPES))
    dt = QUANT_DTYPES[q]
    ctx.require(x.dtype == dt, f"input dtype {x.dtype} does not match quant_type {q}", supported=[dt])
    return dt


def dl_scale(e: int) -> np.float32:
    """``DL_SCALE(e)`` = 2**e as ESP-DL's float (``DL_RESCALE(e)`` is ``dl_scale(-e)``)."""
    return np.float32(2.0 ** int(e))


@njit(cache=True, inline="always")
def _f(op, t, alpha, beta):
    """The op's float32 function (ESP-DL's expression, see module docstring)."""
    if op == SIGMOID:
        return sigmoid(t)
    if op == TANH:
        return tanh(t)
    if op == SWISH:
        return np.float32(sigmoid(t) * t)
    if op == HARDSIGMOID:
        v = fma32(alpha, t, beta)  # alpha * t + beta, contracted by -O3 -ffast-math
        if np.float32(1.0) < v:
            v = np.float32(1.0)
        if not np.float32(0.0) < v:
            v = np.float32(0.0)
        return v
    if op == HARDSWISH:
        d = 0.166667 * np.float64(t) + 0.5  # double literals: double arithmetic, no double FPU
        if 1.0 < d:
            d = 1.0
        if not 0.0 < d:
            d = 0.0
        return np.float32(d * np.float64(t))
    if op == ELU:
        if t >= np.float32(0.0):
            return t
        return np.float32(alpha * np.float32(expf(t) - np.float32(1.0)))
    if op == EXP:
        return expf(t)
    if op == LOG:
        return logf(t)
    return sqrtf(t)


@float_kernel
def _act_q(x, out, op, in_scale, out_scale, alpha, beta, mode, lo, hi):
    for i in range(x.size):
        t = np.float32(np.float32(x[i]) * in_scale)
        v = _f(op, t, alpha, beta)
        out[i] = round_f32_sat(np.float32(v * out_scale), mode, lo, hi)
    return out


@float_kernel
def _act_f(x, out, op, alpha, beta):
    for i in range(x.size):
        out[i] = _f(op, np.float32(x[i]), alpha, beta)
    return out


def _check_io(ctx, x, outs, dt):
    ctx.require(len(outs) == 1, f"{len(outs)} outputs; the op has one")
    ctx.require(outs[0].dtype in (dt, "undefined"), f"output dtype {outs[0].dtype} differs from the "
                f"op's {dt}", supported=[dt])
    if dt != "float32":
        ctx.require(len(x.exps) == 1 and len(outs[0].exps) == 1,
                    "input and output need one (per-tensor) exponent each")


@kernel("LUT", "Gelu")
def prepare_lut(node, ctx, ins, outs):
    """Always a table (ESP-DL registers ``Gelu`` and ``LUT`` to ``LUT::deserialize``)."""
    ctx.require(len(ins) == 1, f"{len(ins)} inputs; a lookup-table op has one")
    x = ins[0]
    dt = quant_dtype(ctx, x)
    ctx.require(dt in ("int8", "int16"), f"{node.op_type} runs as a lookup table: quant_type must be S8 or "
                f"S16, not {ctx.attr('quant_type')}", supported=["S8", "S16"])
    _check_io(ctx, x, outs, dt)
    got = lut_table(ctx, dt, outs[0].exps)
    if got is None:
        raise ctx.fail("no 'lut' attribute naming the table")
    table, step = got
    attr_step = ctx.attr("int16_lut_step")
    if dt == "int16" and attr_step is not None:
        ctx.require(int(attr_step) == step, f"int16_lut_step={attr_step} but the table's {table.size} entries "
                    f"mean step {step} (ESP-DL uses the table size)")
    return lut_module(ctx, tuple(x.shape), table, step, dtypes=[dt])


@kernel(*FLOAT_OPS)
def prepare_activation(node, ctx, ins, outs):
    ctx.require(len(ins) == 1, f"{len(ins)} inputs; {node.op_type} has one")
    x = ins[0]
    dt = quant_dtype(ctx, x)
    _check_io(ctx, x, outs, dt)
    op = FLOAT_OPS[node.op_type]
    if dt == "int8":  # only S8 looks at the table (the S16 modules ignore it)
        got = lut_table(ctx, dt, outs[0].exps)
        if got is not None:
            return lut_module(ctx, tuple(x.shape), *got, dtypes=[dt])
    if op == HARDSIGMOID:
        alpha, beta = float(node.attr("alpha", 0.2)), float(node.attr("beta", 0.5))
    elif op == ELU:
        alpha, beta = float(node.attr("alpha", 1.0)), 0.0
    else:
        alpha, beta = 0.0, 0.0
    alpha, beta = np.float32(alpha), np.float32(beta)
    shape = tuple(x.shape)
    if dt == "float32":
        def run(xa, *_):
            flat = np.ascontiguousarray(xa, dtype=np.float32).ravel()
            out = np.empty(flat.shape, dtype=np.float32)
            return (_act_f(flat, out, op, alpha, beta).reshape(shape),)

        return Prepared([shape], run, dtypes=[dt])

    in_scale, out_scale = dl_scale(x.exp), dl_scale(-outs[0].exp)
    lo, hi = qrange(dt)
    mode = ctx.mode
    npdt = np.dtype(dt)
    size = int(np.prod(shape, dtype=np.int64))
    if dt == "int8" or size > TABULATE_INT16_ABOVE:
        # y depends on x alone: compute it once for every possible input (same kernel, so the same
        # values) and look it up, as the LUT module would
        info = np.iinfo(npdt)
        xs = np.arange(info.min, info.max + 1, dtype=npdt)
        table = _act_q(xs, np.empty(xs.shape, dtype=npdt), op, in_scale, out_scale, alpha, beta, mode, lo, hi)
        if dt == "int16":
            table = np.append(table, table[-1])  # 65537 entries: step 1, index x + 32768 (never the last)
        return lut_module(ctx, shape, table, 1, dtypes=[dt], info={"path": "float32, tabulated"})

    def run(xa, *_):
        flat = np.ascontiguousarray(xa).ravel()
        out = np.empty(flat.shape, dtype=npdt)
        return (_act_q(flat, out, op, in_scale, out_scale, alpha, beta, mode, lo, hi).reshape(shape),)

    return Prepared([shape], run, dtypes=[dt], info={"path": "float32",
                                                     "float_act": (op, in_scale, out_scale, alpha, beta, lo, hi)})


# ---- compiled lowering (emu/program.py) -------------------------------------------------------------
LUT8 = row_layout("LUT8", "x out n table")
LUT16 = row_layout("LUT16", "x out n table shift")
ACT = row_layout("ACT", "x out n op scales lo hi")  # scales: cf[in_scale, out_scale, alpha, beta]


@arm(LUT8)
@njit(cache=True, inline="always")
def lut8_arm(row, act, actf, c16, c32, c64, cf, mode):
    L = LUT8
    n = row[L.n]
    lut_s8(act[row[L.x]:row[L.x] + n], c32[row[L.table]:row[L.table] + 256], act[row[L.out]:row[L.out] + n])


@arm(LUT16)
@njit(cache=True, inline="always")
def lut16_arm(row, act, actf, c16, c32, c64, cf, mode):
    L = LUT16
    n = row[L.n]
    lut_s16(act[row[L.x]:row[L.x] + n], c32[row[L.table]:row[L.table] + 65537], act[row[L.out]:row[L.out] + n],
            row[L.shift], mode)


@arm(ACT)
@njit(cache=True, inline="always")
def act_arm(row, act, actf, c16, c32, c64, cf, mode):
    L = ACT
    n, s = row[L.n], row[L.scales]
    _act_q(act[row[L.x]:row[L.x] + n], act[row[L.out]:row[L.out] + n], row[L.op], cf[s], cf[s + 1], cf[s + 2],
           cf[s + 3], mode, row[L.lo], row[L.hi])


def emit_lut(b, step) -> bool:
    """The LUT module's row when ``prepare`` made one (``info["table"]``); False otherwise."""
    found = step.prepared.info.get("table")
    if found is None:
        return False
    table, lut_step = found
    x, out = b.ins(step)[0], b.outs(step)[0]
    n = int(np.prod(x.shape, dtype=np.int64))
    if table.dtype == np.int8:
        b.emit(LUT8, x=b.slot(x.name), out=b.slot(out.name), n=n, table=b.c32(table))
    else:
        padded = np.zeros(65537, dtype=np.int32)  # the arm's view is the largest table (step 1)
        padded[:table.size] = table
        b.emit(LUT16, x=b.slot(x.name), out=b.slot(out.name), n=n, table=b.c32(padded),
               shift=int(lut_step).bit_length() - 1)
    return True


@lowering("LUT", "Gelu", *FLOAT_OPS)
def lower_activation(b, step):
    if emit_lut(b, step):
        return
    found = step.prepared.info.get("float_act")
    if found is None:
        raise b.refuse("float32 activation (no integer path)")
    op, in_scale, out_scale, alpha, beta, lo, hi = found
    x, out = b.ins(step)[0], b.outs(step)[0]
    b.emit(ACT, x=b.slot(x.name), out=b.slot(out.name), n=int(np.prod(x.shape, dtype=np.int64)), op=op,
           scales=b.cf([in_scale, out_scale, alpha, beta]), lo=lo, hi=hi)
