"""GRU and LSTM in the quantizer, with ESP-PPQ's (1.3.x) export conventions.

PyTorch exports (opset 13) are used as they come: ``batch_first`` adds Transposes around the ONNX node,
several layers are several nodes, a bidirectional layer's ``Y`` goes through Transpose + Reshape, a missing
initial state is a constant zero tensor (folded) -- all of these are ONNX ops the quantizer already maps.
ESP-DL's modules (``dl_module_gru.hpp`` / ``dl_module_lstm.hpp``) run ``forward`` and ``bidirectional``,
batch 1, PyTorch's GRU (``linear_before_reset=1``), default activations, no clip, no peepholes.

Quantization (ESP-PPQ's ``EspdlQuantizer`` / ``ParameterQuantizePass`` / ``QuantAlignmentPass`` with
``RNN Align to First``, and ``QuantRNNPattern``):

* ``Y`` calibrated; ``Y_h`` and ``initial_h`` take ``Y``'s exponent (ESP-DL copies ``initial_h`` into its
  state and rescales the new state at ``Y``'s exponent, so they must agree);
* ``W`` and ``R`` one exponent each, per tensor (percentile observer for int8, min-max for int16, see
  :func:`.products.param_exponent`), stored ``[directions, gates * hidden, input]`` as ONNX orders them;
* ``B``, ``initial_c`` and ``Y_c`` int16 at the gate exponent -9 (``GRU_QUANT_EXPONENT`` /
  ``LSTM_QUANT_EXPONENT``), attribute ``gate_exponent = -9``;
* an all-zero constant initial state is dropped (ESP-DL starts from zeros without it).
"""

from __future__ import annotations

import numpy as np

from ..emu.rounding import quantize as q_quantize
from ..errors import UnsupportedError
from .export import PASSIVE_OPS, downstream_ops, register_rule
from .prepare import PREPARE_PASSES, FGraph, FNode, infer_shapes
from .products import quantize_param

GATE_EXPONENT = -9
DEFAULT_ACTIVATIONS = {"GRU": ("Sigmoid", "Tanh"), "LSTM": ("Sigmoid", "Tanh", "Tanh")}
CELL_BITS = 16


def _opt(node: FNode, i: int) -> str:
    return node.inputs[i] if len(node.inputs) > i and node.inputs[i] else ""


def check_rnn(fg: FGraph, node: FNode) -> None:
    """Refuse what ESP-DL's GRU / LSTM module cannot run, naming the node."""
    op, a = node.op, node.attrs

    def fail(msg, supported=None):
        return UnsupportedError(msg, node=node.name, op=op, supported=supported)

    direction = a.get("direction", "forward")
    if direction not in ("forward", "bidirectional"):
        raise fail(f"direction={direction!r} (ESP-DL runs every direction-0 pass forward)",
                   ["forward", "bidirectional"])
    ndir = 2 if direction == "bidirectional" else 1
    if a.get("clip") is not None:
        raise fail("clip", ["no clip"])
    if a.get("activations") is not None:
        acts = [str(v) for v in a["activations"]]
        want = list(DEFAULT_ACTIVATIONS[op]) * ndir
        if acts != want:
            raise fail(f"activations {acts} (ESP-DL has fixed sigmoid/tanh tables)", [str(want)])
    for k in ("activation_alpha", "activation_beta"):
        if a.get(k) is not None:
            raise fail(k, [f"no {k}"])
    if op == "GRU" and int(a.get("linear_before_reset", 0)) != 1:
        raise fail("linear_before_reset=0 (ESP-DL implements PyTorch's GRU)", ["linear_before_reset=1"])
    if op == "LSTM":
        if int(a.get("input_forget", 0)):
            raise fail("input_forget=1", ["input_forget=0"])
        if _opt(node, 7):
            raise fail("peephole weights P", ["no peepholes"])
    layout = int(a.get("layout", 0))
    if layout not in (0, 1):
        raise fail(f"layout={layout}")
    x = node.inputs[0]
    shp = fg.shapes.get(x)
    if shp is None or len(shp) != 3:
        raise fail(f"X of shape {shp}; expected [seq, batch, input]")
    batch = shp[1] if layout == 0 else shp[0]
    if batch != 1:
        raise fail(f"batch {batch}", ["batch 1 (ESP-DL runs one sequence)"])
    for i, what in ((1, "W"), (2, "R"), (3, "B")):
        u = _opt(node, i)
        if i < 3 and not u:
            raise fail(f"{what} is missing")
        if u and u not in fg.consts:
            raise fail(f"{what} must be a constant")
    sl = _opt(node, 4)
    if sl:
        seq = shp[0] if layout == 0 else shp[1]
        if sl not in fg.consts or not np.all(np.asarray(fg.consts[sl]) == seq):
            raise fail("sequence_lens other than the full length (ESP-DL ignores it)",
                       ["no sequence_lens", "sequence_lens == sequence length"])
    outs = [o for o in node.outputs]
    if op == "GRU" and len(outs) < 2:
        node.outputs = outs + [""] * (2 - len(outs))
    if op == "LSTM" and len(outs) < 3:
        node.outputs = outs + [""] * (3 - len(outs))


def prepare_rnn(fg: FGraph) -> None:
    """Checks, and names every output ESP-DL writes (Y, Y_h and for LSTM Y_c), unused ones too."""
    for n in fg.nodes:
        if n.op not in ("GRU", "LSTM"):
            continue
        check_rnn(fg, n)
        for i, o in enumerate(n.outputs):
            if not o:
                n.outputs[i] = f"{n.name}_output_{i}"
    if any(n.op in ("GRU", "LSTM") for n in fg.nodes):
        infer_shapes(fg)


