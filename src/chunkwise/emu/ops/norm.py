"""LayerNormalization, RMSNormalization, LpNormalization (ESP-DL ``dl_module_*_normalization.hpp``).

All three normalize slices of the tensor (as ESP-DL stores it) in float32, ESP-DL's order:

LayerNormalization (quantized; slice = dims ``axis..`` flattened, ``n`` elements)::

    mean = float((double)sum_int32(x) / n)
    var  = sum_j fma(d_j, d_j, var),  d_j = float(x_j) - mean     # contracted by -ffast-math -O3
    mean *= s_in;  var *= s_in * s_in;  var /= n
    inv  = 1 / sqrt_newton(var + eps)                               # dl::math::sqrt_newton
    y_j  = round(((float(x_j) * s_in - mean) * inv * (w_j * s_w) + b_j * s_b) * 2**-e_out)

RMSNormalization (scale ``w`` is float32)::

    ms  = float(sum x^2 (exact int)) * s_in^2 / n;  r = 1 / sqrtf(ms + eps) * s_in * 2**-e_out
    y_j = round(float(x_j) * r * w_j)                               # dl_esp32p4_rmsnorm_s8/s16

LpNormalization (p = 1 or 2, slice = one line along ``axis``)::

    inv = 1 / sum|x| (p=1) or 1 / sqrtf(float(sum x^2)) (p=2), 0 for an all-zero line
    y_j = round(float(x_j) * inv * 2**-e_out)     (0 where inv == 0)

``round`` is rounding.round_f32_sat (the target's rule) with saturation.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..registry import Prepared, arm, kernel, lowering, row_layout
from ..rounding import qrange, round_f32_sat
from ._fmath import float_kernel, fma32, sqrt_newton, sqrtf
from .activation import dl_scale, quant_dtype


def _axis(ctx, rank: int, allow_rank: bool = False) -> int:
    axis = int(ctx.attr("axis", -1))
    hi = rank if allow_rank else rank - 1
    ctx.require(-rank <= axis <= hi, f"axis {axis} out of range for rank {rank}")
    return axis % rank if axis < rank else axis


def _split(shape, axis):
    outer = int(np.prod(shape[:axis], dtype=np.int64))
    inner = int(np.prod(shape[axis:], dtype=np.int64))
    return outer, inner


# ---------------------------------------------------------------- LayerNormalization

@float_kernel
def _layernorm_q(x, w, b, y, mean_o, inv_o, s_in, s_w, s_b, s_out, s_mean, s_inv, eps, mode, lo, hi,
                 has_w, has_b, want_mean, want_inv, mlo, mhi, ilo, ihi):
    outer, n = x.shape
    nf = np.float32(n)
    for o in range(outer):
        acc = np.int64(0)
        for j in range(n):
            acc += np.int64(x[o, j])
        acc = np.int64(np.int32(acc))  # int sum_val (wraps like the chip's int)
        mean = np.float32(np.float64(acc) / np.float64(n))
        if want_mean:
            mean_o[o] = round_f32_sat(np.float32(np.float32(mean * s_mean) * s_in), mode, mlo, mhi)
        var = np.float32(0.0)
        for j in range(n):
            d = np.float32(np.float32(x[o, j]) - mean)
            var = fma32(d, d, var)
        mean = np.float32(mean * s_in)
        var = np.float32(var * np.float32(s_in * s_in))
        var = np.float32(var / nf)
        inv = np.float32(np.float32(1.0) / sqrt_newton(np.float32(var + eps)))
        if want_inv:
            inv_o[o] = round_f32_sat(np.float32(inv * s_inv), mode, ilo, ihi)
        for j in range(n):
            xv = np.float32(np.float32(x[o, j]) * s_in)
            nv = np.float32(np.float32(xv - mean) * inv)
            sv = np.float32(np.float32(w[j]) * s_w) if has_w else np.float32(1.0)
            bv = np.float32(np.float32(b[j]) * s_b) if has_b else np.float32(0.0)
            r = np.float32(np.float32(nv * sv) + bv)
            y[o, j] = round_f32_sat(np.float32(r * s_out), mode, lo, hi)


@float_kernel
def _layernorm_f(x, w, b, y, mean_o, inv_o, eps, has_w, has_b, want_mean, want_inv):
    outer, n = x.shape
    nf = np.float32(n)
    for o in range(outer):
        mean = np.float32(0.0)
        for j in range(n):
            mean = np.float32(mean + x[o, j])
        mean = np.float32(mean / nf)
        if want_mean:
            mean_o[o] = mean
        var = np.float32(0.0)
        for j in range(n):
            d = np.float32(x[o, j] - mean)
            var = fma32(d, d, var)
        var = np.float32(var / nf)
        inv = np.float32(np.float32(1.0) / sqrt_newton(np.float32(var + eps)))
        if want_inv:
            inv_o[o] = inv
        for j in range(n):
            nv = np.float32(np.float32(x[o, j] - mean) * inv)
            sv = w[j] if has_w else np.float32(1.0)
            bv = b[j] if has_b else np.float32(0.0)
            y[o, j] = np.float32(np.float32(nv * sv) + bv)


@kernel("LayerNormalization")
def prepare_layernorm(node, ctx, ins, outs):
    ctx.require(1 <= len(ins) <= 3, f"{len(ins)} inputs; LayerNormalization takes X, Scale, B")
    ctx.require(1 <= len(outs) <= 3, f"{len(outs)} outputs; LayerNormalization has Y, Mean, InvStdDev")
    x = ins[0]
    dt = quant_dtype(ctx, x)
    shape = tuple(x.shape)
    rank = len(shape)
    ctx.require(rank >= 1, "scalar input")
    axis = _axis(ctx, rank)
    outer, n = _split(shape, axis)
    ctx.require(n >= 1, "empty normalized slice")
    w = ins[1] if len(ins) > 1 and ins[1].name else None
    b = ins[2] if len(ins) > 2 and ins[2].name else None
    for name, t in (("Scale", w), ("B", b)):
        if t is not None:
            ctx.require(t.dtype == dt, f"{name} is {t.dtype}; ESP-DL reads it as {dt}", supported=[dt])
            ctx.require(t.shape is not None and int(np.prod(t.shape, dtype=np.int64)) == n,
                        f"{name} has shape {t.shape}; ESP-DL reads {n} values (dims from axis on)")
            if dt != "float32":
                ctx.require(len(t.exps) == 1, f"{name} needs one (per-tensor) exponent")
    for k, o in enumerate(outs):
        ctx.require(o.dtype in (dt, "undefined"), f"output {k} dtype {o.dtype}; ESP-DL writes {dt}", supported=[dt])
        if dt != "float32":
            ctx.require(len(o.exps) == 1 or (k > 0 and not o.name), f"output {k} needs one exponent")
    want_mean = len(outs) > 1 and bool(outs[1].name)
    want_inv = len(outs) > 2 and bool(outs[2].name)
    stat_shape = tuple(shape[:axis]) + (1,) * (rank - axis)
    eps = np.float32(float(node.attr("epsilon", 1e-5)))
    npdt = np.dtype(dt)
    has_w, has_b = w is not None, b is not None
    n_out = len(outs)
    shapes = [shape, stat_shape, stat_shape][:n_out]
    if dt == "float32":
        def run(xa, wa=None, ba=None, *_):
            x2 = np.ascontiguousarray(xa, dtype=np.float32).reshape(outer, n)
            wf = np.ascontiguousarray(wa, dtype=np.float32).ravel() if has_w else np.zeros(1, np.float32)
            bf = np.ascontiguousarray(ba, dtype=np.float32).ravel() if has_b else np.zeros(1, np.float32)
            y = np.empty((outer, n), np.float32)
            mo, io = np.empty(outer, np.float32), np.empty(outer, np.float32)
            _layernorm_f(x2, wf, bf, y, mo, io, eps, has_w, has_b, want_mean, want_inv)
            return (y.reshape(shape), mo.reshape(stat_shape), io.reshape(stat_shape))[:n_out]

        return Prepared(shapes, run, dtypes=[dt] * n_out)

    lo, hi = qrange(dt)
    s_in = dl_scale(x.exp)
    s_out = dl_scale(-outs[0].exp)
    s_w = dl_scale(w.exp) if has_w else np.float32(1.0)
    s_b = dl_scale(b.exp) if has_b else np.float32(0.0)
    s_mean = dl_scale(-outs[1].exp) if want_mean else np.float32(1.0)
    s_inv = dl_scale(-outs[2].exp) if want_inv else np.float32(1.0)
    mode = ctx.mode

    def run(xa, wa=None, ba=None, *_):
        x2 = np.ascontiguousarray(xa).reshape(outer, n)
        wi = np.ascontiguousarray(wa).ravel() if has_w else np.zeros(1, npdt)
        bi = np.ascontiguousarray(ba).ravel() if has_b else np.zeros(1, npdt)
        y = np.empty((outer, n), npdt)
        mo, io = np.empty(outer, npdt), np.empty(outer, npdt)
        _layernorm_q(x2, wi, bi, y, mo, io, s_in, s_w, s_b, s_out, s_mean, s_inv, eps, mode, lo, hi,
                     has_w, has_b, want_mean, want_inv, lo, hi, lo, hi)
        return (y.reshape(shape), mo.reshape(stat_shape), io.reshape(stat_shape))[:n_out]

    return Prepared(shapes, run, dtypes=[dt] * n_out,
                    info={"layernorm": (outer, n, (s_in, s_w, s_b, s_out, s_mean, s_inv, eps), lo, hi, has_w, has_b,
                                        want_mean, want_inv)})


# ---------------------------------------------------------------- RMSNormalization

@float_kernel
def _rmsnorm_q(x, w, y, s_in_sq, factor, eps, mode, lo, hi):
    outer, n = x.shape
    nf = np.float32(n)
    for o in range(outer):
        acc = np.int64(0)
        for j in range(n):
            v = np.int64(x[o, j])
            acc += v * v
        ms = np.float32(np.float32(np.float32(acc) * s_in_sq) / nf)
        r = np.float32(np.float32(1.0) / sqrtf(np.float32(ms + eps)))
        r = np.float32(r * factor)
        for j in range(n):
            v = np.float32(np.float32(np.float32(x[o, j]) * r) * w[j])
            y[o, j] = round_f32_sat(v, mode, lo, hi)


@float_kernel
def _rmsnorm_f(x, w, y, eps):
    outer, n = x.shape
    nf = np.float32(n)
    for o in range(outer):
        ms = np.float32(0.0)
        for j in range(n):
            ms = fma32(x[o, j], x[o, j], ms)
        ms = np.float32(ms / nf)
        r = np.float32(np.float32(1.0) / sqrtf(np.float32(ms + eps)))
        for j in range(n):
            y[o, j] = np.float32(np.float32(x[o, j] * r) * w[j])


@kernel("RMSNormalization")
def prepare_rmsnorm(node, ctx, ins, outs):
    ctx.require(len(ins) == 2 and ins[1].name, "RMSNormalization takes X and scale")
    ctx.require(len(outs) == 1, f"{len(outs)} outputs; ESP-DL's RMSNormalization has one")
    x, w = ins
    dt = quant_dtype(ctx, x)
    shape = tuple(x.shape)
    rank = len(shape)
    ctx.require(rank >= 1, "scalar input")
    axis = _axis(ctx, rank)
    outer, n = _split(shape, axis)
    ctx.require(n >= 1, "empty normalized slice")
    ctx.require(w.dtype == "float32", f"scale is {w.dtype}; ESP-DL keeps it float32", supported=["float32"])
    ctx.require(w.shape is not None and int(np.prod(w.shape, dtype=np.int64)) == n,
                f"scale has shape {w.shape}; ESP-DL reads {n} values (dims from axis on)")
    ctx.require(outs[0].dtype in (dt, "undefined"), f"output dtype {outs[0].dtype}; ESP-DL writes {dt}",
                supported=[dt])
    eps = np.float32(float(node.attr("epsilon", 1e-5)))
    if dt == "float32":
        def run(xa, wa, *_):
            y = np.empty((outer, n), np.float32)
            _rmsnorm_f(np.ascontiguousarray(xa, dtype=np.float32).reshape(outer, n),
                       np.ascontiguousarray(wa, dtype=np.float32).ravel(), y, eps)
            return (y.reshape(shape),)

        return Prepared([shape], run, dtypes=[dt])
    ctx.require(len(x.exps) == 1 and len(outs[0].exps) == 1, "input and output need one exponent each")
    s_in = dl_scale(x.exp)
    s_in_sq = np.float32(s_in * s_in)
    factor = np.float32(s_in * dl_scale(-outs[0].exp))
    lo, hi = qrange(dt)
    mode = ctx.mode
    npdt = np.dtype(dt)

    def run(xa, wa, *_):
        y = np.empty((outer, n), npdt)
        _rmsnorm_q(np.ascontiguousarray(xa).reshape(outer, n), np.ascontiguousarray(wa, dtype=np.float32).ravel(),
                   y, s_in_sq, factor, eps, mode, lo, hi)
        return (y.reshape(shape),)

    return Prepared([shape], run, dtypes=[dt], info={"rmsnorm": (outer, n, (s_in_sq, factor, eps), lo, hi)})


# ---------------------------------------------------------------- LpNormalization

@float_kernel
def _lpnorm(x, y, p, quant, s_out, mode, lo, hi):
    """x [outer, len, inner]; quantized (int in/out) or float32."""
    outer, n, inner = x.shape
    for o in range(outer):
        for k in range(inner):
            if p == 1:
                s = np.float32(0.0)
                for i in range(n):
                    s = np.float32(s + abs(np.float32(x[o, i, k])))
                inv = np.float32(np.float32(1.0) / s) if s > np.float32(0.0) else np.float32(0.0)
            else:
                if quant:
                    acc = np.int64(0)
                    for i in range(n):
                        v = np.int64(x[o, i, k])
                        acc += v * v
                    s = np.float32(acc)
                else:  # dl::base::reduce_l2(float*): 4 at a time, products contracted into fmas
                    s = np.float32(0.0)
                    i = 0
                    if inner == 1:
                        while i + 3 < n:
                            v0, v1, v2, v3 = x[o, i, 0], x[o, i + 1, 0], x[o, i + 2, 0], x[o, i + 3, 0]
                            g = fma32(v0, v0, np.float32(v1 * v1))
                            g = fma32(v2, v2, g)
                            g = fma32(v3, v3, g)
                            s = np.float32(s + g)
                            i += 4
                    while i < n:
                        s = fma32(x[o, i, k], x[o, i, k], s)
                        i += 1
                inv = np.float32(np.float32(1.0) / sqrtf(s)) if s > np.float32(0.0) else np.float32(0.0)
            if quant:
                inv = np.float32(inv * s_out)
            for i in range(n):
                if not inv > np.float32(0.0):
                    y[o, i, k] = 0
                elif quant:
                    y[o, i, k] = round_f32_sat(np.float32(np.float32(x[o, i, k]) * inv), mode, lo, hi)
                else:
                    y[o, i, k] = np.float32(x[o, i, k]) * inv


@kernel("LpNormalization")
def prepare_lpnorm(node, ctx, ins, outs):
    ctx.require(len(ins) == 1, f"{len(ins)} inputs; LpNormalization has one")
    ctx.require(len(outs) == 1, f"{len(outs)} outputs; LpNormalization has one")
    x = ins[0]
    dt = quant_dtype(ctx, x)
    shape = tuple(x.shape)
    rank = len(shape)
    ctx.require(rank >= 1, "scalar input")
    axis = _axis(ctx, rank)
    p = int(node.attr("p", 2))
    ctx.require(p in (1, 2), f"p={p}", supported=["p=1", "p=2"])
    ctx.require(outs[0].dtype in (dt, "undefined"), f"output dtype {outs[0].dtype}; ESP-DL writes {dt}",
                supported=[dt])
    outer = int(np.prod(shape[:axis], dtype=np.int64))
    n = int(shape[axis])
    inner = int(np.prod(shape[axis + 1:], dtype=np.int64))
    view = (outer, n, inner)
    quant = dt != "float32"
    if quant:
        ctx.require(len(outs[0].exps) == 1, "output needs one (per-tensor) exponent")
        s_out = dl_scale(-outs[0].exp)
        lo, hi = qrange(dt)
    else:
        s_out, lo, hi = np.float32(1.0), 0, 0
    mode = ctx.mode
    npdt = np.dtype(dt)

    def run(xa, *_):
        y = np.empty(view, npdt)
        _lpnorm(np.ascontiguousarray(xa).reshape(view), y, p, quant, s_out, mode, lo, hi)
        return (y.reshape(shape),)

    return Prepared([shape], run, dtypes=[dt], info={"lpnorm": (view, p, s_out, lo, hi)} if quant else {})


# ---- compiled lowering (emu/program.py) -------------------------------------------------------------
LAYERNORM = row_layout("LAYERNORM", "x w b out mean inv outer n scales lo hi has_w has_b want_mean want_inv")
RMSNORM = row_layout("RMSNORM", "x w out outer n scales lo hi")
LPNORM = row_layout("LPNORM", "x out outer n inner p scale lo hi")


@arm(LAYERNORM)
@njit(cache=True, inline="always")
def layernorm_arm(row, act, actf, c16, c32, c64, cf, mode):
    L = LAYERNORM
    o, n, s = row[L.outer], row[L.n], row[L.scales]
    _layernorm_q(act[row[L.x]:row[L.x] + o * n].reshape((o, n)), act[row[L.w]:row[L.w] + n],
                 act[row[L.b]:row[L.b] + n], act[row[L.out]:row[L.out] + o * n].reshape((o, n)),
                 act[row[L.mean]:row[L.mean] + o], act[row[L.inv]:row[L.inv] + o], cf[s], cf[s + 1], cf[s + 2],
                 cf[s + 3], cf[s + 4], cf[s + 5], cf[s + 6], mode, row[L.lo], row[L.hi], row[L.has_w] != 0,
                 row[L.has_b] != 0, row[L.want_mean] != 0, row[L.want_inv] != 0, row[L.lo], row[L.hi], row[L.lo],
                 row[L.hi])


@arm(RMSNORM)
@njit(cache=True, inline="always")
def rmsnorm_arm(row, act, actf, c16, c32, c64, cf, mode):
    L = RMSNORM
    o, n, s = row[L.outer], row[L.n], row[L.scales]
    _rmsnorm_q(act[row[L.x]:row[L.x] + o * n].reshape((o, n)), actf[row[L.w]:row[L.w] + n],
               act[row[L.out]:row[L.out] + o * n].reshape((o, n)), cf[s], cf[s + 1], cf[s + 2], mode, row[L.lo],
               row[L.hi])


@arm(LPNORM)
@njit(cache=True, inline="always")
def lpnorm_arm(row, act, actf, c16, c32, c64, cf, mode):
    L = LPNORM
    o, n, i = row[L.outer], row[L.n], row[L.inner]
    _lpnorm(act[row[L.x]:row[L.x] + o * n * i].reshape((o, n, i)),
            act[row[L.out]:row[L.out] + o * n * i].reshape((o, n, i)), row[L.p], True, cf[row[L.scale]], mode,
            row[L.lo], row[L.hi])


@lowering("LayerNormalization")
def lower_layernorm(b, step):
    found = step.prepared.info.get("layernorm")
    if found is None:
        raise b.refuse("float32 LayerNormalization")
    outer, n, scales, lo, hi, has_w, has_b, want_mean, want_inv = found
    ins, outs = b.ins(step), step.outputs
    unused = b.scratch(max(n, outer))  # stands for an absent scale / bias / statistic output
    b.emit(LAYERNORM, x=b.slot(ins[0].name), w=b.slot(ins[1].name) if has_w else unused,
           b=b.slot(ins[2].name) if has_b else unused, out=b.slot(outs[0]),
           mean=b.slot(outs[1]) if want_mean else unused, inv=b.slot(outs[2]) if want_inv else unused, outer=outer,
           n=n, scales=b.cf(scales), lo=lo, hi=hi, has_w=has_w, has_b=has_b, want_mean=want_mean,
           want_inv=want_inv)


@lowering("RMSNormalization")
def lower_rmsnorm(b, step):
    found = step.prepared.info.get("rmsnorm")
    if found is None:
        raise b.refuse("float32 RMSNormalization")
    outer, n, scales, lo, hi = found
    ins = b.ins(step)
    b.emit(RMSNORM, x=b.slot(ins[0].name), w=b.slot(ins[1].name), out=b.slot(step.outputs[0]), outer=outer, n=n,
           scales=b.cf(scales), lo=lo, hi=hi)


@lowering("LpNormalization")
def lower_lpnorm(b, step):
    found = step.prepared.info.get("lpnorm")
    if found is None:
        raise b.refuse("float32 LpNormalization")
    (o, n, i), p, s_out, lo, hi = found
    b.emit(LPNORM, x=b.slot(step.inputs[0]), out=b.slot(step.outputs[0]), outer=o, n=n, inner=i, p=p,
           scale=b.cf([s_out]), lo=lo, hi=hi)
