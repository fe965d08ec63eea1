"""float32 arithmetic as ESP-DL's float code paths run it on the chip (numba, scalar).

ESP-DL is built with ``-O3 -ffast-math`` (esp-dl/CMakeLists.txt) for targets with a single-precision
FPU (esp32p4: RISC-V ``F``; esp32s3: Xtensa FPU), so:

* float ``+ - * /`` and ``sqrtf`` are IEEE float32 operations (correctly rounded): here numba
  float32 scalars, or float64 rounded once to float32 where that is provably the same
  (``sqrt``; a product of two float32 is exact in float64).
* ``a * b + c`` whose product has no other use is contracted into one fused multiply-add
  (``fmadd.s``): :func:`fma32`, an exactly rounded fma (LLVM ``llvm.fma.f32``).
* ``expf`` / ``logf`` come from the C library. We use the correctly rounded value (float64
  result rounded to float32); a libm that is not correctly rounded may differ by one ulp.
* double literals (``1.0 / (1.0 + expf(-x))``) make the expression double, rounded to float once at
  the end; no double FPU, so no double fma.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit
from numba.core import cgutils, types
from numba.extending import intrinsic

F32 = np.float32

#: Decorator for kernels with float arithmetic: IEEE semantics like the chip's FPU, so x / 0 gives
#: inf or nan instead of numba's default ZeroDivisionError (e.g. LayerNormalization with epsilon 0
#: on a constant line). Integer kernels keep ``njit(cache=True)``.
float_kernel = njit(cache=True, error_model="numpy")


@intrinsic
def _llvm_fma_f32(typingctx, a, b, c):
    sig = types.float32(types.float32, types.float32, types.float32)

    def codegen(context, builder, signature, args):
        f = ir.FloatType()
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(f, [f, f, f]), "llvm.fma.f32")
        return builder.call(fn, args)

    return sig, codegen


@njit(cache=True, inline="always")
def fma32(a, b, c):
    """float32 ``a * b + c`` with a single rounding."""
    return _llvm_fma_f32(np.float32(a), np.float32(b), np.float32(c))


@njit(cache=True, inline="always")
def expf(x):
    return np.float32(math.exp(np.float64(x)))


@njit(cache=True, inline="always")
def logf(x):
    xd = np.float64(x)
    if xd < 0.0:
        return np.float32(np.nan)
    if xd == 0.0:
        return np.float32(-np.inf)
    return np.float32(math.log(xd))


@njit(cache=True, inline="always")
def sqrtf(x):
    xd = np.float64(x)
    if xd < 0.0:
        return np.float32(np.nan)
    return np.float32(math.sqrt(xd))


@njit(cache=True, inline="always")
def sigmoid(x):
    """``dl::math::sigmoid``: ``1.0 / (1.0 + expf(-x))`` in double, returned as float."""
    e = np.float64(expf(-np.float32(x)))
    return np.float32(1.0 / (1.0 + e))


@njit(cache=True, inline="always")
def tanh(x):
    """``dl::math::tanh``: ``2 * sigmoid(2 * x) - 1`` in float (2*s is exact, so the fms is too)."""
    s = sigmoid(np.float32(2.0) * np.float32(x))
    return np.float32(np.float32(2.0) * s) - np.float32(1.0)


@float_kernel
def sqrt_newton(x):
    """``dl::math::sqrt_newton`` (float Newton iteration until two iterates differ by <= 1e-5).

    The iteration is capped at 10000 steps: it can only cycle (never finish) for huge inputs,
    where the chip would hang instead.
    """
    x = np.float32(x)
    if x == np.float32(0.0):
        return np.float32(0.0)
    en = np.float32(0.00001)
    result = x
    for _ in range(10000):
        last = result
        result = np.float32((last + x / last) * np.float32(0.5))
        d = result - last
        if d < np.float32(0.0):
            d = -d
        if not d > en:
            break
    return result
