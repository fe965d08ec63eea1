"""Streaming step of the tutorial TCN (3-frame chunks): chunkwise vs onnxruntime float vs ESP-PPQ."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import (CHUNK_FRAMES, FIXTURES, N_CHUNKS, TCN_OFFLINE, TCN_STREAM, load, ort_session, ort_version,
                      receptive_frames, record)


@pytest.fixture(scope="module")
def session():
    m = load(TCN_STREAM)
    s = m.session()
    assert s.program is not None, s.why_not_compiled
    return s


@pytest.fixture(scope="module")
def window():
    m = load(TCN_OFFLINE)
    return m, receptive_frames(m.graph, CHUNK_FRAMES)


@pytest.mark.parametrize("form", ["bare", "dict", "float"])
def test_push(benchmark, session, tcn_chunks, form):
    """One chunk per call: the int8 array itself, ``{name: array}`` (the documented form), or float32 values
    quantized by the session (in compiled code)."""
    name = session.input_names[0]
    chunks = [c if form == "bare" else {name: c} if form == "dict" else {name: c.astype(np.float32) / 32}
              for c in tcn_chunks]
    session.reset()
    for i in range(10):
        session.push(chunks[i])
    it = iter(range(10**12))
    benchmark(lambda: session.push(chunks[next(it) % N_CHUNKS]))
    what = {"bare": "int8 array", "dict": "{name: int8 array}", "float": "{name: float32 array}"}[form]
    record(benchmark, "stream_push" if form == "bare" else f"stream_push_{form}",
           f"Session.push({what}), compiled program ({session.plan.macs} MACs/chunk)")


def test_push_many(benchmark, session, tcn_chunks):
    chunks = list(tcn_chunks)
    session.reset()
    session.push_many(chunks[:4])
    benchmark(session.push_many, chunks)
    record(benchmark, "stream_push_many", f"Session.push_many({N_CHUNKS} chunks) / {N_CHUNKS}", per=N_CHUNKS)


def test_program_run_batch(benchmark, session, tcn_chunks):
    feeds = {session.input_names[0]: tcn_chunks}
    session.program.run_batch({k: v[:4] for k, v in feeds.items()})
    benchmark(session.program.run_batch, feeds)
    record(benchmark, "stream_run_batch", f"Program.run_batch({N_CHUNKS} chunks) / {N_CHUNKS} (validated int8 "
           "chunks: push_many without its input checks)", per=N_CHUNKS)


@pytest.mark.parametrize("threads", [1, None], ids=["1thread", "default_threads"])
def test_ort_window_step(benchmark, window, threads):
    """Peer: onnxruntime on the float twin of the OFFLINE TCN whose input is one receptive window
    (the float computation one streaming step stands for)."""
    from devtools.float_onnx import to_float_onnx

    m, frames = window
    (name,) = [v.name for v in m.graph.inputs]
    c = m.graph.inputs[0].shape[-1]
    twin = to_float_onnx(m.graph, io_layout="onnx", input_shapes={name: (1, frames, c)})
    x = np.random.default_rng(0).standard_normal((1, c, frames)).astype(np.float32)
    s = ort_session(twin, threads)
    s.run(None, {name: x})
    benchmark(s.run, None, {name: x})
    t = "1 thread" if threads == 1 else "default threads"
    record(benchmark, "ort_tcn_1t" if threads == 1 else "ort_tcn_default",
           f"onnxruntime {ort_version()} float twin, {frames}-frame window, {t}")


def test_ppq_step(benchmark, window, ppq_python):
    """Peer: ESP-PPQ in its own venv; the subprocess times TorchExecutor.forward itself (median)."""
    _, frames = window
    model_dir = FIXTURES / "ppq_refs" / "tcn_tutorial"
    if not (model_dir / "model.onnx").exists():
        pytest.skip(f"{model_dir} is absent")
    out = {}

    def run():
        p = subprocess.run([ppq_python, str(Path(__file__).with_name("peer_ppq.py")), "--model-dir", str(model_dir),
                            "--frames", str(frames)], capture_output=True, text=True, timeout=900)
        if p.returncode == 0:
            out.update(json.loads(p.stdout.strip().splitlines()[-1]))
        else:
            out["error"] = p.stderr[-400:]

    benchmark.pedantic(run, rounds=1, iterations=1)
    if "error" in out:
        pytest.skip(f"ESP-PPQ peer failed: {out['error']}")
    record(benchmark, "ppq_tcn_step", f"ESP-PPQ {out['esp_ppq']} TorchExecutor.forward (torch {out['torch']}, "
           f"1 thread), int8 TCN, {out['frames']}-frame window", value=out["step_s"])
    benchmark.extra_info["ppq_quantize_s"] = out["quantize_s"]


def test_state_bytes(benchmark, session):
    benchmark.pedantic(lambda: session.state_bytes, rounds=1, iterations=1)
    record(benchmark, "state_bytes", "Session.state_bytes (StreamingCache state)", value=session.state_bytes,
           unit="bytes")


def test_profile_opcodes(benchmark, session, tcn_chunks):
    """Where the time of one compiled step goes: the program's rows grouped by opcode, each group run alone
    (on the arena a real step left behind) in a compiled loop; medians of 7 repeats. MACs: the plan steps'
    whose last row is in the group."""
    import statistics
    import time

    from numba import njit

    from chunkwise.emu import program as P

    @njit
    def repeat(run_rows, mem, x0, y0, n):
        for _ in range(n):
            run_rows(mem, 0, x0, 0, y0, 0, 0)

    pr = session.program
    session.push(tcn_chunks[0])
    names = {v: k for k, v in P.opcodes().items()}
    x0, y0 = pr.dummies
    hdr = pr.mem[:P.HDR_WORDS * 8].view(np.int64)
    n = 2000

    def with_rows(rows):
        mem = pr.mem.copy()
        h = mem[:P.HDR_WORDS * 8].view(np.int64)
        start = int(hdr[P.H_CODE])
        mem[start:start + rows.nbytes] = np.ascontiguousarray(rows).view(np.uint8).ravel()
        h[P.H_CODE_END] = start + rows.nbytes
        return mem

    def us(mem):
        repeat(pr.runner.run_rows, mem, x0, y0, 10)
        ts = []
        for _ in range(7):
            t0 = time.perf_counter()
            repeat(pr.runner.run_rows, mem, x0, y0, n)
            ts.append((time.perf_counter() - t0) / n * 1e6)
        return statistics.median(ts), min(ts)

    prof = {}

    def run():
        ops = pr.code[:, 0]
        last_row = {}
        for r, k in enumerate(pr.row_steps):
            last_row[int(k)] = r
        prof["total"] = us(pr.mem)
        prof["groups"] = []
        for op in sorted(set(ops.tolist())):
            idx = np.flatnonzero(ops == op)
            macs = sum(int(session.plan.steps[k].prepared.macs) for k, r in last_row.items()
                       if k >= 0 and r in set(idx.tolist()))
            prof["groups"].append((names.get(op, str(op)), int(len(idx)), *us(with_rows(pr.code[idx])), macs))

    benchmark.pedantic(run, rounds=1, iterations=1)
    record(benchmark, "profile", "per-opcode time of one compiled TCN step", value=prof["total"][0] * 1e-6)
    benchmark.extra_info["profile"] = prof
