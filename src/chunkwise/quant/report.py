"""Quantization error report: float activations (onnxruntime) vs emulated integer activations."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def sqnr_db(signal_energy: float, noise_energy: float) -> float:
    if noise_energy <= 0.0:
        return math.inf
    if signal_energy <= 0.0:
        return -math.inf
    return 10.0 * math.log10(signal_energy / noise_energy)


class ErrorAccumulator:
    """Signal/noise energies and dot products per value, summed over samples."""

    def __init__(self):
        self.acc: dict[str, list[float]] = {}

    def add(self, name: str, ref: np.ndarray, got: np.ndarray) -> None:
        """Accumulate ``ref`` vs ``got``; positions where the float reference is not finite (Log/Sqrt
        outside their domain) are left out."""
        r = ref.astype(np.float64).ravel()
        g = got.astype(np.float64).ravel()
        ok = np.isfinite(r)
        if not ok.all():
            r, g = r[ok], g[ok]
        a = self.acc.setdefault(name, [0.0, 0.0, 0.0, 0.0])
        a[0] += float(r @ r)
        a[1] += float((r - g) @ (r - g))
        a[2] += float(r @ g)
        a[3] += float(g @ g)

    def result(self, name: str) -> dict:
        s, n, rg, gg = self.acc[name]
        cos = rg / math.sqrt(s * gg) if s > 0 and gg > 0 else (1.0 if s == gg == 0 else 0.0)
        return {"sqnr_db": round(sqnr_db(s, n), 4), "cosine": round(float(cos), 6)}


#: below this output SQNR (dB) ``quantize`` warns, naming the worst layer
WARN_SQNR_DB = 10.0


def worst_layer(report: dict) -> dict | None:
    """The layer with the lowest SQNR (the first one at that value, in graph order)."""
    layers = [l for l in report.get("layers", []) if l.get("sqnr_db") is not None and not math.isnan(l["sqnr_db"])]
    return min(layers, key=lambda l: l["sqnr_db"]) if layers else None


def sqnr_problem(report: dict, threshold: float = WARN_SQNR_DB) -> str | None:
    """A sentence naming the output SQNR and the worst layer when the output SQNR is below ``threshold``
    (or unknown), else None."""
    out = report.get("output_sqnr_db")
    if (out is not None and out >= threshold) or not report.get("outputs"):
        return None  # good enough, or no float output to compare (bool outputs of comparisons)
    w = worst_layer(report)
    where = (f"; worst layer: {w['op']} node {w['node']!r} (value {w['name']!r}) at {w['sqnr_db']:.1f} dB"
             if w is not None else "")
    got = "could not be measured" if out is None else f"is {out:.1f} dB"
    return f"output SQNR vs float {got}, below {threshold:g} dB{where}"


def plot_report(report: dict, path) -> Path:
    """Per-layer SQNR (bars) and cosine similarity (line) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = report.get("layers", [])
    names = [f"{l['op']} {l['name']}" for l in layers]
    sq = [min(l["sqnr_db"], 99.0) if l["sqnr_db"] is not None else 0.0 for l in layers]
    cos = [l["cosine"] for l in layers]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(layers) + 2), 4.5), dpi=100)
    x = np.arange(len(layers))
    colors = ["#4c72b0" if l.get("bits", 8) == 8 else "#dd8452" for l in layers]
    ax.bar(x, sq, color=colors)
    ax.set_ylabel("SQNR (dB)")
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=75, ha="right", fontsize=7)
    ax2 = ax.twinx()
    ax2.plot(x, cos, color="#c44e52", marker="o", ms=3, lw=1)
    ax2.set_ylabel("cosine similarity", color="#c44e52")
    ax2.set_ylim(min(0.9, min(cos) if cos else 0.9), 1.001)
    out = report.get("output_sqnr_db")
    ax.set_title(f"{report.get('target', '')} {report.get('bits', '')}-bit, {report.get('calib_method', '')}: "
                 f"output SQNR {out:.1f} dB" if out is not None else "quantization error")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, format="png", metadata={"Software": None})
    plt.close(fig)
    return path
