"""Small float models with ESP-PPQ's exports of them, for the quantizer's bit-exactness tests of the operators
in chunkwise.quant.rnn / chunkwise.quant.products (tests/fixtures/quant_refs/<case>/).

Each case is a PyTorch module exported with ``torch.onnx.export(..., opset_version=13, dynamo=False)``:
``model.onnx``, ``calib.npz`` (16 samples, one array per input, without the batch axis of 1) and
``heldout.npz`` (one sample), ``meta.json`` (inputs), then ESP-PPQ 1.3.12's ``espdl_quantize_onnx`` on a copy
(tools/make_corpus_ppq.py's ppq_export: same calibration samples, ``export_test_values=True`` on heldout) for
each job: ``ppq_<target>_s<bits>.espdl``, or the failure in ``status.json``.

The GRU / LSTM cases pass their initial states as inputs: ESP-PPQ 1.3.12 fails without them
(IndexError in refine.py's RNN alignment) and on batch_first exports; the corpus covers those for us.

Dev-only (torch + esp-ppq):

    . /work/devvenv/bin/activate && python tools/make_quant_refs.py [--cases a,b] [--jobs esp32p4:8,...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from make_corpus_ppq import first_line, ppq_export  # noqa: E402

OUT = ROOT / "tests" / "fixtures" / "quant_refs"
JOBS = "esp32p4:8,esp32s3:8,c:8,esp32p4:16,esp32s3:16,c:16"
N_CALIB = 16


class RNN(nn.Module):
    def __init__(self, cls, inp, hid, **kw):
        super().__init__()
        self.pre = nn.Linear(inp, inp)
        self.rnn = cls(inp, hid, **kw)
        self.lstm = cls is nn.LSTM

    def forward(self, x, h0, c0=None):
        x = torch.tanh(self.pre(x))
        if self.lstm:
            y, (h, c) = self.rnn(x, (h0, c0))
            return y, h, c
        y, h = self.rnn(x, h0)
        return y, h


class DynMatMul(nn.Module):
    def forward(self, a, b):
        return torch.matmul(torch.tanh(a), b)


class BatchedMatMul(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(2, 8, 20) * 0.3)

    def forward(self, a):
        return torch.matmul(a, self.w)


class ConvT(nn.Module):
    def __init__(self, cin, cout, k, stride, padding=0, output_padding=0, groups=1, dim=1):
        super().__init__()
        conv, convt = (nn.Conv1d, nn.ConvTranspose1d) if dim == 1 else (nn.Conv2d, nn.ConvTranspose2d)
        self.pre = conv(cin, cin, 1)
        self.up = convt(cin, cout, k, stride=stride, padding=padding, output_padding=output_padding, groups=groups)

    def forward(self, x):
        return torch.relu(self.up(torch.relu(self.pre(x))))


class GatherHead(nn.Module):
    def __init__(self, index):
        super().__init__()
        self.conv = nn.Conv1d(6, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)
        self.index = index

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x))[:, :, self.index])


def cases():
    T, C, H = 8, 12, 16
    return {
        "gru_bidir": (RNN(nn.GRU, C, H, bidirectional=True), {"x": [T, 1, C], "h0": [2, 1, H]}),
        "gru_2layer": (RNN(nn.GRU, C, H, num_layers=2), {"x": [T, 1, C], "h0": [2, 1, H]}),
        "gru_nobias": (RNN(nn.GRU, C, H, bias=False), {"x": [T, 1, C], "h0": [1, 1, H]}),
        "lstm_bidir": (RNN(nn.LSTM, C, H, bidirectional=True), {"x": [T, 1, C], "h0": [2, 1, H], "c0": [2, 1, H]}),
        "matmul_dynamic": (DynMatMul(), {"a": [1, 6, 8], "b": [1, 8, 5]}),
        "matmul_batched": (BatchedMatMul(), {"a": [2, 6, 8]}),
        "convt1d_dw": (ConvT(8, 8, 4, 2, padding=1, groups=8), {"x": [1, 8, 12]}),
        "convt1d_opad": (ConvT(4, 6, 3, 2, output_padding=1), {"x": [1, 4, 12]}),
        "convt2d": (ConvT(3, 4, (3, 3), (2, 2), padding=(1, 1), output_padding=(1, 0), dim=2), {"x": [1, 3, 6, 6]}),
        "gather_last": (GatherHead(-1), {"x": [1, 6, 10]}),
        "gather_pos": (GatherHead(3), {"x": [1, 6, 10]}),
    }


def sample_batch(shape, n, rng, scale):
    """n samples of ``shape``; the corpus convention drops a batch axis of 1 ([n, ...shape[1:]])."""
    x = (rng.standard_normal([n] + list(shape)) * scale).astype(np.float32)
    return x[:, 0] if shape[0] == 1 else x


def make(name, module, inputs, jobs) -> dict:
    d = OUT / name
    d.mkdir(parents=True, exist_ok=True)
    module.eval()
    rng = np.random.default_rng(0)
    names = list(inputs)
    scales = {k: (0.5 if k in ("h0", "c0") else 1.0) for k in names}
    calib = {k: sample_batch(s, N_CALIB, rng, scales[k]) for k, s in inputs.items()}
    held = {k: sample_batch(s, 1, rng, scales[k]) for k, s in inputs.items()}
    args = tuple(torch.zeros(s) for s in inputs.values())
    torch.onnx.export(module, args, str(d / "model.onnx"), input_names=names, opset_version=13, dynamo=False)
    np.savez(d / "calib.npz", **calib)
    np.savez(d / "heldout.npz", **held)
    meta = {"inputs": [{"name": k, "shape": list(s)} for k, s in inputs.items()]}
    (d / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    status = {}
    for target, bits in jobs:
        key = f"{target}_s{bits}"
        dest = d / f"ppq_{key}.espdl"
        dest.unlink(missing_ok=True)
        try:
            ppq_export(d, meta, target, bits, dest)
            status[key] = "ok"
        except Exception as e:  # ESP-PPQ's failure is the data point
            dest.unlink(missing_ok=True)
            tb = traceback.extract_tb(e.__traceback__)
            where = next((f"{Path(f.filename).name}:{f.lineno}" for f in reversed(tb) if "esp_ppq" in f.filename), "")
            status[key] = f"{first_line(e)} ({where})"
        print(f"{name:15s} {key:11s} {status[key][:100]}", flush=True)
    return status


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="")
    ap.add_argument("--jobs", default=JOBS)
    a = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    jobs = [(t, int(b)) for t, b in (j.split(":") for j in a.jobs.split(",") if j)]
    all_cases = cases()
    wanted = [c for c in a.cases.split(",") if c] or list(all_cases)
    status_path = OUT / "status.json"
    status = json.loads(status_path.read_text()) if status_path.exists() else {}
    for name in wanted:
        module, inputs = all_cases[name]
        status[name] = {**status.get(name, {}), **make(name, module, inputs, jobs)}
        status_path.write_text(json.dumps(dict(sorted(status.items())), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
