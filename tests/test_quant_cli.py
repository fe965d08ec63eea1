"""``chunkwise quantize`` end to end: multi-input .npz calibration and test input, bad input refused before
anything is written (exit 2, the input .onnx untouched), the output-SQNR warning and --min-sqnr (exit 3)."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

import chunkwise
from chunkwise.cli import app

runner = CliRunner()
RNG = np.random.default_rng(11)


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def two_input_model(path):
    w = RNG.normal(0, 0.3, (8, 4, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["a", "w"], ["c"], pads=[1, 1]),
             helper.make_node("Add", ["c", "b"], ["s"]), helper.make_node("Relu", ["s"], ["y"])]
    g = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 4, 16]),
                                         helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 8, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          initializer=[numpy_helper.from_array(w, "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save(m, path)
    return path


def digest(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_npz_calibration_and_test_input(tmp_path):
    src = two_input_model(tmp_path / "two.onnx")
    np.savez(tmp_path / "calib.npz", a=RNG.normal(0, 1, (8, 4, 16)).astype(np.float32),
             b=RNG.normal(0, 1, (8, 8, 16)).astype(np.float32))
    xa, xb = RNG.normal(0, 1, (1, 4, 16)).astype(np.float32), RNG.normal(0, 1, (1, 8, 16)).astype(np.float32)
    np.savez(tmp_path / "x.npz", a=xa, b=xb)
    out = tmp_path / "two.espdl"
    r = run("quantize", src, "-o", out, "--calib", tmp_path / "calib.npz", "--test-input", tmp_path / "x.npz", "-q")
    assert r.exit_code == 0, r.output
    m = chunkwise.load(out)
    # the embedded test input is the given one (NWC, quantized at the input's exponent)
    ea = m.graph.info("a").exponent
    want = np.clip(np.rint(np.transpose(xa, (0, 2, 1)) * 2.0 ** -ea), -128, 127).astype(np.int8)
    np.testing.assert_array_equal(m.graph.test_inputs["a"].data, want)
    assert set(m.graph.test_inputs) == {"a", "b"}


def test_unsupported_op_writes_nothing_and_keeps_input(tmp_path):
    m = helper.make_model(helper.make_graph(
        [helper.make_node("Erf", ["x"], ["y"], name="lonely_erf")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]), opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    src = tmp_path / "erf.onnx"
    onnx.save(m, src)
    before = digest(src)
    np.save(tmp_path / "c.npy", RNG.normal(0, 1, (4, 4, 8)).astype(np.float32))
    out = tmp_path / "erf.espdl"
    r = run("quantize", src, "-o", out, "--calib", tmp_path / "c.npy", "-q")
    assert r.exit_code == 2
    assert "lonely_erf" in r.output and "Erf" in r.output and "Gelu" in r.output  # node, op, what is supported
    assert not out.exists() and list(tmp_path.iterdir()) == sorted([src, tmp_path / "c.npy"]) or \
        set(tmp_path.iterdir()) == {src, tmp_path / "c.npy"}
    assert digest(src) == before


def test_unmappable_attribute_names_node(tmp_path):
    w = RNG.normal(0, 0.3, (4, 4, 3)).astype(np.float32)
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="same_conv", auto_pad="SAME_UPPER")],
                          "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          initializer=[numpy_helper.from_array(w, "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    src = tmp_path / "c.onnx"
    onnx.save(m, src)
    before = digest(src)
    np.save(tmp_path / "c.npy", RNG.normal(0, 1, (4, 4, 8)).astype(np.float32))
    out = tmp_path / "c.espdl"
    r = run("quantize", src, "-o", out, "--calib", tmp_path / "c.npy", "-q")
    assert r.exit_code == 2, r.output
    assert "same_conv" in r.output and "auto_pad" in r.output
    assert not out.exists() and digest(src) == before


def test_min_sqnr_fails_without_writing(tmp_path):
    src = two_input_model(tmp_path / "two.onnx")
    np.savez(tmp_path / "calib.npz", a=RNG.normal(0, 0.01, (8, 4, 16)).astype(np.float32),
             b=RNG.normal(0, 0.01, (8, 8, 16)).astype(np.float32))
    np.savez(tmp_path / "x.npz", a=RNG.normal(0, 50, (1, 4, 16)).astype(np.float32),
             b=RNG.normal(0, 50, (1, 8, 16)).astype(np.float32))
    out = tmp_path / "two.espdl"
    args = ["quantize", src, "-o", out, "--calib", tmp_path / "calib.npz", "--test-input", tmp_path / "x.npz", "-q"]
    r = run(*args, "--min-sqnr", "20")
    assert r.exit_code == 3, r.output
    assert "worst layer" in r.output and not out.exists()
    r = run(*args)  # without the option: written, with a warning naming the worst layer
    assert r.exit_code == 0 and out.exists()
    assert "warning: output SQNR" in r.output and "worst layer" in r.output


def test_test_input_missing_file(tmp_path):
    src = two_input_model(tmp_path / "two.onnx")
    np.savez(tmp_path / "calib.npz", a=RNG.normal(0, 1, (4, 4, 16)).astype(np.float32),
             b=RNG.normal(0, 1, (4, 8, 16)).astype(np.float32))
    r = run("quantize", src, "-o", tmp_path / "o.espdl", "--calib", tmp_path / "calib.npz",
            "--test-input", tmp_path / "nope.npz", "-q")
    assert r.exit_code == 2 and "not found" in r.output
