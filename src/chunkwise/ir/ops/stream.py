"""StreamingCache: frame history of a streaming model (``dl_module_streaming_cache.hpp``)."""

from __future__ import annotations

from . import Attr, ExpPolicy, Layout, TimeRule, define, nonneg_input

define("StreamingCache", "stream", time=TimeRule.CACHE, layout=Layout.ORIGIN, exponent=ExpPolicy.PASSIVE,
       zero_to_zero=lambda node, consts: True, nonneg=nonneg_input,
       attrs={"window_size": Attr("int", 1), "frame_axis": Attr("int", 1)},
       refuse={"quantize": "inserted by `chunkwise stream`, not by the quantizer",
               "stream": "the model already streams (it has StreamingCache nodes)",
               "float_twin": "float twins are for offline models; convert the offline model instead"})
