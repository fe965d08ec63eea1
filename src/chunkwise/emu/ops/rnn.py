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
from .conv import dot_bound

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
def _matvec(mt, v, acc, out, shift, isa, wide, mode):
    """out[j] = dotprod(m[j, :], v) as int16 (kept in int64), ``mt`` = m transposed ([cols, rows]).

    ``acc`` ([rows], int32 when :func:`acc_dtype` proves no partial sum leaves int32, else int64) holds
    the exact sums: the loop runs over ``k`` outside and contiguous rows inside, so it vectorizes."""
    cols, rows = mt.shape
    scale = np.float32(2.0 ** (-shift))
    for j in range(rows):
        acc[j] = 0
    for k in range(cols):
        xv = v[k]
        if xv != 0:
            for j in range(rows):
                acc[j] += mt[k, j] * xv
    for j in range(rows):
        a = np.int64(acc[j])
        if isa:
            r = shift_round(a, shift, mode)
            if r > 32767:
                r = 32767
            elif r < -32768:
                r = -32768
            out[j] = r
        else:
            if not wide:
                a = np.int64(np.int32(a))  # int32_t result for int8 operands
            out[j] = round_f32_sat(np.float32(np.float32(a) * scale), mode, -32768, 32767)
    return out


def acc_dtype(w: np.ndarray, r: np.ndarray, x_dtype: str) -> np.dtype:
    """int32 mat-vec accumulators when no partial sum of ``W x`` or ``R h`` can leave int32 (the bound of
    ``conv.dot_bound``: max |x| times the largest row sum of |weights|), else int64."""
    bound = max(dot_bound(w.reshape(-1, w.shape[-1]), x_dtype, axis=1),
                dot_bound(r.reshape(-1, r.shape[-1]), x_dtype, axis=1))
    return np.dtype(np.int32) if bound < 2**31 - 1 else np.dtype(np.int64)


def work_size(gates: int, hidden: int) -> int:
    """int64 words of the work buffer of :func:`_gru` / :func:`_lstm`: xin, hin ([gates * hidden]), h, c."""
    return 2 * gates * hidden + 2 * hidden


