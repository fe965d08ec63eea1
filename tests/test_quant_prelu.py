"""PRelu exponents: ESP-DL's ``prelu_11c`` (int16 on every target, int8 on the c target) copies positive values
unchanged whatever the exponents (``esp-dl/dl/base/dl_base_prelu.cpp``; esp32s3's int16 ``EE.VPRELU.S16`` does
the same), so the quantizer gives the output its input's exponent there; only the int8 SIMD kernels (esp32p4,
esp32s3) rescale positives to the output exponent (``output_shift``/``output_scale`` of the activation args)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import chunkwise

C = 6


def prelu_model(slope: np.ndarray):
    g = helper.make_graph([helper.make_node("PRelu", ["x", "s"], ["y"], name="prelu")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, 5, 7])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          initializer=[numpy_helper.from_array(slope, "s")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


def data(rng, n):
    # negatives reach twice as far as positives: with slopes < 0.5 the output's own range is half the input's,
    # so a separately calibrated output exponent is one finer than the input's
    return rng.uniform(-3.0, 2.0, (n, C, 5, 7)).astype(np.float32)


def sqnr_db(ref, got):
    return 10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / max(np.sum((ref - got) ** 2), 1e-30))


@pytest.mark.parametrize("target, bits, keeps", [("c", 8, True), ("esp32p4", 16, True), ("esp32s3", 8, False),
                                                 ("esp32s3", 16, True), ("esp32p4", 8, False)])
def test_prelu_output_exponent_and_accuracy(target, bits, keeps):
    rng = np.random.default_rng(11)
    slope = rng.uniform(0.05, 0.4, (C, 1, 1)).astype(np.float32)  # per channel: ESP-DL's PRelu kernel, no table
    m = prelu_model(slope)
    calib = data(rng, 32)
    x = data(rng, 1)
    q = chunkwise.quantize(m, calib, target=target, bits=bits, test_input=x, warn=False)
    g = q.graph
    assert [n.op_type for n in g.nodes] == ["PRelu"]
    node = g.nodes[0]
    e_in, e_out = g.info(node.inputs[0]).exponent, g.info(node.outputs[0]).exponent
    if keeps:
        assert e_out == e_in, (e_in, e_out)
    else:
        assert e_out == e_in - 1, (e_in, e_out)  # calibrated on its own: the SIMD kernels rescale positives
    # our emulated output (the embedded test output, NHWC) against onnxruntime's float output
    ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    t = g.test_outputs["y"]
    got = np.transpose(t.data.astype(np.float64) * 2.0 ** e_out, (0, 3, 1, 2))
    db = sqnr_db(ref, got)
    # c int8 (~34 dB): the output keeps the input's exponent, one bit coarser than its own range needs, and
    # prelu_11c floors the negative part; the SIMD kernels round and rescale (~40 dB); int16 ~80 dB
    assert db > (70 if bits == 16 else 38 if not keeps else 32.5), db
    assert abs(db - q.quant_report["output_sqnr_db"]) < 3


def test_single_slope_int8_is_a_table_at_any_exponent():
    """An int8 PRelu with one slope is exported as a 256-entry table (ESP-DL's LUT module): no constraint."""
    rng = np.random.default_rng(12)
    m = prelu_model(np.array([0.2], np.float32))
    q = chunkwise.quantize(m, data(rng, 32), target="c", bits=8, warn=False)
    node = q.graph.nodes[0]
    assert node.attr("lut") is not None
    assert q.quant_report["output_sqnr_db"] > 36
