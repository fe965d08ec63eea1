"""The one place where rounding and saturation are defined.

ESP-DL (``dl/dl_define_private.hpp``, ``dl/tool/src/dl_tool.cpp``) rounds half to even on
esp32p4 / esp32s31 (``CONFIG_ROUND_HALF_EVEN_ENABLED``) and half up (``floor(x + 0.5)``, ties
toward +infinity) everywhere else: esp32s3 and the portable C target.

Every kernel takes the integer ``mode`` from :data:`TARGETS` and calls the helpers below; none
rounds on its own.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..errors import UnsupportedError

HALF_EVEN = 0
HALF_UP = 1

#: target -> rounding mode
TARGETS: dict[str, int] = {
    "esp32p4": HALF_EVEN,
    "esp32s31": HALF_EVEN,
    "esp32s3": HALF_UP,
    "c": HALF_UP,
}

#: dtype -> (min, max) of saturation
QRANGE: dict[str, tuple[int, int]] = {
    "int8": (-128, 127),
    "int16": (-32768, 32767),
    "int32": (-(2**31), 2**31 - 1),
    "uint8": (0, 255),
}


def rounding_mode(target: str) -> int:
    try:
        return TARGETS[target]
    except KeyError:
        raise UnsupportedError(f"unknown target {target!r}", supported=sorted(TARGETS)) from None


def qrange(dtype: str) -> tuple[int, int]:
    try:
        return QRANGE[dtype]
    except KeyError:
        raise UnsupportedError(f"no integer range for dtype {dtype!r}", supported=sorted(QRANGE)) from None


@njit(cache=True, inline="always")
def round_f(x: float, mode: int) -> float:
    """Round a float to an integer value (returned as float) by the target's rule."""
    if mode == HALF_EVEN:
        return np.rint(x)
    return np.floor(x + 0.5)


@njit(cache=True, inline="always")
def shift_round(v: np.int64, shift: int, mode: int) -> np.int64:
    """``round(v / 2**shift)`` for an integer ``v``; ``shift <= 0`` multiplies (ESP-DL's shift_and_round)."""
    if shift <= 0:
        return v << (-shift)
    q = v >> shift
    r = v - (q << shift)
    half = np.int64(1) << (shift - 1)
    if mode == HALF_EVEN:
        if r > half or (r == half and (q & 1) != 0):
            q += 1
    else:
        if r >= half:
            q += 1
    return q


@njit(cache=True, inline="always")
def requant(acc: np.int64, shift: int, mode: int, relu: bool, lo: int, hi: int) -> np.int64:
    """A kernel's output from an exact accumulator: ``shift_round``, then the fused Relu, then
    saturation to ``[lo, hi]`` (ESP-DL's conv / matmul epilogue, ``srcmb`` on the SIMD targets)."""
    v = shift_round(acc, shift, mode)
    if relu and v < 0:
        v = 0
    if v < lo:
        return np.int64(lo)
    if v > hi:
        return np.int64(hi)
    return v


@njit(cache=True, inline="always")
def clamp(v, lo, hi):
    if v < lo:
        return lo
    if v > hi:
        return hi
    return v


def round_array(x: np.ndarray, mode: int) -> np.ndarray:
    """Vectorised :func:`round_f` (numpy; same rule)."""
    if mode == HALF_EVEN:
        return np.rint(x)
    return np.floor(x + 0.5)


def saturate(x: np.ndarray, dtype: str) -> np.ndarray:
    lo, hi = qrange(dtype)
    return np.clip(x, lo, hi).astype(dtype)


def quantize(x: np.ndarray, exponent: int, dtype: str, mode: int) -> np.ndarray:
    """Float -> integer at ``exponent`` with the target's rounding and saturation."""
    scaled = np.asarray(x, dtype=np.float64) * (2.0 ** (-exponent))
    return saturate(round_array(scaled, mode), dtype)


def dequantize(q: np.ndarray, exponent: int) -> np.ndarray:
    return (np.asarray(q, dtype=np.float64) * (2.0 ** exponent)).astype(np.float32)