# ---- GRU ------------------------------------------------------------------------------------------
@float_kernel
def _gru(x, wt, rt, b, h0, y, yh, work, acc, hidden, w_shift, r_shift, isa_w, isa_r, wide, rescale,
         sig_t, sig_min, sig_max, tanh_t, tanh_min, tanh_max, lo, hi, mode):
    """One GRU over ``x`` [seq, in]; ``wt`` / ``rt`` [ndir, in|hidden, 3 * hidden] (transposed);
    ``work`` (int64, :func:`work_size`) and ``acc`` ([3 * hidden]) are the caller's: no allocation."""
    seq = x.shape[0]
    ndir = wt.shape[0]
    g3 = 3 * hidden
    xin = work[:g3]
    hin = work[g3:2 * g3]
    h = work[2 * g3:2 * g3 + hidden]
    for d in range(ndir):
        for i in range(hidden):
            h[i] = h0[d, i]
        for s in range(seq):
            t = s if d == 0 else seq - 1 - s
            _matvec(wt[d], x[t], acc, xin, w_shift, isa_w, wide, mode)
            _matvec(rt[d], h, acc, hin, r_shift, isa_r, wide, mode)
            if b.shape[0] > 0:
                for j in range(g3):
                    xin[j] = _wrap16(xin[j] + b[d, j])
                    hin[j] = _wrap16(hin[j] + b[d, g3 + j])
            for i in range(hidden):
                z = _lut(sig_t, sig_min, sig_max, xin[i] + hin[i], False)
                rg = _lut(sig_t, sig_min, sig_max, xin[hidden + i] + hin[hidden + i], False)
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
def _lstm(x, wt, rt, b, h0, c0, y, yh, yc, work, acc, hidden, w_shift, r_shift, isa_w, isa_r, wide, rescale_y,
          rescale_c, sig_t, sig_min, sig_max, tanh_t, tanh_min, tanh_max, lo, hi, mode):
    """One LSTM, as :func:`_gru` (weights transposed, ``work`` / ``acc`` [4 * hidden] from the caller)."""
    seq = x.shape[0]
    ndir = wt.shape[0]
    g4 = 4 * hidden
    xin = work[:g4]
    hin = work[g4:2 * g4]
    h = work[2 * g4:2 * g4 + hidden]
    c = work[2 * g4 + hidden:2 * g4 + 2 * hidden]
    for d in range(ndir):
        for i in range(hidden):
            h[i] = h0[d, i]
            c[i] = c0[d, i]
        for s in range(seq):
            t = s if d == 0 else seq - 1 - s
            _matvec(wt[d], x[t], acc, xin, w_shift, isa_w, wide, mode)
            _matvec(rt[d], h, acc, hin, r_shift, isa_r, wide, mode)
            if b.shape[0] > 0:
                for j in range(g4):
                    xin[j] = _wrap16(xin[j] + b[d, j] + hin[j] + b[d, g4 + j])
            else:
                for j in range(g4):
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
    w3 = w.const.reshape(ndir, gates * hidden, in_size)
    r3 = r.const.reshape(ndir, gates * hidden, hidden)
    adt = acc_dtype(w3, r3, x.dtype)
    wt = np.ascontiguousarray(w3.transpose(0, 2, 1))  # [ndir, in, gates * hidden]: see _matvec
    rt = np.ascontiguousarray(r3.transpose(0, 2, 1))
    bt = (np.ascontiguousarray(b.const.astype(np.int64).reshape(ndir, 2 * gates * hidden)) if b is not None
          else np.zeros((0, 0), dtype=np.int64))
    sig = gate_lut(gate_exp, 6.3, False)
    tnh = gate_lut(gate_exp, 3.5, True)
    return dict(x=x, hidden=hidden, ndir=ndir, seq=seq, in_size=in_size, wt=wt, rt=rt, bt=bt, h0=h0,
                gate_exp=gate_exp, e_y=e_y, w_shift=w_shift, r_shift=r_shift, isa_w=isa_w, isa_r=isa_r,
                sig=sig, tnh=tnh, acc_dtype=adt, gates=gates)


def _initial(arr, zeros):
    """An initial state as [ndir, hidden] (any integer dtype; ``zeros`` when absent)."""
    if arr is None:
        return zeros
    return np.ascontiguousarray(arr).reshape(zeros.shape)


def _buffers(ctx, p, gates, dtype, lstm):
    """Outputs, work and accumulators of one GRU / LSTM, allocated once in prepare."""
    seq, ndir, hidden = p["seq"], p["ndir"], p["hidden"]
    return (ctx.zeros((ndir, hidden), np.int64, "absent initial state"),
            ctx.output_buffer((seq, ndir, 1, hidden), dtype), ctx.output_buffer((ndir, 1, hidden), dtype),
            ctx.output_buffer((ndir, 1, hidden), np.int16) if lstm else None,
            ctx.zeros((work_size(gates, hidden),), np.int64, "work buffer"),
            ctx.zeros((gates * hidden,), p["acc_dtype"], "accumulators"))


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

    zeros, y, yh, _, work, acc = _buffers(ctx, p, 3, dtype, False)
    y3, yh2 = y.reshape(seq, ndir, hidden), yh.reshape(ndir, hidden)

    def run(xa, wa, ra, ba=None, sl=None, h0a=None):
        _gru(np.ascontiguousarray(xa).reshape(seq, in_size), p["wt"], p["rt"], p["bt"], _initial(h0a, zeros),
             y3, yh2, work, acc, hidden, p["w_shift"], p["r_shift"], p["isa_w"], p["isa_r"],
             wide, rescale, sig_t, sig_min, sig_max, tanh_t, tanh_min, tanh_max, lo, hi, mode)
        return y, yh

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

    zeros, y, yh, yc, work, acc = _buffers(ctx, p, 4, dtype, True)
    y3, yh2, yc2 = y.reshape(seq, ndir, hidden), yh.reshape(ndir, hidden), yc.reshape(ndir, hidden)

    def run(xa, wa, ra, ba=None, sl=None, h0a=None, c0a=None, *_):
        _lstm(np.ascontiguousarray(xa).reshape(seq, in_size), p["wt"], p["rt"], p["bt"], _initial(h0a, zeros),
              _initial(c0a, zeros), y3, yh2, yc2, work, acc, hidden, p["w_shift"], p["r_shift"], p["isa_w"],
              p["isa_r"], wide, rescale_y, rescale_c, sig_t, sig_min, sig_max, tanh_t, tanh_min, tanh_max, lo, hi,
              mode)
        return y, yh, yc

    macs = ndir * seq * 4 * hidden * (in_size + hidden)
    return Prepared([y_shape, yh_shape, yh_shape], run, macs=macs, dtypes=[x.dtype, x.dtype, "int16"],
                    info={"rnn": {**p, "rescale": (rescale_y, rescale_c), "range": (lo, hi), "wide": wide}})


