"""Offline throughput on real models: chunkwise Model.run vs onnxruntime on the float twin."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import load, ort_session, ort_version, record

MODELS = {"mnv2": "imagenet_mobilenetv2_s8_p4.espdl", "yolo": "yolo11n_320_s8_p4.espdl"}


def _feeds(m):
    rng = np.random.default_rng(0)
    return {v.name: rng.integers(-100, 101, size=v.shape).astype(np.int8) for v in m.graph.inputs}


@pytest.mark.parametrize("threads", [1, None], ids=["1thread", "default_threads"])
@pytest.mark.parametrize("which", list(MODELS))
def test_model_run(benchmark, which, threads):
    """The integer kernels are single-threaded numba; the exact float GEMMs (emu/ops/conv.py) run in
    numpy's BLAS, limited here to one thread for the 1-thread figure (threadpoolctl)."""
    from threadpoolctl import threadpool_limits

    m = load(MODELS[which])
    feeds = _feeds(m)
    m.run(feeds)  # plan + compile once
    with threadpool_limits(limits=threads, user_api="blas"):
        benchmark.pedantic(m.run, args=(feeds,), rounds=9, iterations=1, warmup_rounds=1)
    macs = m.plan({k: v.shape for k, v in feeds.items()}).macs
    t = "BLAS 1 thread" if threads == 1 else "BLAS default threads"
    record(benchmark, f"{which}_run{'_1t' if threads == 1 else ''}",
           f"Model.run, int8 bit-exact ({macs / 1e6:.0f} M MACs), {t}")


@pytest.mark.parametrize("threads", [1, None], ids=["1thread", "default_threads"])
@pytest.mark.parametrize("which", list(MODELS))
def test_ort_float(benchmark, which, threads):
    from devtools.float_onnx import to_float_onnx

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


@pytest.mark.parametrize("which", list(MODELS))
def test_profile_offline(benchmark, which):
    """Where Model.run's time goes: each plan step timed on its own (3 runs averaged), grouped by op
    (Conv split into 1x1 / kxk / depthwise), with MACs and the achieved rate."""
    import time
    from collections import defaultdict

    m = load(MODELS[which])
    feeds = _feeds(m)
    m.run(feeds)
    plan = m.plan({k: v.shape for k, v in feeds.items()})
    tot, macs = defaultdict(float), defaultdict(int)

    def group(node):
        if node.op_type != "Conv":
            return node.op_type
        if int(node.attr("group", 1) or 1) > 1:
            return "Conv depthwise"
        return f"Conv {'x'.join(str(k) for k in (node.attr('kernel_shape') or []))}"

    def run():
        reps = 3
        for rep in range(reps):
            values = dict(plan.consts)
            values.update(m.prepare_inputs(feeds))
            for s in plan.steps:
                args = [values[i] if i else None for i in s.inputs]
                t0 = time.perf_counter()
                outs = s.prepared.run(*args)
                tot[group(s.node)] += (time.perf_counter() - t0) / reps
                if rep == 0:
                    macs[group(s.node)] += s.prepared.macs
                values.update(zip(s.outputs, outs))

    benchmark.pedantic(run, rounds=1, iterations=1)
    total = sum(tot.values())
    rows = sorted(([k, v * 1e3, macs[k]] for k, v in tot.items()), key=lambda r: -r[1])
    record(benchmark, f"profile_{which}", f"Model.run per-op time ({MODELS[which]})", value=total)
    benchmark.extra_info["op_profile"] = {"model": MODELS[which], "total_ms": total * 1e3, "rows": rows}
