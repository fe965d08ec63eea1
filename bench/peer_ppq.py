"""Peer measurement: ESP-PPQ (the reference quantizer) on the tutorial TCN, run in ESP-PPQ's own venv.

Not imported by the benchmarks: ``bench/test_bench_stream.py`` runs it as a subprocess with the
Python of a venv that has ``esp_ppq`` and ``torch`` (``CHUNKWISE_PPQ_PYTHON``, default
``/work/ppqvenv/bin/python``), because neither is a dependency of chunkwise. Prints one JSON line:

* ``step_s``: median seconds of ``TorchExecutor.forward`` on the int8-quantized TCN whose input is
  one receptive window (``--frames``, 13 = 3-frame chunk + 10 frames of history), i.e. what one
  streaming step costs when the quantized graph is simulated by ESP-PPQ;
* ``quantize_s``: seconds of ``espdl_quantize_onnx`` (32 calibration samples, 24 frames, no export).

The float TCN is ``tests/fixtures/ppq_refs/tcn_tutorial/model.onnx`` (the tutorial's architecture,
seeded weights) with its ``calib.npy``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")


def _with_frames(src: Path, dst: Path, frames: int) -> None:
    import onnx

    m = onnx.load(str(src))
    m.graph.input[0].type.tensor_type.shape.dim[2].dim_value = frames
    del m.graph.value_info[:]
    onnx.save(m, str(dst))


def _quantize(onnx_path: Path, calib, frames: int):
    import torch
    from esp_ppq.api import espdl_quantize_onnx

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "model.onnx"
        _with_frames(onnx_path, src, frames)
        c = calib[..., -frames:]
        t0 = time.perf_counter()
        graph = espdl_quantize_onnx(
            onnx_import_file=str(src), espdl_export_file=str(Path(tmp) / "m.espdl"),
            calib_dataloader=[torch.from_numpy(c[i:i + 1].copy()) for i in range(len(c))], calib_steps=len(c),
            input_shape=[1, c.shape[1], frames], target="esp32p4", num_of_bits=8, device="cpu",
            error_report=False, skip_export=True, verbose=0)
        return graph, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", type=Path, required=True)
    ap.add_argument("--frames", type=int, default=13)
    ap.add_argument("--steps", type=int, default=200)
    args = ap.parse_args()

    import contextlib
    import io

    import numpy as np
    import torch
    from esp_ppq.executor import TorchExecutor

    torch.set_num_threads(1)
    calib = np.load(args.model_dir / "calib.npy").astype(np.float32)
    with contextlib.redirect_stdout(io.StringIO()):
        _, quantize_s = _quantize(args.model_dir / "model.onnx", calib, calib.shape[-1])
        graph, _ = _quantize(args.model_dir / "model.onnx", calib, args.frames)
        ex = TorchExecutor(graph=graph, device="cpu")
        x = torch.from_numpy(calib[:1, :, -args.frames:].copy())
        for _ in range(5):
            ex.forward(inputs=x)
        times = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            ex.forward(inputs=x)
            times.append(time.perf_counter() - t0)
    from importlib.metadata import version

    print(json.dumps({"step_s": statistics.median(times), "quantize_s": quantize_s, "frames": args.frames,
                      "esp_ppq": version("esp-ppq"), "torch": torch.__version__}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
