"""GRU and LSTM (int8 / int16) as ESP-DL runs them (``dl/module/include/dl_module_gru.hpp``,
``dl_module_lstm.hpp``): integer mat-vec products into int16 gate inputs at ``gate_exponent``
(ESP-PPQ exports -9), then float32 gate arithmetic through sigmoid / tanh lookup tables.

Per time step and direction (``g`` = gate exponent; int16 sums wrap like C ``int16_t +=``)::

    xin = dot(W, x)   -> int16 at g        hin = dot(R, h)   -> int16 at g
    dot: exact int sum; PIE path (length % 16 == 0 for int8, % 8 for int16, shift >= 0, not the
         c target): shift_round + saturate; else round(float32(sum) * 2^-shift) (dotprod_c)
    GRU  xin += Wb; hin += Rb
         z, r = sigmoid_lut(xin + hin)                      (gates 0..2H)
         n    = tanh_lut(round(fma(r, hin_n, xin_n)))
         h    = sat(round(fma(fl((1 - z) * n) * 2^-e_y, 1, fl(z * h))))   (the 2^-e_y product is exact)
    LSTM xin += Wb + hin + Rb                               (gate order i, o, f, g)
         i, o, f = sigmoid_lut(xin_*);  g_ = tanh_lut(xin_g)
         c    = (int16) round(fma(f, c, fl(i * g_) * 2^-e_c))   (c at exponent g; wraps, no saturation)
         h    = sat(round(fl(o * tanh_lut(c)) * 2^-e_y))

The lookup tables are ``dl::math::SigmoidLUT`` / ``TanhLUT`` over +-6.3 / +-3.5 at exponent g
(entries ``sigmoid(i * 2^g)`` in float; negative indices mirrored; out of range clamped).
``a * b + c`` is taken as fused (ESP-DL is built with -O3 -ffast-math; the chip's FPU has fmadd.s).
Batch must be 1 (ESP-DL walks X as one sequence). Y is ``[seq, directions, 1, hidden]``.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..registry import Prepared, arm, kernel, lowering, row_layout
from ..rounding import qrange, round_f32, round_f32_sat, shift_round
from ._fmath import float_kernel, fma32, sigmoid, tanh

PIE_TARGETS = ("esp32p4", "esp32s31", "esp32s3")


# ---- lookup tables -------------------------------------------------------------------------------
@float_kernel
def _fill_table(table, scale, is_tanh):
    for i in range(table.shape[0]):
        v = np.float32(np.float32(i) * scale)
        table[i] = tanh(v) if is_tanh else sigmoid(v)
    return table


def gate_lut(gate_exp: int, bound: float, is_tanh: bool) -> tuple[np.ndarray, int, int]:
    """(table, quant_min, quant_max) of ESP-DL's SigmoidLUT / TanhLUT."""
    scale = np.float32(2.0 ** gate_exp)
    b = np.float32(bound)
    qmin = int(np.trunc(np.float32(-b / scale))) - 1
    qmax = int(np.trunc(np.float32(b / scale))) + 1
    if -qmin > qmax:
        qmax = -qmin
    else:
        qmin = -qmax
    table = np.empty(qmax + 1, dtype=np.float32)
    _fill_table(table, scale, is_tanh)
    return table, qmin, qmax


@njit(cache=True, inline="always")
def _lut(table, qmin, qmax, idx, is_tanh):
    if idx >= 0:
        return table[idx] if idx < qmax else table[qmax]
    v = table[-idx] if idx > qmin else table[qmax]
    if is_tanh:
        return -v
    return np.float32(np.float32(1.0) - v)


# ---- integer mat-vec (dl::base::dotprod) ----------------------------------------------------------
@njit(cache=True, inline="always")
def _wrap16(v):
    """An int stored into an int16_t (GCC: modulo 2**16)."""
    return ((np.int64(v) + 32768) & 0xFFFF) - 32768


