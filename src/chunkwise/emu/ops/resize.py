"""Resize (int8), as ESP-DL runs it (``dl_module_resize.hpp``, ``dl/base/dl_base_resize.cpp/.hpp``).

Activations are NWC (1-D) or NHWC (2-D); ``scales`` / ``sizes`` are in ONNX order (NCW / NCHW),
so the spatial entries are ``[2]`` (and ``[3]``). Only batch 1 is resized by ESP-DL (its loops
have no batch axis), so batch > 1 is refused. int16 Resize is an empty function in ESP-DL
(``resize<int16_t>``) and is refused.

Output size: ``sizes`` when given (then ``scale = out / (float)in``), else ``(int)(in * scale)``
in float32.

nearest (ESP-DL ignores ``coordinate_transformation_mode`` and ``nearest_mode`` and always uses
asymmetric + floor)::

    in_y = min((int)(y * (1.0f / scale_h)), H - 1)        # float32
    y    = x[in_y, in_x] requantized by 2**(e_in - e_out)  # target rounding, saturated (C target: wraps)

linear (``half_pixel`` unless ``align_corners``; with align_corners ``scale = (out-1)/(float)(in-1)``),
all float32, built with ``-O3 -ffast-math`` (fused multiply-adds, see :mod:`._fmath`)::

    fx = fma(out_x + 0.5f, 1/scale, -0.5f)        # align_corners: out_x * (1/scale)
    in_x = floor(fx); fx -= in_x; clamp to [0, in-2] with fx = 0 / 1 at the ends
    row  = fma(q0 * 2**e_in, 1 - fx, (q1 * 2**e_in) * fx)      # 2-D: along W first, then H
    out  = round(fma(row0, 1 - fy, row1 * fy) * 2**-e_out)     # target rounding, saturated
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ...limits import check_alloc
from ..registry import Prepared, arm, kernel, lowering, row_layout
from ..rounding import qrange, requant, round_f32_sat
from ._fmath import fma32
from .shape import out_dtype

F32 = np.float32

# How ESP-DL's float expressions are contracted into fmadd.s (see module doc / report).
FMA_COEFF = True  # fx = (out_x + 0.5f) * scale_inv - 0.5f  ->  fma(out_x + 0.5f, scale_inv, -0.5f)
FMA_BLEND = True  # a * r0 + b * r1                          ->  fma(a, r0, b * r1)


def _linear_coeffs(out_len: int, in_len: int, scale_inv: np.float32, align: bool):
    """ESP-DL ``linear_coeffs`` for every output coordinate: (in_x, ratio_0, ratio_1), float32."""
    idx = np.empty(out_len, dtype=np.int64)
    r0 = np.empty(out_len, dtype=F32)
    r1 = np.empty(out_len, dtype=F32)
    for o in range(out_len):
        if align:
            fx = F32(F32(o) * scale_inv)
        elif FMA_COEFF:
            fx = F32(fma32(F32(F32(o) + F32(0.5)), scale_inv, F32(-0.5)))
        else:
            fx = F32(F32(F32(F32(o) + F32(0.5)) * scale_inv) - F32(0.5))
        f = np.floor(fx)
        # float -> int as fcvt.w.s does it: saturating, NaN -> INT_MAX
        i = 2**31 - 1 if (np.isnan(f) or f > 2**31 - 1) else (-(2**31) if f < -(2**31) else int(f))
        fx = F32(fx - F32(i))
        if i < 0:
            i, fx = 0, F32(0.0)
        if i >= in_len - 1:
            i, fx = in_len - 2, F32(1.0)
        idx[o] = i
        r0[o] = F32(F32(1.0) - fx)
        r1[o] = fx
    return idx, r0, r1


@njit(cache=True, inline="always")
def _blend(a, r0, b, r1, fused):
    if fused:
        return fma32(a, r0, np.float32(b * r1))
    return np.float32(np.float32(a * r0) + np.float32(b * r1))


@njit(cache=True)
def _resize_linear(x, out, ix, rx0, rx1, iy, ry0, ry1, in_scale, inv_scale, mode, lo, hi, fused):
    """x [H, W, C] int; out [OH, OW, C]; separable: W first (rows), then H."""
    h_, w_, c_ = x.shape
    oh_, ow_, _ = out.shape
    row0 = np.empty((ow_, c_), dtype=np.float32)
    row1 = np.empty((ow_, c_), dtype=np.float32)
    for y in range(oh_):
        y0 = iy[y]
        y1 = y0 + 1
        # ESP-DL may read row -1 / index -1 when an axis has length 1; the ratio is exactly 0 there
        if y0 < 0:
            y0 = 0
        if y1 > h_ - 1:
            y1 = h_ - 1
        for xo in range(ow_):
            x0 = ix[xo]
            x1 = x0 + 1
            if x0 < 0:
                x0 = 0
            if x1 > w_ - 1:
                x1 = w_ - 1
            a0 = rx0[xo]
            a1 = rx1[xo]
            for c in range(c_):
                row0[xo, c] = _blend(np.float32(x[y0, x0, c]) * in_scale, a0,
                                     np.float32(x[y0, x1, c]) * in_scale, a1, fused)
                row1[xo, c] = _blend(np.float32(x[y1, x0, c]) * in_scale, a0,
                                     np.float32(x[y1, x1, c]) * in_scale, a1, fused)
        b0 = ry0[y]
        b1 = ry1[y]
        for xo in range(ow_):
            for c in range(c_):
                v = _blend(row0[xo, c], b0, row1[xo, c], b1, fused)
                out[y, xo, c] = round_f32_sat(np.float32(v * inv_scale), mode, lo, hi)
    return out


@njit(cache=True)
def resize_nearest(x, out, src, c, shift, wrap, mode, lo, hi):
    """out[p, ch] = x[src[p], ch] requantized by ``2**-shift`` (target rounding, saturated), or, for the C
    target scaling up (``wrap``), shifted left and wrapped to int8 like its plain cast. Flat buffers."""
    for p in range(src.size):
        xo = src[p] * c
        oo = p * c
        for ch in range(c):
            v = np.int64(x[xo + ch])
            if wrap:
                out[oo + ch] = (((v << -shift) + 128) & 255) - 128
            else:
                out[oo + ch] = requant(v, shift, mode, False, lo, hi)
    return out


def _scale_pow2(e: int) -> np.float32:
    """DL_SCALE(e) = 2**e as float32 (exact)."""
    return F32(2.0 ** e)


@kernel("Resize")
def prepare_resize(node, ctx, ins, outs):
    x = ins[0]
    r = len(x.shape)
    ctx.require(r in (3, 4), f"input rank {r}", supported=["3 (NWC)", "4 (NHWC)"])
    ctx.require(x.dtype == "int8", f"{x.dtype} Resize (ESP-DL's resize<int16_t> does nothing)",
                supported=["int8"])
    dt = out_dtype(ctx, x, outs[0])
    mode_s = node.attr("mode", "nearest") or "nearest"
    ctx.require(mode_s in ("nearest", "linear"), f"mode {mode_s!r}", supported=["nearest", "linear"])
    ctm = node.attr("coordinate_transformation_mode", "half_pixel") or "half_pixel"
    align = ctm == "align_corners"
    n = int(x.shape[0])
    ctx.require(n == 1, f"batch {n}: ESP-DL resizes only the first image", supported=["batch 1"])
    ctx.require(not (len(ins) > 1 and ins[1].name and ins[1].const is not None and ins[1].const.size > 0),
                "roi input", supported=["no roi"])
    nsp = r - 2
    in_sp = [int(s) for s in x.shape[1:1 + nsp]]
    has_scales = len(ins) > 2 and ins[2].name != "" and ins[2].const is not None and ins[2].const.size > 0
    has_sizes = len(ins) > 3 and ins[3].name != ""
    if has_sizes:
        ctx.require(ins[3].is_const, "sizes must be a constant initializer")
        sizes = [int(v) for v in np.asarray(ins[3].const).ravel()]
        ctx.require(len(sizes) == r, f"{len(sizes)} sizes for rank {r}")
        out_sp = [sizes[2 + i] for i in range(nsp)]
        scales = [F32(F32(out_sp[i]) / F32(in_sp[i])) for i in range(nsp)]
    else:
        ctx.require(has_scales, "Resize needs scales or sizes")
        ctx.require(str(ins[2].const.dtype) == "float32", f"scales dtype {ins[2].const.dtype}",
                    supported=["float32"])
        sc = [F32(v) for v in np.asarray(ins[2].const).ravel()]
        ctx.require(len(sc) == r, f"{len(sc)} scales for rank {r}")
        scales = [sc[2 + i] for i in range(nsp)]
        ctx.require(all(np.isfinite(s) and s > 0 for s in scales), f"scales {scales} must be finite and > 0")
        out_sp = [int(F32(F32(in_sp[i]) * scales[i])) for i in range(nsp)]
    ctx.require(all(o >= 1 for o in out_sp), f"empty output {out_sp}")
    ctx.require(all(s > 0 for s in scales), f"scales {scales}")
    c = int(x.shape[-1])
    # the index/coefficient tables below are as long as the output: refuse a huge one first
    check_alloc(int(np.prod(out_sp, dtype=object)) * c * np.dtype(x.dtype).itemsize,
                f"output of node {node.name!r}")
    shape = (1, *out_sp, c)
    lo, hi = qrange(x.dtype)
    mode = ctx.mode
    e_in, e_out = x.exp, outs[0].exp
    dtype = np.dtype(x.dtype)
    h_in, w_in = (in_sp[0], in_sp[1]) if nsp == 2 else (1, in_sp[0])
    h_out, w_out = (out_sp[0], out_sp[1]) if nsp == 2 else (1, out_sp[0])
    sh, sw = (scales[0], scales[1]) if nsp == 2 else (F32(1.0), scales[0])

    if mode_s == "nearest":
        inv_h, inv_w = F32(F32(1.0) / sh), F32(F32(1.0) / sw)
        iy = np.minimum((np.arange(h_out, dtype=F32) * inv_h).astype(np.int64), h_in - 1)
        ix = np.minimum((np.arange(w_out, dtype=F32) * inv_w).astype(np.int64), w_in - 1)
        shift = e_out - e_in
        # the PIE kernels (esp32p4, esp32s3) saturate; the portable C kernel converts int -> int8 by a
        # plain cast, which wraps when 2**(e_in - e_out) scales a value out of range
        wrap = ctx.target == "c" and shift < 0

        flat_idx = (iy[:, None] * w_in + ix[None, :]).ravel()  # source pixel of every output pixel
        picked = ctx.output_buffer((h_out * w_out * c,), x.dtype)

        def run(xa, *_):
            resize_nearest(np.ascontiguousarray(xa).reshape(-1), picked, flat_idx, c, shift, wrap, mode, lo, hi)
            return (picked.reshape(shape),)

        return Prepared([shape], run, dtypes=dt, info={"nearest": (flat_idx, c, shift, wrap, lo, hi)})

    # linear
    if align:  # ESP-DL recomputes the scale; an axis of length 1 gives inf/nan, handled in _linear_coeffs
        with np.errstate(divide="ignore", invalid="ignore"):
            if nsp == 2:
                sh = F32(F32(h_out - 1) / F32(h_in - 1))
            sw = F32(F32(w_out - 1) / F32(w_in - 1))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ix, rx0, rx1 = _linear_coeffs(w_out, w_in, F32(F32(1.0) / sw), align)
        iy, ry0, ry1 = _linear_coeffs(h_out, h_in, F32(F32(1.0) / sh), align)
    in_scale = _scale_pow2(e_in)
    inv_scale = _scale_pow2(-e_out)
    fused = FMA_BLEND

    out = ctx.output_buffer((h_out, w_out, c), dtype)

    def run(xa, *_):  # 1-D runs as H = 1: its row weights (iy -1, ratios 0 / 1) select the one row exactly
        _resize_linear(xa.reshape(h_in, w_in, c), out, ix, rx0, rx1, iy, ry0, ry1, in_scale, inv_scale, mode, lo,
                       hi, fused)
        return (out.reshape(shape),)

    macs = h_out * w_out * c * 6
    return Prepared([shape], run, dtypes=dt, macs=macs,
                    info={"linear": ((h_in, w_in, c, h_out, w_out), (ix, iy), (rx0, rx1, ry0, ry1),
                                     (in_scale, inv_scale), lo, hi, fused)})


# ---- compiled lowering (emu/program.py) -------------------------------------------------------------
RESIZE_NEAREST = row_layout("RESIZE_NEAREST", "x out n_in n src c shift wrap lo hi")
RESIZE_LINEAR = row_layout("RESIZE_LINEAR", "x out h w c oh ow ix iy ratios scales lo hi fused")


@arm(RESIZE_NEAREST)
@njit(cache=True, inline="always")
def nearest_arm(row, act, actf, c16, c32, c64, cf, mode):
    L = RESIZE_NEAREST
    n, c = row[L.n], row[L.c]
    resize_nearest(act[row[L.x]:row[L.x] + row[L.n_in]], act[row[L.out]:row[L.out] + n * c],
                   c32[row[L.src]:row[L.src] + n], c, row[L.shift], row[L.wrap] != 0, mode, row[L.lo], row[L.hi])


@arm(RESIZE_LINEAR)
@njit(cache=True, inline="always")
def linear_arm(row, act, actf, c16, c32, c64, cf, mode):
    L = RESIZE_LINEAR
    h, w, c, oh, ow, r, s = row[L.h], row[L.w], row[L.c], row[L.oh], row[L.ow], row[L.ratios], row[L.scales]
    _resize_linear(act[row[L.x]:row[L.x] + h * w * c].reshape((h, w, c)),
                   act[row[L.out]:row[L.out] + oh * ow * c].reshape((oh, ow, c)), c64[row[L.ix]:row[L.ix] + ow],
                   cf[r:r + ow], cf[r + ow:r + 2 * ow], c64[row[L.iy]:row[L.iy] + oh], cf[r + 2 * ow:r + 2 * ow + oh],
                   cf[r + 2 * ow + oh:r + 2 * ow + 2 * oh], cf[s], cf[s + 1], mode, row[L.lo], row[L.hi],
                   row[L.fused] != 0)


@lowering("Resize")
def lower_resize(b, step):
    x, out = step.inputs[0], step.outputs[0]
    info = step.prepared.info
    if "nearest" in info:
        src, c, shift, wrap, lo, hi = info["nearest"]
        b.emit(RESIZE_NEAREST, x=b.slot(x), out=b.slot(out), n_in=int(np.prod(b.spec(x).shape)), n=src.size,
               src=b.c32(src), c=c, shift=shift, wrap=wrap, lo=lo, hi=hi)
        return
    (h, w, c, oh, ow), (ix, iy), ratios, scales, lo, hi, fused = info["linear"]
    b.emit(RESIZE_LINEAR, x=b.slot(x), out=b.slot(out), h=h, w=w, c=c, oh=oh, ow=ow, ix=b.c64(ix), iy=b.c64(iy),
           ratios=b.cf(np.concatenate(ratios)), scales=b.cf(scales), lo=lo, hi=hi, fused=fused)
