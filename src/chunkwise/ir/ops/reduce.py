"""Reductions over axes given by the ``axes`` attribute or input 1."""

from __future__ import annotations

import numpy as np

from . import Attr, ExpPolicy, Layout, TimeRule, const_of, define, nonneg_input


def reduce_axes(node, rank, consts):
    axes = node.attr("axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1]:
        c = const_of(consts, node.inputs[1])
        axes = None if c is None else [int(a) for a in np.asarray(c).ravel()]
    if not axes:
        if int(node.attr("noop_with_empty_axes", 0) or 0):
            return ()
        return tuple(range(rank))
    return tuple(sorted({int(a) % rank for a in axes}))


def _z(node, consts) -> bool:
    return True


def _always(node, consts, ins) -> bool:
    return True


_ATTRS = {"axes": Attr("ints"), "keepdims": Attr("int", 1), "noop_with_empty_axes": Attr("int", 0)}
for _name, _zero, _nonneg, _exp in (
        ("ReduceMean", True, nonneg_input, ExpPolicy.CALIBRATED),
        ("ReduceSum", True, nonneg_input, ExpPolicy.CALIBRATED),
        ("ReduceMax", True, nonneg_input, ExpPolicy.PASSIVE),
        ("ReduceMin", True, nonneg_input, ExpPolicy.PASSIVE),
        ("ReduceProd", True, nonneg_input, ExpPolicy.CALIBRATED),
        ("ReduceL1", True, _always, ExpPolicy.CALIBRATED),
        ("ReduceL2", True, _always, ExpPolicy.CALIBRATED),
        ("ReduceSumSquare", True, _always, ExpPolicy.CALIBRATED),
        ("ReduceLogSum", False, None, ExpPolicy.CALIBRATED),
        ("ReduceLogSumExp", False, None, ExpPolicy.CALIBRATED)):
    define(_name, "reduce", time=TimeRule.AXES, layout=Layout.AXIS, exponent=_exp, attrs=_ATTRS, index_inputs={1},
           axes=reduce_axes, zero_to_zero=_z if _zero else (lambda node, consts: False),
           **({"nonneg": _nonneg} if _nonneg else {}))
