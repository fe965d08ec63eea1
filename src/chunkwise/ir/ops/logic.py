"""Comparisons and logic: bool outputs (one byte), not quantized."""

from __future__ import annotations

from . import ExpPolicy, Layout, TimeRule, define

_NOT_QUANT = "bool-valued: the quantizer exports only quantized data paths"

for _name in ("Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "And", "Or", "Xor"):
    define(_name, "logic", time=TimeRule.BINARY, layout=Layout.BROADCAST, exponent=ExpPolicy.NONE,
           refuse={"quantize": _NOT_QUANT, "compiled": "bool outputs stay on the per-node path"})
define("Not", "logic", time=TimeRule.FRAME, layout=Layout.ELEMENTWISE, exponent=ExpPolicy.NONE,
       refuse={"quantize": _NOT_QUANT, "compiled": "bool outputs stay on the per-node path"})
