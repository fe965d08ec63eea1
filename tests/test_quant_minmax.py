"""Max / Min: ESP-DL has ``dl_module_max.hpp`` / ``dl_module_min.hpp`` but ``dl_module_creator.hpp`` does not
register them, so a chip cannot load a model holding them. The quantizer rewrites Max/Min with a constant scalar
operand to Clip (Max(x, 0) to Relu) with the float-exact pass ``minmax_const_to_clip`` and refuses the rest
before writing anything, naming the node."""

from __future__ import annotations

import copy

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import chunkwise
from chunkwise.errors import UnsupportedError
from chunkwise.quant.patterns import float_onnx, minmax_const_to_clip, rewrite_patterns
from chunkwise.quant.prepare import prepare

RNG = np.random.default_rng(21)
SHAPE = (1, 4, 6, 5)


def model(nodes, inits, inputs=("x",)):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(i, TensorProto.FLOAT, list(SHAPE))
                                       for i in inputs],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          initializer=[numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


def run(m, x):
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


CASES = [  # (op, constant, constant first, expected op after the rewrite)
    ("Max", np.array(0.4), False, "Clip"),
    ("Max", np.array([-0.7]), True, "Clip"),
    ("Max", np.array(0.0), False, "Relu"),
    ("Min", np.array(0.25), False, "Clip"),
    ("Min", np.array([[[[-1.5]]]]), True, "Clip"),
]


@pytest.mark.parametrize("op, c, first, want", CASES, ids=[f"{c[0]}_{i}" for i, c in enumerate(CASES)])
def test_minmax_const_becomes_clip_float_exact(op, c, first, want):
    m = model([helper.make_node(op, ["c", "x"] if first else ["x", "c"], ["y"], name="mm")], {"c": c})
    fg = prepare(m)
    fq = copy.deepcopy(fg)
    res = minmax_const_to_clip(fq)
    assert res.modified, res.reason
    assert [n.op for n in fq.nodes] == [want] and fq.nodes[0].name == "mm" and fq.outputs == ["y"]
    x = RNG.normal(0, 1.5, SHAPE).astype(np.float32)
    x.flat[:3] = np.float32(c.ravel()[0])  # ties with the bound
    np.testing.assert_array_equal(run(float_onnx(fq), x), run(m, x))


@pytest.mark.parametrize("target, bits", [("esp32p4", 8), ("esp32s3", 16), ("c", 8)])
def test_minmax_const_quantizes_to_registered_modules(target, bits):
    m = model([helper.make_node("Conv", ["x", "w"], ["h"], kernel_shape=[1, 1]),
               helper.make_node("Max", ["h", "lo"], ["h2"], name="max"),
               helper.make_node("Min", ["h2", "hi"], ["y"], name="min")],
              {"w": RNG.normal(0, 0.5, (4, 4, 1, 1)), "lo": np.array(-0.5), "hi": np.array(0.8)})
    q = chunkwise.quantize(m, RNG.normal(0, 1, (16,) + SHAPE[1:]).astype(np.float32), target=target, bits=bits,
                           warn=False)
    ops = [n.op_type for n in q.graph.nodes]
    assert "Max" not in ops and "Min" not in ops and ops.count("Clip") == 2, ops
    assert any(line.startswith("minmax_const_to_clip: modified") for line in q.quant_report["passes"])
    assert q.quant_report["output_sqnr_db"] > (25 if bits == 8 else 50)


@pytest.mark.parametrize("inits, inputs", [({}, ("x", "z")), ({"z": RNG.normal(0, 1, SHAPE[1:])}, ("x",))],
                         ids=["two_activations", "vector_constant"])
def test_minmax_without_a_scalar_constant_is_refused_before_writing(inits, inputs, tmp_path):
    """Refused by the quantizer's operator check after the rewrites, before calibration and export; the CLI
    writes no file."""
    m = model([helper.make_node("Min", ["x", "z"], ["y"], name="the_min")], inits, inputs)
    log: list[str] = []
    fq = rewrite_patterns(copy.deepcopy(prepare(m)), log)
    assert [n.op for n in fq.nodes] == ["Min"] and any(l.startswith("minmax_const_to_clip: no change") for l in log)
    calib = {k: RNG.normal(0, 1, (4,) + SHAPE[1:]).astype(np.float32) for k in inputs}
    with pytest.raises(UnsupportedError, match="the_min") as ei:
        chunkwise.quantize(m, calib, warn=False)
    assert "dl_module_creator.hpp does not register" in str(ei.value)
    from typer.testing import CliRunner

    from chunkwise.cli import app

    if len(inputs) == 1:
        import onnx

        onnx.save(m, tmp_path / "m.onnx")
        np.save(tmp_path / "calib.npy", calib["x"])
        out = tmp_path / "m.espdl"
        r = CliRunner().invoke(app, ["quantize", str(tmp_path / "m.onnx"), "--calib", str(tmp_path / "calib.npy"),
                                     "-o", str(out)])
        assert r.exit_code != 0 and "the_min" in r.output, r.output
        assert not out.exists()


@pytest.mark.parametrize("bits", [8, 16])
def test_max_only_clip_exports_a_min_bound(bits):
    """ESP-DL's Clip reads input 1 as min: an ONNX Clip with only a max bound gets the type's minimum as min."""
    m = model([helper.make_node("Conv", ["x", "w"], ["h"], kernel_shape=[1, 1]),
               helper.make_node("Clip", ["h", "", "hi"], ["y"], name="clip")],
              {"w": RNG.normal(0, 0.5, (4, 4, 1, 1)), "hi": np.array(0.3)})
    q = chunkwise.quantize(m, RNG.normal(0, 1, (16,) + SHAPE[1:]).astype(np.float32), target="esp32p4", bits=bits,
                           warn=False)
    clip = [n for n in q.graph.nodes if n.op_type == "Clip"][0]
    assert len(clip.inputs) == 3
    lo = q.graph.initializers[clip.inputs[1]].data
    assert int(lo) == (-128 if bits == 8 else -32768)
    assert q.quant_report["output_sqnr_db"] > (25 if bits == 8 else 50)


def test_export_refuses_an_unregistered_module():
    """The exporter's last check on the graph it built: an op with espdl=False fails, naming the node."""
    from chunkwise.ir.graph import Node
    from chunkwise.quant.export import check_registered

    check_registered([Node("Clip", "c", ["x"], ["y"]), Node("RequantizeLinear", "q", ["y"], ["z"])])
    with pytest.raises(UnsupportedError, match="the_max") as ei:
        check_registered([Node("Clip", "c", ["x"], ["y"]), Node("Max", "the_max", ["y", "x"], ["z"])])
    assert "dl_module_creator.hpp" in str(ei.value)