@float_kernel
def _matvec(m, v, out, shift, isa, wide, mode):
    """out[j] = dotprod(m[j, :], v) as int16 (kept in int64)."""
    rows, cols = m.shape
    scale = np.float32(2.0 ** (-shift))
    for j in range(rows):
        acc = np.int64(0)
        for k in range(cols):
            acc += np.int64(m[j, k]) * np.int64(v[k])
        if isa:
            r = shift_round(acc, shift, mode)
            if r > 32767:
                r = 32767
            elif r < -32768:
                r = -32768
            out[j] = r
        else:
            if not wide:
                acc = np.int64(np.int32(acc))  # int32_t result for int8 operands
            out[j] = round_f32_sat(np.float32(np.float32(acc) * scale), mode, -32768, 32767)
    return out


# ---- GRU ------------------------------------------------------------------------------------------
@float_kernel
def _gru(x, w, r, b, h0, y, yh, hidden, w_shift, r_shift, isa_w, isa_r, wide, rescale,
         sig_t, sig_min, sig_max, tanh_t, tanh_min, tanh_max, lo, hi, mode):
    seq = x.shape[0]
    ndir = w.shape[0]
    xin = np.zeros(3 * hidden, dtype=np.int64)
    hin = np.zeros(3 * hidden, dtype=np.int64)
    gates = np.zeros(2 * hidden, dtype=np.float32)
    h = np.zeros(hidden, dtype=np.int64)
    for d in range(ndir):
        for i in range(hidden):
            h[i] = h0[d, i]
        for s in range(seq):
            t = s if d == 0 else seq - 1 - s
            _matvec(w[d], x[t], xin, w_shift, isa_w, wide, mode)
            _matvec(r[d], h, hin, r_shift, isa_r, wide, mode)
            if b.shape[0] > 0:
                for j in range(3 * hidden):
                    xin[j] = _wrap16(xin[j] + b[d, j])
                    hin[j] = _wrap16(hin[j] + b[d, 3 * hidden + j])
            for j in range(2 * hidden):
                gates[j] = _lut(sig_t, sig_min, sig_max, xin[j] + hin[j], False)
            for i in range(hidden):
                z = gates[i]
                rg = gates[hidden + i]
                idx = round_f32(fma32(rg, np.float32(hin[2 * hidden + i]), np.float32(xin[2 * hidden + i])), mode)
                n = _lut(tanh_t, tanh_min, tanh_max, np.int64(idx), True)
                tmp = np.float32(np.float32(np.float32(np.float32(1.0) - z) * n) * rescale)
                tmp = fma32(z, np.float32(h[i]), tmp)
                h[i] = round_f32_sat(tmp, mode, lo, hi)
                y[t, d, i] = h[i]
        for i in range(hidden):
            yh[d, i] = h[i]
    return y


# ---- LSTM -----------------------------------------------------------------------------------------
@float_kernel
def _lstm(x, w, r, b, h0, c0, y, yh, yc, hidden, w_shift, r_shift, isa_w, isa_r, wide, rescale_y,
          rescale_c, sig_t, sig_min, sig_max, tanh_t, tanh_min, tanh_max, lo, hi, mode):
    seq = x.shape[0]
    ndir = w.shape[0]
    xin = np.zeros(4 * hidden, dtype=np.int64)
    hin = np.zeros(4 * hidden, dtype=np.int64)
    h = np.zeros(hidden, dtype=np.int64)
    c = np.zeros(hidden, dtype=np.int64)
    for d in range(ndir):
        for i in range(hidden):
            h[i] = h0[d, i]
            c[i] = c0[d, i]
        for s in range(seq):
            t = s if d == 0 else seq - 1 - s
            _matvec(w[d], x[t], xin, w_shift, isa_w, wide, mode)
            _matvec(r[d], h, hin, r_shift, isa_r, wide, mode)
            for j in range(4 * hidden):
                if b.shape[0] > 0:
                    xin[j] = _wrap16(xin[j] + b[d, j] + hin[j] + b[d, 4 * hidden + j])
                else:
                    xin[j] = _wrap16(xin[j] + hin[j])
            for i in range(hidden):
                ig = _lut(sig_t, sig_min, sig_max, xin[i], False)
                og = _lut(sig_t, sig_min, sig_max, xin[hidden + i], False)
                fg = _lut(sig_t, sig_min, sig_max, xin[2 * hidden + i], False)
                gg = _lut(tanh_t, tanh_min, tanh_max, xin[3 * hidden + i], True)
                prod = np.float32(np.float32(ig * gg) * rescale_c)
                cv = round_f32(fma32(fg, np.float32(c[i]), prod), mode)
                if cv != cv or cv >= 2147483648.0:  # fcvt.w.s saturates; then the int16 store wraps
                    ci = np.int64(2147483647)
                elif cv < -2147483648.0:
                    ci = np.int64(-2147483648)
                else:
                    ci = np.int64(cv)
                c[i] = _wrap16(ci)
                tc = _lut(tanh_t, tanh_min, tanh_max, c[i], True)
                tmp = np.float32(np.float32(og * tc) * rescale_y)
                h[i] = round_f32_sat(tmp, mode, lo, hi)
                y[t, d, i] = h[i]
        for i in range(hidden):
            yh[d, i] = h[i]
            yc[d, i] = c[i]
    return y


