"""Comparisons and logic: bool outputs (one byte), not quantized."""

from __future__ import annotations

from . import ExpPolicy, Layout, TimeRule, define

_NOT_QUANT = ("ESP-DL has the module but does not register it (dl_module_creator.hpp): a chip cannot load "
              "it; bool inputs are not quantized data")
# ESP-DL has dl_module_and.hpp, _or, _xor, _not but dl_module_creator.hpp does not register them: a chip cannot
# load a model holding them (the emulator kernels emulate the headers' arithmetic)
_UNREGISTERED = ("ESP-DL has dl_module_{0}.hpp but dl_module_creator.hpp does not register it: a chip cannot "
                 "load a model holding it")

# comparisons: int8/int16 inputs at one shared exponent (the quantizer aligns them), bool output
for _name in ("Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual"):
    define(_name, "logic", time=TimeRule.BINARY, layout=Layout.BROADCAST, exponent=ExpPolicy.NONE, quant_out="bool",
           refuse={"compiled": "bool outputs stay on the per-node path"})
for _name in ("And", "Or", "Xor"):
    define(_name, "logic", espdl=False, time=TimeRule.BINARY, layout=Layout.BROADCAST, exponent=ExpPolicy.NONE,
           refuse={"quantize": _NOT_QUANT, "compiled": "bool outputs stay on the per-node path",
                   "stream": _UNREGISTERED.format(_name.lower())},
           doc=_UNREGISTERED.format(_name.lower()) + ". The emulator kernel emulates the header's arithmetic.")
define("Not", "logic", espdl=False, time=TimeRule.FRAME, layout=Layout.ELEMENTWISE, exponent=ExpPolicy.NONE,
       refuse={"quantize": _NOT_QUANT, "compiled": "bool outputs stay on the per-node path",
               "stream": _UNREGISTERED.format("not")},
       doc=_UNREGISTERED.format("not") + ". The emulator kernel emulates the header's arithmetic.")
