"""The float ONNX twin (devtools.float_onnx) runs in onnxruntime and computes what the
quantized model approximates: its output is compared with the emulator's dequantized output and with
ESP-PPQ's embedded test outputs (cosine similarity: the twin is float, the model int8/int16)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")

import chunkwise  # noqa: E402
from chunkwise.errors import UnsupportedError  # noqa: E402
from devtools.float_onnx import to_float_onnx  # noqa: E402

HERE = Path(__file__).resolve().parent
FIX = HERE / "fixtures"
SHARED = Path(__file__).resolve().parents[1].parent / "shared"
ZOO = SHARED / "zoo"
TCN = FIX / "tutorial_tcn_esp32p4_model.espdl"

# golden op models whose quantized output is NOT an approximation of the float op: the Requantize
# test saturates a Sigmoid at exponent -8 (int8 max 127/256 < 1), so float and int8 differ by design.
# the int8 result is not an approximation of the float op: Requantize saturates by design; Div by a
# quantized divisor near zero saturates where the float quotient explodes
NOT_APPROX = {"Requantize", "Div"}
# ops the twin refuses (no faithful float ONNX form yet): checked to raise UnsupportedError
NO_TWIN = {"ConvTranspose", "RMSNormalization", "SpaceToDepth"}


def _load(p):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return chunkwise.load(p)


def _session(model_proto):
    return ort.InferenceSession(model_proto.SerializeToString(), providers=["CPUExecutionProvider"])


def _cos(a, b) -> float:
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na < 1e-12 and nb < 1e-12:
        return 1.0
    return float(a @ b / (na * nb + 1e-300))


def _float_feeds(m, feeds):
    return {k: m.dequantize(k, v) for k, v in feeds.items()}


def test_tcn_twin_close_to_emulator_and_golden():
    m = _load(TCN)
    twin = to_float_onnx(m.graph)
    ops = [n.op_type for n in twin.graph.node]
    assert "Conv" in ops and "StreamingCache" not in ops
    assert ops.count("Transpose") == 1  # only the input's: ESP-PPQ's inserted Transpose composes away
    feeds = m.test_feeds()
    (got,) = _session(twin).run(None, _float_feeds(m, feeds))
    want = m.run(feeds)
    (name, w), = want.items()
    assert got.shape == w.shape
    assert _cos(got, m.dequantize(name, w)) > 0.99
    golden = m.dequantize(name, m.graph.test_outputs[name].data)
    assert _cos(got, golden) > 0.99


def test_tcn_twin_receptive_window_equals_full():
    """The causal TCN's last output needs only its receptive field (3 + 10 frames): a twin built for a
    13-frame input on the last 13 frames equals the full 24-frame twin; 12 frames do not."""
    m = _load(TCN)
    x = _float_feeds(m, m.test_feeds())["input.1"]
    (full,) = _session(to_float_onnx(m.graph)).run(None, {"input.1": x})
    (win,) = _session(to_float_onnx(m.graph, input_shapes={"input.1": (1, 13, 16)})).run(
        None, {"input.1": x[:, -13:]})
    np.testing.assert_allclose(win, full, rtol=1e-5, atol=1e-5)
    (short,) = _session(to_float_onnx(m.graph, input_shapes={"input.1": (1, 12, 16)})).run(
        None, {"input.1": x[:, -12:]})
    assert not np.allclose(short, full, rtol=1e-5, atol=1e-5)


def test_onnx_io_layout_is_channel_first():
    m = _load(TCN)
    twin = to_float_onnx(m.graph, io_layout="onnx")
    dims = [d.dim_value for d in twin.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 16, 24]  # NCW, as the float model ESP-PPQ quantized
    assert not any(n.op_type == "Transpose" for n in twin.graph.node)
    x = _float_feeds(m, m.test_feeds())["input.1"]
    (a,) = _session(twin).run(None, {"input.1": np.ascontiguousarray(x.transpose(0, 2, 1))})
    (b,) = _session(to_float_onnx(m.graph)).run(None, {"input.1": x})
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError):
        to_float_onnx(m.graph, io_layout="nchw")


def test_streaming_model_refused():
    p = FIX / "ppq_refs" / "tcn_tutorial" / "esp32p4_s8_streaming.espdl"
    if not p.exists():
        pytest.skip("no streaming fixture")
    with pytest.raises(UnsupportedError, match="StreamingCache"):
        to_float_onnx(_load(p).graph)


def _golden_models():
    out = []
    for d in ("esp32p4_s8", "esp32p4_s16"):
        for p in sorted((FIX / "golden" / d).glob("*/*.espdl")):
            out.append(pytest.param(p, id=f"{d}/{p.parent.name}/{p.stem}"))
    return out


@pytest.mark.parametrize("path", _golden_models())
def test_golden_op_twins(path):
    """Every golden op model in the fixtures: the twin reproduces ESP-PPQ's test output (cosine)."""
    op = path.parent.name
    m = _load(path)
    if op in NO_TWIN and (op != "ConvTranspose" or any(n.op_type == "InsertZeros" for n in m.graph.nodes)):
        with pytest.raises(UnsupportedError):
            to_float_onnx(m.graph)
        return
    twin = to_float_onnx(m.graph)
    got = _session(twin).run(None, _float_feeds(m, m.test_feeds()))
    if op in NOT_APPROX:
        return
    for v, g in zip(m.graph.outputs, got):
        want = m.graph.test_outputs[v.name].data
        assert g.size == want.size and g.ndim <= want.ndim, v.name  # ESP-PPQ stores scalars as [1]
        g = g.reshape(want.shape)
        if v.dtype == "bool":
            assert np.mean(g == want) > 0.95
            continue
        w = m.dequantize(v.name, want)
        nan = np.isnan(w)  # float outputs of Log / Sqrt on negative inputs
        np.testing.assert_array_equal(np.isnan(g), nan)
        ok = ~nan & np.isfinite(g)  # x/0 is +-inf in float; the chip saturates
        assert ok.sum() >= 0.9 * (~nan).sum() and _cos(g[ok], w[ok]) > 0.9, v.name


def _zoo(name):
    p = ZOO / name
    if not p.exists():
        pytest.skip(f"{p} absent")
    return _load(p)


@pytest.mark.shared
@pytest.mark.parametrize("name,min_cos", [("imagenet_mobilenetv2_s8_p4.espdl", 0.9), ("yolo11n_320_s8_p4.espdl", 0.9)])
def test_zoo_twins_run_and_agree(name, min_cos):
    m = _zoo(name)
    twin = to_float_onnx(m.graph)
    rng = np.random.default_rng(0)
    feeds = {v.name: rng.integers(-60, 61, size=v.shape).astype(np.int8) for v in m.graph.inputs}
    got = _session(twin).run(None, _float_feeds(m, feeds))
    want = m.run(feeds)
    for (k, w), g in zip(want.items(), got):
        assert g.shape == w.shape, k
        assert _cos(g, m.dequantize(k, w)) > min_cos, k
