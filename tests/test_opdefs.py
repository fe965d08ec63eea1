"""One definition per operator (chunkwise.ir.ops), asked by every stage; the coverage table built from it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from chunkwise.errors import UnsupportedError
from chunkwise.ir import ops
from chunkwise.ir.graph import Node, make_attribute
from chunkwise.ir.ops import STAGES, ExpPolicy, Layout, TimeRule

DOC = Path(__file__).resolve().parents[1] / "docs" / "coverage.md"


def _node(op, inputs=("x",), **attrs):
    n = Node(op, f"{op}_0", list(inputs), ["y"])
    for k, v in attrs.items():
        n.attrs[k] = make_attribute(v)
    return n


def test_every_emulated_lowered_and_quantized_op_has_a_definition():
    from chunkwise.emu.registry import supported_ops
    from chunkwise.quant import supported_float_ops

    support = ops.stage_support()
    defined = {d.name for d in ops.all_defs()}
    assert set(supported_ops()) - defined == set()
    assert supported_float_ops() - defined == set()
    assert all(isinstance(d.time, TimeRule) and isinstance(d.layout, Layout) and isinstance(d.exponent, ExpPolicy)
               for d in ops.all_defs())
    assert set(support) == set(STAGES)


def test_no_stage_silently_lacks_an_operator():
    """Every operator x stage is implemented or refused with a reason on its definition."""
    missing = [(r["op"], s) for r in ops.coverage() for s in STAGES if r[s] == "MISSING"]
    assert missing == []


def test_coverage_doc_is_generated_from_the_definitions():
    assert DOC.read_text() == ops.coverage_markdown(), "regenerate: python -m chunkwise.ir.ops > docs/coverage.md"


def test_each_attribute_name_has_one_kind():
    seen: dict[str, tuple[str, str]] = {}
    for d in ops.all_defs():
        for k, a in d.attrs.items():
            if k in seen:
                assert seen[k][0] == a.kind, f"{k}: {a.kind} on {d.name}, {seen[k][0]} on {seen[k][1]}"
            seen[k] = (a.kind, d.name)


def test_unknown_operator_lists_the_known_ones():
    with pytest.raises(UnsupportedError) as e:
        ops.opdef("FancyOp", node="n1")
    assert "n1" in str(e.value) and "Conv" in str(e.value)


def test_attribute_defaults_are_onnx_defaults():
    conv = ops.opdef("Conv")
    n = _node("Conv", kernel_shape=[3])
    assert conv.attr(n, "group") == 1 and conv.attr(n, "activation") == "Linear"
    assert ops.opdef("LeakyRelu").attr(_node("LeakyRelu"), "alpha") == 0.01
    with pytest.raises(KeyError):
        conv.attr(n, "no_such_attr")
    assert ops.opdef("InsertZeros").attr(_node("InsertZeros"), "stride") == [1]


def test_window_geometry_fills_defaults_and_validates():
    w = ops.window(_node("Conv", kernel_shape=[3], dilations=[2], pads=[4, 0]), 1)
    assert (w.kernel, w.strides, w.dilations, w.pads_begin, w.pads_end) == ((3,), (1,), (2,), (4,), (0,))
    assert w.span(0) == 5 and w.out_size(0, 10) == 10
    w2 = ops.window(_node("Conv"), 2, weight_dims=(3, 5, 8, 16))
    assert w2.kernel == (3, 5) and w2.pads == [0, 0, 0, 0]
    with pytest.raises(UnsupportedError, match="does not fit"):
        ops.window(_node("Conv", kernel_shape=[3], strides=[1, 1]), 1)
    with pytest.raises(UnsupportedError, match="negative pads"):
        ops.window(_node("MaxPool", kernel_shape=[2], pads=[-1, 0]), 1)
    with pytest.raises(UnsupportedError, match="auto_pad"):
        ops.window(_node("Conv", kernel_shape=[3], auto_pad="SAME_UPPER"), 1)


@pytest.mark.parametrize("op,zero", [("Relu", True), ("Tanh", True), ("Swish", True), ("Gelu", True),
                                     ("Sigmoid", False), ("HardSigmoid", False), ("Exp", False), ("Neg", True)])
def test_zero_to_zero_matches_the_float_function(op, zero):
    d = ops.opdef(op)
    assert d.zero_to_zero(_node(op), {}) is zero
    f = d.float_fn({})(np.zeros(3, np.float32))
    assert bool(np.all(f == 0)) is zero


def test_lut_traits_follow_the_table():
    n = _node("LUT", lut="t")
    t = np.arange(-128, 128, dtype=np.int8)
    assert ops.opdef("LUT").zero_to_zero(n, {"t": t})
    assert not ops.opdef("LUT").zero_to_zero(n, {"t": t + 1})
    assert not ops.opdef("LUT").nonneg(n, {"t": t}, [False])
    assert ops.opdef("LUT").nonneg(n, {"t": np.abs(t.astype(np.int16))}, [False])


def test_binary_traits_look_at_constant_operands():
    add = ops.opdef("Add")
    n = _node("Add", inputs=("x", "c"))
    assert add.zero_to_zero(n, {"c": np.zeros(4)}) and not add.zero_to_zero(n, {"c": np.ones(4)})
    assert ops.opdef("Mul").zero_to_zero(n, {"c": np.ones(4)})
    assert add.nonneg(n, {}, [True, True]) and not add.nonneg(n, {}, [True, False])
    assert ops.opdef("Max").nonneg(n, {}, [False, True])


def test_clip_bounds_from_inputs_or_attributes():
    clip = ops.opdef("Clip")
    n = _node("Clip", inputs=("x", "lo", "hi"))
    assert clip.nonneg(n, {"lo": np.array(0.0), "hi": np.array(6.0)}, [False])
    assert not clip.zero_to_zero(n, {"lo": np.array(1.0), "hi": np.array(6.0)})
    assert clip.zero_to_zero(_node("Clip", min=-1.0, max=1.0), {})


def test_axes_hooks():
    assert ops.opdef("Softmax").axes(_node("Softmax"), 3, {}) == (2,)
    assert ops.opdef("LayerNormalization").axes(_node("LayerNormalization", axis=1), 3, {}) == (1, 2)
    assert ops.opdef("ReduceMean").axes(_node("ReduceMean", axes=[-1], keepdims=0), 3, {}) == (2,)
    rm = _node("ReduceMean", inputs=("x", "ax"))
    assert ops.opdef("ReduceMean").axes(rm, 4, {"ax": np.array([1, 2])}) == (1, 2)
    assert ops.opdef("Concat").axes(_node("Concat", axis=-1), 3, {}) == (2,)


def test_engine_checks_attribute_kinds_from_the_definitions():
    from chunkwise.emu.engine import _check_node

    n = _node("LeakyRelu")
    n.attrs["alpha"] = make_attribute("0.1")
    with pytest.raises(UnsupportedError, match="attribute 'alpha' is of kind string, expected float"):
        _check_node(n)


# The modules ESP-DL's runtime registers: ModuleCreator::register_dl_modules() in
# esp-dl/dl/module/include/dl_module_creator.hpp (espressif/esp-dl, commit of Thu Jul 30 15:31:18 2026 +0800).
# A model holding any other op cannot be loaded on a chip, even where a dl_module_*.hpp header exists (And,
# Max, Min, Not, Or, Xor).
ESPDL_REGISTERED = {
    "Conv", "Add", "Sub", "Mul", "Div", "Pow", "Mod", "Resize", "GlobalAveragePool", "AveragePool", "Concat",
    "Sigmoid", "Tanh", "Relu", "LeakyRelu", "HardSigmoid", "HardSwish", "Gelu", "LUT", "Gemm",
    "QuantizeLinear", "DequantizeLinear", "RequantizeLinear", "PRelu", "Clip", "Flatten", "Reshape",
    "Transpose", "Exp", "Log", "Sqrt", "Squeeze", "Unsqueeze", "Softmax", "LogSoftmax", "MaxPool", "Slice",
    "Pad", "MatMul", "Neg", "SpaceToDepth", "Split", "Gather", "Elu", "Greater", "GreaterOrEqual", "Equal",
    "Less", "LessOrEqual", "ReverseSequence", "ScatterND", "Identity", "Swish", "ReduceL1", "ReduceL2",
    "ReduceMin", "ReduceMax", "ReduceSum", "ReduceProd", "ReduceMean", "ReduceSumSquare", "ReduceLogSum",
    "ReduceLogSumExp", "GRU", "LSTM", "DepthToSpace", "StreamingCache", "InsertZeros", "LayerNormalization",
    "LpNormalization", "RMSNormalization",
}


def test_espdl_trait_is_exactly_the_registered_modules():
    assert len(ESPDL_REGISTERED) == 71
    defs = {d.name: d for d in ops.all_defs()}
    claimed = {n for n, d in defs.items() if d.espdl}
    assert claimed - ESPDL_REGISTERED == set(), "espdl=True but ESP-DL does not register the module"
    assert {n for n in ESPDL_REGISTERED if n in defs} - claimed == set(), "registered but espdl=False"
    for n in ("And", "Max", "Min", "Not", "Or", "Xor"):  # headers exist, the creator does not register them
        assert not defs[n].espdl and "dl_module_creator.hpp" in defs[n].doc, n


def test_quantizer_exports_only_registered_modules():
    """Every op the quantizer's exporter has a rule for is one the chip can load."""
    from chunkwise.quant.export import EXPORTED

    assert EXPORTED - {n for n in ESPDL_REGISTERED if ops.find(n) is not None and ops.find(n).espdl} == set()
