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

- integer loops (:class:`IntConv`: ``conv_blocks`` keeps blocks of 16 accumulators in vector registers,
  ``dwconv_flat`` for depthwise), for depthwise / grouped convs and small layers, and always in compiled
  programs (the lowering at the end of this module encodes the same IntConv);
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
from ..registry import Prepared, arm, kernel, lowering, row_layout
from ..rounding import HALF_EVEN, HALF_UP, clamp, qrange, requant, round_f
from ._simd import LANES, mac_lanes, mac_lanes2

ACTIVATIONS = ("Linear", "Relu")


@njit(cache=True, inline="always")
def _requant_run(acc, a0, shifts, s0, out, o0, n, mode, relu, lo, hi):
    """``out[o0 + j] = requant(acc[a0 + j], shifts[s0 + j])`` for ``j < n``: one loop per rounding rule so
    that each vectorizes (a fused Relu is the lower bound 0, as ``requant`` applies it)."""
    a = acc[a0:a0 + n]
    s = shifts[s0:s0 + n]
    o = out[o0:o0 + n]
    low = max(lo, 0) if relu else lo
    if mode == HALF_EVEN:
        for j in range(n):
            o[j] = requant(np.int64(a[j]), s[j], HALF_EVEN, False, low, hi)
    else:
        for j in range(n):
            o[j] = requant(np.int64(a[j]), s[j], HALF_UP, False, low, hi)


@njit(cache=True, nogil=True)
def conv_blocks(x, w, bias, shifts, out, acc, n_, ih_, iw_, cin, oh_, ow_, kh_, kw_, sh, sw, dh, dw, pt, pl, groups,
                cg, cout_g, blocks, relu, lo, hi, mode):
    """Conv / Gemm on flat buffers: x [N,H,W,Cin]; out [N,OH,OW,Cout]; w packed by :func:`pack_blocks`
    ([groups, blocks, kH, kW, Cg, LANES]: each block of ``LANES`` output channels of a group, zero past
    ``cout_g``); bias in the accumulators' layout ([groups, blocks * LANES], :func:`pad_blocks`); shifts
    [Cout]; acc [groups * blocks * LANES] (int32, or int64 when ``acc_dtype`` says a sum can leave int32).

    Each block's accumulators stay in one vector register through the taps' dot products
    (:func:`._simd.mac_lanes`); the sums are exact (see ``acc_dtype``), then ``requant`` as everywhere.
    """
    cout = groups * cout_g
    span = blocks * LANES
    tap_stride = kh_ * kw_ * cg * LANES  # from one block's weights to the next's
    for n in range(n_):
        for oh in range(oh_):
            for ow in range(ow_):
                for j in range(groups * span):  # whole vectors: the dot products below load them back
                    acc[j] = bias[j]
                for kh in range(kh_):
                    ih = oh * sh - pt + kh * dh
                    if ih < 0 or ih >= ih_:
                        continue
                    for kw in range(kw_):
                        iw = ow * sw - pl + kw * dw
                        if iw < 0 or iw >= iw_:
                            continue
                        xo = ((n * ih_ + ih) * iw_ + iw) * cin
                        for g in range(groups):
                            b = 0
                            while b + 1 < blocks:  # two blocks per pass over the inputs
                                wo = ((((g * blocks + b) * kh_ + kh) * kw_ + kw) * cg) * LANES
                                mac_lanes2(acc, g * span + b * LANES, x, xo + g * cg, w, wo, tap_stride, cg)
                                b += 2
                            if b < blocks:
                                wo = ((((g * blocks + b) * kh_ + kh) * kw_ + kw) * cg) * LANES
                                mac_lanes(acc, g * span + b * LANES, x, xo + g * cg, w, wo, 0, cg)
                oo = ((n * oh_ + oh) * ow_ + ow) * cout
                for g in range(groups):
                    _requant_run(acc, g * span, shifts, g * cout_g, out, oo + g * cout_g, cout_g, mode, relu, lo, hi)
    return out


