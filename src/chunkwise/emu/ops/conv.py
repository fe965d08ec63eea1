"""Conv (1-D/2-D, grouped, depthwise, dilated, strided, fused activation) and Gemm.

Integer arithmetic (ESP-DL ``dl_base_conv2d`` / ``dl_base_depthwise_conv2d``)::

    acc[c] = sum(x * w[..., c]) + bias[c]        # exact int64; bias at exponent e_in + e_w[c]
    y[c]   = shift_round(acc[c], e_out - e_in - e_w[c])   # target rounding
    y      = saturate(relu(y) if activation == Relu else y)

Activations are NHWC (1-D: NWC, run as H = 1). Logical weights ``[kH, kW, Cin/group, Cout]``,
depthwise ``[kH, kW, C, 1]``.

int16 is the same on the chip (QACC accumulation, one ``srcmb`` shift/round/saturate). ESP-PPQ's
int16 goldens come from torch float32 and differ by one on near-ties: docs/int16-deviations.md.

Two exact ways to compute ``sum(x * w)``, chosen per node in ``prepare``:

- integer loops (``_conv2d``), for depthwise / grouped convs and small layers;
- a float GEMM through BLAS (``_gemm_conv``), for the rest: x (im2col for k > 1, strides, pads) times
  the weights as a ``[kH*kW*Cin, Cout]`` matrix. Every product and every partial sum is an integer, so
  float32 computes them exactly while ``max|x| * max_c sum|w[:, c]| <= 2**24`` (float64: ``2**52``),
  whatever order BLAS adds in; :func:`gemm_dtype` checks that bound from the weights. The exact sums
  are then requantized by :func:`requant_gemm` with the same rounding rule as the integer path.
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numpy.lib.stride_tricks import sliding_window_view

from ...ir.ops import window
from ..registry import Prepared, kernel
from ..rounding import clamp, qrange, requant, round_f

ACTIVATIONS = ("Linear", "Relu")


@njit(cache=True)
def _conv2d(x, w, bias, shifts, out, acc, sh, sw, dh, dw, pt, pl, groups, relu, lo, hi, mode):
    """x [N,H,W,C]; w [kH,kW,Cg,Cout]; bias [Cout]; shifts [Cout]; out [N,OH,OW,Cout]; acc [Cout] scratch.

    ``acc`` is int64, or int32 when the caller proved |sum| < 2**31 (exact either way). The inner loops
    run over contiguous output channels so that they vectorize.
    """
    n_, h_, w_, c_ = x.shape
    kh_, kw_, cg, cout = w.shape
    _, oh_, ow_, _ = out.shape
    cout_g = cout // groups
    depthwise = cg == 1 and cout_g == 1
    for n in range(n_):
        for oh in range(oh_):
            for ow in range(ow_):
                for co in range(cout):
                    acc[co] = bias[co]
                for kh in range(kh_):
                    ih = oh * sh - pt + kh * dh
                    if ih < 0 or ih >= h_:
                        continue
                    for kw in range(kw_):
                        iw = ow * sw - pl + kw * dw
                        if iw < 0 or iw >= w_:
                            continue
                        if depthwise:
                            for c in range(cout):
                                acc[c] += x[n, ih, iw, c] * w[kh, kw, 0, c]
                        else:
                            for g in range(groups):
                                base = g * cout_g
                                for ci in range(cg):
                                    xv = x[n, ih, iw, g * cg + ci]
                                    for j in range(cout_g):
                                        acc[base + j] += xv * w[kh, kw, ci, base + j]
                for co in range(cout):
                    out[n, oh, ow, co] = requant(np.int64(acc[co]), shifts[co], mode, relu, lo, hi)
    return out


@njit(cache=True, nogil=True)
def _dwconv2d(x, w, bias, shifts, out, acc, sh, sw, dh, dw, pt, pl, relu, lo, hi, mode):
    """Depthwise: x [N,H,W,C]; w [kH,kW,C]; out [N,OH,OW,C]; acc [OW, C] scratch (int32 or int64).

    One output row at a time, so that the innermost loop runs over contiguous channels of a whole
    row of accumulators (the same sums as ``_conv2d``, in a different order: exact either way).
    """
    n_, h_, w_, c_ = x.shape
    kh_, kw_, _ = w.shape
    _, oh_, ow_, _ = out.shape
    for n in range(n_):
        for oh in range(oh_):
            for ow in range(ow_):
                for c in range(c_):
                    acc[ow, c] = bias[c]
            for kh in range(kh_):
                ih = oh * sh - pt + kh * dh
                if ih < 0 or ih >= h_:
                    continue
                xrow = x[n, ih]
                for ow in range(ow_):
                    a = acc[ow]
                    for kw in range(kw_):
                        iw = ow * sw - pl + kw * dw
                        if iw < 0 or iw >= w_:
                            continue
                        xp = xrow[iw]
                        wp = w[kh, kw]
                        for c in range(c_):
                            a[c] += xp[c] * wp[c]
            for ow in range(ow_):
                for c in range(c_):
                    out[n, oh, ow, c] = requant(np.int64(acc[ow, c]), shifts[c], mode, relu, lo, hi)


@njit(cache=True, nogil=True)
def requant_gemm(sums, bias, scale, out, lo, hi, mode):
    """out[r, c] = clamp(round((sums[r, c] + bias[c]) * scale[c]), lo, hi), ``scale = 2**-shift``.

    ``sums`` hold exact integers and ``gemm_dtype`` bounds |sums + bias| by 2**52, so the float64
    products are exact and ``round_f`` rounds them as ``shift_round`` rounds the integers. A fused Relu
    is ``lo = max(lo, 0)``.
    """
    rows, cout = sums.shape
    for r in range(rows):
        for c in range(cout):
            out[r, c] = clamp(round_f((np.float64(sums[r, c]) + bias[c]) * scale[c], mode), lo, hi)


GEMM_MIN_MACS = 1 << 15  # below this the BLAS call costs more than the integer loops
F32_EXACT = 2**24  # integers up to this magnitude are exact in float32
F64_EXACT = 2**52  # ... in float64, with room for the +0.5 of half-up rounding
MAX_GEMM_SHIFT = 50  # (sum + bias) * 2**-shift and its rounding stay exact in float64


def dot_bound(w: np.ndarray, x_dtype: str, axis: int = 0) -> int:
    """The largest |partial sum| of ``sum_k x[k] * w[k, c]`` over all inputs of ``x_dtype`` (``k`` along
    ``axis``): ``max|x| * max_c sum_k |w[k, c]|``."""
    xmax = -qrange(x_dtype)[0]
    return xmax * int(np.abs(w.astype(np.int64)).sum(axis=axis).max(initial=0))


def gemm_dtype(w2d: np.ndarray, bias: np.ndarray, shifts: np.ndarray, x_dtype: str) -> np.dtype | None:
    """The float type in which ``x @ w2d`` is exact for every input of ``x_dtype``, or None.

    Each partial sum of ``x[k] * w2d[k, c]`` is an integer bounded by :func:`dot_bound`; integers up to
    2**24 (float32) / 2**53 (float64) are exact, so any summation order gives the exact sum. The
    requantization adds the bias and scales by a power of two in float64 (exact below 2**52).
    """
    return exact_float_dtype(dot_bound(w2d, x_dtype), int(np.abs(bias.astype(np.int64)).max(initial=0)), shifts)


def gemm_epilogue(bias: np.ndarray, shifts: np.ndarray, relu: bool, x_dtype: str):
    """The arguments of :func:`requant_gemm` after ``bias``/``shifts``: (bias as float64, ``2**-shift`` as
    float64, lo, hi), a fused Relu raising ``lo`` to 0."""
    lo, hi = qrange(x_dtype)
    return bias.astype(np.float64), np.ldexp(1.0, -shifts.astype(np.int64)), (max(lo, 0) if relu else lo), hi


def exact_float_dtype(bound: int, bias_max: int, shifts: np.ndarray) -> np.dtype | None:
    """float32 / float64 / None for integer dot products whose partial sums are bounded by ``bound``
    (see :func:`gemm_dtype`), then ``+ bias`` (``|bias| <= bias_max``) and a shift by ``shifts``."""
    if bound + bias_max > F64_EXACT or int(np.abs(shifts).max(initial=0)) > MAX_GEMM_SHIFT:
        return None
    return np.dtype(np.float32) if bound <= F32_EXACT else np.dtype(np.float64)


def acc_dtype(w: np.ndarray, bias: np.ndarray, x_dtype: str) -> np.dtype:
    """int32 accumulators when no sum can leave int32 (|x| <= 2**(bits-1)), else int64."""
    bound = dot_bound(w.reshape(-1, w.shape[-1]), x_dtype) + int(np.abs(bias.astype(np.int64)).max(initial=0))
    return np.dtype(np.int32) if bound < 2**31 - 1 else np.dtype(np.int64)


def conv_geometry(ctx, x_shape, w_dims, depthwise_hint=None):
    """Validated (spatial dims, kernel, strides, dilations, pads) of a Conv node; 1-D as H = 1."""
    node = ctx.node
    rank = len(x_shape)
    ctx.require(rank in (3, 4), f"input rank {rank}; Conv takes NWC (3-D) or NHWC (4-D) activations")
    nsp = rank - 2
    geo = window(node, nsp, w_dims)
    ks, strides, dil, pads = list(geo.kernel), list(geo.strides), list(geo.dilations), geo.pads
    if nsp == 1:
        return ([1, x_shape[1]], [1, int(ks[0])], [1, strides[0]], [1, dil[0]], [0, pads[0], 0, pads[1]])
    return (list(x_shape[1:3]), [int(k) for k in ks], strides, dil, [pads[0], pads[1], pads[2], pads[3]])


def out_size(size, k, s, d, p0, p1):
    return (size + p0 + p1 - d * (k - 1) - 1) // s + 1


def _shifts(ctx, x_exp, w_exps, out_exp, cout):
    if len(w_exps) == 1:
        w_exps = list(w_exps) * cout
    ctx.require(len(w_exps) == cout, f"{len(w_exps)} weight exponents for {cout} output channels")
    return np.array([out_exp - x_exp - e for e in w_exps], dtype=np.int64)


def _bias(ctx, ins, cout, x_exp, w_exps):
    if len(ins) > 2 and ins[2].name:
        b = ins[2]
        ctx.require(b.is_const, "bias must be a constant")
        ctx.require(b.const.size == cout, f"bias has {b.const.size} values for {cout} output channels")
        bias = b.const.astype(np.int64).ravel()
        if b.exps:
            ctx.require(len(b.exps) in (1, cout), f"{len(b.exps)} bias exponents for {cout} output channels")
            be = list(b.exps) * cout if len(b.exps) == 1 else list(b.exps)
            we = list(w_exps) * cout if len(w_exps) == 1 else list(w_exps)
            ctx.require(all(be[c] == x_exp + we[c] for c in range(cout)),
                        "bias exponent must equal input exponent + weight exponent")
        return bias
    return np.zeros(cout, dtype=np.int64)


def _activation(ctx):
    act = ctx.attr("activation", "Linear") or "Linear"
    ctx.require(act in ACTIVATIONS, f"fused activation {act!r}", supported=list(ACTIVATIONS))
    return act == "Relu"


@kernel("Conv")
def prepare_conv(node, ctx, ins, outs):
    x, w = ins[0], ins[1]
    ctx.require(w.is_const, "weight must be a constant initializer")
    ctx.require(x.dtype in ("int8", "int16"), f"input dtype {x.dtype}", supported=["int8", "int16"])
    ctx.require(outs[0].dtype == x.dtype, f"output dtype {outs[0].dtype} differs from input {x.dtype}")
    (ih, iw), (kh, kw), (sh, sw), (dh, dw), (pt, pl, pb, pr) = conv_geometry(ctx, x.shape, w.shape)
    group = int(node.attr("group", 1) or 1)
    ctx.require(group >= 1, f"group={group} must be >= 1")
    ctx.require(w.const.dtype.kind in "iu", f"weight dtype {w.const.dtype}", supported=["integer weights"])
    cin = x.shape[-1]
    wt = w.const
    if wt.ndim == 3:
        wt = wt.reshape(1, *wt.shape)
    ctx.require(wt.ndim == 4, f"weight dims {list(w.shape)}")
    ctx.require(wt.shape[0] == kh and wt.shape[1] == kw, f"weight dims {list(w.shape)} vs kernel {kh}x{kw}")
    if group > 1 and group == cin and wt.shape[3] == 1 and wt.shape[2] == cin:
        wt = wt.reshape(kh, kw, 1, cin)  # depthwise [kH,kW,C,1] -> [kH,kW,Cg=1,Cout=C]
    cout = wt.shape[3]
    ctx.require(cin % group == 0 and cout % group == 0, f"group {group} does not divide channels {cin}/{cout}")
    ctx.require(wt.shape[2] * group == cin, f"weight has {wt.shape[2]} input channels per group, "
                                            f"input has {cin} channels and group={group}")
    oh = out_size(ih, kh, sh, dh, pt, pb)
    ow = out_size(iw, kw, sw, dw, pl, pr)
    ctx.require(oh >= 1 and ow >= 1, f"output would be empty ({oh}x{ow})")
    shifts = _shifts(ctx, x.exp, w.exps, outs[0].exp, cout)
    bias = _bias(ctx, ins, cout, x.exp, w.exps)
    relu = _activation(ctx)
    lo, hi = qrange(x.dtype)
    dtype = np.dtype(x.dtype)
    n = x.shape[0]
    out_shape4 = (n, oh, ow, cout)
    out_shape = (n, ow, cout) if len(x.shape) == 3 else out_shape4
    mode = ctx.mode
    macs = n * oh * ow * cout * kh * kw * (cin // group)
    fdt = gemm_dtype(wt.reshape(-1, cout), bias, shifts, x.dtype) if group == 1 and macs >= GEMM_MIN_MACS else None
    if fdt is not None:
        gemm = _gemm_conv(ctx, wt, bias, shifts, fdt, (n, ih, iw, cin), (oh, ow), (kh, kw), (sh, sw), (dh, dw),
                          (pt, pl, pb, pr), relu, x.dtype)
        return Prepared([out_shape], lambda xa, *_: (gemm(xa).reshape(out_shape),), macs=macs,
                        info={"strategy": f"gemm {fdt.name}"})
    adt = acc_dtype(wt, bias, x.dtype)
    wt = np.ascontiguousarray(wt.astype(adt))
    bias = bias.astype(adt)
    if wt.shape[2] == 1 and group == cout:  # depthwise
        # int16 weights (all ESP-DL weights fit) let the products vectorize as 16-bit multiplies
        small = adt == np.int32 and int(np.abs(wt.astype(np.int64)).max(initial=0)) < 2**15
        wd = np.ascontiguousarray(wt.reshape(kh, kw, cout).astype(np.int16 if small else adt))
        acc_row = ctx.zeros((ow, cout), adt, "accumulator row")
        out = ctx.output_buffer(out_shape4, dtype)

        def run(xa, *_):
            _dwconv2d(xa.reshape(n, ih, iw, cin), wd, bias, shifts, out, acc_row, sh, sw, dh, dw, pt, pl, relu,
                      lo, hi, mode)
            return (out.reshape(out_shape),)

        return Prepared([out_shape], run, macs=macs, info={"strategy": f"depthwise loops {adt.name}"})
    acc = np.zeros(cout, dtype=adt)
    out = ctx.output_buffer(out_shape4, dtype)

    def run(xa, *_):
        x4 = xa.reshape(n, ih, iw, cin)
        _conv2d(x4, wt, bias, shifts, out, acc, sh, sw, dh, dw, pt, pl, group, relu, lo, hi, mode)
        return (out.reshape(out_shape),)

    return Prepared([out_shape], run, macs=macs, info={"strategy": f"loops {adt.name}"})


def _gemm_conv(ctx, wt, bias, shifts, fdt, x_shape, o_hw, k_hw, strides, dils, pads, relu, x_dtype):
    """``run(x) -> out [N*OH*OW, Cout]`` computing a (group 1) conv as one exact float GEMM."""
    n, ih, iw, cin = x_shape
    (oh, ow), (kh, kw), (sh, sw), (dh, dw), (pt, pl, pb, pr) = o_hw, k_hw, strides, dils, pads
    cout = wt.shape[3]
    rows, depth = n * oh * ow, kh * kw * cin
    w2 = np.ascontiguousarray(wt.reshape(depth, cout).astype(fdt))  # rows (kh, kw, ci) = im2col's columns
    bias_f, scale, lo, hi = gemm_epilogue(bias, shifts, relu, x_dtype)
    mode = ctx.mode
    dtype = np.dtype(x_dtype)
    direct = kh == kw == sh == sw == 1 and not any(pads)  # 1x1, stride 1: x itself is the matrix
    padded = None  # a copy of x inside a zero border that no run writes
    if any(pads):
        padded = ctx.zeros((n, ih + pt + pb, iw + pl + pr, cin), dtype, "padded input")
    keh, kew = dh * (kh - 1) + 1, dw * (kw - 1) + 1  # the kernel's reach
    scratch = ctx.scratch
    scratch.reserve("gemm.a", rows * depth, fdt)
    scratch.reserve("gemm.c", rows * cout, fdt)
    out = ctx.output_buffer((rows, cout), dtype)

    def run(xa):
        a = scratch.get("gemm.a", (rows, depth), fdt)
        if direct:
            np.copyto(a, xa.reshape(rows, depth), casting="unsafe")
        else:  # im2col: every window as a row, columns in (kh, kw, c) order like w2's rows
            x4 = xa.reshape(n, ih, iw, cin)
            if padded is not None:
                padded[:, pt:pt + ih, pl:pl + iw] = x4
                x4 = padded
            win = sliding_window_view(x4, (keh, kew), axis=(1, 2))[:, ::sh, ::sw, :, ::dh, ::dw]
            np.copyto(a.reshape(n, oh, ow, kh, kw, cin), win.transpose(0, 1, 2, 4, 5, 3), casting="unsafe")
        sums = scratch.get("gemm.c", (rows, cout), fdt)
        np.matmul(a, w2, out=sums)  # numpy's BLAS may use several threads here
        requant_gemm(sums, bias_f, scale, out, lo, hi, mode)
        return out

    return run


@kernel("Gemm")
def prepare_gemm(node, ctx, ins, outs):
    """Y = act(X @ W + b) with X [..., K]; W logical [1, 1, K, N] (as ESP-DL stores it)."""
    x, w = ins[0], ins[1]
    ctx.require(w.is_const, "weight B must be a constant initializer")
    ctx.require(x.dtype in ("int8", "int16"), f"input dtype {x.dtype}", supported=["int8", "int16"])
    for a, default in (("alpha", 1.0), ("beta", 1.0)):
        ctx.require(float(node.attr(a, default)) == 1.0, f"{a}={node.attr(a)}", supported=[f"{a}=1.0"])
    ctx.require(int(node.attr("transA", 0) or 0) == 0, "transA=1", supported=["transA=0"])
    ctx.require(int(node.attr("transB", 0) or 0) == 0, "transB=1 (ESP-DL stores B as [K, N])",
                supported=["transB=0"])
    wt = w.const
    ctx.require(wt.ndim == 2 or (wt.ndim == 4 and wt.shape[:2] == (1, 1)), f"weight dims {list(w.shape)}",
                supported=["[K, N]", "[1, 1, K, N]"])
    ctx.require(wt.dtype.kind in "iu", f"weight dtype {wt.dtype}", supported=["integer weights"])
    wt = wt.reshape(wt.shape[-2], wt.shape[-1])
    k, nout = wt.shape
    ctx.require(x.shape[-1] == k, f"input has {x.shape[-1]} features, weight expects {k}")
    rows = int(np.prod(x.shape[:-1], dtype=np.int64))
    shifts = _shifts(ctx, x.exp, w.exps, outs[0].exp, nout)
    bias = _bias(ctx, ins, nout, x.exp, w.exps)
    relu = _activation(ctx)
    lo, hi = qrange(x.dtype)
    out_shape = tuple(x.shape[:-1]) + (nout,)
    fdt = gemm_dtype(wt, bias, shifts, x.dtype) if rows * k * nout >= GEMM_MIN_MACS else None
    if fdt is not None:
        gemm = _gemm_conv(ctx, wt.reshape(1, 1, k, nout), bias, shifts, fdt, (1, 1, rows, k), (1, rows), (1, 1),
                          (1, 1), (1, 1), (0, 0, 0, 0), relu, x.dtype)
        return Prepared([out_shape], lambda xa, *_: (gemm(xa).reshape(out_shape),), macs=rows * k * nout,
                        info={"strategy": f"gemm {fdt.name}"})
    adt = acc_dtype(wt, bias, x.dtype)
    w4 = np.ascontiguousarray(wt.reshape(1, 1, k, nout).astype(adt))
    bias = bias.astype(adt)
    acc = np.zeros(nout, dtype=adt)
    dtype = np.dtype(x.dtype)
    mode = ctx.mode
    out = ctx.output_buffer((1, 1, rows, nout), dtype)

    def run(xa, *_):
        x4 = xa.reshape(1, 1, rows, k)
        _conv2d(x4, w4, bias, shifts, out, acc, 1, 1, 1, 1, 0, 0, 1, relu, lo, hi, mode)
        return (out.reshape(out_shape),)

    return Prepared([out_shape], run, macs=rows * k * nout, info={"strategy": f"loops {adt.name}"})
