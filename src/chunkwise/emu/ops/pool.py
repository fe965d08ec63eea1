"""AveragePool, GlobalAveragePool and MaxPool (1-D NWC and 2-D NHWC).

ESP-DL (``dl/base/dl_base_pool2d.hpp`` ``avg_pool_shell``, ``dl/base/dl_base_avg_pool2d.cpp``
``avgpool2d_hwc``; ``CONFIG_ACCURATE_INFER`` is 1 in ``dl/dl_define_private.hpp``, so every target
runs the C path)::

    s      = sum of the window's elements inside the input        # int32, padding adds nothing
    scale  = float32(1 / (kH * kW)) * 2**(e_in - e_out)             # always the FULL kernel area
    y      = saturate(round_f32(float32(s) * scale))                # float32 product, tool::round

so the divisor is the full kernel area whatever ``count_include_pad`` says (the chip behaves as
``count_include_pad=1``). GlobalAveragePool is the same with the kernel = the whole input.

MaxPool (``dl_base_max_pool2d.cpp``): the maximum over the window's elements inside the input; the
integers are copied, no requantization (the chip ignores any exponent difference).

ESP-DL ignores ``ceil_mode``, ``dilations`` and ``auto_pad``; models that need them are rejected.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ...ir.ops import window
from ..registry import Prepared, arm, kernel, lowering, row_layout
from ..rounding import clamp, qrange, round_f32


@njit(cache=True, inline="always")
def _span(o, stride, pad, k, size):
    """``[start, stop)`` of the input positions under output position ``o``'s window that lie inside the
    input (never empty: pool_geometry requires pads < kernel)."""
    start = o * stride - pad
    return max(start, 0), min(start + k, size)


@njit(cache=True)
def avg_pool_flat(x, out, acc, n_, h_, w_, c_, oh_, ow_, kh, kw, sh, sw, pt, pl, scale, lo, hi, mode):
    """x [N,H,W,C], out [N,OH,OW,C] flat; acc [C] int64 scratch."""
    a = acc[:c_]
    for n in range(n_):
        for oh in range(oh_):
            h0, h1 = _span(oh, sh, pt, kh, h_)
            for ow in range(ow_):
                w0, w1 = _span(ow, sw, pl, kw, w_)
                for c in range(c_):
                    a[c] = 0
                for ih in range(h0, h1):
                    for iw in range(w0, w1):
                        xo = ((n * h_ + ih) * w_ + iw) * c_
                        xs = x[xo:xo + c_]
                        for c in range(c_):
                            a[c] += xs[c]
                oo = ((n * oh_ + oh) * ow_ + ow) * c_
                o = out[oo:oo + c_]
                for c in range(c_):
                    o[c] = clamp(round_f32(np.float32(np.float32(a[c]) * scale), mode), lo, hi)
    return out


@njit(cache=True)
def max_pool_flat(x, out, n_, h_, w_, c_, oh_, ow_, kh, kw, sh, sw, pt, pl):
    """x [N,H,W,C], out [N,OH,OW,C] flat."""
    for n in range(n_):
        for oh in range(oh_):
            h0, h1 = _span(oh, sh, pt, kh, h_)
            for ow in range(ow_):
                w0, w1 = _span(ow, sw, pl, kw, w_)
                oo = ((n * oh_ + oh) * ow_ + ow) * c_
                o = out[oo:oo + c_]
                x0 = ((n * h_ + h0) * w_ + w0) * c_
                for c in range(c_):
                    o[c] = x[x0 + c]
                for ih in range(h0, h1):
                    for iw in range(w0, w1):
                        xo = ((n * h_ + ih) * w_ + iw) * c_
                        xs = x[xo:xo + c_]
                        for c in range(c_):
                            if xs[c] > o[c]:
                                o[c] = xs[c]
    return out


def pool_geometry(ctx, shape):
    """Validated (n, H, W, C), kernel (kh, kw), strides, pads (top, left, bottom, right), output (oh, ow)."""
    node = ctx.node
    ctx.require(shape is not None and len(shape) in (3, 4),
                f"input shape {shape}; pools take NWC (3-D) or NHWC (4-D) activations")
    nsp = len(shape) - 2
    geo = window(node, nsp)
    ks, strides, pads, dil = list(geo.kernel), list(geo.strides), geo.pads, list(geo.dilations)
    ctx.require(all(d == 1 for d in dil), f"dilations {dil} (ESP-DL pools have no dilation)",
                supported=["dilations of 1"])
    ctx.require(int(node.attr("storage_order", 0) or 0) == 0, "storage_order=1", supported=["storage_order=0"])
    if nsp == 1:
        n, w, c = shape
        h, kh, kw, sh, sw = 1, 1, ks[0], 1, strides[0]
        pt, pl, pb, pr = 0, pads[0], 0, pads[1]
    else:
        n, h, w, c = shape
        (kh, kw), (sh, sw) = ks, strides
        pt, pl, pb, pr = pads
    ctx.require(pt < kh and pb < kh and pl < kw and pr < kw,
                f"pads {pads} must be smaller than the kernel {ks} (a window would see only padding)")
    oh = (h + pt + pb - kh) // sh + 1
    ow = (w + pl + pr - kw) // sw + 1
    ctx.require(oh >= 1 and ow >= 1 and h + pt + pb >= kh and w + pl + pr >= kw,
                f"kernel {ks} does not fit the padded input {list(shape[1:-1])}")
    if int(node.attr("ceil_mode", 0) or 0):
        oh_c = -(-(h + pt + pb - kh) // sh) + 1
        ow_c = -(-(w + pl + pr - kw) // sw) + 1
        ctx.require((oh_c, ow_c) == (oh, ow), "ceil_mode=1 changes the output size; ESP-DL always floors",
                    supported=["ceil_mode=0"])
    return (n, h, w, c), (kh, kw), (sh, sw), (pt, pl, pb, pr), (oh, ow)


def _out_shape(shape, oh, ow):
    n, c = shape[0], shape[-1]
    return (n, ow, c) if len(shape) == 3 else (n, oh, ow, c)


def _check_dtype(ctx, x, out):
    ctx.require(x.dtype in ("int8", "int16"), f"input dtype {x.dtype}", supported=["int8", "int16"])
    ctx.require(out.dtype == x.dtype, f"output dtype {out.dtype} differs from input {x.dtype}")


def _avg_scale(area: int, e_in: int, e_out: int) -> np.float32:
    """float32(1/area) * 2**(e_in - e_out), as DL_SCALE(e_in) * (1.f/area) * DL_RESCALE(e_out)."""
    inv = np.float32(np.float32(1.0) / np.float32(area))
    return np.float32(np.float32(np.float32(2.0 ** e_in) * inv) * np.float32(2.0 ** -e_out))


def _prepare_avg(ctx, x, out, geo):
    (n, h, w, c), (kh, kw), (sh, sw), (pt, pl, pb, pr), (oh, ow) = geo
    _check_dtype(ctx, x, out)
    e_in, e_out = x.exp, out.exp
    ctx.require(abs(e_in) < 31 and abs(e_out) < 31, f"exponents {e_in}/{e_out} out of ESP-DL's range")
    scale = _avg_scale(kh * kw, e_in, e_out)
    lo, hi = qrange(x.dtype)
    dtype = np.dtype(x.dtype)
    mode = ctx.mode
    out_shape = _out_shape(x.shape, oh, ow)
    o = ctx.output_buffer((n * oh * ow * c,), dtype)
    acc = ctx.zeros((c,), np.int64, "accumulators")
    dims = (n, h, w, c, oh, ow, kh, kw, sh, sw, pt, pl)

    def run(xa, *_):
        avg_pool_flat(np.ascontiguousarray(xa).reshape(-1), o, acc, *dims, scale, lo, hi, mode)
        return (o.reshape(out_shape),)

    return Prepared([out_shape], run, macs=n * oh * ow * c * kh * kw, info={"pool": (dims, scale, lo, hi)})


@kernel("AveragePool")
def prepare_average_pool(node, ctx, ins, outs):
    ctx.require(len(ins) == 1, f"{len(ins)} inputs, AveragePool takes one")
    geo = pool_geometry(ctx, ins[0].shape)
    cip = int(node.attr("count_include_pad", 0) or 0)
    ctx.require(cip in (0, 1), f"count_include_pad={cip}", supported=["0", "1"])
    # Either way the chip divides by the full kernel area (count_include_pad=1 semantics); with
    # count_include_pad=0 and padding its border outputs differ from ONNX's: we emulate the chip.
    return _prepare_avg(ctx, ins[0], outs[0], geo)


@kernel("GlobalAveragePool")
def prepare_global_average_pool(node, ctx, ins, outs):
    ctx.require(len(ins) == 1, f"{len(ins)} inputs, GlobalAveragePool takes one")
    shape = ins[0].shape
    ctx.require(shape is not None and len(shape) in (3, 4),
                f"input shape {shape}; pools take NWC (3-D) or NHWC (4-D) activations")
    if len(shape) == 3:
        n, w, c = shape
        h = 1
    else:
        n, h, w, c = shape
    geo = ((n, h, w, c), (h, w), (1, 1), (0, 0, 0, 0), (1, 1))
    return _prepare_avg(ctx, ins[0], outs[0], geo)


@kernel("MaxPool")
def prepare_max_pool(node, ctx, ins, outs):
    ctx.require(len(ins) == 1, f"{len(ins)} inputs, MaxPool takes one")
    ctx.require(len(outs) == 1, "MaxPool with an Indices output", supported=["one output"])
    x, out = ins[0], outs[0]
    (n, h, w, c), (kh, kw), (sh, sw), (pt, pl, pb, pr), (oh, ow) = pool_geometry(ctx, x.shape)
    _check_dtype(ctx, x, out)
    dtype = np.dtype(x.dtype)
    out_shape = _out_shape(x.shape, oh, ow)
    o = ctx.output_buffer((n * oh * ow * c,), dtype)
    dims = (n, h, w, c, oh, ow, kh, kw, sh, sw, pt, pl)

    def run(xa, *_):
        max_pool_flat(np.ascontiguousarray(xa).reshape(-1), o, *dims)
        return (o.reshape(out_shape),)

    return Prepared([out_shape], run, macs=n * oh * ow * c * kh * kw, info={"pool": dims})


# ---- compiled lowering (emu/program.py) -------------------------------------------------------------
AVGPOOL = row_layout("AVGPOOL", "x out acc n h w c oh ow kh kw sh sw pt pl scale lo hi")
MAXPOOL = row_layout("MAXPOOL", "x out n h w c oh ow kh kw sh sw pt pl")


@arm(AVGPOOL)
@njit(cache=True, inline="always")
def avg_arm(row, act, actf, c16, c32, c64, cf, mode):
    L = AVGPOOL
    n, h, w, c, oh, ow = row[L.n], row[L.h], row[L.w], row[L.c], row[L.oh], row[L.ow]
    avg_pool_flat(act[row[L.x]:row[L.x] + n * h * w * c], act[row[L.out]:row[L.out] + n * oh * ow * c],
                  c64[row[L.acc]:row[L.acc] + c], n, h, w, c, oh, ow, row[L.kh], row[L.kw], row[L.sh], row[L.sw],
                  row[L.pt], row[L.pl], cf[row[L.scale]], row[L.lo], row[L.hi], mode)


@arm(MAXPOOL)
@njit(cache=True, inline="always")
def max_arm(row, act, actf, c16, c32, c64, cf, mode):
    L = MAXPOOL
    n, h, w, c, oh, ow = row[L.n], row[L.h], row[L.w], row[L.c], row[L.oh], row[L.ow]
    max_pool_flat(act[row[L.x]:row[L.x] + n * h * w * c], act[row[L.out]:row[L.out] + n * oh * ow * c], n, h, w, c,
                  oh, ow, row[L.kh], row[L.kw], row[L.sh], row[L.sw], row[L.pt], row[L.pl])


@lowering("AveragePool", "GlobalAveragePool", "MaxPool")
def lower_pool(b, step):
    x, out = b.ins(step)[0], b.outs(step)[0]
    names = ("n", "h", "w", "c", "oh", "ow", "kh", "kw", "sh", "sw", "pt", "pl")
    info = step.prepared.info["pool"]
    if step.node.op_type == "MaxPool":
        b.emit(MAXPOOL, x=b.slot(x.name), out=b.slot(out.name), **dict(zip(names, info)))
        return
    dims, scale, lo, hi = info
    b.emit(AVGPOOL, x=b.slot(x.name), out=b.slot(out.name), acc=b.c64_scratch(dims[3]), scale=b.cf([scale]), lo=lo,
           hi=hi, **dict(zip(names, dims)))
