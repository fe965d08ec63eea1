"""Data movement: concatenation, slicing, gathering, padding, transposes and reshapes, resizing.

These never change values (except Pad's fill and Resize's interpolation), so most pass their input
exponent through and map zero to zero.
"""

from __future__ import annotations

import numpy as np

from . import Attr, ExpPolicy, Layout, TimeRule, axis_attr, const_of, define, nonneg_input


def _z(node, consts) -> bool:
    return True


def _axis_hook(default: int = 0):
    def axes(node, rank, consts):
        return (axis_attr(node, rank, default),)

    return axes


def _all_nonneg(node, consts, ins_nonneg) -> bool:
    return bool(ins_nonneg) and all(ins_nonneg)


define("Concat", "movement", time=TimeRule.AXES, layout=Layout.AXIS, exponent=ExpPolicy.ALIGN,
       attrs={"axis": Attr("int", 0)}, axes=_axis_hook(), zero_to_zero=_z, nonneg=_all_nonneg)
define("Split", "movement", time=TimeRule.AXES, layout=Layout.AXIS, exponent=ExpPolicy.PASSIVE,
       attrs={"axis": Attr("int", 0), "split": Attr("ints"), "num_outputs": Attr("int")}, index_inputs={1},
       axes=_axis_hook(), zero_to_zero=_z, nonneg=nonneg_input)
define("Slice", "movement", time=TimeRule.SLICE, layout=Layout.AXIS, exponent=ExpPolicy.PASSIVE,
       index_inputs={1, 2, 3, 4}, zero_to_zero=_z, nonneg=nonneg_input,
       doc="on the frame axis: every frame (identity), the last K frames (tail head) or a right chop")
define("Gather", "movement", time=TimeRule.SLICE, layout=Layout.AXIS, exponent=ExpPolicy.PASSIVE,
       attrs={"axis": Attr("int", 0)}, index_inputs={1}, axes=_axis_hook(), zero_to_zero=_z, nonneg=nonneg_input,
       doc="ESP-DL uses indices as given (no wrap of negative indices): the quantizer makes them non-negative")


def _pad_zero(node, consts) -> bool:
    mode = node.attr("mode", "constant") or "constant"
    if mode != "constant":
        return True  # edge/reflect repeat existing values: zeros in, zeros out
    v = const_of(consts, node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
    return v is None or not np.any(np.asarray(v))


def _pad_nonneg(node, consts, ins_nonneg) -> bool:
    v = const_of(consts, node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
    return bool(ins_nonneg and ins_nonneg[0]) and (v is None or bool(np.all(np.asarray(v) >= 0)))


define("Pad", "movement", time=TimeRule.PAD, layout=Layout.ORIGIN, exponent=ExpPolicy.PASSIVE,
       attrs={"mode": Attr("string", "constant"), "pads": Attr("ints")}, index_inputs={1, 3},
       zero_to_zero=_pad_zero, nonneg=_pad_nonneg,
       doc="zero padding of the frame axis becomes StreamingCache state")
define("Transpose", "movement", time=TimeRule.TRANSPOSE, layout=Layout.ORIGIN, exponent=ExpPolicy.PASSIVE,
       attrs={"perm": Attr("ints")}, zero_to_zero=_z, nonneg=nonneg_input)
for _name, _attrs, _idx in (("Reshape", {"allowzero": Attr("int", 0)}, {1}), ("Flatten", {"axis": Attr("int", 1)}, ()),
                            ("Squeeze", {"axes": Attr("ints")}, {1}), ("Unsqueeze", {"axes": Attr("ints")}, {1})):
    define(_name, "movement", time=TimeRule.RESHAPE, layout=Layout.ORIGIN, exponent=ExpPolicy.PASSIVE,
           attrs=_attrs, index_inputs=_idx, zero_to_zero=_z, nonneg=nonneg_input)
define("Identity", "movement", time=TimeRule.FRAME, layout=Layout.ELEMENTWISE, exponent=ExpPolicy.PASSIVE,
       zero_to_zero=_z, nonneg=nonneg_input)


def _resize_axes(node, rank, consts):
    """Axes whose size changes: from constant scales (input 2) or sizes (input 3)."""
    scales = const_of(consts, node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
    if scales is not None and np.asarray(scales).size == rank:
        return tuple(i for i, s in enumerate(np.asarray(scales, dtype=np.float64).ravel()) if s != 1.0)
    return tuple(range(1, rank))  # unknown: assume every non-batch axis


# int8_only: ESP-DL's resize<int16_t> is empty (an int16 Resize does nothing)
define("Resize", "movement", int8_only=True, time=TimeRule.AXES, layout=Layout.SPATIAL, exponent=ExpPolicy.PASSIVE,
       attrs={"mode": Attr("string", "nearest"), "coordinate_transformation_mode": Attr("string", "half_pixel"),
              "nearest_mode": Attr("string", "round_prefer_floor"), "cubic_coeff_a": Attr("float", -0.75),
              "exclude_outside": Attr("int", 0), "extrapolation_value": Attr("float", 0.0),
              "antialias": Attr("int", 0), "keep_aspect_ratio_policy": Attr("string", "stretch"),
              "axes": Attr("ints")},
       index_inputs={1, 2, 3}, axes=_resize_axes, zero_to_zero=_z, nonneg=nonneg_input)


def _spatial_and_channels(node, rank, consts):
    return tuple(range(1, rank))


define("DepthToSpace", "movement", time=TimeRule.AXES, layout=Layout.SPATIAL, exponent=ExpPolicy.PASSIVE,
       attrs={"blocksize": Attr("int"), "mode": Attr("string", "DCR")}, axes=_spatial_and_channels,
       zero_to_zero=_z, nonneg=nonneg_input)
define("SpaceToDepth", "movement", rewritten_by="spacetodepth_to_reshapes", time=TimeRule.AXES,
       layout=Layout.SPATIAL, exponent=ExpPolicy.PASSIVE,
       attrs={"blocksize": Attr("int")}, axes=_spatial_and_channels, zero_to_zero=_z, nonneg=nonneg_input,
       refuse={"float_twin": "ESP-DL orders SpaceToDepth's channels c*bs*bs + ..., not as ONNX does"},
       doc="the quantizer rewrites a float SpaceToDepth to Reshape / Transpose / Reshape (ONNX's order)")


def _revseq_axes(node, rank, consts):
    return (int(node.attr("time_axis", 0)) % rank, int(node.attr("batch_axis", 1)) % rank)


define("ReverseSequence", "movement", time=TimeRule.AXES, layout=Layout.ORIGIN, exponent=ExpPolicy.PASSIVE,
       attrs={"batch_axis": Attr("int", 1), "time_axis": Attr("int", 0)}, index_inputs={1}, axes=_revseq_axes,
       zero_to_zero=_z, nonneg=nonneg_input)
define("ScatterND", "movement", time=TimeRule.AXES, layout=Layout.ORIGIN, exponent=ExpPolicy.ALIGN,
       attrs={"reduction": Attr("string", "none")}, index_inputs={1},
       axes=lambda node, rank, consts: tuple(range(rank)))