# ---- prepare --------------------------------------------------------------------------------------
def _opt(ins, i):
    return ins[i] if len(ins) > i and ins[i].name else None


def _rnn_common(node, ctx, ins, outs, gates: int):
    op = node.op_type
    ctx.require(len(ins) >= 3, f"{op} needs X, W and R")
    x, w, r = ins[0], ins[1], ins[2]
    ctx.require(x.dtype in ("int8", "int16"), f"input dtype {x.dtype}", supported=["int8", "int16"])
    for t, nm in ((w, "W"), (r, "R")):
        ctx.require(t.dtype == x.dtype, f"{nm} dtype {t.dtype} differs from X {x.dtype}")
        ctx.require(len(t.exps) == 1, f"{nm} must have one (per-tensor) exponent, has {len(t.exps)}")
    hidden = int(node.attr("hidden_size", 0) or 0)
    ctx.require(hidden >= 1, "hidden_size is required")
    direction = node.attr("direction", "forward") or "forward"
    ctx.require(direction in ("forward", "bidirectional"),
                f"direction={direction!r} (ESP-DL runs 'reverse' as 'forward')",
                supported=["forward", "bidirectional"])
    ndir = 2 if direction == "bidirectional" else 1
    layout = int(node.attr("layout", 0) or 0)
    ctx.require(layout in (0, 1), f"layout={layout}")
    ctx.require(node.attr("clip") is None, "clip", supported=["no clip"])
    if node.attr("activations") is not None:
        acts = [v.decode() if isinstance(v, bytes) else str(v) for v in node.attr("activations")]
        want = ["Sigmoid", "Tanh", "Tanh"] * ndir
        ctx.require(acts == want, f"activations {acts} (ESP-DL always uses its sigmoid/tanh tables)",
                    supported=[str(want)])
    for a in ("activation_alpha", "activation_beta"):
        ctx.require(node.attr(a) is None, f"{a} (ESP-DL ignores it)", supported=[f"no {a}"])
    shape = x.shape
    ctx.require(shape is not None and len(shape) == 3, f"X shape {shape}; expected 3-D")
    seq, batch = (shape[0], shape[1]) if layout == 0 else (shape[1], shape[0])
    ctx.require(batch == 1, f"batch size {batch}; ESP-DL runs one sequence", supported=["batch 1"])
    in_size = shape[2]
    ctx.require(w.is_const and r.is_const, "W and R must be constant initializers")
    ctx.require(tuple(w.shape) == (ndir, gates * hidden, in_size),
                f"W shape {list(w.shape)}, expected {[ndir, gates * hidden, in_size]}")
    ctx.require(tuple(r.shape) == (ndir, gates * hidden, hidden),
                f"R shape {list(r.shape)}, expected {[ndir, gates * hidden, hidden]}")
    b = _opt(ins, 3)
    if b is not None:
        ctx.require(b.is_const, "B must be a constant initializer")
        ctx.require(b.dtype == "int16", f"B dtype {b.dtype}; ESP-DL reads the bias as int16")
        ctx.require(int(np.prod(b.shape)) == ndir * 2 * gates * hidden,
                    f"B shape {list(b.shape)}, expected {[ndir, 2 * gates * hidden]}")
    sl = _opt(ins, 4)
    if sl is not None:
        ctx.require(sl.is_const and bool(np.all(np.asarray(sl.const) == seq)),
                    "sequence_lens other than the full length (ESP-DL ignores it)",
                    supported=["no sequence_lens", "sequence_lens == sequence length"])
    h0 = _opt(ins, 5)
    if h0 is not None:
        ctx.require(h0.dtype == x.dtype, f"initial_h dtype {h0.dtype} differs from X {x.dtype}")
        ctx.require(int(np.prod(h0.shape)) == ndir * hidden, f"initial_h shape {list(h0.shape)}")
    gate_exp = int(node.attr("gate_exponent", -8) if node.attr("gate_exponent") is not None else -8)
    ctx.require(-24 <= gate_exp <= 0, f"gate_exponent {gate_exp}")
    n_out = 3 if op == "LSTM" else 2
    ctx.require(len(outs) == n_out and all(o.name for o in outs),
                f"{op} needs all {n_out} outputs (ESP-DL writes every one)")
    ctx.require(outs[0].dtype == x.dtype and outs[1].dtype == x.dtype,
                f"Y / Y_h dtypes {outs[0].dtype}/{outs[1].dtype} differ from X {x.dtype}")
    e_y, e_h = outs[0].exp, outs[1].exp
    w_shift = gate_exp - (x.exp + w.exp)
    r_shift = gate_exp - (e_h + r.exp)
    isa_ok = ctx.target in PIE_TARGETS
    unit = 16 if x.dtype == "int8" else 8
    isa_w = isa_ok and in_size % unit == 0 and w_shift >= 0
    isa_r = isa_ok and hidden % unit == 0 and r_shift >= 0
    wt = np.ascontiguousarray(w.const.reshape(ndir, gates * hidden, in_size))
    rt = np.ascontiguousarray(r.const.reshape(ndir, gates * hidden, hidden))
    bt = (np.ascontiguousarray(b.const.astype(np.int64).reshape(ndir, 2 * gates * hidden)) if b is not None
          else np.zeros((0, 0), dtype=np.int64))
    sig = gate_lut(gate_exp, 6.3, False)
    tnh = gate_lut(gate_exp, 3.5, True)
    return dict(x=x, hidden=hidden, ndir=ndir, seq=seq, in_size=in_size, wt=wt, rt=rt, bt=bt, h0=h0,
                gate_exp=gate_exp, e_y=e_y, w_shift=w_shift, r_shift=r_shift, isa_w=isa_w, isa_r=isa_r,
                sig=sig, tnh=tnh)


