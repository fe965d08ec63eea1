"""Slow, obvious references for the activation / softmax / normalization kernels.

Scalar Python over numpy float32 scalars, written straight from ESP-DL's C++ (see the kernel
modules' docstrings); fused multiply-adds are rounded exactly with fractions.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

F = np.float32
RANGE = {"int8": (-128, 127), "int16": (-32768, 32767)}


def fma(a, b, c) -> np.float32:
    """float32(a*b + c) rounded once (nearest, ties to even)."""
    exact = Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c))
    guess = F(float(exact))
    best = None
    for cand in (np.nextafter(guess, F(-np.inf)), guess, np.nextafter(guess, F(np.inf))):
        err = abs(Fraction(float(cand)) - exact)
        key = (err, int(np.array(cand).view(np.int32)) & 1)
        if best is None or key < best[0]:
            best = (key, cand)
    return F(best[1])


def quant(v, dtype, target) -> int:
    """truncate(round(float v)) of ESP-DL: p4 fcvt rne; others floorf((double)v + 0.5) as float."""
    lo, hi = RANGE[dtype]
    v = F(v)
    if math.isnan(v):
        return hi
    if target in ("esp32p4", "esp32s31"):
        r = round(float(v)) if math.isfinite(v) else (hi if v > 0 else lo)
    else:
        r = math.floor(float(F(float(v) + 0.5))) if math.isfinite(v) else (hi if v > 0 else lo)
    return min(max(r, lo), hi)


def expf(x):
    return F(math.exp(float(x)))


def sigmoid(x):
    return F(1.0 / (1.0 + float(expf(-F(x)))))


def act(op, t, alpha=0.0, beta=0.0):
    t = F(t)
    if op == "Sigmoid":
        return sigmoid(t)
    if op == "Tanh":
        return F(F(2) * sigmoid(F(2) * t)) - F(1)
    if op == "Swish":
        return F(sigmoid(t) * t)
    if op == "HardSigmoid":
        v = fma(F(alpha), t, F(beta))
        return F(max(0.0, min(1.0, float(v))))
    if op == "HardSwish":
        d = 0.166667 * float(t) + 0.5
        d = max(0.0, min(1.0, d))
        return F(d * float(t))
    if op == "Elu":
        return t if t >= 0 else F(F(alpha) * F(expf(t) - F(1)))
    if op == "Exp":
        return expf(t)
    if op == "Log":
        return F(math.log(float(t))) if t > 0 else (F(-np.inf) if t == 0 else F(np.nan))
    if op == "Sqrt":
        return F(math.sqrt(float(t))) if t >= 0 else F(np.nan)
    raise ValueError(op)


def activation_q(op, x, e_in, e_out, dtype, target, alpha=0.0, beta=0.0):
    out = np.empty(x.shape, dtype=dtype)
    for idx in np.ndindex(x.shape):
        t = F(F(int(x[idx])) * F(2.0 ** e_in))
        out[idx] = quant(F(act(op, t, alpha, beta) * F(2.0 ** -e_out)), dtype, target)
    return out


def lut_s8(x, table):
    return np.array([table[int(v) + 128] for v in x.ravel()], dtype=np.int8).reshape(x.shape)


def lut_s16(x, table, target):
    step = 65536 // (table.size - 1)
    out = []
    for v in x.ravel():
        q = Fraction(int(v) + 32768, step)
        if target in ("esp32p4", "esp32s31"):
            i = round(q)  # Fraction rounds half to even
        else:
            i = math.floor(q + Fraction(1, 2))
        out.append(table[i])
    return np.array(out, dtype=np.int16).reshape(x.shape)


def _lines(shape, axis):
    """Index tuples of every line along ``axis``."""
    other = [range(s) if d != axis else [slice(None)] for d, s in enumerate(shape)]
    for idx in np.ndindex(*[len(o) for o in other]):
        yield tuple(other[d][i] for d, i in enumerate(idx))


def softmax(x, axis, log, dtype, e_in=0):
    x = np.asarray(x)
    axis %= x.ndim
    out = np.empty(x.shape, dtype=np.float32)
    scale = F(2.0 ** e_in)
    for line in _lines(x.shape, axis):
        v = x[line]
        if dtype == "int8":
            e = [expf(F(scale * F(int(i)))) for i in v]
            s = F(0)
            for a in e:
                s = F(s + a)
            if log:
                ls = F(math.log(float(s)))
                out[line] = [F(scale * F(int(i))) - ls for i in v]
            else:
                out[line] = [F(a / s) for a in e]
            continue
        f = [F(F(int(i)) * scale) if dtype == "int16" else F(i) for i in v]
        m = f[0]
        for a in f[1:]:
            m = a if m < a else m
        e = [expf(F(a - m)) for a in f]
        s = F(0)
        for a in e:
            s = F(s + a)
        if log:
            ls = F(math.log(float(s)))
            out[line] = [F(F(a - m) - ls) for a in f]
        else:
            out[line] = [F(a / s) for a in e]
    return out


def sqrt_newton(x):
    x = F(x)
    if x == 0:
        return F(0)
    r = x
    while True:
        last = r
        r = F(F(last + F(x / last)) * F(0.5))
        if not abs(float(r) - float(last)) > float(F(0.00001)):
            return r


def layernorm_q(x, w, b, axis, eps, e_in, e_w, e_b, e_out, dtype, target):
    shape = x.shape
    axis %= x.ndim
    n = int(np.prod(shape[axis:]))
    x2 = x.reshape(-1, n)
    w = w.ravel() if w is not None else None
    b = b.ravel() if b is not None else None
    s_in = F(2.0 ** e_in)
    y = np.empty(x2.shape, dtype=dtype)
    for o in range(x2.shape[0]):
        row = [int(v) for v in x2[o]]
        mean = F(sum(row) / n)
        var = F(0)
        for v in row:
            d = F(F(v) - mean)
            var = fma(d, d, var)
        mean = F(mean * s_in)
        var = F(var * F(s_in * s_in))
        var = F(var / F(n))
        inv = F(F(1) / sqrt_newton(F(var + F(eps))))
        for j, v in enumerate(row):
            nv = F(F(F(F(v) * s_in) - mean) * inv)
            sv = F(F(int(w[j])) * F(2.0 ** e_w)) if w is not None else F(1)
            bv = F(F(int(b[j])) * F(2.0 ** e_b)) if b is not None else F(0)
            r = F(F(nv * sv) + bv)
            y[o, j] = quant(F(r * F(2.0 ** -e_out)), dtype, target)
    return y.reshape(shape)


def rmsnorm_q(x, w, axis, eps, e_in, e_out, dtype, target):
    shape = x.shape
    axis %= x.ndim
    n = int(np.prod(shape[axis:]))
    x2 = x.reshape(-1, n)
    w = np.asarray(w, dtype=np.float32).ravel()
    s_in = F(2.0 ** e_in)
    y = np.empty(x2.shape, dtype=dtype)
    for o in range(x2.shape[0]):
        row = [int(v) for v in x2[o]]
        ms = F(F(F(sum(v * v for v in row)) * F(s_in * s_in)) / F(n))
        r = F(F(1) / F(math.sqrt(float(F(ms + F(eps))))))
        r = F(r * F(s_in * F(2.0 ** -e_out)))
        for j, v in enumerate(row):
            y[o, j] = quant(F(F(F(v) * r) * w[j]), dtype, target)
    return y.reshape(shape)


def lpnorm_q(x, axis, p, e_out, dtype, target):
    axis %= x.ndim
    y = np.empty(x.shape, dtype=dtype)
    for line in _lines(x.shape, axis):
        v = [int(a) for a in x[line]]
        if p == 1:
            s = F(sum(abs(a) for a in v))
            inv = F(F(1) / s) if s > 0 else F(0)
        else:
            s = F(sum(a * a for a in v))
            inv = F(F(1) / F(math.sqrt(float(s)))) if s > 0 else F(0)
        inv = F(inv * F(2.0 ** -e_out))
        y[line] = [quant(F(F(a) * inv), dtype, target) if inv > 0 else 0 for a in v]
    return y
