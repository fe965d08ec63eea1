"""Element-wise arithmetic: broadcasting binary ops and the piecewise-linear unary ops.

Broadcasting ops take one streamed layout for all inputs (constants are permuted to it); a streamed
binary op needs its streamed inputs aligned in frame axis, rate and delay.
"""

from __future__ import annotations

import numpy as np

from . import Attr, ExpPolicy, Layout, TimeRule, const_of, define

F32 = np.float32


def _consts(node, consts):
    return [const_of(consts, i) for i in node.inputs[1:]] if len(node.inputs) > 1 else []


def _binary_zero(zero_with_const):
    """f(0, 0) == 0 for the op; with a constant operand ``c``, ``zero_with_const(c)`` decides."""

    def hook(node, consts) -> bool:
        for i in node.inputs:
            c = const_of(consts, i)
            if c is not None and not zero_with_const(np.asarray(c)):
                return False
        return True

    return hook


def _binary_nonneg(rule):
    """``rule(list of per-input nonneg)``; the stage passes, for each input, whether it is >= 0."""

    def hook(node, consts, ins_nonneg) -> bool:
        return bool(ins_nonneg) and rule(list(ins_nonneg))

    return hook


_all = _binary_nonneg(all)
_any = _binary_nonneg(any)

define("Add", "elementwise", time=TimeRule.BINARY, layout=Layout.BROADCAST, exponent=ExpPolicy.ALIGN,
       zero_to_zero=_binary_zero(lambda c: not np.any(c)), nonneg=_all)
define("Sub", "elementwise", time=TimeRule.BINARY, layout=Layout.BROADCAST, exponent=ExpPolicy.ALIGN,
       zero_to_zero=_binary_zero(lambda c: not np.any(c)))
define("Mul", "elementwise", time=TimeRule.BINARY, layout=Layout.BROADCAST,
       zero_to_zero=_binary_zero(lambda c: True), nonneg=_all)
define("Div", "elementwise", time=TimeRule.BINARY, layout=Layout.BROADCAST,
       zero_to_zero=_binary_zero(lambda c: bool(np.all(c != 0))), nonneg=_all,
       doc="0 / c == 0 for a non-zero constant divisor; 0 / 0 is not 0")
# ESP-DL has dl_module_max.hpp / dl_module_min.hpp but dl_module_creator.hpp does not register them: a chip
# cannot load a model holding them. The emulator keeps their kernels (the headers' arithmetic); the quantizer
# rewrites Max/Min with a constant scalar operand to Clip / Relu (.quant.patterns.minmax_const_to_clip).
_UNREGISTERED = ("ESP-DL has dl_module_{0}.hpp but dl_module_creator.hpp does not register it: a chip cannot "
                 "load a model holding it")
for _name, _zero, _nn, _clip in (("Max", lambda c: bool(np.all(c <= 0)), _any, "Clip(x, c, inf); Max(x, 0) = Relu"),
                                 ("Min", lambda c: bool(np.all(c >= 0)), _all, "Clip(x, -inf, c)")):
    _why = _UNREGISTERED.format(_name.lower())
    define(_name, "elementwise", espdl=False, rewritten_by="minmax_const_to_clip", time=TimeRule.BINARY,
           layout=Layout.BROADCAST,
           exponent=ExpPolicy.ALIGN, zero_to_zero=_binary_zero(_zero), nonneg=_nn,
           refuse={"quantize": f"{_name} of two activations (or of a non-scalar constant): {_why}; with a "
                               f"constant scalar operand c it is rewritten to {_clip}",
                   "stream": _why},
           doc=f"{_why}. The emulator kernel emulates the header's arithmetic.")
define("Mod", "elementwise", time=TimeRule.BINARY, layout=Layout.BROADCAST, attrs={"fmod": Attr("int", 0)},
       zero_to_zero=_binary_zero(lambda c: bool(np.all(c != 0))),
       doc="ESP-DL computes fmodf of the dequantized operands: float ONNX Mod (fmod=1, the only float form)")
define("Pow", "elementwise", time=TimeRule.BINARY, layout=Layout.BROADCAST, float_compute=True,
       zero_to_zero=_binary_zero(lambda c: bool(np.all(c > 0))),
       doc="appears in exported LayerNorm (x ** 2): the quantizer fuses that pattern")


def _z(node, consts) -> bool:
    return True


def _clip_bounds(node, consts):
    lo = hi = None
    if len(node.inputs) > 1 and node.inputs[1]:
        c = const_of(consts, node.inputs[1])
        lo = None if c is None else float(np.asarray(c).ravel()[0])
    elif node.attr("min") is not None:
        lo = float(node.attr("min"))
    if len(node.inputs) > 2 and node.inputs[2]:
        c = const_of(consts, node.inputs[2])
        hi = None if c is None else float(np.asarray(c).ravel()[0])
    elif node.attr("max") is not None:
        hi = float(node.attr("max"))
    return lo, hi


def _clip_zero(node, consts) -> bool:
    lo, hi = _clip_bounds(node, consts)
    return (lo is None or lo <= 0) and (hi is None or hi >= 0)


def _clip_nonneg(node, consts, ins_nonneg) -> bool:
    lo, _ = _clip_bounds(node, consts)
    return (lo is not None and lo >= 0) or bool(ins_nonneg and ins_nonneg[0])


def _unary(name, fn, **kw):
    define(name, "elementwise", time=TimeRule.FRAME, layout=Layout.ELEMENTWISE, lut=True, float_fn=fn, **kw)


_unary("Relu", lambda a: (lambda x: np.maximum(np.asarray(x, F32), F32(0))), exponent=ExpPolicy.FOLLOW,
       int16_native=True, zero_to_zero=_z, nonneg=lambda n, c, ins: True)
_unary("LeakyRelu",
       lambda a: (lambda x, al=F32(a.get("alpha", 0.01)): np.where(np.asarray(x, F32) >= 0, x,
                                                                     np.asarray(x, F32) * al).astype(F32)),
       zero_to_zero=_z, attrs={"alpha": Attr("float", 0.01)})
_unary("PRelu", None, zero_to_zero=_z, int16_native=True, ranks=(4,),
       doc="slope input 1: one value or one per channel ([C, 1, ...] in ONNX); ESP-DL reads NHWC channels")
_unary("Neg", lambda a: (lambda x: (-np.asarray(x, F32)).astype(F32)), exponent=ExpPolicy.PASSIVE, zero_to_zero=_z,
       int16_native=True,
       doc="ESP-DL negates the integers and ignores exponents and tables: the output keeps the input exponent")
_unary("Clip", None, exponent=ExpPolicy.FOLLOW, int16_native=True, zero_to_zero=_clip_zero, nonneg=_clip_nonneg,
       attrs={"min": Attr("float"), "max": Attr("float")},
       doc="bounds as inputs 1, 2 (opset >= 11) or attributes (older opsets)")
