"""Output SQNR per corpus model: chunkwise's quantizer vs ESP-PPQ's export of the same model and data.

    python tools/sqnr_table.py                      # writes docs/quant-sqnr.md
    python tools/sqnr_table.py --json out.json --models ln_tcn,mlp_gelu

For every model of tests/fixtures/corpus (``tools/make_corpus.py``) and every target/bits: chunkwise
quantizes the float ONNX with the model's calibration set; both that model and ESP-PPQ's ``.espdl`` (made
by ``tools/make_corpus_ppq.py`` from the same float model and calibration data; int8 only) are run in the
bit-exact emulator on the held-out input, dequantized and compared with onnxruntime's float output of
the original ONNX (SQNR in dB over all outputs). A cell says why there is no number when a tool failed.
The "delta" column is chunkwise minus ESP-PPQ (int8; issue 13 asks for >= -0.5 dB).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from itertools import permutations
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from corpus import corpus_models, load_inputs  # noqa: E402

CONFIGS = [("esp32p4", 8), ("esp32s3", 8), ("esp32p4", 16)]


def _layout_perms(onnx_shape: tuple, model_shape: tuple) -> list[tuple[int, ...]]:
    """Permutations taking the ONNX shape to the model's (identity and channel-last first)."""
    r = len(onnx_shape)
    first = [tuple(range(r))]
    if r == 3:
        first.append((0, 2, 1))
    if r == 4:
        first.append((0, 2, 3, 1))
    cands = first + [p for p in permutations(range(r)) if p not in first] if r <= 5 else first
    return [p for p in cands if tuple(onnx_shape[i] for i in p) == tuple(model_shape)]


def sqnr(ref: np.ndarray, got: np.ndarray) -> float:
    r = np.asarray(ref, np.float64).ravel()
    g = np.asarray(got, np.float64).ravel()
    ok = np.isfinite(r)
    r, g = r[ok], g[ok]
    noise = float(np.sum((r - g) ** 2))
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(max(float(np.sum(r * r)), 1e-30) / noise)


def chip_sqnr(model, onnx_path: Path, feeds: dict[str, np.ndarray]) -> float:
    """Emulate ``model`` (a chunkwise.Model, ours or ESP-PPQ's) on float ``feeds`` (ONNX layout, batch
    included) and return the output SQNR vs onnxruntime on the original float model."""
    sig, noise = chip_errors(model, onnx_path, feeds)
    return math.inf if noise == 0.0 else 10.0 * math.log10(max(sig, 1e-30) / noise)


def chip_errors(model, onnx_path: Path, feeds: dict[str, np.ndarray]) -> tuple[float, float]:
    """(signal energy, error energy) of the emulated model's outputs vs onnxruntime's float outputs."""
    import onnxruntime as ort

    from chunkwise.emu.rounding import TARGETS, quantize as q_quantize

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    ref = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    g = model.graph
    mode = TARGETS[model.target]
    qfeeds = {}
    for vi in g.inputs:
        if vi.name in g.initializers:
            continue
        x = feeds[vi.name]
        perms = _layout_perms(x.shape, tuple(vi.shape))
        if not perms:
            raise ValueError(f"input {vi.name}: ONNX shape {x.shape} does not map to the model's {vi.shape}")
        xt = np.ascontiguousarray(np.transpose(x, perms[0]))
        # a float32 input (ESP-PPQ leaves ops it does not quantize in float) is fed as is
        qfeeds[vi.name] = xt if vi.dtype == "float32" else q_quantize(xt, vi.exponent, vi.dtype, mode)
    out = model.run(qfeeds)
    refs, gots = [], []
    for vi in g.outputs:
        if vi.name not in ref:
            continue
        f = ref[vi.name]
        y = model.dequantize(vi.name, out[vi.name]) if vi.dtype != "float32" else out[vi.name]
        best = None
        for p in _layout_perms(f.shape, tuple(y.shape)) or [None]:
            cand = np.transpose(f, p) if p is not None else f.reshape(y.shape) if f.size == y.size else None
            if cand is None:
                continue
            s = sqnr(cand, y)
            if best is None or s > best[0]:
                best = (s, cand)
        if best is None:
            raise ValueError(f"output {vi.name}: shapes {f.shape} vs {y.shape}")
        refs.append(best[1].ravel())
        gots.append(np.asarray(y, np.float64).ravel())
    if not refs:
        raise ValueError("no output of the model matches the float model's outputs by name")
    r, g = np.concatenate(refs), np.concatenate(gots)
    ok = np.isfinite(r)
    r, g = r[ok], g[ok]
    return float(np.sum(r * r)), float(np.sum((r - g) ** 2))


