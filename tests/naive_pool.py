"""Slow, obvious references for pooling, reductions, MatMul, GRU and LSTM (ESP-DL's formulas).

Plain Python loops over numpy scalars; float32 steps are spelled out one operation at a time. No
code is shared with the emulator (``chunkwise.emu.ops``) on purpose.
"""

from __future__ import annotations

import math

import numpy as np

F = np.float32
RANGES = {"int8": (-128, 127), "int16": (-32768, 32767)}


def rnd_f32(x, target):
    """tool::round(float): rint on esp32p4; floorf(x + 0.5) with the sum narrowed to float elsewhere."""
    x = F(x)
    if target in ("esp32p4", "esp32s31"):
        return float(np.rint(x))
    return float(np.floor(F(float(x) + 0.5)))


def rnd_f64(x, target):
    """tool::round(double)."""
    if target not in ("esp32p4", "esp32s31"):
        return math.floor(x + 0.5)
    r = x - 0.5 if x < 0 else x + 0.5
    ip = math.trunc(r)
    if abs(r - ip) < 1e-6 and ip % 2 != 0:
        ip = ip + 1 if x < 0 else ip - 1
    return ip


def sat(v, dtype):
    lo, hi = RANGES[dtype]
    if v != v:
        return hi
    return int(min(max(v, lo), hi))


def shift_round(v, shift, target):
    """round(v / 2**shift) for a Python int: half to even on esp32p4, half up elsewhere."""
    if shift <= 0:
        return v * (1 << -shift)
    q, r = divmod(v, 1 << shift)
    half = 1 << (shift - 1)
    if r > half or (r == half and (target not in ("esp32p4", "esp32s31") or q % 2 == 1)):
        q += 1
    return q


def fma(a, b, c):
    """float32 a*b + c rounded once (via double: a*b is exact there)."""
    return F(float(a) * float(b) + float(c))


# ---- pools ---------------------------------------------------------------------------------------
def _windows(shape, kernel, strides, pads):
    n, h, w, c = shape
    kh, kw = kernel
    sh, sw = strides
    pt, pl, pb, pr = pads
    oh = (h + pt + pb - kh) // sh + 1
    ow = (w + pl + pr - kw) // sw + 1
    for i in range(oh):
        for j in range(ow):
            cells = [(i * sh - pt + a, j * sw - pl + b) for a in range(kh) for b in range(kw)]
            yield i, j, [(y, x) for y, x in cells if 0 <= y < h and 0 <= x < w]


def avg_pool(x, kernel, strides, pads, e_in, e_out, target):
    """x NHWC ints. Sum of the window inside the input, times float32(1/(kh*kw)) * 2**(e_in-e_out)."""
    n, h, w, c = x.shape
    kh, kw = kernel
    oh = (h + pads[0] + pads[2] - kh) // strides[0] + 1
    ow = (w + pads[1] + pads[3] - kw) // strides[1] + 1
    out = np.zeros((n, oh, ow, c), dtype=x.dtype)
    scale = F(F(F(1.0) / F(kh * kw)) * F(2.0 ** e_in))
    scale = F(scale * F(2.0 ** -e_out))
    for b in range(n):
        for i, j, cells in _windows(x.shape, kernel, strides, pads):
            for ch in range(c):
                s = sum(int(x[b, y, xx, ch]) for y, xx in cells)
                out[b, i, j, ch] = sat(rnd_f32(F(F(s) * scale), target), str(x.dtype))
    return out


def max_pool(x, kernel, strides, pads):
    n, h, w, c = x.shape
    kh, kw = kernel
    oh = (h + pads[0] + pads[2] - kh) // strides[0] + 1
    ow = (w + pads[1] + pads[3] - kw) // strides[1] + 1
    out = np.zeros((n, oh, ow, c), dtype=x.dtype)
    for b in range(n):
        for i, j, cells in _windows(x.shape, kernel, strides, pads):
            for ch in range(c):
                out[b, i, j, ch] = max(int(x[b, y, xx, ch]) for y, xx in cells)
    return out


