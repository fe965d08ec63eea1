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