def requantize(x: np.ndarray, shift: int, dtype: str, mode: int) -> np.ndarray:
    """Integer array divided by ``2**shift`` with rounding (multiplied for shift < 0), saturated."""
    v = np.asarray(x, dtype=np.int64)
    if shift <= 0:
        return saturate(v << (-shift), dtype)
    q = v >> shift
    r = v - (q << shift)
    half = np.int64(1) << (shift - 1)
    if mode == HALF_EVEN:
        q = q + ((r > half) | ((r == half) & ((q & 1) != 0)))
    else:
        q = q + (r >= half)
    return saturate(q, dtype)


@njit(cache=True, inline="always")
def round_f32(x, mode: int) -> float:
    """ESP-DL ``tool::round(float)`` of a float32 value ``x`` (``dl/tool/src/dl_tool.cpp``).

    Half-even: ``fcvt.w.s ..., rne`` on esp32p4. Half-up: ``floorf(value + 0.5)``, where the sum is
    formed in double and narrowed back to float before ``floorf`` (so it can round up once more).
    """
    if mode == HALF_EVEN:
        return np.rint(np.float32(x))
    return np.floor(np.float32(np.float64(x) + 0.5))


@njit(cache=True, inline="always")
def round_f64(x: float, mode: int) -> float:
    """ESP-DL ``tool::round(double)``: half-up is ``floor(v + 0.5)``; half-even is a software routine
    (no fcvt) that truncates ``v +- 0.5`` toward zero and treats results within 1e-6 of an integer
    as ties (so a value just above ``k + 0.5`` can round down to an even ``k``)."""
    if mode != HALF_EVEN:
        return np.floor(x + 0.5)
    r = x - 0.5 if x < 0 else x + 0.5
    ip = np.trunc(r)
    if abs(r - ip) < 1e-6 and (np.int64(ip) & 1) != 0:
        ip = ip + 1.0 if x < 0 else ip - 1.0
    return ip


@njit(cache=True, inline="always")
def round_f32_sat(x, mode: int, lo: int, hi: int) -> np.int64:
    """ESP-DL's ``truncate(out, tool::round(float x))`` for a float32 ``x``, as an int64 in [lo, hi].

    esp32p4 / esp32s31: ``fcvt.w.s rne`` (half to even; NaN -> int max, so ``hi`` after clipping).
    Other targets: ``(int)floorf(x + 0.5)``: the sum is a double rounded to float before the floor,
    so e.g. 0.49999997f rounds to 1 there (a real difference from ``floor(x + 0.5)`` in double).
    """
    if x != x:
        return np.int64(hi)
    xd = np.float64(x)
    if mode == HALF_EVEN:
        r = np.rint(xd)
    else:
        r = np.floor(np.float64(np.float32(xd + 0.5)))
    if r < lo:
        return np.int64(lo)
    if r > hi:
        return np.int64(hi)
    return np.int64(r)


def round_saturate(x: np.ndarray, dtype: str, mode: int) -> np.ndarray:
    """Vectorised :func:`round_f32_sat`: float32 values -> ``truncate(tool::round(x))`` in ``dtype``.

    Half-even is ``fcvt.w.s rne``; half-up is ``(int)floorf(x + 0.5)`` with the sum narrowed to float
    before the floor. Values beyond the int32 range saturate; NaN becomes the positive limit (what
    ``fcvt.w.s`` returns). ``x`` must hold float32 values (the kernels compute them in float32).
    """
    v = np.asarray(x, dtype=np.float32).astype(np.float64)
    nan = np.isnan(v)
    v = np.where(nan, 0.0, v)
    if mode == HALF_EVEN:
        r = np.rint(v)
    else:
        r = np.floor((v + 0.5).astype(np.float32).astype(np.float64))
    lo, hi = qrange(dtype)
    r = np.where(nan, hi, r)
    return np.clip(r, lo, hi).astype(dtype)