def _zero_const(fg: FGraph, u: str) -> bool:
    return bool(u) and u in fg.consts and not np.any(np.asarray(fg.consts[u]))


def _source(fg: FGraph, v: str) -> str:
    """The value behind the Transposes / RequantizeLinears the layout and requantize passes insert."""
    prods = fg.producers()
    while v.startswith("PPQ_Variable_") and v in prods and prods[v].op in ("Transpose", "RequantizeLinear"):
        v = prods[v].inputs[0]
    return v


class RNNRule:
    @staticmethod
    def layout(fg, node, perm, require, rank):
        for i, u in enumerate(node.inputs):
            if u and u not in fg.consts:
                require(node, i, list(range(rank(u))))
        for o in node.outputs:
            if o:
                perm[o] = list(range(rank(o)))

    @staticmethod
    def ties(fg, qi, node, tie, fixed, calib_exp):
        y, yh = node.outputs[0], node.outputs[1]
        b = qi.bits[node.name]
        tie[yh] = y
        h0 = _opt(node, 5)
        prods = fg.producers()
        # ESP-PPQ's alignment pass then overrides the upstream layers: a non-passive producer whose only reader
        # is this node is calibrated to Y's exponent too (X arrives without a requantization)
        for u in (node.inputs[0], h0):
            p = prods.get(u)
            if p is not None and p.op not in PASSIVE_OPS and downstream_ops(fg, p) == [node] \
                    and qi.bits[p.name] == b and not fg.is_output(u):
                tie[u] = y
        if h0 and h0 not in fg.consts and h0 not in prods and qi.vbits.get(h0) == b \
                and all(r.op in ("GRU", "LSTM") for r in fg.consumers(h0)):
            tie[h0] = y  # a graph input: exported at Y's exponent directly
        if node.op == "LSTM":
            yc = node.outputs[2]
            qi.vbits[yc] = CELL_BITS
            fixed[yc] = GATE_EXPONENT
            for r in fg.consumers(yc):  # readers that would pass Y_c's int16 through at another width
                for o in r.outputs:
                    if tie.get(o) == yc and qi.bits[r.name] != CELL_BITS:
                        del tie[o]
            c0 = _opt(node, 6)
            if c0 and c0 not in fg.consts and c0 not in prods:
                qi.vbits[c0] = CELL_BITS
                fixed[c0] = GATE_EXPONENT

    @staticmethod
    def expected_input(fg, qi, node, u, calib_exp):
        b = qi.bits[node.name]
        names = [_source(fg, v) for v in node.inputs]
        if len(names) > 5 and u == names[5]:
            return qi.exp[node.outputs[0]], b
        if node.op == "LSTM" and len(names) > 6 and u == names[6]:
            return GATE_EXPONENT, CELL_BITS
        return None

    @staticmethod
    def export(ex, n, attrs):
        fg, bits = ex.fg, ex.qi.bits[n.name]
        dtype = ex.dtype(bits)
        a = n.attrs
        gates = 3 if n.op == "GRU" else 4
        hidden = int(a["hidden_size"])
        ins = [n.inputs[0]]
        for i in (1, 2):
            w = np.asarray(fg.consts[n.inputs[i]], np.float32)
            q, e = quantize_param(w, bits, ex.mode)
            ins.append(ex.param(n.inputs[i], q, dtype, [e]))
        ndir = np.asarray(fg.consts[n.inputs[1]]).shape[0]
        bname = _opt(n, 3)
        if bname:
            bq = q_quantize(np.asarray(fg.consts[bname], np.float32).reshape(ndir, 2 * gates * hidden),
                            GATE_EXPONENT, "int16", ex.mode)
            ins.append(ex.param(bname, bq, "int16", [GATE_EXPONENT]))
        else:
            ins.append("")
        ins.append("")  # sequence_lens: checked to be the full length, which ESP-DL assumes
        h0 = _opt(n, 5)
        c0 = _opt(n, 6) if n.op == "LSTM" else ""
        if h0 and h0 in fg.consts:
            h0 = "" if _zero_const(fg, h0) and not (c0 and not _zero_const(fg, c0)) else \
                ex.act_const(h0, ex.qi.exp[n.outputs[0]], bits)
        ins.append(h0)
        if n.op == "LSTM":
            if c0 and c0 in fg.consts:
                c0 = "" if _zero_const(fg, c0) else ex.param(
                    c0, q_quantize(np.asarray(fg.consts[c0], np.float32), GATE_EXPONENT, "int16", ex.mode),
                    "int16", [GATE_EXPONENT])
            ins.append(c0)
        while ins and not ins[-1]:
            ins.pop()
        attrs["hidden_size"] = hidden
        if a.get("direction", "forward") != "forward":
            attrs["direction"] = a["direction"]
        if int(a.get("layout", 0)):
            attrs["layout"] = int(a["layout"])
        if n.op == "GRU":
            attrs["linear_before_reset"] = 1
        attrs["gate_exponent"] = GATE_EXPONENT
        return n.op, attrs, ins


def register() -> None:
    register_rule("GRU", RNNRule)
    register_rule("LSTM", RNNRule)
    if prepare_rnn not in PREPARE_PASSES:
        PREPARE_PASSES.append(prepare_rnn)


register()