def _initial(arr, ndir, hidden):
    if arr is None:
        return np.zeros((ndir, hidden), dtype=np.int64)
    return np.asarray(arr).astype(np.int64).reshape(ndir, hidden)


@kernel("GRU")
def prepare_gru(node, ctx, ins, outs):
    ctx.require(int(node.attr("linear_before_reset", 0) or 0) == 1,
                "linear_before_reset=0 (ESP-DL implements PyTorch's GRU, linear_before_reset=1)",
                supported=["linear_before_reset=1"])
    p = _rnn_common(node, ctx, ins, outs, 3)
    x = p["x"]
    hidden, ndir, seq, in_size = p["hidden"], p["ndir"], p["seq"], p["in_size"]
    lo, hi = qrange(x.dtype)
    dtype = np.dtype(x.dtype)
    rescale = np.float32(2.0 ** (-p["e_y"]))
    mode = ctx.mode
    wide = x.dtype == "int16"
    (sig_t, sig_min, sig_max), (tanh_t, tanh_min, tanh_max) = p["sig"], p["tnh"]
    y_shape, yh_shape = (seq, ndir, 1, hidden), (ndir, 1, hidden)

    def run(xa, wa, ra, ba=None, sl=None, h0a=None):
        y = np.empty((seq, ndir, hidden), dtype=np.int64)
        yh = np.empty((ndir, hidden), dtype=np.int64)
        _gru(np.ascontiguousarray(xa).reshape(seq, in_size), p["wt"], p["rt"], p["bt"],
             _initial(h0a, ndir, hidden), y, yh, hidden, p["w_shift"], p["r_shift"], p["isa_w"], p["isa_r"],
             wide, rescale, sig_t, sig_min, sig_max, tanh_t, tanh_min, tanh_max, lo, hi, mode)
        return (y.astype(dtype).reshape(y_shape), yh.astype(dtype).reshape(yh_shape))

    macs = ndir * seq * 3 * hidden * (in_size + hidden)
    return Prepared([y_shape, yh_shape], run, macs=macs, info={"rnn": {**p, "rescale": (rescale,), "range": (lo, hi),
                                                                        "wide": wide}})