@njit(cache=True, nogil=True)
def dwconv_flat(x, w, bias, shifts, out, acc, n_, ih_, iw_, c_, oh_, ow_, kh_, kw_, sh, sw, dh, dw, pt, pl, relu,
                lo, hi, mode):
    """Depthwise conv on flat buffers: x [N,H,W,C]; w [kH,kW,C]; out [N,OH,OW,C]; acc [C] (int32 or
    int64, as ``acc_dtype`` says); inner loops over contiguous channels."""
    a = acc[:c_]
    for n in range(n_):
        for oh in range(oh_):
            for ow in range(ow_):
                for c in range(c_):
                    a[c] = bias[c]
                for kh in range(kh_):
                    ih = oh * sh - pt + kh * dh
                    if ih < 0 or ih >= ih_:
                        continue
                    for kw in range(kw_):
                        iw = ow * sw - pl + kw * dw
                        if iw < 0 or iw >= iw_:
                            continue
                        xo = ((n * ih_ + ih) * iw_ + iw) * c_
                        wo = (kh * kw_ + kw) * c_
                        xs = x[xo:xo + c_]
                        ws = w[wo:wo + c_]
                        for c in range(c_):
                            a[c] += xs[c] * ws[c]
                _requant_run(a, 0, shifts, 0, out, ((n * oh_ + oh) * ow_ + ow) * c_, c_, mode, relu, lo, hi)
    return out


