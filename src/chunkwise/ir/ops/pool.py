"""Pooling: AveragePool, MaxPool and their global forms."""

from __future__ import annotations

from . import Attr, ExpPolicy, Layout, TimeRule, define, nonneg_input
from .conv import WINDOW_ATTRS

POOL_ATTRS = {**WINDOW_ATTRS, "ceil_mode": Attr("int", 0), "count_include_pad": Attr("int", 0)}
GLOBAL = "global pooling over time needs the whole sequence; put a tail Slice (last K frames) before it or pool per chunk explicitly"

define("AveragePool", "pool", time=TimeRule.WINDOW, layout=Layout.SPATIAL, nonneg=nonneg_input,
       zero_to_zero=lambda node, consts: True, attrs=POOL_ATTRS,
       doc="ESP-DL divides by the whole kernel area whatever count_include_pad says")
define("MaxPool", "pool", time=TimeRule.WINDOW, layout=Layout.SPATIAL, exponent=ExpPolicy.PASSIVE,
       nonneg=nonneg_input, zero_to_zero=lambda node, consts: True,
       attrs={**POOL_ATTRS, "storage_order": Attr("int", 0)},
       doc="pads with -inf: a zero StreamingCache equals its padding only for non-negative inputs")
define("GlobalAveragePool", "pool", time=TimeRule.REFUSE, layout=Layout.SPATIAL, nonneg=nonneg_input,
       refuse={"stream": GLOBAL})
define("GlobalMaxPool", "pool", espdl=False, rewritten_by="globalmaxpool_to_reducemax", time=TimeRule.REFUSE,
       layout=Layout.SPATIAL,
       exponent=ExpPolicy.PASSIVE, nonneg=nonneg_input,
       refuse={"stream": GLOBAL, "emulate": "ESP-DL has no GlobalMaxPool module",
               "compiled": "ESP-DL has no GlobalMaxPool module"},
       doc="the quantizer rewrites it to ReduceMax over the spatial axes (ESP-DL has no GlobalMaxPool module)")
