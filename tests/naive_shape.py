"""Slow, obvious element-by-element references for the shape / data-movement ops and Resize.

Each follows ESP-DL's definition (cited in the kernels' docstrings), written as index arithmetic
per output element, independently of the kernels' numpy formulations.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

F32 = np.float32


def transpose(x, perm):
    out_shape = tuple(x.shape[p] for p in perm)
    y = np.empty(out_shape, dtype=x.dtype)
    for idx in np.ndindex(*x.shape):
        y[tuple(idx[p] for p in perm)] = x[idx]
    return y


def concat(xs, axis):
    shape = list(xs[0].shape)
    shape[axis] = sum(a.shape[axis] for a in xs)
    y = np.empty(shape, dtype=xs[0].dtype)
    off = 0
    for a in xs:
        for idx in np.ndindex(*a.shape):
            j = list(idx)
            j[axis] += off
            y[tuple(j)] = a[idx]
        off += a.shape[axis]
    return y


def espdl_slice(x, starts, ends, axes, steps):
    """ESP-DL Slice: per axis, normalise (negative step: s'=-s-1, e'=-e-1), forward range, then flip."""
    r = x.ndim
    rng = [(0, n, 1) for n in x.shape]
    flip = set()
    for i in range(len(starts)):
        ax = i if axes is None else (axes[i] + r) % r
        n = x.shape[ax]
        s = max(min(int(starts[i]), 2**31 - 1), -(2**31))
        e = max(min(int(ends[i]), 2**31 - 1), -(2**31))
        k = 1 if steps is None else int(steps[i])
        if k < 0:
            flip.add(ax)
            s, e, k = -s - 1, -e - 1, -k
        e = n if e > n else (e + n if e < 0 else e)
        s = n if s > n else (s + n if s < 0 else s)
        rng[ax] = (s, e, k)
    shape = tuple(len(range(*t)) for t in rng)
    y = np.empty(shape, dtype=x.dtype)
    for idx in np.ndindex(*shape):
        src = []
        for a, o in enumerate(idx):
            if a in flip:
                o = shape[a] - 1 - o
            s, _, k = rng[a]
            src.append(s + o * k)
        y[idx] = x[tuple(src)]
    return y


def pad(x, pads, mode, value=0):
    r = x.ndim
    shape = tuple(x.shape[a] + pads[a] + pads[a + r] for a in range(r))
    y = np.empty(shape, dtype=x.dtype)
    for idx in np.ndindex(*shape):
        src = []
        inside = True
        for a, o in enumerate(idx):
            i, n = o - pads[a], x.shape[a]
            if 0 <= i < n:
                src.append(i)
            elif mode == "constant":
                inside = False
                break
            elif mode == "edge":
                src.append(0 if i < 0 else n - 1)
            else:  # reflect, pads < n
                src.append(-i if i < 0 else 2 * (n - 1) - i)
        y[idx] = x[tuple(src)] if inside else value
    return y


def depth_to_space(x, bs, mode):
    n, h, w, c = x.shape
    co = c // (bs * bs)
    y = np.empty((n, h * bs, w * bs, co), dtype=x.dtype)
    for b, hh, ww, ci in np.ndindex(*x.shape):
        if mode == "CRD":
            oc, i, j = ci // (bs * bs), (ci % (bs * bs)) // bs, ci % bs
        else:
            i, j, oc = ci // (bs * co), (ci // co) % bs, ci % co
        y[b, hh * bs + i, ww * bs + j, oc] = x[b, hh, ww, ci]
    return y


def space_to_depth(x, bs):
    n, h, w, c = x.shape
    y = np.empty((n, h // bs, w // bs, c * bs * bs), dtype=x.dtype)
    for b, hh, ww, ci in np.ndindex(*x.shape):
        y[b, hh // bs, ww // bs, ci * bs * bs + (hh % bs) * bs + ww % bs] = x[b, hh, ww, ci]
    return y


def gather(x, idx, axis):
    out_shape = x.shape[:axis] + idx.shape + x.shape[axis + 1:]
    y = np.empty(out_shape, dtype=x.dtype)
    k = idx.ndim
    for o in np.ndindex(*out_shape):
        src = o[:axis] + (int(idx[o[axis:axis + k]]),) + o[axis + k:]
        y[o] = x[src]
    return y


def scatter_nd(data, indices, updates, reduction, lo, hi):
    y = data.astype(np.int64).copy()
    k = indices.shape[-1]
    ind = indices.reshape(-1, k)
    upd = updates.reshape((ind.shape[0],) + data.shape[k:]).astype(np.int64)
    for s in range(ind.shape[0]):
        for rest in np.ndindex(*data.shape[k:]):
            t = tuple(int(v) for v in ind[s]) + rest
            cur, u = y[t], upd[(s,) + rest]
            v = {"none": u, "add": cur + u, "mul": cur * u, "max": max(cur, u), "min": min(cur, u)}[reduction]
            y[t] = min(max(v, lo), hi)
    return y.astype(data.dtype)


def reverse_sequence(x, lens, batch_axis, time_axis):
    y = x.copy()
    for idx in np.ndindex(*x.shape):
        b, t = idx[batch_axis], idx[time_axis]
        ln = int(lens[b])
        if t < ln:
            src = list(idx)
            src[time_axis] = ln - 1 - t
            y[idx] = x[tuple(src)]
    return y


def insert_zeros(x, strides, out_pad):
    nsp = x.ndim - 2
    shape = [x.shape[0]] + [x.shape[1 + i] + (strides[i] - 1) * (x.shape[1 + i] - 1) + out_pad[i]
                            for i in range(nsp)] + [x.shape[-1]]
    y = np.zeros(shape, dtype=x.dtype)
    for idx in np.ndindex(*x.shape):
        o = (idx[0],) + tuple(idx[1 + i] * strides[i] for i in range(nsp)) + (idx[-1],)
        y[o] = x[idx]
    return y


# ---- Resize ------------------------------------------------------------------------------------
def _round_f32(q: Fraction) -> F32:
    """Exact rational -> float32, round to nearest even (normal range)."""
    if q == 0:
        return F32(0.0)
    sign = -1 if q < 0 else 1
    a = abs(q)
    e = a.numerator.bit_length() - a.denominator.bit_length()
    if Fraction(2) ** e > a:
        e -= 1
    # a in [2^e, 2^(e+1)); float32 has 24 significant bits
    unit = Fraction(2) ** (e - 23)
    m = a / unit
    fl = m.numerator // m.denominator
    rem = m - fl
    if rem > Fraction(1, 2) or (rem == Fraction(1, 2) and fl % 2 == 1):
        fl += 1
    return F32(sign * float(fl * unit))


def fma_f32(a, b, c) -> F32:
    return _round_f32(Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c)))


def resize_nearest(x, out_sp, scales, shift_round):
    """x [1, (H,) W, C]; ESP-DL: in = min((int)(o * (1.0f / scale)), n - 1), float32."""
    nsp = x.ndim - 2
    y = np.empty((1, *out_sp, x.shape[-1]), dtype=x.dtype)
    for o in np.ndindex(*out_sp):
        src = []
        for a in range(nsp):
            inv = F32(F32(1.0) / F32(scales[a]))
            src.append(min(int(F32(F32(o[a]) * inv)), x.shape[1 + a] - 1))
        y[(0, *o)] = shift_round(x[(0, *src)])
    return y


def _coeff(o, n, inv, align):
    if align:
        fx = F32(F32(o) * inv)
    else:
        fx = fma_f32(F32(F32(o) + F32(0.5)), inv, F32(-0.5))
    i = int(np.floor(fx))
    fx = F32(fx - F32(i))
    if i < 0:
        i, fx = 0, F32(0.0)
    if i >= n - 1:
        i, fx = n - 2, F32(1.0)
    return i, F32(F32(1.0) - fx), fx


def resize_linear(x, out_sp, scales, align, e_in, e_out, lo, hi):
    """ESP-DL linear: separable (W, then H), float32 with fma(a, r0, b * r1); half-even rounding."""
    nsp = x.ndim - 2
    xs = x[0][None] if nsp == 1 else x[0]  # [H, W, C]
    h, w, c = xs.shape
    oh, ow = (1, out_sp[0]) if nsp == 1 else tuple(out_sp)
    sh, sw = (F32(1.0), F32(scales[0])) if nsp == 1 else (F32(scales[0]), F32(scales[1]))
    if align:
        sw = F32(F32(ow - 1) / F32(w - 1))
        if nsp == 2:
            sh = F32(F32(oh - 1) / F32(h - 1))
    s_in, s_out = F32(2.0 ** e_in), F32(2.0 ** -e_out)
    y = np.empty((oh, ow, c), dtype=x.dtype)
    for yo in range(oh):
        if nsp == 1:
            iy, ry0, ry1 = 0, None, None
        else:
            iy, ry0, ry1 = _coeff(yo, h, F32(F32(1.0) / sh), align)
        for xo in range(ow):
            ix, rx0, rx1 = _coeff(xo, w, F32(F32(1.0) / sw), align)
            for ch in range(c):
                def row(r):
                    a = F32(F32(int(xs[r, ix, ch])) * s_in)
                    b = F32(F32(int(xs[r, ix + 1, ch])) * s_in)
                    return fma_f32(a, rx0, F32(b * rx1))
                if nsp == 1:
                    v = row(0)
                else:
                    v = fma_f32(row(iy), ry0, F32(row(iy + 1) * ry1))
                q = int(np.rint(float(F32(v * s_out))))
                y[yo, xo, ch] = min(max(q, lo), hi)
    return y.reshape((1, *out_sp, c))
