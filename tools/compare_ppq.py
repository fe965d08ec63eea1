"""Output SQNR on held-out input: our quantizer vs ESP-PPQ's exports in tests/fixtures/ppq_refs.

    python tools/compare_ppq.py [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx

import chunkwise

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # devtools/ of this checkout
from devtools.accuracy import Comparison, emulated_sqnr  # noqa: E402

REFS = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "ppq_refs"


def held_out(model_dir: Path, n: int = 8) -> list[np.ndarray]:
    """The stored test input plus calibration-like samples not used for calibration (seeded noise around it)."""
    x = np.load(model_dir / "test_input.npy").astype(np.float32)
    x = x if x.shape[0] == 1 else x[None]
    rng = np.random.default_rng(123)
    calib = np.load(model_dir / "calib.npy").astype(np.float32)
    scale = float(calib.std()) or 1.0
    return [x] + [x + rng.standard_normal(x.shape).astype(np.float32) * 0.1 * scale for _ in range(n - 1)]


def compare_all() -> list[Comparison]:
    rows = []
    for d in sorted(p for p in REFS.iterdir() if p.is_dir()):
        fm = onnx.load(str(d / "model.onnx"))
        calib = np.load(d / "calib.npy")
        xs = held_out(d)
        for f in sorted(d.glob("esp32*_s*.espdl")):
            if "streaming" in f.name:
                continue
            target, bits = f.stem.split("_s")
            ref = chunkwise.load(f, target=target)
            ours = chunkwise.quantize(fm, calib, target=target, bits=int(bits))
            rows.append(Comparison(d.name, target, int(bits), emulated_sqnr(ours, fm, xs), emulated_sqnr(ref, fm, xs)))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    rows = compare_all()
    if args.json:
        print(json.dumps([r.__dict__ for r in rows], indent=2))
        return 0
    print("| model | target | bits | chunkwise SQNR (dB) | ESP-PPQ SQNR (dB) | difference |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r.model} | {r.target} | {r.bits} | {r.ours_db:.2f} | {r.ref_db:.2f} | {r.delta_db:+.2f} |")
    for bits in sorted({r.bits for r in rows}):
        sel = [r for r in rows if r.bits == bits]
        print(f"\nint{bits} mean: chunkwise {np.mean([r.ours_db for r in sel]):.2f} dB, "
              f"ESP-PPQ {np.mean([r.ref_db for r in sel]):.2f} dB over {len(sel)} models")
    return 0


if __name__ == "__main__":
    sys.exit(main())