# ---- compiled lowering (emu/program.py) -------------------------------------------------------------
# flags: 1 isa_w, 2 isa_r, 4 wide (int16 operands), 8 int32 accumulators (at ``acc`` in the arena; else in c64);
# work: the int64 work buffer (c64, :func:`work_size`)
RNN_FIELDS = ("x y yh yc seq in_size hidden ndir w r b nb h0 c0 w_shift r_shift flags work acc rescale sig sig_n "
              "sig_min sig_max tanh tanh_n tanh_min tanh_max lo hi")
F_ISA_W, F_ISA_R, F_WIDE, F_ACC32 = 1, 2, 4, 8
GRU = row_layout("GRU", RNN_FIELDS)
LSTM = row_layout("LSTM", RNN_FIELDS)


@njit(cache=True, inline="always")
def _rnn_views(L, row, act, c32, c64, cf, gates):
    seq, ins, hid, nd = row[L.seq], row[L.in_size], row[L.hidden], row[L.ndir]
    x = act[row[L.x]:row[L.x] + seq * ins].reshape((seq, ins))
    w = c32[row[L.w]:row[L.w] + nd * gates * hid * ins].reshape((nd, ins, gates * hid))
    r = c32[row[L.r]:row[L.r] + nd * gates * hid * hid].reshape((nd, hid, gates * hid))
    nb = row[L.nb]
    b = c64[row[L.b]:row[L.b] + nb * 2 * gates * hid].reshape((nb, 2 * gates * hid))
    h0 = act[row[L.h0]:row[L.h0] + nd * hid].reshape((nd, hid))
    c0 = act[row[L.c0]:row[L.c0] + nd * hid].reshape((nd, hid))
    y = act[row[L.y]:row[L.y] + seq * nd * hid].reshape((seq, nd, hid))
    yh = act[row[L.yh]:row[L.yh] + nd * hid].reshape((nd, hid))
    yc = act[row[L.yc]:row[L.yc] + nd * hid].reshape((nd, hid))
    sig = cf[row[L.sig]:row[L.sig] + row[L.sig_n]]
    tnh = cf[row[L.tanh]:row[L.tanh] + row[L.tanh_n]]
    work = c64[row[L.work]:row[L.work] + 2 * gates * hid + 2 * hid]
    return x, w, r, b, h0, c0, y, yh, yc, sig, tnh, work


