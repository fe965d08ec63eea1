"""Start-up, quantization time and memory, each measured in a fresh subprocess."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import FIXTURES, TCN_OFFLINE, record, zoo_path

CLI = [sys.executable, "-c", "import sys; from chunkwise.cli import main; sys.exit(main())"]


def _timed(cmd, env) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the child) of one subprocess run; fails on a non-zero exit."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert p.returncode == 0, p.stderr[-2000:]
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


@pytest.mark.parametrize("kind", ["compare", "offline", "streaming"])
def test_cold_and_warm_emu_run(benchmark, kind):
    """``chunkwise emu run`` with an empty numba cache and no generated dispatcher (cold, as after a fresh
    install: every kernel compiles) and again with the caches it filled (warm). offline: the tutorial TCN's
    embedded test input; streaming: 8 chunks; compare: the streaming TCN chunk by chunk against the offline
    one (``--compare``)."""
    stream_path = str(zoo_path("tutorial_tcn_esp32p4_streaming_model.espdl"))
    if kind == "offline":
        args = ["emu", "run", str(zoo_path(TCN_OFFLINE)), "--target", "esp32p4"]
    elif kind == "compare":
        args = ["emu", "run", stream_path, "--target", "esp32p4", "--compare", str(zoo_path(TCN_OFFLINE))]
    else:
        args = ["emu", "run", stream_path, "--target", "esp32p4", "-n", "8"]
    res = {}
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache, "CHUNKWISE_CACHE_DIR": os.path.join(cache, "chunkwise")}
        if kind == "streaming":
            x = Path(cache) / "x.npy"
            np.save(x, np.random.default_rng(0).standard_normal((1, 24, 16)).astype(np.float32))
            args += ["--input", str(x)]

        def run():
            res["cold"] = _timed(CLI + args, env)
            warm = sorted(_timed(CLI + args, env) for _ in range(3))
            res["warm"] = warm[1]  # median of 3

        benchmark.pedantic(run, rounds=1, iterations=1)
    (cw, cc), (ww, wc) = res["cold"], res["warm"]
    record(benchmark, f"cold_{kind}", f"first `chunkwise emu run` ({kind} TCN), empty NUMBA_CACHE_DIR; "
           f"CPU {cc:.1f} s", value=cw, cpu_s=cc)
    benchmark.extra_info["warm"] = {"value": ww, "cpu_s": wc,
                                    "label": f"second `chunkwise emu run` ({kind} TCN), cache filled; median "
                                             f"of 3; CPU {wc:.2f} s"}


QUANT = textwrap.dedent("""
    import json, sys, time, warnings
    warnings.simplefilter("ignore")
    t0 = time.perf_counter()
    import numpy as np, chunkwise
    calib = np.load(sys.argv[2])
    t1 = time.perf_counter()
    chunkwise.quantize(sys.argv[1], calib)
    t2 = time.perf_counter()
    chunkwise.quantize(sys.argv[1], calib)
    t3 = time.perf_counter()
    print(json.dumps({"import_s": t1 - t0, "first_s": t2 - t1, "second_s": t3 - t2, "n": int(len(calib))}))
""")


def test_quantize_tcn(benchmark):
    """chunkwise.quantize on the tutorial TCN (float ONNX, 32 calibration samples), in a fresh process:
    the first call (kernels loaded from numba's cache) and a second one in the same process."""
    d = FIXTURES / "ppq_refs" / "tcn_tutorial"
    try:
        import chunkwise.quant  # noqa: F401
    except Exception as e:  # the quantizer is optional for the benchmarks
        pytest.skip(f"chunkwise.quantize not available: {e}")
    out = {}

    def run():
        p = subprocess.run([sys.executable, "-c", QUANT, str(d / "model.onnx"), str(d / "calib.npy")],
                           capture_output=True, text=True, timeout=1800)
        if p.returncode == 0:
            out.update(json.loads(p.stdout.strip().splitlines()[-1]))
        else:
            out["error"] = p.stderr.strip().splitlines()[-1][:300] if p.stderr.strip() else "failed"

    benchmark.pedantic(run, rounds=1, iterations=1)
    if "error" in out:
        record(benchmark, "quantize_first", f"chunkwise.quantize: not available ({out['error']})", value=None)
        benchmark.extra_info["unavailable"] = out["error"]
        return
    record(benchmark, "quantize_first", f"chunkwise.quantize, {out['n']} samples, first call in a fresh "
           f"process (+{out['import_s']:.1f} s imports)", value=out["first_s"])
    benchmark.extra_info["second"] = {"value": out["second_s"], "label": "chunkwise.quantize, second call"}


RSS = textwrap.dedent("""
    import json, resource, sys, warnings
    warnings.simplefilter("ignore")
    import numpy as np
    def peak():
        # VmHWM: this process's own high-water mark. ru_maxrss would do on a fresh process, but Linux
        # carries it across exec, so a child of a big pytest process would report the parent's peak.
        try:
            for line in open("/proc/self/status"):
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if sys.argv[1] == "ours":
        import chunkwise
        base = peak()
        m = chunkwise.load(sys.argv[2])
        feeds = {v.name: np.zeros(v.shape, np.int8) for v in m.graph.inputs}
        m.run(feeds)
    else:
        import onnxruntime as ort
        base = peak()
        so = ort.SessionOptions(); so.intra_op_num_threads = 1
        s = ort.InferenceSession(sys.argv[2], so, providers=["CPUExecutionProvider"])
        i = s.get_inputs()[0]
        s.run(None, {i.name: np.zeros(i.shape, np.float32)})
    print(json.dumps({"peak": peak(), "base": base}))
""")


@pytest.mark.parametrize("side", ["ours", "peer"])
def test_peak_rss_mobilenetv2(benchmark, side, tmp_path):
    """Peak RSS of a process that loads MobileNetV2 and runs it once (VmHWM, else ru_maxrss). The peer
    process loads the float twin, written to a file beforehand, with onnxruntime alone."""
    p = zoo_path("imagenet_mobilenetv2_s8_p4.espdl")
    if side == "peer":
        import warnings

        import chunkwise
        from devtools.float_onnx import to_float_onnx

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            twin = to_float_onnx(chunkwise.load(p).graph, io_layout="onnx")
        p = tmp_path / "mobilenetv2_float_twin.onnx"
        p.write_bytes(twin.SerializeToString())
    out = {}

    def run():
        r = subprocess.run([sys.executable, "-c", RSS, side, str(p)], capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stderr[-2000:]
        out.update(json.loads(r.stdout.strip().splitlines()[-1]))

    benchmark.pedantic(run, rounds=1, iterations=1)
    mib = out["peak"] / 2**20
    if side == "ours":
        label = f"chunkwise load + Model.run, whole process (imports alone: {out['base'] / 2**20:.0f} MiB)"
    else:
        label = (f"onnxruntime float twin (.onnx file), 1 thread, whole process (imports alone: "
                 f"{out['base'] / 2**20:.0f} MiB)")
    record(benchmark, f"rss_mnv2_{side}", label, value=mib, unit="MiB")
