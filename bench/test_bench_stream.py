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


def test_push(benchmark, session, tcn_chunks):
    session.reset()
    for i in range(10):
        session.push(tcn_chunks[i])
    it = iter(range(10**12))
    benchmark(lambda: session.push(tcn_chunks[next(it) % N_CHUNKS]))
    record(benchmark, "stream_push", f"Session.push, compiled program ({session.plan.macs} MACs/chunk)")


def test_push_many(benchmark, session, tcn_chunks):
    chunks = list(tcn_chunks)
    session.reset()
    session.push_many(chunks[:4])
    benchmark(session.push_many, chunks)
    record(benchmark, "stream_push_many", f"Session.push_many({N_CHUNKS} chunks) / {N_CHUNKS}", per=N_CHUNKS)


def test_program_run_many(benchmark, session, tcn_chunks):
    xs = tcn_chunks.reshape(N_CHUNKS, -1).astype(np.int32)
    session.program.run_many(xs[:4])
    benchmark(session.program.run_many, xs)
    record(benchmark, "stream_run_many", f"Program.run_many({N_CHUNKS} chunks) / {N_CHUNKS} (int32 in/out, "
           "no input checks)", per=N_CHUNKS)


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
    """Where the time of one compiled step goes: the program's rows grouped by opcode class, each group
    run alone (on the arena a real step left behind) in a compiled loop; medians of 7 repeats."""
    import statistics
    import time

    from numba import njit

    from chunkwise.emu import program as P

    @njit
    def repeat(code, act, c32, c64, cf, acc32, acc64, mode, n):
        for _ in range(n):
            P._exec(code, act, c32, c64, cf, acc32, acc64, mode)

    pr = session.program
    session.push(tcn_chunks[0])
    names = {v: k[3:] for k, v in vars(P).items() if k.startswith("OP_") and isinstance(v, int)}
    n = 2000

    def us(code):
        args = (code, pr.act, pr.c32, pr.c64, pr.cf, pr.acc32, pr.acc64, pr.mode)
        repeat(*args, 10)
        ts = []
        for _ in range(7):
            t0 = time.perf_counter()
            repeat(*args, n)
            ts.append((time.perf_counter() - t0) / n * 1e6)
        return statistics.median(ts), min(ts)

    prof = {}

    def run():
        ops = pr.code[:, 0]
        prof["total"] = us(pr.code)
        prof["groups"] = []
        for op in sorted(set(ops.tolist())):
            rows = pr.code[ops == op]
            macs = 0
            if op == P.OP_CONV:  # out positions * kernel taps * Cin/g * Cout
                macs = int(sum(r[2] * r[14] * r[15] * r[7] * r[8] * r[9] * r[10] for r in rows))
            prof["groups"].append((names[op], int(len(rows)), *us(np.ascontiguousarray(rows)), macs))

    benchmark.pedantic(run, rounds=1, iterations=1)
    record(benchmark, "profile", "per-opcode time of one compiled TCN step", value=prof["total"][0] * 1e-6)
    benchmark.extra_info["profile"] = prof