@kernel("LSTM")
def prepare_lstm(node, ctx, ins, outs):
    ctx.require(int(node.attr("input_forget", 0) or 0) == 0, "input_forget=1", supported=["input_forget=0"])
    ctx.require(_opt(ins, 7) is None, "peephole weights P", supported=["no peepholes"])
    p = _rnn_common(node, ctx, ins, outs, 4)
    x = p["x"]
    hidden, ndir, seq, in_size = p["hidden"], p["ndir"], p["seq"], p["in_size"]
    ctx.require(outs[2].dtype == "int16" and outs[2].exp == p["gate_exp"],
                f"Y_c must be int16 at the gate exponent {p['gate_exp']} (ESP-DL asserts it), "
                f"is {outs[2].dtype} at {outs[2].exps}")
    c0 = _opt(ins, 6)
    if c0 is not None:
        ctx.require(c0.dtype == "int16", f"initial_c dtype {c0.dtype}; ESP-DL reads it as int16")
        ctx.require(int(np.prod(c0.shape)) == ndir * hidden, f"initial_c shape {list(c0.shape)}")
    lo, hi = qrange(x.dtype)
    dtype = np.dtype(x.dtype)
    rescale_y = np.float32(2.0 ** (-p["e_y"]))
    rescale_c = np.float32(2.0 ** (-p["gate_exp"]))
    mode = ctx.mode
    wide = x.dtype == "int16"
    (sig_t, sig_min, sig_max), (tanh_t, tanh_min, tanh_max) = p["sig"], p["tnh"]
    y_shape, yh_shape = (seq, ndir, 1, hidden), (ndir, 1, hidden)

    def run(xa, wa, ra, ba=None, sl=None, h0a=None, c0a=None, *_):
        y = np.empty((seq, ndir, hidden), dtype=np.int64)
        yh = np.empty((ndir, hidden), dtype=np.int64)
        yc = np.empty((ndir, hidden), dtype=np.int64)
        _lstm(np.ascontiguousarray(xa).reshape(seq, in_size), p["wt"], p["rt"], p["bt"],
              _initial(h0a, ndir, hidden), _initial(c0a, ndir, hidden), y, yh, yc, hidden, p["w_shift"],
              p["r_shift"], p["isa_w"], p["isa_r"], wide, rescale_y, rescale_c, sig_t, sig_min, sig_max,
              tanh_t, tanh_min, tanh_max, lo, hi, mode)
        return (y.astype(dtype).reshape(y_shape), yh.astype(dtype).reshape(yh_shape),
                yc.astype(np.int16).reshape(yh_shape))

    macs = ndir * seq * 4 * hidden * (in_size + hidden)
    return Prepared([y_shape, yh_shape, yh_shape], run, macs=macs, dtypes=[x.dtype, x.dtype, "int16"],
                    info={"rnn": {**p, "rescale": (rescale_y, rescale_c), "range": (lo, hi), "wide": wide}})


# ---- compiled lowering (emu/program.py) -------------------------------------------------------------
RNN_FIELDS = ("x y yh yc seq in_size hidden ndir w r b nb h0 c0 w_shift r_shift isa_w isa_r wide rescale sig sig_n "
              "sig_min sig_max tanh tanh_n tanh_min tanh_max lo hi")
GRU = row_layout("GRU", RNN_FIELDS)
LSTM = row_layout("LSTM", RNN_FIELDS)


