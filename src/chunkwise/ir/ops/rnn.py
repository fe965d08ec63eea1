"""Recurrent layers: ESP-DL runs GRU and LSTM (forward, one layer per node) with float internals."""

from __future__ import annotations

from . import Attr, ExpPolicy, Layout, TimeRule, define

_RNN_ATTRS = {"hidden_size": Attr("int"), "direction": Attr("string", "forward"), "layout": Attr("int", 0),
              "activations": Attr("strings"), "activation_alpha": Attr("floats"), "activation_beta": Attr("floats"),
              "clip": Attr("float"), "gate_exponent": Attr("int")}

define("GRU", "rnn", time=TimeRule.RECURRENT, layout=Layout.ORIGIN, index_inputs={4},
       attrs={**_RNN_ATTRS, "linear_before_reset": Attr("int", 0)},
       doc="state carried between chunks: the streaming model exposes hidden state as input and output")
define("LSTM", "rnn", time=TimeRule.RECURRENT, layout=Layout.ORIGIN, index_inputs={4},
       attrs={**_RNN_ATTRS, "input_forget": Attr("int", 0)},
       doc="state carried between chunks: hidden and cell state exposed as inputs and outputs")
_NO_RNN = "ESP-DL has no plain RNN module; use GRU or LSTM"
define("RNN", "rnn", espdl=False, time=TimeRule.REFUSE, layout=Layout.ORIGIN, exponent=ExpPolicy.NONE,
       attrs=_RNN_ATTRS, refuse={s: _NO_RNN for s in ("quantize", "emulate", "compiled", "stream")})
