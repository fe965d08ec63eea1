"""Offline throughput on real models: chunkwise Model.run vs onnxruntime on the float twin."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import load, ort_session, ort_version, record

MODELS = {"mnv2": "imagenet_mobilenetv2_s8_p4.espdl", "yolo": "yolo11n_320_s8_p4.espdl"}


def _feeds(m):
    rng = np.random.default_rng(0)
    return {v.name: rng.integers(-100, 101, size=v.shape).astype(np.int8) for v in m.graph.inputs}


@pytest.mark.parametrize("which", list(MODELS))
def test_model_run(benchmark, which):
    m = load(MODELS[which])
    feeds = _feeds(m)
    m.run(feeds)  # plan + compile once
    benchmark.pedantic(m.run, args=(feeds,), rounds=7, iterations=1, warmup_rounds=1)
    macs = m.plan({k: v.shape for k, v in feeds.items()}).macs
    record(benchmark, f"{which}_run", f"Model.run, int8 bit-exact ({macs / 1e6:.0f} M MACs)")


@pytest.mark.parametrize("threads", [1, None], ids=["1thread", "default_threads"])
@pytest.mark.parametrize("which", list(MODELS))
def test_ort_float(benchmark, which, threads):
    from chunkwise.espdl.float_onnx import to_float_onnx

    m = load(MODELS[which])
    twin = to_float_onnx(m.graph, io_layout="onnx")
    s = ort_session(twin, threads)
    feeds = {i.name: np.random.default_rng(0).standard_normal(
        [d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32) for i in twin.graph.input}
    s.run(None, feeds)
    benchmark.pedantic(s.run, args=(None, feeds), rounds=20, iterations=1, warmup_rounds=2)
    t = "1 thread" if threads == 1 else "default threads"
    record(benchmark, f"ort_{which}_{'1t' if threads == 1 else 'default'}",
           f"onnxruntime {ort_version()} float twin (NCHW), {t}")
