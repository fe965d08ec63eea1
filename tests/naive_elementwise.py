"""Slow, obvious references for the element-wise kernels, written from ESP-DL's formulas.

Element by element in Python integers and exact fractions; float32 steps are spelled out with
``np.float32`` scalars exactly where ESP-DL's C code computes in ``float``.
"""

from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np

RANGES = {"int8": (-128, 127), "int16": (-32768, 32767)}


def sat(v: int, dtype: str) -> int:
    lo, hi = RANGES[dtype]
    return min(max(int(v), lo), hi)


def round_exact(q: Fraction, half_even: bool) -> int:
    """Round a rational to an integer: ties to even, or ties toward +infinity."""
    fl = q.numerator // q.denominator
    rem = q - fl
    if rem > Fraction(1, 2):
        return fl + 1
    if rem == Fraction(1, 2):
        if half_even:
            return fl + (fl & 1)
        return fl + 1
    return fl


def round_float32(v, half_even: bool) -> int:
    """ESP-DL ``tool::round(float)``: rne on esp32p4, ``floorf(v + 0.5)`` (sum narrowed to float) else."""
    v = np.float32(v)
    if half_even:
        return round_exact(Fraction(float(v)), True)
    s = np.float32(float(v) + 0.5)
    return int(np.floor(float(s)))


def out_shape(sa, sb):
    r = max(len(sa), len(sb))
    pa = (1,) * (r - len(sa)) + tuple(sa)
    pb = (1,) * (r - len(sb)) + tuple(sb)
    return tuple(max(x, y) for x, y in zip(pa, pb)), pa, pb


def binary(fn, a: np.ndarray, b: np.ndarray, dtype) -> np.ndarray:
    """``out[i] = fn(a[i'], b[i''])`` with numpy broadcasting done by hand."""
    shape, pa, pb = out_shape(a.shape, b.shape)
    a4, b4 = a.reshape(pa), b.reshape(pb)
    out = np.zeros(shape, dtype=dtype)
    for idx in itertools.product(*[range(s) for s in shape]):
        ia = tuple(0 if pa[k] == 1 else idx[k] for k in range(len(idx)))
        ib = tuple(0 if pb[k] == 1 else idx[k] for k in range(len(idx)))
        out[idx] = fn(int(a4[ia]), int(b4[ib]))
    return out


def add(a, b, dtype):
    return binary(lambda x, y: sat(x + y, dtype), a, b, dtype)


def sub(a, b, dtype):
    return binary(lambda x, y: sat(x - y, dtype), a, b, dtype)


def mul(a, b, ea, eb, eo, dtype, half_even, via_float):
    """SIMD: exact product shifted with rounding. C: product -> float32 first."""
    k = Fraction(2) ** (ea + eb - eo)

    def f(x, y):
        p = x * y
        if via_float:
            return sat(round_float32(np.float32(p) * np.float32(k), half_even), dtype)
        return sat(round_exact(p * k, half_even), dtype)

    return binary(f, a, b, dtype)


def requant(x, e_in, e_out, dtype, half_even):
    k = Fraction(2) ** (e_in - e_out)
    return np.array([sat(round_exact(int(v) * k, half_even), dtype) for v in x.ravel()],
                    dtype=dtype).reshape(x.shape)


def relu(x, e_in, e_out, dtype, half_even):
    k = Fraction(2) ** (e_in - e_out)
    return np.array([sat(round_exact(max(int(v), 0) * k, half_even), dtype) for v in x.ravel()],
                    dtype=dtype).reshape(x.shape)


def leaky_relu(x, alpha, e_in, e_out, dtype, half_even):
    k = np.float32(2.0 ** (e_in - e_out))
    a = np.float32(alpha)
    res = []
    for v in x.ravel():
        t = np.float32(np.float32(int(v)) * k)
        if v < 0:
            t = np.float32(t * a)
        res.append(sat(round_float32(t, half_even), dtype))
    return np.array(res, dtype=dtype).reshape(x.shape)


def clip(x, lo, hi, e_in, e_out, dtype, half_even):
    k = Fraction(2) ** (e_in - e_out)
    res = []
    for v in x.ravel():
        v = int(v)
        v = lo if v < lo else (hi if v > hi else v)
        res.append(sat(round_exact(v * k, half_even), dtype))
    return np.array(res, dtype=dtype).reshape(x.shape)


def prelu_simd(x, alpha, e_in, e_a, e_out, dtype, half_even):
    """int8 SIMD kernels: negatives (x*alpha) rounded by 2**(e_out-e_in-e_a), positives rescaled."""
    c = x.shape[-1]
    res = np.zeros(x.shape, dtype=dtype)
    for idx in np.ndindex(*x.shape):
        v = int(x[idx])
        if v < 0:
            q = Fraction(v * int(alpha[idx[-1] % c])) * Fraction(2) ** (e_in + e_a - e_out)
        else:
            q = Fraction(v) * Fraction(2) ** (e_in - e_out)
        res[idx] = sat(round_exact(q, half_even), dtype)
    return res


def prelu_c(x, alpha, e_in, e_a, e_out, dtype):
    """prelu_11c: positives copied, negatives (x * alpha) >> shift (floor)."""
    shift = e_out - e_in - e_a
    res = np.zeros(x.shape, dtype=dtype)
    for idx in np.ndindex(*x.shape):
        v = int(x[idx])
        if v < 0:
            p = v * int(alpha[idx[-1]])
            v = p >> shift if shift > 0 else p << -shift
        res[idx] = sat(v, dtype)
    return res


def div(a, b, ea, eb, eo, dtype, half_even, variant, lut=False):
    """dl_base_div.cpp, float32 step by step, for one kernel variant (n_n, n_1, 1_n)."""
    lo, hi = RANGES[dtype]
    r = np.float32(2.0 ** (ea - eb - eo))

    def f(x, y):
        if lut and variant == "1_n":
            if y == 0:
                return hi if x > 0 else lo
        if x == 0:
            return 0
        if y == 0:
            return hi if x > 0 else lo
        if variant == "n_1":
            q = np.float32(np.float32(x) * np.float32(r / np.float32(y)))
        else:
            q = np.float32(np.float32(np.float32(x) * r) / np.float32(y))
        return sat(round_float32(q, half_even), dtype)

    return binary(f, a, b, dtype)
