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

from ..registry import Prepared, kernel
from ..rounding import round_saturate
from .elementwise import requant_fast

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

        def run(xa, *_):
            with np.errstate(all="ignore"):
                v = xa.astype(np.float32) * scale
            return (round_saturate(v, odt, mode),)

        return Prepared([shape], run, info={"kind": "quantize"})
    if odt == "float32":
        scale = np.float32(2.0 ** exp_of(x, "input"))
        return Prepared([shape], lambda xa, *_: (xa.astype(np.float32) * scale,), info={"kind": "dequantize"})
    shift = exp_of(outs[0], "output") - exp_of(x, "input")
    out = ctx.output_buffer(shape, odt)

    def run(xa, *_):
        return (requant_fast(xa, shift, odt, mode, out),)

    return Prepared([shape], run, info={"kind": "requantize", "shift": shift})