class IntConv:
    """The integer-loop form of one Conv / Gemm node, decided in ``prepare``: packed weights, bias, shifts,
    accumulator type and geometry. The per-node kernel runs it (``run``) unless it takes the BLAS path; the
    compiled lowering encodes the same fields (``Prepared.info["int_conv"]``)."""

    def __init__(self, ctx, wt, bias, shifts, relu, x_dtype, x4, o_hw, k_hw, strides, dils, pads, group,
                 per_node=True):
        n, ih, iw, cin = (int(v) for v in x4)
        kh, kw = (int(v) for v in k_hw)
        cout = int(wt.shape[3])
        self.adt = acc_dtype(wt, bias, x_dtype)
        self.depthwise = int(wt.shape[2]) == 1 and group == cout and group > 1
        self._wt = wt
        #: the packed weights' dtype: int16 (every ESP-DL weight fits), else the accumulator's
        self.w_dtype = np.dtype(np.int16 if int(np.abs(wt.astype(np.int64)).max(initial=0)) < 2**15 else self.adt)
        self.cg, self.cout_g = (1, 1) if self.depthwise else (int(wt.shape[2]), cout // group)
        self.blocks = 1 if self.depthwise else -(-self.cout_g // LANES)
        self.acc_size = cout if self.depthwise else group * self.blocks * LANES
        self.bias = np.ascontiguousarray(bias.astype(np.int64))
        #: the bias as the accumulators start (acc dtype; padded to blocks of LANES unless depthwise)
        self.bias_acc = (self.bias.astype(self.adt) if self.depthwise
                         else pad_blocks(self.bias, group, self.adt))
        self.shifts = np.ascontiguousarray(shifts.astype(np.int64))
        self.relu = bool(relu)
        self.lo, self.hi = qrange(x_dtype)
        (oh, ow), (sh, sw), (dh, dw) = o_hw, strides, dils
        pt, pl = int(pads[0]), int(pads[1])
        self.group, self.cout, self.in_shape = int(group), cout, (n, ih, iw, cin)
        self.dims = (n, ih, iw, cin, int(oh), int(ow), kh, kw, int(sh), int(sw), int(dh), int(dw), pt, pl)
        self.mode = ctx.mode
        self._w = None
        if per_node:  # the per-node kernel runs these loops: its buffers, allocated with the plan
            self.acc = ctx.zeros((self.acc_size,), self.adt, "accumulators")
            self.out = ctx.output_buffer((n * int(oh) * int(ow) * cout,), np.dtype(x_dtype))

    @property
    def w(self) -> np.ndarray:
        """The packed weights (flat): depthwise [kH,kW,C], else :func:`pack_blocks`' layout."""
        if self._w is None:
            wt = self._wt
            if self.depthwise:
                kh, kw = wt.shape[:2]
                self._w = np.ascontiguousarray(wt.reshape(kh, kw, self.cout).astype(self.w_dtype)).ravel()
            else:
                self._w = pack_blocks(wt, self.group, self.w_dtype)[0]
        return self._w

    def run(self, xa):
        """x (any shape holding [N,H,W,Cin] in order) -> the plan-owned flat output."""
        x = np.ascontiguousarray(xa).reshape(-1)
        if self.depthwise:
            dwconv_flat(x, self.w, self.bias_acc, self.shifts, self.out, self.acc, *self.dims, self.relu, self.lo,
                        self.hi, self.mode)
        else:
            conv_blocks(x, self.w, self.bias_acc, self.shifts, self.out, self.acc, *self.dims, self.group, self.cg,
                        self.cout_g, self.blocks, self.relu, self.lo, self.hi, self.mode)
        return self.out


def pad_blocks(v: np.ndarray, group: int, dtype) -> np.ndarray:
    """Per-output-channel values [Cout] -> the accumulators' layout [groups, blocks * LANES], zero-padded."""
    cout_g = v.size // group
    span = -(-cout_g // LANES) * LANES
    out = np.zeros((group, span), dtype=dtype)
    out[:, :cout_g] = v.reshape(group, cout_g)
    return out.ravel()


def pack_blocks(wt: np.ndarray, group: int, dtype) -> tuple[np.ndarray, int]:
    """[kH,kW,Cg,Cout] weights -> ([groups, blocks, kH, kW, Cg, LANES] flat, blocks per group): each
    group's output channels in blocks of ``LANES``, zero-padded."""
    kh, kw, cg, cout = wt.shape
    cout_g = cout // group
    blocks = -(-cout_g // LANES)
    w = np.zeros((group, blocks * LANES, kh, kw, cg), dtype=dtype)
    w[:, :cout_g] = wt.reshape(kh, kw, cg, group, cout_g).transpose(3, 4, 0, 1, 2)
    w = w.reshape(group, blocks, LANES, kh, kw, cg).transpose(0, 1, 3, 4, 5, 2)
    return np.ascontiguousarray(w).ravel(), blocks


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
    loops = IntConv(ctx, wt, bias, shifts, relu, x.dtype, (n, ih, iw, cin), (oh, ow), (kh, kw), (sh, sw),
                    (dh, dw), (pt, pl, pb, pr), group, per_node=fdt is None)
    if fdt is not None:
        gemm = _gemm_conv(ctx, wt, bias, shifts, fdt, (n, ih, iw, cin), (oh, ow), (kh, kw), (sh, sw), (dh, dw),
                          (pt, pl, pb, pr), relu, x.dtype)
        return Prepared([out_shape], lambda xa, *_: (gemm(xa).reshape(out_shape),), macs=macs,
                        info={"strategy": f"gemm {fdt.name}", "int_conv": loops})

    def run(xa, *_):
        return (loops.run(xa).reshape(out_shape),)

    kind = "depthwise loops" if loops.depthwise else "loops"
    return Prepared([out_shape], run, macs=macs, info={"strategy": f"{kind} {loops.adt.name}", "int_conv": loops})


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
    loops = IntConv(ctx, wt.reshape(1, 1, k, nout), bias, shifts, relu, x.dtype, (1, 1, rows, k), (1, rows),
                    (1, 1), (1, 1), (1, 1), (0, 0, 0, 0), 1, per_node=fdt is None)
    if fdt is not None:
        gemm = _gemm_conv(ctx, wt.reshape(1, 1, k, nout), bias, shifts, fdt, (1, 1, rows, k), (1, rows), (1, 1),
                          (1, 1), (1, 1), (0, 0, 0, 0), relu, x.dtype)
        return Prepared([out_shape], lambda xa, *_: (gemm(xa).reshape(out_shape),), macs=rows * k * nout,
                        info={"strategy": f"gemm {fdt.name}", "int_conv": loops})

    def run(xa, *_):
        return (loops.run(xa).reshape(out_shape),)

    return Prepared([out_shape], run, macs=rows * k * nout, info={"strategy": f"loops {loops.adt.name}",
                                                                 "int_conv": loops})


# ---- compiled lowering (emu/program.py) -------------------------------------------------------------
# int32 accumulators (bias in c32, accumulators in the arena) and, when acc_dtype says a sum can leave int32,
# the int64 variants (bias and accumulators in c64): separate opcodes, so a model compiles only what it uses.
_CONV_FIELDS = "x out w bias shifts acc n ih iw cin oh ow kh kw sh sw dh dw pt pl groups cg cout_g blocks relu lo hi"
_DW_FIELDS = "x out w bias shifts acc n ih iw c oh ow kh kw sh sw dh dw pt pl relu lo hi"
CONV = row_layout("CONV", _CONV_FIELDS)
CONV64 = row_layout("CONV64", _CONV_FIELDS)
DWCONV = row_layout("DWCONV", _DW_FIELDS)
DWCONV64 = row_layout("DWCONV64", _DW_FIELDS)


@njit(cache=True, inline="always")
def _conv_row(row, act, c16, bias_sec, acc_sec):
    L = CONV
    n, ih, iw, cin, oh, ow = row[L.n], row[L.ih], row[L.iw], row[L.cin], row[L.oh], row[L.ow]
    groups, cg, cout_g, blocks, kh, kw = row[L.groups], row[L.cg], row[L.cout_g], row[L.blocks], row[L.kh], row[L.kw]
    cout = groups * cout_g
    size = groups * blocks * LANES
    return (act[row[L.x]:row[L.x] + n * ih * iw * cin], c16[row[L.w]:row[L.w] + size * kh * kw * cg],
            bias_sec[row[L.bias]:row[L.bias] + size], acc_sec[row[L.acc]:row[L.acc] + size],
            act[row[L.out]:row[L.out] + n * oh * ow * cout], cout,
            (n, ih, iw, cin, oh, ow, kh, kw, row[L.sh], row[L.sw], row[L.dh], row[L.dw], row[L.pt], row[L.pl], groups,
             cg, cout_g, blocks, row[L.relu] != 0, row[L.lo], row[L.hi]))


@arm(CONV)
@njit(cache=True, inline="always")
def conv_arm(row, act, actf, c16, c32, c64, cf, mode):
    x, w, bias, acc, out, cout, geo = _conv_row(row, act, c16, c32, act)
    conv_blocks(x, w, bias, c64[row[CONV.shifts]:row[CONV.shifts] + cout], out, acc, *geo, mode)


@arm(CONV64)
@njit(cache=True, inline="always")
def conv64_arm(row, act, actf, c16, c32, c64, cf, mode):
    x, w, bias, acc, out, cout, geo = _conv_row(row, act, c16, c64, c64)
    conv_blocks(x, w, bias, c64[row[CONV.shifts]:row[CONV.shifts] + cout], out, acc, *geo, mode)


@njit(cache=True, inline="always")
def _dw_row(row, act, c16, bias_sec, acc_sec):
    L = DWCONV
    n, ih, iw, c, oh, ow, kh, kw = row[L.n], row[L.ih], row[L.iw], row[L.c], row[L.oh], row[L.ow], row[L.kh], row[L.kw]
    return (act[row[L.x]:row[L.x] + n * ih * iw * c], c16[row[L.w]:row[L.w] + kh * kw * c],
            bias_sec[row[L.bias]:row[L.bias] + c], acc_sec[row[L.acc]:row[L.acc] + c],
            act[row[L.out]:row[L.out] + n * oh * ow * c], c,
            (n, ih, iw, c, oh, ow, kh, kw, row[L.sh], row[L.sw], row[L.dh], row[L.dw], row[L.pt], row[L.pl],
             row[L.relu] != 0, row[L.lo], row[L.hi]))


@arm(DWCONV)
@njit(cache=True, inline="always")
def dwconv_arm(row, act, actf, c16, c32, c64, cf, mode):
    x, w, bias, acc, out, c, geo = _dw_row(row, act, c16, c32, act)
    dwconv_flat(x, w, bias, c64[row[DWCONV.shifts]:row[DWCONV.shifts] + c], out, acc, *geo, mode)


@arm(DWCONV64)
@njit(cache=True, inline="always")
def dwconv64_arm(row, act, actf, c16, c32, c64, cf, mode):
    x, w, bias, acc, out, c, geo = _dw_row(row, act, c16, c64, c64)
    dwconv_flat(x, w, bias, c64[row[DWCONV.shifts]:row[DWCONV.shifts] + c], out, acc, *geo, mode)


@lowering("Conv", "Gemm")
def lower_conv(b, step):
    """The integer loops ``prepare`` set up (``info["int_conv"]``), whichever path the per-node kernel takes."""
    ic = step.prepared.info.get("int_conv")
    if ic is None:
        raise b.refuse("no integer-loop form was prepared")
    if ic.w_dtype != np.int16:
        raise b.refuse("weights beyond the int16 range")
    x, out = b.ins(step)[0], b.outs(step)[0]
    wide = ic.adt == np.int64
    acc = b.c64_scratch(ic.acc_size) if wide else b.scratch(ic.acc_size)
    n, ih, iw, cin, oh, ow, kh, kw, sh, sw, dh, dw, pt, pl = ic.dims
    bias = b.c64(ic.bias_acc) if wide else b.c32(ic.bias_acc)
    common = dict(x=b.slot(x.name), out=b.slot(out.name), w=b.c16(ic.w), bias=bias, shifts=b.c64(ic.shifts),
                  acc=acc, n=n, ih=ih, iw=iw, oh=oh, ow=ow, kh=kh, kw=kw, sh=sh, sw=sw, dh=dh, dw=dw, pt=pt, pl=pl,
                  relu=ic.relu, lo=ic.lo, hi=ic.hi)
    if ic.depthwise:
        b.emit(DWCONV64 if wide else DWCONV, c=cin, **common)
    else:
        b.emit(CONV64 if wide else CONV, cin=cin, groups=ic.group, cg=ic.cg, cout_g=ic.cout_g, blocks=ic.blocks,
               **common)