@njit(cache=True, inline="always")
def _rnn_views(L, row, act, c32, c64, cf, gates):
    seq, ins, hid, nd = row[L.seq], row[L.in_size], row[L.hidden], row[L.ndir]
    x = act[row[L.x]:row[L.x] + seq * ins].reshape((seq, ins))
    w = c32[row[L.w]:row[L.w] + nd * gates * hid * ins].reshape((nd, gates * hid, ins))
    r = c32[row[L.r]:row[L.r] + nd * gates * hid * hid].reshape((nd, gates * hid, hid))
    nb = row[L.nb]
    b = c64[row[L.b]:row[L.b] + nb * 2 * gates * hid].reshape((nb, 2 * gates * hid))
    h0 = act[row[L.h0]:row[L.h0] + nd * hid].reshape((nd, hid))
    c0 = act[row[L.c0]:row[L.c0] + nd * hid].reshape((nd, hid))
    y = act[row[L.y]:row[L.y] + seq * nd * hid].reshape((seq, nd, hid))
    yh = act[row[L.yh]:row[L.yh] + nd * hid].reshape((nd, hid))
    yc = act[row[L.yc]:row[L.yc] + nd * hid].reshape((nd, hid))
    sig = cf[row[L.sig]:row[L.sig] + row[L.sig_n]]
    tnh = cf[row[L.tanh]:row[L.tanh] + row[L.tanh_n]]
    return x, w, r, b, h0, c0, y, yh, yc, sig, tnh


@arm(GRU)
@njit(cache=True, inline="always")
def gru_arm(row, act, actf, c16, c32, c64, cf, mode):
    L = GRU
    x, w, r, b, h0, c0, y, yh, yc, sig, tnh = _rnn_views(L, row, act, c32, c64, cf, 3)
    _gru(x, w, r, b, h0, y, yh, row[L.hidden], row[L.w_shift], row[L.r_shift], row[L.isa_w] != 0, row[L.isa_r] != 0,
         row[L.wide] != 0, cf[row[L.rescale]], sig, row[L.sig_min], row[L.sig_max], tnh, row[L.tanh_min],
         row[L.tanh_max], row[L.lo], row[L.hi], mode)


@arm(LSTM)
@njit(cache=True, inline="always")
def lstm_arm(row, act, actf, c16, c32, c64, cf, mode):
    L = LSTM
    x, w, r, b, h0, c0, y, yh, yc, sig, tnh = _rnn_views(L, row, act, c32, c64, cf, 4)
    _lstm(x, w, r, b, h0, c0, y, yh, yc, row[L.hidden], row[L.w_shift], row[L.r_shift], row[L.isa_w] != 0,
          row[L.isa_r] != 0, row[L.wide] != 0, cf[row[L.rescale]], cf[row[L.rescale] + 1], sig, row[L.sig_min],
          row[L.sig_max], tnh, row[L.tanh_min], row[L.tanh_max], row[L.lo], row[L.hi], mode)


@lowering("GRU", "LSTM")
def lower_rnn(b, step):
    p = step.prepared.info["rnn"]
    lstm = step.node.op_type == "LSTM"
    ndir, hidden = p["ndir"], p["hidden"]
    ins = step.inputs
    zeros = b.scratch(ndir * hidden)  # an absent initial state (never written)
    h0 = b.slot(ins[5]) if len(ins) > 5 and ins[5] else zeros
    c0 = b.slot(ins[6]) if lstm and len(ins) > 6 and ins[6] else zeros
    (sig_t, sig_min, sig_max), (tanh_t, tanh_min, tanh_max) = p["sig"], p["tnh"]
    lo, hi = p["range"]
    outs = step.outputs
    b.emit(LSTM if lstm else GRU, x=b.slot(ins[0]), y=b.slot(outs[0]), yh=b.slot(outs[1]),
           yc=b.slot(outs[2]) if lstm else zeros, seq=p["seq"], in_size=p["in_size"], hidden=hidden, ndir=ndir,
           w=b.c32(p["wt"]), r=b.c32(p["rt"]), b=b.c64(p["bt"]), nb=p["bt"].shape[0], h0=h0, c0=c0,
           w_shift=p["w_shift"], r_shift=p["r_shift"], isa_w=p["isa_w"], isa_r=p["isa_r"], wide=p["wide"],
           rescale=b.cf(p["rescale"]), sig=b.cf(sig_t), sig_n=sig_t.size, sig_min=sig_min, sig_max=sig_max,
           tanh=b.cf(tanh_t), tanh_n=tanh_t.size, tanh_min=tanh_min, tanh_max=tanh_max, lo=lo, hi=hi)

