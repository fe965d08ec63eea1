"""Convolutions and products: Conv, ConvTranspose (ONNX only), Gemm, MatMul, InsertZeros."""

from __future__ import annotations

from . import Attr, ExpPolicy, Layout, TimeRule, define


def _relu_nonneg(node, consts, ins_nonneg) -> bool:
    return (node.attr("activation") or "Linear") == "Relu"


WINDOW_ATTRS = {
    "kernel_shape": Attr("ints"), "strides": Attr("ints"), "dilations": Attr("ints"), "pads": Attr("ints"),
    "auto_pad": Attr("string", "NOTSET"),
}

define("Conv", "conv", time=TimeRule.WINDOW, layout=Layout.SPATIAL, nonneg=_relu_nonneg,
       attrs={**WINDOW_ATTRS, "group": Attr("int", 1), "activation": Attr("string", "Linear")},
       doc="ESP-DL Conv: int8/int16, per-channel weight exponents, fused Linear/Relu activation")
define("ConvTranspose", "conv", espdl=False, rewritten_by="decompose_conv_transpose", time=TimeRule.UPSAMPLE,
       layout=Layout.SPATIAL,
       attrs={**WINDOW_ATTRS, "group": Attr("int", 1), "output_padding": Attr("ints"),
              "output_shape": Attr("ints")},
       refuse={"emulate": "ESP-DL has no ConvTranspose module: the quantizer exports InsertZeros + Conv",
               "compiled": "exported as InsertZeros + Conv",
               "stream": "exported as InsertZeros + Conv, which stream",
               "float_twin": "not an ESP-DL op"},
       doc="ONNX only: the quantizer rewrites it to InsertZeros + Conv (ESP-PPQ's convention)")
define("InsertZeros", "conv", time=TimeRule.UPSAMPLE, layout=Layout.SPATIAL, exponent=ExpPolicy.PASSIVE,
       zero_to_zero=lambda node, consts: True, nonneg=lambda n, c, ins: bool(ins and ins[0]),
       attrs={"stride": Attr("ints", [1]), "output_padding": Attr("ints", [0])},
       refuse={"quantize": "ESP-DL-only op: a float model writes ConvTranspose",
               "float_twin": "no single float ONNX op inserts zeros (ConvTranspose = InsertZeros + Conv)"},
       doc="inserts stride - 1 zeros between elements along the spatial axes (ConvTranspose = InsertZeros + Conv); "
           "its attribute is ``stride`` (dl_module_insert_zeros.hpp), one value or one per spatial axis")
define("Gemm", "conv", time=TimeRule.CONTRACT, layout=Layout.ORIGIN, nonneg=_relu_nonneg,
       attrs={"alpha": Attr("float", 1.0), "beta": Attr("float", 1.0), "transA": Attr("int", 0),
              "transB": Attr("int", 0), "activation": Attr("string", "Linear")})
define("MatMul", "conv", time=TimeRule.CONTRACT, layout=Layout.ORIGIN, nonneg=_relu_nonneg,
       attrs={"activation": Attr("string", "Linear"), "input1_layout": Attr("string")})