@arm(GRU)
@njit(cache=True, inline="always")
def gru_arm(row, act, actf, c16, c32, c64, cf, mode):
    L = GRU
    x, w, r, b, h0, c0, y, yh, yc, sig, tnh, work = _rnn_views(L, row, act, c32, c64, cf, 3)
    f = row[L.flags]
    n = 3 * row[L.hidden]
    if f & F_ACC32:
        _gru(x, w, r, b, h0, y, yh, work, act[row[L.acc]:row[L.acc] + n], row[L.hidden], row[L.w_shift],
             row[L.r_shift], (f & F_ISA_W) != 0, (f & F_ISA_R) != 0, (f & F_WIDE) != 0, cf[row[L.rescale]], sig,
             row[L.sig_min], row[L.sig_max], tnh, row[L.tanh_min], row[L.tanh_max], row[L.lo], row[L.hi], mode)
    else:
        _gru(x, w, r, b, h0, y, yh, work, c64[row[L.acc]:row[L.acc] + n], row[L.hidden], row[L.w_shift],
             row[L.r_shift], (f & F_ISA_W) != 0, (f & F_ISA_R) != 0, (f & F_WIDE) != 0, cf[row[L.rescale]], sig,
             row[L.sig_min], row[L.sig_max], tnh, row[L.tanh_min], row[L.tanh_max], row[L.lo], row[L.hi], mode)


@arm(LSTM)
@njit(cache=True, inline="always")
def lstm_arm(row, act, actf, c16, c32, c64, cf, mode):
    L = LSTM
    x, w, r, b, h0, c0, y, yh, yc, sig, tnh, work = _rnn_views(L, row, act, c32, c64, cf, 4)
    f = row[L.flags]
    n = 4 * row[L.hidden]
    if f & F_ACC32:
        _lstm(x, w, r, b, h0, c0, y, yh, yc, work, act[row[L.acc]:row[L.acc] + n], row[L.hidden], row[L.w_shift],
              row[L.r_shift], (f & F_ISA_W) != 0, (f & F_ISA_R) != 0, (f & F_WIDE) != 0, cf[row[L.rescale]],
              cf[row[L.rescale] + 1], sig, row[L.sig_min], row[L.sig_max], tnh, row[L.tanh_min], row[L.tanh_max],
              row[L.lo], row[L.hi], mode)
    else:
        _lstm(x, w, r, b, h0, c0, y, yh, yc, work, c64[row[L.acc]:row[L.acc] + n], row[L.hidden], row[L.w_shift],
              row[L.r_shift], (f & F_ISA_W) != 0, (f & F_ISA_R) != 0, (f & F_WIDE) != 0, cf[row[L.rescale]],
              cf[row[L.rescale] + 1], sig, row[L.sig_min], row[L.sig_max], tnh, row[L.tanh_min], row[L.tanh_max],
              row[L.lo], row[L.hi], mode)


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
    n = p["gates"] * hidden
    acc32 = p["acc_dtype"] == np.int32
    flags = (F_ISA_W * bool(p["isa_w"]) | F_ISA_R * bool(p["isa_r"]) | F_WIDE * bool(p["wide"])
             | F_ACC32 * acc32)
    b.emit(LSTM if lstm else GRU, x=b.slot(ins[0]), y=b.slot(outs[0]), yh=b.slot(outs[1]),
           yc=b.slot(outs[2]) if lstm else zeros, seq=p["seq"], in_size=p["in_size"], hidden=hidden, ndir=ndir,
           w=b.c32(p["wt"]), r=b.c32(p["rt"]), b=b.c64(p["bt"]), nb=p["bt"].shape[0], h0=h0, c0=c0,
           w_shift=p["w_shift"], r_shift=p["r_shift"], flags=flags, work=b.c64_scratch(work_size(p["gates"], hidden)),
           acc=b.scratch(n) if acc32 else b.c64_scratch(n),
           rescale=b.cf(p["rescale"]), sig=b.cf(sig_t), sig_n=sig_t.size, sig_min=sig_min, sig_max=sig_max,
           tanh=b.cf(tanh_t), tanh_n=tanh_t.size, tanh_min=tanh_min, tanh_max=tanh_max, lo=lo, hi=hi)

