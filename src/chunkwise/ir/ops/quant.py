"""(Re)quantization ops."""

from __future__ import annotations

from . import Attr, ExpPolicy, Layout, TimeRule, define, nonneg_input


def _z(node, consts) -> bool:
    return True


_ONLY_OUT = "ESP-DL-only op: the quantizer inserts it where exponents or bit widths differ"
define("RequantizeLinear", "quant", time=TimeRule.FRAME, layout=Layout.ELEMENTWISE, zero_to_zero=_z,
       nonneg=nonneg_input, attrs={"axis": Attr("int", 1)}, refuse={"quantize": _ONLY_OUT})
define("QuantizeLinear", "quant", time=TimeRule.FRAME, layout=Layout.ELEMENTWISE, zero_to_zero=_z,
       nonneg=nonneg_input, attrs={"axis": Attr("int", 1), "block_size": Attr("int", 0)},
       refuse={"quantize": "a float model is quantized as a whole; QDQ models are not taken"})
define("DequantizeLinear", "quant", time=TimeRule.FRAME, layout=Layout.ELEMENTWISE, exponent=ExpPolicy.NONE,
       zero_to_zero=_z, nonneg=nonneg_input, attrs={"axis": Attr("int", 1), "block_size": Attr("int", 0)},
       refuse={"quantize": "a float model is quantized as a whole; QDQ models are not taken"})
