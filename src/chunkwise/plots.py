"""PNG plots for people who would rather look than read (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_streaming(streaming, offline, feeds, check, path: str | Path) -> Path:
    """Streaming vs offline outputs over time (per-frame outputs), chunk boundaries as vertical lines.

    Each output is drawn as its dequantized values averaged over the non-time axes; tail outputs
    (one vector per chunk) are drawn as the last chunk's vector next to the offline one.
    """
    plt = _plt()
    from .emu.streamcheck import split_chunks

    x = offline.prepare_inputs(feeds if feeds is not None else offline.test_feeds())
    off = offline.run(x)
    names = list(x)
    chunk, axis = check.chunk_frames, check.frame_axis
    parts = {k: split_chunks(v, chunk, axis, check.chunks) for k, v in x.items()}
    sess = streaming.session()
    pushed = [sess.push({k: parts[k][i] for k in names}) for i in range(check.chunks)]
    outs = list(off)
    fig, axes = plt.subplots(len(outs), 1, figsize=(9, 3 * len(outs)), squeeze=False)
    for ax, name in zip(axes[:, 0], outs):
        want = offline.dequantize(name, off[name])
        got = [streaming.dequantize(name, p[name]) for p in pushed]
        kind = check.outputs.get(name, {}).get("kind")
        if kind == "per-frame":
            t_ax = next(i for i, (a, b) in enumerate(zip(got[0].shape, want.shape)) if a != b)
            w = np.moveaxis(want, t_ax, 0).reshape(want.shape[t_ax], -1).mean(axis=1)
            g = np.concatenate([np.moveaxis(c, t_ax, 0).reshape(c.shape[t_ax], -1).mean(axis=1) for c in got])
            frames = np.arange(len(g)) - check.delay
            ax.plot(np.arange(len(w)), w, lw=2.5, alpha=0.5, label="offline")
            ax.plot(frames, g, lw=1, marker=".", ms=3, label="streaming")
            c_out = got[0].shape[t_ax]
            for b in range(1, check.chunks):
                ax.axvline(b * c_out - check.delay - 0.5, color="0.8", lw=0.8, zorder=0)
            ax.set_xlabel("output frame (chunk boundaries in grey)")
        else:
            ax.plot(want.ravel(), lw=2.5, alpha=0.5, label="offline (whole input)")
            ax.plot(got[-1].ravel(), lw=1, marker=".", ms=3, label=f"streaming (after chunk {check.chunks - 1})")
            ax.set_xlabel("output element")
        ax.set_title(f"{name}: {'bit-exact' if check.bit_exact else 'MISMATCH'}")
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
