"""``chunkwise demo``: the whole pipeline on a built-in model, with nothing but the package installed.

float TCN (ONNX, seeded weights) -> calibration data -> quantize for esp32p4 -> streaming model ->
every chunk verified bit-exactly against the offline model -> timing -> plots.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np


@dataclass
class DemoResult:
    out_dir: str
    files: dict[str, str] = field(default_factory=dict)
    target: str = "esp32p4"
    chunk: int = 3
    output_sqnr_db: float | None = None
    bit_exact: bool = False
    chunks_checked: int = 0
    state_bytes: int = 0
    macs_per_chunk: int = 0
    offline_macs: int = 0
    us_per_chunk: float = 0.0
    us_per_chunk_push: float = 0.0
    compiled: bool = False
    stream_report: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def run_demo(out_dir: str | Path, *, target: str = "esp32p4", chunk: int = 3, seed: int = 0,
             say: Callable[[str], None] = print) -> DemoResult:
    import onnx

    from .convert import stream
    from .emu.streamcheck import split_chunks, verify_streaming
    from .model import Model
    from .plots import plot_streaming
    from .quant import plot_report, quantize
    from .quant.zoo import build_tcn, calibration_data

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    res = DemoResult(str(out), target=target, chunk=chunk)

    say(f"1/6 building a causal TCN (float ONNX, seed {seed})")
    fmodel = build_tcn(seed=seed)
    onnx_path = out / "tcn.onnx"
    onnx.save(fmodel, str(onnx_path))
    res.files["onnx"] = str(onnx_path)

    say("2/6 making 32 calibration samples and quantizing to int8 for " + target)
    calib = calibration_data(fmodel, n=32, seed=seed)
    np.save(out / "calib.npy", calib)
    qmodel = quantize(fmodel, calib, target=target, bits=8)
    offline_path = out / f"tcn_{target}.espdl"
    qmodel.save(offline_path)
    res.files["offline"] = str(offline_path)
    report = getattr(qmodel, "quant_report", None) or {}
    res.output_sqnr_db = report.get("output_sqnr_db")
    if report:
        res.files["quant_plot"] = str(plot_report(report, out / "quant_report.png"))
    offline = Model.load(offline_path, target=target)

    say(f"3/6 converting to a streaming model, {chunk} frames per chunk (verified on seeded random input)")
    smodel, srep = stream(offline, chunk)
    stream_path = out / f"tcn_{target}_streaming.espdl"
    smodel.save(stream_path)
    res.files["streaming"] = str(stream_path)
    res.stream_report = srep.as_dict()
    res.state_bytes, res.macs_per_chunk, res.offline_macs = srep.state_bytes, srep.macs_per_chunk, srep.offline_macs
    streaming = Model.load(stream_path, target=target)

    say("4/6 checking every chunk of the offline model's test input against the offline output")
    chk = verify_streaming(streaming, offline, None)
    res.bit_exact, res.chunks_checked = chk.bit_exact, chk.chunks

    say("5/6 timing the emulator per chunk")
    x = offline.prepare_inputs(offline.test_feeds())
    name = next(iter(x))
    parts = split_chunks(x[name], chunk, 1)
    many = [parts[i % len(parts)] for i in range(2000)]
    sess = streaming.session()
    res.compiled = sess.program is not None
    sess.push_many(many[:8])
    times = []
    for _ in range(5):
        sess.reset()
        t0 = time.perf_counter()
        sess.push_many(many)
        times.append((time.perf_counter() - t0) / len(many))
    res.us_per_chunk = float(np.median(times) * 1e6)
    sess.reset()
    t0 = time.perf_counter()
    for c in many[:500]:
        sess.push(c)
    res.us_per_chunk_push = (time.perf_counter() - t0) / 500 * 1e6

    say("6/6 plotting streaming vs offline")
    res.files["stream_plot"] = str(plot_streaming(streaming, offline, None, chk, out / "streaming.png"))
    return res


def render(res: DemoResult) -> str:
    r = res.stream_report
    lines = [
        "",
        f"offline model : {res.files.get('offline')}",
        f"streaming     : {res.files.get('streaming')}",
        f"target        : {res.target}, int8, chunk of {res.chunk} frames",
    ]
    if res.output_sqnr_db is not None:
        lines.append(f"quantization  : output SQNR {res.output_sqnr_db:.1f} dB vs onnxruntime float")
    lines += [
        f"caches        : {len(r.get('caches', []))}, state {res.state_bytes} bytes",
        f"MACs per chunk: {res.macs_per_chunk:,} (offline model: {res.offline_macs:,})",
        f"verification  : {'bit-exact' if res.bit_exact else 'MISMATCH'} on all {res.chunks_checked} chunks of the "
        "test input",
        f"emulator time : {res.us_per_chunk:.1f} us per chunk (push_many), {res.us_per_chunk_push:.1f} us per push"
        + ("" if res.compiled else " (per-node path)"),
        f"plots         : {res.files.get('stream_plot')}, {res.files.get('quant_plot', '-')}",
    ]
    return "\n".join(lines)