def _short(e: Exception) -> str:
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    return f"{type(e).__name__}: {msg[:90]}"


def measure(models=None) -> list[dict]:
    import chunkwise

    rows = []
    for m in corpus_models():
        if models and m.name not in models:
            continue
        calib = load_inputs(m.calib)
        held = load_inputs(m.heldout)
        for target, bits in CONFIGS:
            row = {"model": m.name, "target": target, "bits": bits}
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    q = chunkwise.quantize(str(m.onnx), calib, target=target, bits=bits,
                                           test_input={k: v for k, v in held.items()}, warn=False)
                row["chunkwise"] = round(chip_sqnr(q, m.onnx, held), 2)
            except Exception as e:  # a table cell: the reason it has no number
                row["chunkwise"] = _short(e)
            p = m.ppq(target, bits)
            if p is not None:
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        ref = chunkwise.load(p, target=target)
                    row["esp_ppq"] = round(chip_sqnr(ref, m.onnx, held), 2)
                except Exception as e:
                    row["esp_ppq"] = "emulator: " + _short(e)
            else:
                st = m.ppq_status.get(f"{target}_s{bits}")
                st = st.get("ppq") if isinstance(st, dict) else st
                row["esp_ppq"] = ("ESP-PPQ failed: " + str(st)[:80]) if st and st != "ok" else "no export"
            if isinstance(row["chunkwise"], float) and isinstance(row.get("esp_ppq"), float):
                row["delta"] = round(row["chunkwise"] - row["esp_ppq"], 2)
            rows.append(row)
            print(row, file=sys.stderr)
    return rows


def markdown(rows: list[dict]) -> str:
    def cell(v):
        if isinstance(v, float):
            return "inf" if math.isinf(v) else f"{v:.2f}"
        return "" if v is None else str(v).replace("|", "/")

    out = ["# Quantization accuracy: chunkwise vs ESP-PPQ (corpus models)", "",
           "Generated by `python tools/sqnr_table.py` (do not edit). Output SQNR in dB against onnxruntime's float "
           "output of the original ONNX on each model's held-out input; both quantized models run in the "
           "bit-exact emulator (ESP-PPQ 1.3.12's exports from the same float model and calibration set, "
           "`tools/make_corpus_ppq.py`, int8 only). delta = chunkwise - ESP-PPQ.", "",
           "| model | target | bits | chunkwise | ESP-PPQ | delta |", "|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['model']} | {r['target']} | {r['bits']} | {cell(r['chunkwise'])} | "
                   f"{cell(r.get('esp_ppq'))} | {cell(r.get('delta'))} |")
    both = [r for r in rows if "delta" in r]
    ours = [r for r in rows if isinstance(r["chunkwise"], float)]
    out += ["", f"chunkwise quantizes and runs {len(ours)} of {len(rows)} model x target x bits cases; "
            f"{len(both)} have an ESP-PPQ number to compare"
            + (f", delta min {min(r['delta'] for r in both):.2f} dB, median "
               f"{float(np.median([r['delta'] for r in both])):.2f} dB." if both else "."), "",
            "One held-out input can favour either side's power-of-two choice by luck: where chunkwise's int8 "
            "output exponent differs from ESP-PPQ's KL choice it is the one with the least squared error over the "
            "whole calibration set (valid_convs: rounding the float output at chunkwise's exponent gives 42.6 dB over its "
            "32 calibration samples, at ESP-PPQ's 37.3 dB; the one held-out sample has no value beyond ESP-PPQ's "
            "narrower range). docs/quant-ops-test.md measures over "
            "16 held-out inputs per case.", ""]
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "quant-sqnr.md")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--models", default="", help="comma-separated corpus model names (default: all)")
    a = ap.parse_args(argv)
    rows = measure([s for s in a.models.split(",") if s] or None)
    a.out.write_text(markdown(rows))
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
