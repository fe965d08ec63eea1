"""Unary activations: the ops ESP-DL runs from a table in int8 (and int16 with ``LUT`` / ``int16_lut_step``).

``float_fn`` is the float32 function ESP-PPQ tabulates (it evaluates them in torch float32), used by the
quantizer to build tables and by the float twin.
"""

from __future__ import annotations

import math

import numpy as np

from . import Attr, ExpPolicy, Layout, TimeRule, const_of, define

F32 = np.float32


def sigmoid(x):
    x = np.asarray(x, dtype=F32)
    return (F32(1.0) / (F32(1.0) + np.exp(-x))).astype(F32)


_erf = np.vectorize(math.erf, otypes=[np.float64])


def gelu(x, approximate: str = "none"):
    x = np.asarray(x, dtype=F32)
    if approximate == "tanh":
        c = F32(math.sqrt(2.0 / math.pi))
        return (F32(0.5) * x * (F32(1.0) + np.tanh(c * (x + F32(0.044715) * x * x * x)))).astype(F32)
    return (F32(0.5) * x * (F32(1.0) + _erf(x.astype(np.float64) / math.sqrt(2.0)).astype(F32))).astype(F32)


def _z(node, consts) -> bool:
    return True


def _table(node, consts):
    name = node.attr("lut")
    return const_of(consts, name) if name else None


def _lut_zero(node, consts) -> bool:
    t = _table(node, consts)
    if t is None:
        return False
    t = np.asarray(t).ravel()
    if t.size == 256:
        return int(t[128]) == 0
    step = int(node.attr("int16_lut_step", 1) or 1)
    idx = 32768 // step
    return 32768 % step == 0 and idx < t.size and int(t[idx]) == 0


def _lut_nonneg(node, consts, ins_nonneg) -> bool:
    t = _table(node, consts)
    return t is not None and bool(np.all(np.asarray(t) >= 0))


def _always(node, consts, ins_nonneg) -> bool:
    return True


def _unary(name, fn, *, zero: bool, nonneg=False, attrs=None, lut=True, **kw):
    define(name, "activation", time=TimeRule.FRAME, layout=Layout.ELEMENTWISE, lut=lut, float_fn=fn,
           zero_to_zero=_z if zero else (lambda node, consts: False),
           nonneg=_always if nonneg else (lambda node, consts, ins: _lut_nonneg(node, consts, ins)),
           attrs=attrs or {}, **kw)


_unary("Sigmoid", lambda a: sigmoid, zero=False, nonneg=True)
_unary("Tanh", lambda a: (lambda x: np.tanh(np.asarray(x, F32)).astype(F32)), zero=True)
_unary("Swish", lambda a: (lambda x: (np.asarray(x, F32) * sigmoid(x)).astype(F32)), zero=True,
       doc="x * sigmoid(x); the quantizer fuses the exported Sigmoid + Mul pattern into it")
_unary("HardSigmoid",
       lambda a: (lambda x, al=F32(a.get("alpha", 0.2)), be=F32(a.get("beta", 0.5)):
                  np.clip(np.asarray(x, F32) * al + be, 0, 1).astype(F32)),
       zero=False, nonneg=True, attrs={"alpha": Attr("float", 0.2), "beta": Attr("float", 0.5)})
_unary("HardSwish",
       lambda a: (lambda x: (np.asarray(x, F32) * np.clip(np.asarray(x, F32) / F32(6) + F32(0.5), 0, 1)).astype(F32)),
       zero=True)
_unary("Elu",
       lambda a: (lambda x, al=F32(a.get("alpha", 1.0)):
                  np.where(np.asarray(x, F32) > 0, x, al * (np.exp(np.asarray(x, F32)) - F32(1))).astype(F32)),
       zero=True, attrs={"alpha": Attr("float", 1.0)})
_unary("Gelu", lambda a: (lambda x, ap=a.get("approximate", "none"): gelu(x, ap)), zero=True,
       attrs={"approximate": Attr("string", "none")},
       doc="the quantizer fuses the exported Div/Erf/Add/Mul/Mul pattern into it")
_unary("Exp", lambda a: (lambda x: np.exp(np.asarray(x, F32)).astype(F32)), zero=False, nonneg=True)
_unary("Log", lambda a: (lambda x: np.log(np.where(np.asarray(x, F32) > 0, x, F32(np.nan))).astype(F32)),
       zero=False, float_compute=True, doc="undefined for x <= 0: calibration ignores such values")
_unary("Sqrt", lambda a: (lambda x: np.sqrt(np.where(np.asarray(x, F32) >= 0, x, F32(np.nan))).astype(F32)),
       zero=True, nonneg=True, float_compute=True, doc="undefined for x < 0: calibration ignores such values")
define("LUT", "activation", time=TimeRule.FRAME, layout=Layout.ELEMENTWISE, zero_to_zero=_lut_zero,
       nonneg=_lut_nonneg,
       refuse={"quantize": "ESP-DL-only op: the quantizer emits it for int16 activations"},
       doc="a table activation (int16: every int16_lut_step-th code, interpolated); original_op_type names it")
define("Erf", "activation", espdl=False, rewritten_by="fuse_gelu", time=TimeRule.FRAME, layout=Layout.ELEMENTWISE,
       zero_to_zero=_z, float_fn=lambda a: (lambda x: _erf(np.asarray(x, np.float64)).astype(F32)),
       refuse={"emulate": "ESP-DL has no Erf module; the quantizer fuses x*0.5*(1+erf(x/sqrt2)) into Gelu",
               "compiled": "ESP-DL has no Erf module", "stream": "ESP-DL has no Erf module",
               "quantize": "ESP-DL has no Erf module; only the GELU pattern around it is supported"})
define("Reciprocal", "activation", espdl=False, rewritten_by="fuse_rmsnorm", time=TimeRule.FRAME,
       layout=Layout.ELEMENTWISE,
       refuse={"emulate": "ESP-DL has no Reciprocal module; the quantizer fuses 1/sqrt(mean(x^2)+eps) into RMSNorm",
               "compiled": "ESP-DL has no Reciprocal module", "stream": "ESP-DL has no Reciprocal module",
               "float_twin": "not an ESP-DL op",
               "quantize": "ESP-DL has no Reciprocal module; only the RMSNorm pattern around it is supported"})
