"""The keyword-spotting walkthrough's model quantizes, streams one frame at a time and verifies."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

import chunkwise
from chunkwise.convert import stream
from chunkwise.emu.check import check_test_values
from chunkwise.emu.streamcheck import verify_streaming

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "kws" / "walkthrough.py"


def _walkthrough():
    spec = importlib.util.spec_from_file_location("kws_walkthrough", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("target", ["esp32s3", "esp32p4"])
def test_kws_walkthrough_pipeline(target, tmp_path):
    kws = _walkthrough()
    model = kws.build_kws_onnx()
    calib = kws.features(32, seed=1)[:, 0:1]
    q = chunkwise.quantize(model, calib, target=target, test_input=kws.features(1, seed=2)[0])
    assert q.quant_report["output_sqnr_db"] > 15
    q.save(tmp_path / "kws.espdl")
    offline = chunkwise.load(tmp_path / "kws.espdl")
    assert offline.target == target
    assert all(c.bit_exact for c in check_test_values(offline))
    streaming, report = stream(offline, 1)
    assert report.verification["bit_exact"]
    assert [c["frames"] for c in report.caches] == [2, 2, 4, 7]
    res = verify_streaming(streaming, offline, None)
    assert res.bit_exact and res.chunks == 49
    np.testing.assert_array_equal(streaming.graph.inputs[0].shape, (1, 1, 10, 1))
