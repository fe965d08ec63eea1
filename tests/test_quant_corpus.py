"""The model-family corpus (tests/fixtures/corpus) through the quantizer: the models whose operators the
quantizer maps quantize for esp32p4 and esp32s3 (int8; int16 for several), run in the emulator with their
embedded test values, and stay close to onnxruntime's float output on the held-out input."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import chunkwise

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from corpus import corpus_models, load_inputs  # noqa: E402
from sqnr_table import chip_sqnr  # noqa: E402

# model -> minimum int8 output SQNR on the held-out input (dB); int16 must beat it by 25 dB
MODELS = {"kws_dscnn": 30, "wavenet": 35, "ln_tcn": 25, "rmsnorm_tcn": 25, "inception": 30, "causal_pools": 30,
          "valid_convs": 35, "mlp_gelu": 30, "swish_mlp": 30, "conv_chmean": 25}
INT16 = ("kws_dscnn", "wavenet", "ln_tcn", "rmsnorm_tcn", "inception", "mlp_gelu")
BY_NAME = {m.name: m for m in corpus_models()}
CASES = [(n, t, 8) for n in MODELS for t in ("esp32p4", "esp32s3")] + [(n, "esp32p4", 16) for n in INT16]


@pytest.mark.parametrize("name, target, bits", CASES, ids=[f"{n}-{t}-s{b}" for n, t, b in CASES])
def test_corpus_model_quantizes_and_runs(name, target, bits, tmp_path):
    m = BY_NAME[name]
    calib, held = load_inputs(m.calib), load_inputs(m.heldout)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            q = chunkwise.quantize(str(m.onnx), calib, target=target, bits=bits, test_input=held, warn=False)
    except chunkwise.UnsupportedError as e:
        if any(op in str(e) for op in ("MatMul", "Gather", "GRU", "LSTM", "ConvTranspose")):
            pytest.skip(f"operator of quant/products.py / quant/rnn.py not registered here: {e}")
        raise
    p = tmp_path / "m.espdl"
    q.save(p)
    back = chunkwise.load(p)
    got = back.run({k: v.data for k, v in back.graph.test_inputs.items()})
    for k, t in back.graph.test_outputs.items():
        np.testing.assert_array_equal(got[k], t.data)
    s = chip_sqnr(back, m.onnx, held)
    want = MODELS[name] + (25 if bits == 16 else 0)
    assert s >= want, f"{name} {target} s{bits}: output SQNR {s:.2f} dB < {want} dB"


def test_fused_patterns_in_corpus_exports():
    ops = {}
    for name in ("ln_tcn", "rmsnorm_tcn", "mlp_gelu", "swish_mlp"):
        m = BY_NAME[name]
        try:
            q = chunkwise.quantize(str(m.onnx), load_inputs(m.calib), warn=False)
        except chunkwise.UnsupportedError as e:
            if "MatMul" in str(e):
                continue
            raise
        ops[name] = {n.op_type for n in q.graph.nodes}
    assert "LayerNormalization" in ops["ln_tcn"] and "ReduceMean" not in ops["ln_tcn"]
    assert "RMSNormalization" in ops["rmsnorm_tcn"] and "Pow" not in ops["rmsnorm_tcn"]
    for name, fused in (("mlp_gelu", "Gelu"), ("swish_mlp", "Swish")):
        if name in ops:
            assert fused in ops[name] and "Erf" not in ops[name], ops[name]


@pytest.mark.parametrize("nodes", [["/ln1/Sqrt"], ["/Transpose_1"], ["/c2/conv/Conv"]])
def test_mixed_precision_around_fused_and_passive_ops(nodes, tmp_path):
    """int16 on a fused LayerNorm (named by one of its ONNX nodes), on a Transpose reading an int8 value and
    on a Conv: RequantizeLinear at every width boundary, the model runs and keeps its int8 accuracy."""
    m = BY_NAME["ln_tcn"]
    calib, held = load_inputs(m.calib), load_inputs(m.heldout)
    q = chunkwise.quantize(str(m.onnx), calib, int16_nodes=nodes, test_input=held, warn=False)
    assert any(n.op_type == "RequantizeLinear" for n in q.graph.nodes)
    assert any(n.attr("quant_type") in ("S16", b"S16") for n in q.graph.nodes)
    assert chip_sqnr(q, m.onnx, held) >= MODELS["ln_tcn"]


def test_transposes_around_norm_blocks_vanish():
    """ln_tcn / rmsnorm_tcn write x.transpose(1, 2) -> norm -> .transpose(1, 2) -> Relu -> Conv: on NWC
    storage the norm over channels needs no data movement, and the Relu-separated transposes sink and cancel."""
    for name, want in (("ln_tcn", ["Conv", "LayerNormalization", "Relu", "Conv", "LayerNormalization", "Relu",
                                   "Conv"]),
                       ("rmsnorm_tcn", ["Conv", "RMSNormalization", "Relu", "Conv", "Conv"])):
        m = BY_NAME[name]
        q = chunkwise.quantize(str(m.onnx), load_inputs(m.calib), warn=False)
        ops = [n.op_type for n in q.graph.nodes]
        assert [o for o in ops if o != "RequantizeLinear"] == want, ops
