"""Per-chunk time of every streaming model of the corpus and of seeded random causal models
(bench/streaming_models.py), each against onnxruntime (1 thread) re-running the float model on the whole
offline window, in the same test.

``Session.push`` gets the chunk as ``{name: array}`` of the input's integer dtype and shape (the documented
form; the bare array costs the same, see test_bench_stream.py); recurrent state is carried by the session.
bench/run.py turns the records into a table and the summary rows (median, worst ratio).
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import pytest

from conftest import ort_session, ort_version, record
from streaming_models import build, case_ids

_BUILT: dict = {}


def _case(case_id):
    if case_id not in _BUILT:
        try:
            _BUILT[case_id] = build(case_id)
        except Exception as e:  # a model the quantizer or the converter refuses is reported, not timed
            _BUILT[case_id] = e
    c = _BUILT[case_id]
    if isinstance(c, Exception):
        pytest.skip(f"{case_id}: {type(c).__name__}: {str(c).splitlines()[0][:200]}")
    return c


def _ort_us(proto, feeds, rounds=7, number=200) -> tuple[float, float]:
    """(median, best) microseconds of one onnxruntime run, 1 thread."""
    s = ort_session(proto, 1)
    feeds = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in feeds.items()}
    for _ in range(20):
        s.run(None, feeds)
    ts = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(number):
            s.run(None, feeds)
        ts.append((time.perf_counter() - t0) / number * 1e6)
    return statistics.median(ts), min(ts)


@pytest.mark.parametrize("case_id", case_ids())
def test_streaming_model_vs_onnxruntime(benchmark, case_id):
    c = _case(case_id)
    sess = c.streaming.session()
    chunk = dict(c.chunk)
    for _ in range(20):
        sess.push(chunk)
    benchmark(sess.push, chunk)
    ort_med, ort_best = _ort_us(c.onnx, c.window)
    if benchmark.stats is not None:
        ours = benchmark.stats.stats.median * 1e6
    else:  # --benchmark-disable: one timed loop of our own
        t0 = time.perf_counter()
        for _ in range(200):
            sess.push(chunk)
        ours = (time.perf_counter() - t0) / 200 * 1e6
    record(benchmark, f"model:{case_id}", f"{case_id}: Session.push({{name: chunk}}), {c.chunk_frames}-frame chunk "
           f"vs onnxruntime {ort_version()} (1 thread) on the float model's offline window",
           model=case_id, ours_us=ours, ort_us=ort_med, ort_best_us=ort_best, ratio=ours / ort_med,
           compiled=sess.program is not None, not_compiled=[f"{n.op_type} {n.name}: {r}"
                                                           for n, r in sess.not_compiled][:5],
           ops=c.ops, chunk_frames=c.chunk_frames)
