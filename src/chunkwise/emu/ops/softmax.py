"""Softmax and LogSoftmax (``dl_module_softmax.hpp``, ``dl_module_log_softmax.hpp``).

The output is float32 for every quant_type. Along ``axis`` (of the tensor as ESP-DL stores it),
slice by slice, in float32 and in ESP-DL's order:

* S8: ``e = T[x + 128]`` with ``T[i] = expf(2**e_in * (i - 128))`` (no max subtraction);
  Softmax ``e / sum(e)``; LogSoftmax ``2**e_in * x - logf(sum(e))``.
* S16 (``f = 2**e_in * x``) and F32 (``f = x``): ``m = max(f)``; Softmax ``expf(f - m) / sum``;
  LogSoftmax ``(f - m) - logf(sum(expf(f - m)))``.

Sums run sequentially in float32 from index 0.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..registry import Prepared, arm, kernel, lowering, row_layout
from ._fmath import expf, float_kernel, logf
from .activation import dl_scale, quant_dtype


@float_kernel
def _softmax_lut(x, table, out, log, scale):
    """x [outer, len, inner] int8; out float32 of the same shape."""
    outer, n, inner = x.shape
    for o in range(outer):
        for k in range(inner):
            s = np.float32(0.0)
            for i in range(n):
                s = np.float32(s + table[np.int64(x[o, i, k]) + 128])
            if log:
                ls = logf(s)
                for i in range(n):
                    out[o, i, k] = np.float32(scale * np.float32(x[o, i, k])) - ls
            else:
                for i in range(n):
                    out[o, i, k] = table[np.int64(x[o, i, k]) + 128] / s
    return out


@float_kernel
def _softmax_float(f, out, log):
    """f [outer, len, inner] float32 (already dequantized); out float32."""
    outer, n, inner = f.shape
    for o in range(outer):
        for k in range(inner):
            m = f[o, 0, k]
            for i in range(1, n):
                v = f[o, i, k]
                if m < v:  # DL_MAX(m, v)
                    m = v
            s = np.float32(0.0)
            if log:
                for i in range(n):
                    s = np.float32(s + expf(np.float32(f[o, i, k] - m)))
                ls = logf(s)
                for i in range(n):
                    out[o, i, k] = np.float32(f[o, i, k] - m) - ls
            else:
                for i in range(n):
                    e = expf(np.float32(f[o, i, k] - m))
                    out[o, i, k] = e
                    s = np.float32(s + e)
                for i in range(n):
                    out[o, i, k] = out[o, i, k] / s
    return out


@kernel("Softmax", "LogSoftmax")
def prepare_softmax(node, ctx, ins, outs):
    log = node.op_type == "LogSoftmax"
    ctx.require(len(ins) == 1, f"{len(ins)} inputs; {node.op_type} has one")
    x = ins[0]
    dt = quant_dtype(ctx, x)
    ctx.require(len(outs) == 1, f"{len(outs)} outputs; {node.op_type} has one")
    ctx.require(outs[0].dtype in ("float32", "undefined"),
                f"output dtype {outs[0].dtype}: ESP-DL's {node.op_type} writes float32", supported=["float32"])
    shape = tuple(x.shape)
    rank = len(shape)
    axis = int(node.attr("axis", -1))
    if rank == 0:
        def run0(xa, *_):
            return (np.full((), 0.0 if log else 1.0, dtype=np.float32),)

        return Prepared([shape], run0, dtypes=["float32"])
    ctx.require(-rank <= axis < rank, f"axis {axis} out of range for rank {rank}")
    axis = axis % rank
    outer = int(np.prod(shape[:axis], dtype=np.int64))
    n = int(shape[axis])
    inner = int(np.prod(shape[axis + 1:], dtype=np.int64))
    ctx.require(n >= 1, "empty softmax axis")
    view = (outer, n, inner)
    if dt == "int8":
        ctx.require(len(x.exps) == 1, "input needs one (per-tensor) exponent")
        scale = dl_scale(x.exp)
        i = np.arange(256, dtype=np.int64) - 128
        table = np.array([np.float32(np.exp(np.float64(np.float32(scale * np.float32(v))))) for v in i],
                         dtype=np.float32)

        def run(xa, *_):
            out = np.empty(view, dtype=np.float32)
            _softmax_lut(np.ascontiguousarray(xa).reshape(view), table, out, log, scale)
            return (out.reshape(shape),)

        info = {"softmax": (view, log, scale, table)}
    else:
        if dt == "int16":
            ctx.require(len(x.exps) == 1, "input needs one (per-tensor) exponent")
        scale = dl_scale(x.exp) if dt == "int16" else None

        def run(xa, *_):
            f = np.ascontiguousarray(xa).reshape(view)
            f = (f.astype(np.float32) * scale) if scale is not None else f.astype(np.float32)
            out = np.empty(view, dtype=np.float32)
            _softmax_float(f, out, log)
            return (out.reshape(shape),)

        info = {"softmax": (view, log, scale, None)}

    return Prepared([shape], run, dtypes=["float32"], info=info)


# ---- compiled lowering (emu/program.py) -------------------------------------------------------------
SOFTMAX8 = row_layout("SOFTMAX8", "x out outer n inner log scale table")
SOFTMAXF = row_layout("SOFTMAXF", "x out outer n inner log")


@arm(SOFTMAX8)
@njit(cache=True, inline="always")
def softmax8_arm(row, act, actf, c16, c32, c64, cf, mode):
    L = SOFTMAX8
    o, n, i = row[L.outer], row[L.n], row[L.inner]
    _softmax_lut(act[row[L.x]:row[L.x] + o * n * i].reshape((o, n, i)), cf[row[L.table]:row[L.table] + 256],
                 actf[row[L.out]:row[L.out] + o * n * i].reshape((o, n, i)), row[L.log] != 0, cf[row[L.scale]])


@arm(SOFTMAXF)
@njit(cache=True, inline="always")
def softmaxf_arm(row, act, actf, c16, c32, c64, cf, mode):
    L = SOFTMAXF
    o, n, i = row[L.outer], row[L.n], row[L.inner]
    _softmax_float(actf[row[L.x]:row[L.x] + o * n * i].reshape((o, n, i)),
                   actf[row[L.out]:row[L.out] + o * n * i].reshape((o, n, i)), row[L.log] != 0)


@lowering("Softmax", "LogSoftmax")
def lower_softmax(b, step):
    from .quantize_ops import DEQUANT

    found = step.prepared.info.get("softmax")
    if found is None:
        raise b.refuse("scalar input")
    (o, n, i), log, scale, table = found
    x, out = b.ins(step)[0], b.outs(step)[0]
    if table is not None:
        b.emit(SOFTMAX8, x=b.slot(x.name), out=b.slot(out.name), outer=o, n=n, inner=i, log=log,
               scale=b.cf([scale]), table=b.cf(table))
        return
    src = b.slot(x.name)
    if scale is not None:  # int16: the dequantized input first, as the kernel does
        src = b.scratch(o * n * i)
        b.emit(DEQUANT, x=b.slot(x.name), out=src, n=o * n * i, scale=b.cf([scale]))
    b.emit(SOFTMAXF, x=src, out=b.slot(out.name), outer=o, n=n, inner=i, log=log)
