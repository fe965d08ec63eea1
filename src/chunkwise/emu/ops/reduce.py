"""ReduceSum / Mean / Max / Min / Prod / SumSquare / L1 / L2 / LogSum / LogSumExp (int8, int16).

ESP-DL (``dl/module/include/dl_module_reduce_*.hpp`` on ``dl_module_reduce_base.hpp``) merges
neighbouring axes with the same reduce flag, supports only the merged patterns R, KR, RK, RKR, KRK,
KRKR and RKRK (K kept, R reduced) and visits the reduced elements in memory order. Per output
(``s`` = the reduced integers in that order, ``n`` their count, ``e_in``/``e_out`` exponents)::

    Sum        shift_round(sum(s), e_out - e_in)              int32 (int8) / int64 (int16) sum
    SumSquare  shift_round(sum(s*s), e_out - 2*e_in)
    L1         shift_round(sum(|s|), e_out - e_in)
    Max / Min  max(s) / min(s)                               integers copied, no requantization
    Mean       round(f32(f32(f32(sum(s)) * 2^e_in) / n) * 2^-e_out)
    L2         round(sqrt_newton(f32(sum(s*s)) * 2^(2 e_in)) * 2^-e_out)
    LogSum     round(logf(f32(sum(s)) * 2^e_in) * 2^-e_out)
    LogSumExp  round(logf(f32 running sum of expf(f32(s_i) * 2^e_in)) * 2^-e_out)
               (int8: the expf values come from a 256-entry float table, the same numbers)
    Prod       int8:  round(f32 running product of f32(s_i) * 2^e_in, from 1.f, * 2^-e_out)
               int16: the running product is a double (from 1.0), rounded with tool::round(double)

``round`` is ESP-DL's ``tool::round`` (float or double, see :mod:`..rounding`), then saturation.
With keepdims=0 and every axis reduced the output has shape ``[1]`` (ESP-DL).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..registry import Prepared, arm, kernel, lowering, row_layout
from ..rounding import clamp, qrange, round_f32_sat, round_f64, shift_round
from ._fmath import expf, float_kernel, logf, sqrt_newton

OPS = {
    "ReduceSum": 0,
    "ReduceSumSquare": 1,
    "ReduceL1": 2,
    "ReduceMax": 3,
    "ReduceMin": 4,
    "ReduceMean": 5,
    "ReduceL2": 6,
    "ReduceLogSum": 7,
    "ReduceLogSumExp": 8,
    "ReduceProd": 9,
}

#: merged reduce-flag patterns ESP-DL's ReduceBase::forward_template handles (True = reduced)
SUPPORTED_PATTERNS = {
    (True,), (False, True), (True, False), (True, False, True), (False, True, False),
    (False, True, False, True), (True, False, True, False),
}


def _pattern_name(p):
    return "".join("R" if f else "K" for f in p)


@float_kernel
def _reduce(x, out, op, e_in, e_out, shift, lo, hi, mode, wide):
    """x [outer, inner] ints, reduced along axis 1 in memory order, into out [outer]."""
    outer, inner = x.shape
    s_in = np.float32(2.0 ** e_in)
    s_in2 = np.float32(2.0 ** (2 * e_in))
    s_out = np.float32(2.0 ** (-e_out))
    for o in range(outer):
        if op <= 2:  # integer sums
            acc = np.int64(0)
            for i in range(inner):
                v = np.int64(x[o, i])
                if op == 0:
                    acc += v
                elif op == 1:
                    acc += v * v
                else:
                    acc += v if v >= 0 else -v
            if not wide:  # int8 models accumulate in int32 on the chip
                acc = np.int64(np.int32(acc))
            out[o] = clamp(shift_round(acc, shift, mode), lo, hi)
        elif op == 3 or op == 4:
            m = x[o, 0]
            for i in range(1, inner):
                if (op == 3 and x[o, i] > m) or (op == 4 and x[o, i] < m):
                    m = x[o, i]
            out[o] = m
        elif op == 5 or op == 6 or op == 7:
            acc = np.int64(0)
            for i in range(inner):
                v = np.int64(x[o, i])
                acc += v * v if op == 6 else v
            if not wide:
                acc = np.int64(np.int32(acc))
            if op == 5:
                f = np.float32(np.float32(acc) * s_in)
                f = np.float32(f / np.float32(inner))
            elif op == 6:
                f = sqrt_newton(np.float32(np.float32(acc) * s_in2))
            else:
                f = logf(np.float32(np.float32(acc) * s_in))
            out[o] = round_f32_sat(np.float32(f * s_out), mode, lo, hi)
        elif op == 8:
            acc = np.float32(0.0)
            for i in range(inner):
                acc = np.float32(acc + expf(np.float32(np.float32(x[o, i]) * s_in)))
            out[o] = round_f32_sat(np.float32(logf(acc) * s_out), mode, lo, hi)
        else:  # product
            if wide:
                pd = 1.0
                for i in range(inner):
                    pd = pd * np.float64(np.float32(np.float32(x[o, i]) * s_in))
                r = round_f64(pd * np.float64(s_out), mode)
                if r != r or r > hi:
                    out[o] = hi
                elif r < lo:
                    out[o] = lo
                else:
                    out[o] = np.int64(r)
            else:
                pf = np.float32(1.0)
                for i in range(inner):
                    pf = np.float32(pf * np.float32(np.float32(x[o, i]) * s_in))
                out[o] = round_f32_sat(np.float32(pf * s_out), mode, lo, hi)
    return out


def _axes(node, ctx, ins, rank):
    axes = None
    ctx.require(node.attr("axes") is None, "axes given as an attribute (ESP-DL reads them only from the "
                "second input and would reduce every axis)", supported=["axes as the second input (opset 18)"])
    if len(ins) > 1 and ins[1].name:
        ctx.require(ins[1].is_const, "axes must be a constant initializer")
        ctx.require(ins[1].const.dtype.kind in "iu", f"axes dtype {ins[1].dtype}", supported=["int64"])
        axes = [int(a) for a in np.asarray(ins[1].const).ravel()]
    flags = [False] * rank
    if not axes:
        noop = int(node.attr("noop_with_empty_axes", 0) or 0)
        ctx.require(not noop, "noop_with_empty_axes=1 without axes (ESP-DL would still reduce everything)",
                    supported=["noop_with_empty_axes=0", "explicit axes"])
        return [True] * rank
    for a in axes:
        ctx.require(-rank <= a < rank, f"axis {a} out of range for rank {rank}")
        a = a + rank if a < 0 else a
        ctx.require(not flags[a], f"axis {a} given twice")
        flags[a] = True
    return flags


def _merge(flags):
    out = []
    for f in flags:
        if not out or out[-1] != f:
            out.append(f)
    return tuple(out)


@kernel(*OPS)
def prepare_reduce(node, ctx, ins, outs):
    x, out = ins[0], outs[0]
    op = OPS[node.op_type]
    ctx.require(x.dtype in ("int8", "int16"), f"input dtype {x.dtype}", supported=["int8", "int16"])
    ctx.require(out.dtype == x.dtype, f"output dtype {out.dtype} differs from input {x.dtype}")
    shape = tuple(x.shape)
    ctx.require(len(shape) >= 1, "a scalar input has nothing to reduce")
    flags = _axes(node, ctx, ins, len(shape))
    pattern = _merge(flags)
    ctx.require(pattern in SUPPORTED_PATTERNS,
                f"reduced axes {[i for i, f in enumerate(flags) if f]} of shape {list(shape)} merge to "
                f"{_pattern_name(pattern)}, which ESP-DL does not reduce (it leaves the output unwritten)",
                supported=sorted(_pattern_name(p) for p in SUPPORTED_PATTERNS))
    keepdims = node.attr("keepdims")
    keepdims = 1 if keepdims is None else int(keepdims)
    ctx.require(keepdims in (0, 1), f"keepdims={keepdims}")
    if keepdims:
        out_shape = tuple(1 if f else d for d, f in zip(shape, flags))
    else:
        out_shape = tuple(d for d, f in zip(shape, flags) if not f) or (1,)
    kept = [i for i, f in enumerate(flags) if not f]
    red = [i for i, f in enumerate(flags) if f]
    perm = tuple(kept + red)
    inner = int(np.prod([shape[i] for i in red], dtype=np.int64))
    outer = int(np.prod([shape[i] for i in kept], dtype=np.int64))
    ctx.require(inner >= 1, "reducing an empty axis")
    e_in, e_out = x.exp, out.exp
    ctx.require(abs(e_in) < 15 and abs(e_out) < 31, f"exponents {e_in}/{e_out} out of ESP-DL's range")
    shift = e_out - (2 * e_in if op == 1 else e_in)
    lo, hi = qrange(x.dtype)
    wide = x.dtype == "int16"
    dtype = np.dtype(x.dtype)
    mode = ctx.mode
    identity = perm == tuple(range(len(shape)))

    def run(xa, *_):
        xt = xa if identity else np.transpose(xa, perm)
        x2 = np.ascontiguousarray(xt).reshape(outer, inner)
        o = np.empty(outer, dtype=dtype)
        _reduce(x2, o, op, e_in, e_out, shift, lo, hi, mode, wide)
        return (o.reshape(out_shape),)

    return Prepared([out_shape], run, macs=outer * inner,
                    info={"reduce": (op, e_in, e_out, shift, lo, hi, wide, None if identity else perm, outer, inner)})


# ---- compiled lowering (emu/program.py) -------------------------------------------------------------
REDUCE = row_layout("REDUCE", "x out outer inner op e_in e_out shift lo hi wide")


@arm(REDUCE)
@njit(cache=True, inline="always")
def reduce_arm(row, act, actf, c16, c32, c64, cf, mode):
    L = REDUCE
    outer, inner = row[L.outer], row[L.inner]
    _reduce(act[row[L.x]:row[L.x] + outer * inner].reshape((outer, inner)), act[row[L.out]:row[L.out] + outer],
            row[L.op], row[L.e_in], row[L.e_out], row[L.shift], row[L.lo], row[L.hi], mode, row[L.wide] != 0)


@lowering(*OPS)
def lower_reduce(b, step):
    from .movement import GATHER, positions

    op, e_in, e_out, shift, lo, hi, wide, perm, outer, inner = step.prepared.info["reduce"]
    x, out = b.ins(step)[0], b.outs(step)[0]
    src = b.slot(x.name)
    if perm is not None:  # the reduced axes last, as the kernel's transpose
        src = b.scratch(outer * inner)
        b.emit(GATHER, x=b.slot(x.name), out=src, n=outer * inner,
               map=b.c32(np.transpose(positions(x.shape), perm)))
    b.emit(REDUCE, x=src, out=b.slot(out.name), outer=outer, inner=inner, op=op, e_in=e_in, e_out=e_out, shift=shift,
           lo=lo, hi=hi, wide=wide)