# ---- reductions ----------------------------------------------------------------------------------
def reduce(op, x, axes, keepdims, e_in, e_out, target):
    """ESP-DL's ReduceXxx on int8/int16 ``x``; reduced elements visited in memory order."""
    dtype = str(x.dtype)
    rank = x.ndim
    axes = sorted(a % rank for a in axes) if axes else list(range(rank))
    kept = [a for a in range(rank) if a not in axes]
    xt = np.transpose(x, kept + axes)
    outer_shape = [x.shape[a] for a in kept]
    rows = xt.reshape(int(np.prod(outer_shape, dtype=np.int64)), -1)
    s_in, s_out = F(2.0 ** e_in), F(2.0 ** -e_out)
    res = []
    for row in rows:
        v = [int(a) for a in row]
        if op == "ReduceSum":
            r = sat(shift_round(sum(v), e_out - e_in, target), dtype)
        elif op == "ReduceSumSquare":
            r = sat(shift_round(sum(a * a for a in v), e_out - 2 * e_in, target), dtype)
        elif op == "ReduceL1":
            r = sat(shift_round(sum(abs(a) for a in v), e_out - e_in, target), dtype)
        elif op == "ReduceMax":
            r = max(v)
        elif op == "ReduceMin":
            r = min(v)
        elif op == "ReduceMean":
            f = F(F(F(sum(v)) * s_in) / F(len(v)))
            r = sat(rnd_f32(F(f * s_out), target), dtype)
        elif op == "ReduceL2":
            t = F(F(sum(a * a for a in v)) * F(2.0 ** (2 * e_in)))
            root = F(0.0)
            if t != 0:  # dl::math::sqrt_newton
                root = t
                while True:
                    last = root
                    root = F(F(last + F(t / last)) * F(0.5))
                    if not abs(F(root - last)) > F(1e-5):
                        break
            r = sat(rnd_f32(F(root * s_out), target), dtype)
        elif op == "ReduceLogSum":
            t = F(F(sum(v)) * s_in)
            lg = F(math.log(float(t))) if t > 0 else (F(-np.inf) if t == 0 else F(np.nan))
            r = sat(rnd_f32(F(lg * s_out), target), dtype)
        elif op == "ReduceLogSumExp":
            acc = F(0.0)
            for a in v:
                acc = F(acc + F(math.exp(float(F(F(a) * s_in)))))
            r = sat(rnd_f32(F(F(math.log(float(acc))) * s_out), target), dtype)
        elif op == "ReduceProd":
            if dtype == "int8":
                p = F(1.0)
                for a in v:
                    p = F(p * F(F(a) * s_in))
                r = sat(rnd_f32(F(p * s_out), target), dtype)
            else:
                p = 1.0
                for a in v:
                    p = p * float(F(F(a) * s_in))
                r = sat(rnd_f64(p * float(s_out), target), dtype)
        else:
            raise ValueError(op)
        res.append(r)
    out = np.array(res, dtype=x.dtype).reshape(outer_shape)
    if keepdims:
        out = out.reshape([1 if a in axes else x.shape[a] for a in range(rank)])
    elif not kept:
        out = out.reshape(1)
    return out


# ---- MatMul --------------------------------------------------------------------------------------
def matmul(a, b, e_a, e_b, e_out, relu, target):
    """a, b logical int arrays (numpy broadcasting = ESP-DL's for rank <= 4)."""
    dtype = str(a.dtype)
    a64, b64 = a.astype(object), b.astype(object)
    acc = np.matmul(a64, b64)
    acc = np.atleast_1d(acc)
    flat = [sat(max(v, 0) if relu else v, dtype)
            for v in (shift_round(int(s), e_out - e_a - e_b, target) for s in acc.ravel())]
    return np.array(flat, dtype=a.dtype).reshape(acc.shape)


