"""Conv (1-D/2-D, grouped, depthwise, dilated, strided, fused activation) and Gemm.

Integer arithmetic (ESP-DL ``dl_base_conv2d`` / ``dl_base_depthwise_conv2d``)::

    acc[c] = sum(x * w[..., c]) + bias[c]        # exact int64; bias at exponent e_in + e_w[c]
    y[c]   = shift_round(acc[c], e_out - e_in - e_w[c])   # target rounding
    y      = saturate(relu(y) if activation == Relu else y)

Activations are NHWC (1-D: NWC, run as H = 1). Logical weights ``[kH, kW, Cin/group, Cout]``,
depthwise ``[kH, kW, C, 1]``.

int16 is the same on the chip (QACC accumulation, one ``srcmb`` shift/round/saturate). ESP-PPQ's
int16 goldens come from torch float32 and differ by one on near-ties: docs/int16-deviations.md.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..registry import Prepared, kernel
from ..rounding import qrange, shift_round

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
                    v = shift_round(np.int64(acc[co]), shifts[co], mode)
                    if relu and v < 0:
                        v = 0
                    if v < lo:
                        v = lo
                    elif v > hi:
                        v = hi
                    out[n, oh, ow, co] = v
    return out


def acc_dtype(w: np.ndarray, bias: np.ndarray, x_dtype: str) -> np.dtype:
    """int32 accumulators when no sum can leave int32 (|x| <= 2**(bits-1)), else int64."""
    xmax = 128 if x_dtype == "int8" else 32768
    wsum = np.abs(w.astype(np.int64)).reshape(-1, w.shape[-1]).sum(axis=0)
    bound = int((wsum * xmax).max(initial=0)) + int(np.abs(bias.astype(np.int64)).max(initial=0))
    return np.dtype(np.int32) if bound < 2**31 - 1 else np.dtype(np.int64)


def _as_list(v, n, default):
    if v is None:
        return [default] * n
    return [int(a) for a in v]


def conv_geometry(ctx, x_shape, w_dims, depthwise_hint=None):
    """Validated (spatial dims, kernel, strides, dilations, pads) of a Conv node; 1-D as H = 1."""
    node = ctx.node
    rank = len(x_shape)
    ctx.require(rank in (3, 4), f"input rank {rank}; Conv takes NWC (3-D) or NHWC (4-D) activations")
    nsp = rank - 2
    ks = node.attr("kernel_shape") or list(w_dims[:nsp])
    ctx.require(len(ks) == nsp, f"kernel_shape {ks} does not match a {nsp}-D conv")
    ctx.require(all(int(k) >= 1 for k in ks), f"kernel_shape {ks} must be >= 1")
    strides = _as_list(node.attr("strides"), nsp, 1)
    dil = _as_list(node.attr("dilations"), nsp, 1)
    pads = _as_list(node.attr("pads"), 2 * nsp, 0)
    ctx.require(len(strides) == nsp and len(dil) == nsp and len(pads) == 2 * nsp,
                f"strides {strides}, dilations {dil}, pads {pads} do not fit a {nsp}-D conv")
    auto_pad = node.attr("auto_pad", "NOTSET") or "NOTSET"
    ctx.require(auto_pad in ("NOTSET", ""), f"auto_pad={auto_pad!r}", supported=["NOTSET (explicit pads)"])
    ctx.require(all(s >= 1 for s in strides) and all(d >= 1 for d in dil), "strides and dilations must be >= 1")
    ctx.require(all(p >= 0 for p in pads), f"negative pads {pads}")
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
    adt = acc_dtype(wt, bias, x.dtype)
    wt = np.ascontiguousarray(wt.astype(adt))
    bias = bias.astype(adt)
    acc = np.zeros(cout, dtype=adt)
    dtype = np.dtype(x.dtype)
    n = x.shape[0]
    out_shape4 = (n, oh, ow, cout)
    out_shape = (n, ow, cout) if len(x.shape) == 3 else out_shape4
    mode = ctx.mode

    def run(xa, *_):
        x4 = xa.reshape(n, ih, iw, cin)
        out = np.empty(out_shape4, dtype=dtype)
        _conv2d(x4, wt, bias, shifts, out, acc, sh, sw, dh, dw, pt, pl, group, relu, lo, hi, mode)
        return (out.reshape(out_shape),)

    macs = n * oh * ow * cout * kh * kw * (cin // group)
    return Prepared([out_shape], run, macs=macs)


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
    adt = acc_dtype(wt, bias, x.dtype)
    w4 = np.ascontiguousarray(wt.reshape(1, 1, k, nout).astype(adt))
    bias = bias.astype(adt)
    acc = np.zeros(nout, dtype=adt)
    dtype = np.dtype(x.dtype)
    out_shape = tuple(x.shape[:-1]) + (nout,)
    mode = ctx.mode

    def run(xa, *_):
        x4 = xa.reshape(1, 1, rows, k)
        out = np.empty((1, 1, rows, nout), dtype=dtype)
        _conv2d(x4, w4, bias, shifts, out, acc, 1, 1, 1, 1, 0, 0, 1, relu, lo, hi, mode)
        return (out.reshape(out_shape),)

    return Prepared([out_shape], run, macs=rows * k * nout)
