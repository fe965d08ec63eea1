"""RequantizeLinear, QuantizeLinear, DequantizeLinear.

ESP-DL runs all three with one module (``dl_module_requantize_linear.hpp``): ``output->assign(input)``
(``dl/tensor/src/dl_tensor_base.cpp``), which converts by dtypes and exponents and ignores the
node's scale / zero-point inputs:

* int -> int, same exponent: copy, int16 -> int8 clips.
* int -> int, exponents differ: ``round(x * 2**(e_in - e_out))`` with the target's rounding,
  saturated (the SIMD kernels ``dl_*_requantize_linear`` and the float fallback agree: the product
  by a power of two is exact).
* float32 -> int: ``tool::round(x * 2**-e_out)`` (float32), saturated.
* int -> float32: ``x * 2**e_in`` (exact).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..registry import Prepared, arm, kernel, lowering, row_layout
from ..rounding import qrange, round_f32_sat
from .elementwise import REQUANT, requant_fast


@njit(cache=True)
def quantize_f32(x, out, scale, mode, lo, hi):
    """float32 -> int: ``tool::round(x * 2**-e_out)`` in float32, saturated (flat)."""
    for i in range(x.size):
        out[i] = round_f32_sat(np.float32(np.float32(x[i]) * scale), mode, lo, hi)
    return out


@njit(cache=True)
def dequantize_f32(x, out, scale):
    """int -> float32: ``x * 2**e_in`` (exact, flat)."""
    for i in range(x.size):
        out[i] = np.float32(np.float32(x[i]) * scale)
    return out

INT_TYPES = ("int8", "int16")


@kernel("RequantizeLinear", "QuantizeLinear", "DequantizeLinear")
def prepare_requantize(node, ctx, ins, outs):
    ctx.require(len(ins) >= 1 and ins[0].name and ins[0].shape is not None, "missing input")
    x = ins[0]
    idt, odt = x.dtype, outs[0].dtype
    kinds = INT_TYPES + ("float32",)
    ctx.require(idt in kinds, f"input dtype {idt}", supported=list(kinds))
    ctx.require(odt in kinds, f"output dtype {odt} (from the model's value info)", supported=list(kinds))
    shape = tuple(x.shape)
    mode = ctx.mode

    def exp_of(spec, what):
        ctx.require(len(spec.exps) == 1, f"{what} needs one (per-tensor) exponent, has {len(spec.exps)}")
        return int(spec.exps[0])

    if idt == "float32" and odt == "float32":
        return Prepared([shape], lambda xa, *_: (np.array(xa, dtype=np.float32),))
    if idt == "float32":
        scale = np.float32(2.0 ** -exp_of(outs[0], "output"))
        lo, hi = qrange(odt)

        def run(xa, *_):
            flat = np.ascontiguousarray(xa, dtype=np.float32).reshape(-1)
            return (quantize_f32(flat, np.empty(flat.shape, dtype=odt), scale, mode, lo, hi).reshape(shape),)

        return Prepared([shape], run, info={"kind": "quantize", "scale": scale, "range": (lo, hi)})
    if odt == "float32":
        scale = np.float32(2.0 ** exp_of(x, "input"))

        def run(xa, *_):
            flat = np.ascontiguousarray(xa).reshape(-1)
            return (dequantize_f32(flat, np.empty(flat.shape, dtype=np.float32), scale).reshape(shape),)

        return Prepared([shape], run, info={"kind": "dequantize", "scale": scale})
    shift = exp_of(outs[0], "output") - exp_of(x, "input")
    out = ctx.output_buffer(shape, odt)

    def run(xa, *_):
        return (requant_fast(xa, shift, odt, mode, out),)

    return Prepared([shape], run, info={"kind": "requantize", "shift": shift, "range": qrange(odt)})


# ---- compiled lowering (emu/program.py) -------------------------------------------------------------
QUANT = row_layout("QUANT", "x out n scale lo hi")
DEQUANT = row_layout("DEQUANT", "x out n scale")


@arm(QUANT)
@njit(cache=True, inline="always")
def quant_arm(row, act, actf, c16, c32, c64, cf, mode):
    L = QUANT
    n = row[L.n]
    quantize_f32(actf[row[L.x]:row[L.x] + n], act[row[L.out]:row[L.out] + n], cf[row[L.scale]], mode, row[L.lo],
                 row[L.hi])


@arm(DEQUANT)
@njit(cache=True, inline="always")
def dequant_arm(row, act, actf, c16, c32, c64, cf, mode):
    L = DEQUANT
    n = row[L.n]
    dequantize_f32(act[row[L.x]:row[L.x] + n], actf[row[L.out]:row[L.out] + n], cf[row[L.scale]])


@lowering("RequantizeLinear", "QuantizeLinear", "DequantizeLinear")
def lower_requantize(b, step):
    info = step.prepared.info
    kind = info.get("kind")
    x, out = b.ins(step)[0], b.outs(step)[0]
    common = dict(x=b.slot(x.name), out=b.slot(out.name), n=int(np.prod(x.shape, dtype=np.int64)))
    if kind == "requantize":
        lo, hi = info["range"]
        b.emit(REQUANT, shift=info["shift"], lo=lo, hi=hi, **common)
    elif kind == "quantize":
        lo, hi = info["range"]
        b.emit(QUANT, scale=b.cf([info["scale"]]), lo=lo, hi=hi, **common)
    elif kind == "dequantize":
        b.emit(DEQUANT, scale=b.cf([info["scale"]]), **common)
    else:  # float32 -> float32: the words themselves
        b.alias(out.name, x.name)