def pack_dynamic_b(b, target):
    """Row-major memory of a [..., K, N] matrix as ESP-PPQ's pre-nodes lay it out for the chip."""
    k, n = b.shape[-2:]
    mats = b.reshape(-1, k, n)
    out = []
    for m in mats:
        if target == "c":
            out.append(m.T.ravel())
            continue
        a = 16 if b.dtype == np.int8 else 8
        al = n // a * a
        head = m[:, :al].reshape(k, al // a, a).transpose(1, 0, 2).ravel()
        tail = m[:, al:].T.ravel()
        out.append(np.concatenate([head, tail]))
    return np.stack(out).reshape(b.shape)


# ---- GRU / LSTM ----------------------------------------------------------------------------------
def _sigmoid(x):
    return F(1.0 / (1.0 + float(F(math.exp(-float(x))))))


def _tanh(x):
    return F(F(F(2.0) * _sigmoid(F(F(2.0) * F(x)))) - F(1.0))


class Lut:
    """dl::math::SigmoidLUT / TanhLUT."""

    def __init__(self, gate_exp, bound, is_tanh):
        scale = F(2.0 ** gate_exp)
        qmin = int(F(F(-bound) / scale)) - 1
        qmax = int(F(F(bound) / scale)) + 1
        if -qmin > qmax:
            qmax = -qmin
        else:
            qmin = -qmax
        self.qmin, self.qmax, self.tanh = qmin, qmax, is_tanh
        fn = _tanh if is_tanh else _sigmoid
        self.table = [fn(F(F(i) * scale)) for i in range(qmax + 1)]

    def get(self, i):
        i = int(i)
        if i >= 0:
            return self.table[i] if i < self.qmax else self.table[self.qmax]
        v = self.table[-i] if i > self.qmin else self.table[self.qmax]
        return F(-v) if self.tanh else F(F(1.0) - v)


def _wrap16(v):
    return (int(v) + 32768) % 65536 - 32768


def dotprod(row, vec, shift, isa, dtype, target):
    acc = sum(int(a) * int(b) for a, b in zip(row, vec))
    if isa:
        return sat(shift_round(acc, shift, target), "int16")
    if dtype == "int8":
        acc = (acc + 2**31) % 2**32 - 2**31
    return sat(rnd_f32(F(F(acc) * F(2.0 ** -shift)), target), "int16")


def _isa(target, dtype, length, shift):
    unit = 16 if dtype == "int8" else 8
    return target in ("esp32p4", "esp32s31", "esp32s3") and length % unit == 0 and shift >= 0


def gru(x, w, r, b, h0, e_x, e_w, e_r, e_y, e_h, gate_exp, target):
    """x [seq, in]; w [D, 3H, in]; r [D, 3H, H]; b [D, 6H] int16 or None; h0 [D, H] or None."""
    dtype = str(x.dtype)
    ndir, h3, in_size = w.shape
    hid = h3 // 3
    seq = x.shape[0]
    sig, tnh = Lut(gate_exp, 6.3, False), Lut(gate_exp, 3.5, True)
    ws, rs = gate_exp - (e_x + e_w), gate_exp - (e_h + e_r)
    y = np.zeros((seq, ndir, 1, hid), dtype=x.dtype)
    yh = np.zeros((ndir, 1, hid), dtype=x.dtype)
    for d in range(ndir):
        h = [0] * hid if h0 is None else [int(v) for v in h0[d]]
        steps = range(seq) if d == 0 else range(seq - 1, -1, -1)
        for t in steps:
            xin = [dotprod(w[d, j], x[t], ws, _isa(target, dtype, in_size, ws), dtype, target) for j in range(h3)]
            hin = [dotprod(r[d, j], h, rs, _isa(target, dtype, hid, rs), dtype, target) for j in range(h3)]
            if b is not None:
                xin = [_wrap16(a + int(b[d, j])) for j, a in enumerate(xin)]
                hin = [_wrap16(a + int(b[d, h3 + j])) for j, a in enumerate(hin)]
            z = [sig.get(xin[i] + hin[i]) for i in range(hid)]
            rg = [sig.get(xin[hid + i] + hin[hid + i]) for i in range(hid)]
            for i in range(hid):
                idx = rnd_f32(fma(rg[i], F(hin[2 * hid + i]), F(xin[2 * hid + i])), target)
                n = tnh.get(idx)
                tmp = F(F(F(F(1.0) - z[i]) * n) * F(2.0 ** -e_y))
                tmp = fma(z[i], F(h[i]), tmp)
                h[i] = sat(rnd_f32(tmp, target), dtype)
                y[t, d, 0, i] = h[i]
        yh[d, 0] = h
    return y, yh


def lstm(x, w, r, b, h0, c0, e_x, e_w, e_r, e_y, e_h, gate_exp, target):
    dtype = str(x.dtype)
    ndir, h4, in_size = w.shape
    hid = h4 // 4
    seq = x.shape[0]
    sig, tnh = Lut(gate_exp, 6.3, False), Lut(gate_exp, 3.5, True)
    ws, rs = gate_exp - (e_x + e_w), gate_exp - (e_h + e_r)
    y = np.zeros((seq, ndir, 1, hid), dtype=x.dtype)
    yh = np.zeros((ndir, 1, hid), dtype=x.dtype)
    yc = np.zeros((ndir, 1, hid), dtype=np.int16)
    for d in range(ndir):
        h = [0] * hid if h0 is None else [int(v) for v in h0[d]]
        c = [0] * hid if c0 is None else [int(v) for v in c0[d]]
        steps = range(seq) if d == 0 else range(seq - 1, -1, -1)
        for t in steps:
            xin = [dotprod(w[d, j], x[t], ws, _isa(target, dtype, in_size, ws), dtype, target) for j in range(h4)]
            hin = [dotprod(r[d, j], h, rs, _isa(target, dtype, hid, rs), dtype, target) for j in range(h4)]
            if b is not None:
                g = [_wrap16(xin[j] + int(b[d, j]) + hin[j] + int(b[d, h4 + j])) for j in range(h4)]
            else:
                g = [_wrap16(xin[j] + hin[j]) for j in range(h4)]
            for i in range(hid):
                ig, og = sig.get(g[i]), sig.get(g[hid + i])
                fg, gg = sig.get(g[2 * hid + i]), tnh.get(g[3 * hid + i])
                tmp = fma(fg, F(c[i]), F(F(ig * gg) * F(2.0 ** -gate_exp)))
                c[i] = _wrap16(int(rnd_f32(tmp, target)))
                tmp = F(F(og * tnh.get(c[i])) * F(2.0 ** -e_y))
                h[i] = sat(rnd_f32(tmp, target), dtype)
                y[t, d, 0, i] = h[i]
        yh[d, 0] = h
        yc[d, 0] = c
    return y, yh, yc
