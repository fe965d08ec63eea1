"""`chunkwise demo` end to end (the README's first command) and the quantize CLI."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

import chunkwise
from chunkwise.cli import app


def test_demo_end_to_end(tmp_path):
    res = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["bit_exact"] is True and doc["chunks_checked"] == 8
    assert doc["state_bytes"] > 0 and 0 < doc["macs_per_chunk"] < doc["offline_macs"]
    for key in ("onnx", "offline", "streaming", "stream_plot", "quant_plot"):
        assert (tmp_path / doc["files"][key].split("/")[-1]).exists(), key
    streaming = chunkwise.load(doc["files"]["streaming"])
    assert any(n.op_type == "StreamingCache" for n in streaming.graph.nodes)


def test_quantize_cli(tmp_path):
    import onnx

    from chunkwise.quant.zoo import build_tcn, calibration_data

    m = build_tcn(seed=3)
    onnx.save(m, str(tmp_path / "m.onnx"))
    np.save(tmp_path / "calib.npy", calibration_data(m, n=8, seed=3))
    res = CliRunner().invoke(app, ["quantize", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "m.espdl"),
                                   "--target", "esp32s3", "--calib", str(tmp_path / "calib.npy"),
                                   "--report", str(tmp_path / "r.json"), "--quiet"])
    assert res.exit_code == 0, res.output
    assert chunkwise.load(tmp_path / "m.espdl").target == "esp32s3"
    assert "output_sqnr_db" in json.loads((tmp_path / "r.json").read_text())
    res = CliRunner().invoke(app, ["quantize", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "x.espdl")])
    assert res.exit_code == 2 and "--calib is required" in res.output
