"""Normalizations and softmax: act along an axis (or from an axis to the end)."""

from __future__ import annotations

from . import Attr, ExpPolicy, Layout, TimeRule, axis_attr, define


def _from_axis(node, rank, consts):
    return tuple(range(axis_attr(node, rank, -1), rank))


def _one_axis(default):
    def axes(node, rank, consts):
        return (axis_attr(node, rank, default),)

    return axes


def _z(node, consts) -> bool:
    return True


define("LayerNormalization", "norm", time=TimeRule.AXES, layout=Layout.ORIGIN, axes=_from_axis,
       attrs={"axis": Attr("int", -1), "epsilon": Attr("float", 1e-5), "stash_type": Attr("int", 1)},
       doc="the quantizer fuses PyTorch's decomposed ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div/Mul/Add into it")
define("RMSNormalization", "norm", time=TimeRule.AXES, layout=Layout.ORIGIN, axes=_from_axis,
       attrs={"axis": Attr("int", -1), "epsilon": Attr("float", 1e-5), "stash_type": Attr("int", 1)})
define("LpNormalization", "norm", time=TimeRule.AXES, layout=Layout.AXIS, axes=_one_axis(-1), zero_to_zero=_z,
       attrs={"axis": Attr("int", -1), "p": Attr("int", 2)})
define("Softmax", "norm", time=TimeRule.AXES, layout=Layout.AXIS, axes=_one_axis(-1), quant_out="float32",
       nonneg=lambda node, consts, ins: True, attrs={"axis": Attr("int", -1)})
define("LogSoftmax", "norm", time=TimeRule.AXES, layout=Layout.AXIS, axes=_one_axis(-1), quant_out="float32",
       attrs={"axis": Attr("int", -1)})
_FOLDED = "folded by the quantizer into the neighbouring Conv/Gemm (or a depthwise 1x1 Conv)"
define("BatchNormalization", "norm", espdl=False, time=TimeRule.FRAME, layout=Layout.SPATIAL,
       attrs={"epsilon": Attr("float", 1e-5), "momentum": Attr("float", 0.9), "training_mode": Attr("int", 0)},
       rewritten_by="fold_batchnorm", refuse={"emulate": _FOLDED, "compiled": _FOLDED, "stream": _FOLDED})
define("Dropout", "norm", espdl=False, time=TimeRule.FRAME, layout=Layout.ELEMENTWISE, exponent=ExpPolicy.PASSIVE,
       attrs={"seed": Attr("int")}, rewritten_by="remove_identities",
       refuse={"emulate": "removed by the quantizer (inference)",
               "compiled": "removed by the quantizer (inference)",
               "stream": "removed by the quantizer (inference)"})
