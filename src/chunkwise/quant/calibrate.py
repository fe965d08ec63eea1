"""Calibration: float activations from onnxruntime over all samples -> power-of-two exponents.

Methods (per-tensor, symmetric, as ESP-PPQ for ESP-DL):

* ``kl`` (default): ESP-PPQ's histogram KL search (``32 * 2**(bits-1)`` bins of |x|), scale rounded to a
  power of two half up in log2. For int16 activations ESP-PPQ's exports carry min-max exponents, and
  so does ``kl`` here.
* ``minmax``: scale = max|x| / (qmax + 0.5), rounded up to a power of two (no clipping ever).
* ``percentile``: like minmax on the 99.99th percentile of |x|.
* ``mse``: the power of two that minimises the expected squared error over the histogram.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..errors import FormatError, ShapeError, UnsupportedError
from .prepare import FGraph, to_onnx

METHODS = ("kl", "minmax", "percentile", "mse")
PERCENTILE = 99.99
MIN_SCALE = 2.0 ** -24
FINE_BINS = 8192


# ---- calibration data ---------------------------------------------------------------------------

def load_calib(calib, inputs: list[tuple[str, tuple[int, ...]]]) -> dict[str, np.ndarray]:
    """Normalise CALIB to ``{input name: float32 [N, *input shape]}`` (N samples, each the full input).

    Accepts an .npy ([N, ...]), an .npz (one array per input), a directory of .npy files (one sample
    each, sorted by name), an array or a dict of arrays. For an input of shape ``[1, ...]`` a sample may
    omit the leading 1 (``[N, ...shape without batch]``); ESP-DL has no batch notion, so an input whose
    first dimension is not 1 (``[2, 3, 4, 5]``, ``[48, 1]``) is one tensor and its samples are
    ``[N, *shape]`` (or one ``shape`` array).
    """
    names = [n for n, _ in inputs]
    if isinstance(calib, (str, Path)):
        p = Path(calib)
        if p.is_dir():
            files = sorted(p.glob("*.npy"))
            if not files:
                raise ShapeError(f"calibration directory {p} has no .npy files")
            if len(names) != 1:
                raise ShapeError(f"a directory of .npy samples only works for one input; the model has {names}")
            n0, shp = inputs[0]
            samples = []
            for f in files:
                a = np.load(f, allow_pickle=False)
                if shp and shp[0] == 1 and a.shape == tuple(shp):
                    a = a[0]
                samples.append(a)
            data = {n0: _stack(samples, n0, shp, str(p))}
        elif p.suffix == ".npz":
            if not p.exists():
                raise ShapeError(f"calibration file {p} not found")
            try:
                with np.load(p, allow_pickle=False) as z:
                    arrs = {k: z[k] for k in z.files}
            except (OSError, ValueError) as e:
                raise ShapeError(f"cannot read {p}: {e}") from None
            if len(names) == 1 and len(arrs) == 1 and names[0] not in arrs:
                arrs = {names[0]: next(iter(arrs.values()))}
            data = arrs
        elif p.suffix == ".npy":
            if not p.exists():
                raise ShapeError(f"calibration file {p} not found")
            try:
                data = np.load(p, allow_pickle=False)
            except (OSError, ValueError) as e:
                raise ShapeError(f"cannot read {p}: {e}") from None
        else:
            raise ShapeError(f"calibration data {p}: give an .npy, an .npz or a directory of .npy files")
    else:
        data = calib
    if isinstance(data, np.ndarray) or not isinstance(data, dict):
        if len(names) != 1:
            raise ShapeError(f"the model has inputs {names}: give a dict / .npz with one array per input")
        data = {names[0]: np.asarray(data)}
    missing = [n for n in names if n not in data]
    if missing:
        raise ShapeError(f"calibration data lacks input(s) {missing}; it has {sorted(data)}")
    out = {}
    count = None
    for n, shp in inputs:
        a = np.asarray(data[n])
        shp = tuple(shp)
        if shp and shp[0] == 1:
            want = shp[1:]
            if a.shape == shp:  # a single sample with batch 1
                a = a[None, 0]
            elif a.shape == want:  # a single sample without batch
                a = a[None]
            elif a.ndim == len(shp) + 1 and a.shape[1] == 1 and a.shape[2:] == want:
                a = a[:, 0]
            if a.ndim != len(want) + 1 or a.shape[1:] != want:
                raise ShapeError(f"calibration data for input {n!r} has shape {list(a.shape)}; expected "
                                 f"[N, {', '.join(map(str, want))}] (N samples of the input shape without batch)")
            a = a[:, None]
        else:
            if a.shape == shp:  # one sample
                a = a[None]
            if a.ndim != len(shp) + 1 or a.shape[1:] != shp:
                raise ShapeError(f"calibration data for input {n!r} has shape {list(a.shape)}; expected "
                                 f"[N, {', '.join(map(str, shp))}] (N samples of the input shape {list(shp)})")
        if a.dtype.kind not in "fiu":
            raise ShapeError(f"calibration data for input {n!r} has dtype {a.dtype}; give numbers")
        if a.shape[0] == 0:
            raise ShapeError(f"calibration data for input {n!r} has no samples")
        if count is not None and a.shape[0] != count:
            raise ShapeError(f"calibration inputs have different sample counts ({count} vs {a.shape[0]})")
        count = a.shape[0]
        if not np.all(np.isfinite(a)):
            raise ShapeError(f"calibration data for input {n!r} contains NaN or infinity")
        out[n] = a.astype(np.float32)
    return out


def _stack(samples, name, shp, where):
    want = tuple(shp[1:])
    for i, s in enumerate(samples):
        if s.shape != want:
            raise ShapeError(f"{where}: sample {i} has shape {list(s.shape)}; input {name!r} needs {list(want)}")
    return np.stack(samples)


# ---- float runs ---------------------------------------------------------------------------------

class FloatRunner:
    """onnxruntime over the prepared float graph, exposing every float intermediate."""

    def __init__(self, fg: FGraph):
        import onnxruntime as ort
        import onnx

        self.names = []
        for n in fg.nodes:
            for o in n.outputs:
                if o and fg.dtypes.get(o, onnx.TensorProto.FLOAT) == onnx.TensorProto.FLOAT:
                    self.names.append(o)
        model = to_onnx(fg, self.names)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        try:
            self.sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            raise FormatError(f"onnxruntime cannot load the float model: {e}") from None
        self.out_names = [o.name for o in self.sess.get_outputs()]
        self.inputs = [n for n, _ in fg.inputs]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            res = self.sess.run(None, feeds)
        except Exception as e:
            raise FormatError(f"onnxruntime cannot run the float model: {e}") from None
        out = dict(zip(self.out_names, res))
        out.update(feeds)
        return out


def iter_samples(data: dict[str, np.ndarray]):
    """One feed per sample: ``data`` holds ``[N, *input shape]`` per input (see :func:`load_calib`)."""
    n = next(iter(data.values())).shape[0]
    for i in range(n):
        yield {k: v[i] for k, v in data.items()}


# ---- statistics ---------------------------------------------------------------------------------

def _finite(a):
    """The finite values of a float activation (Log/Sqrt of out-of-domain inputs give NaN, which a chip
    never sees as such: calibration ignores them)."""
    if a is None or a.dtype.kind != "f":
        return a
    ok = np.isfinite(a)
    return a if ok.all() else a[ok]


def hist_bins(bits: int) -> int:
    return 32 * (1 << (bits - 1))


class Stats:
    """max|x| per value (pass 1), then histograms of |x| per (value, bits) (pass 2)."""

    def __init__(self, names: list[str], bits_needed: tuple[int, ...], method: str = "kl", fine=()):
        self.names = names
        self.fine = set(fine)  # values that also get the fine histogram (the MSE search for graph outputs)
        # histogram resolutions: KL needs ESP-PPQ's 32 * 2**(bits-1) bins (int8 only: int16 uses min-max);
        # percentile / MSE share one fine histogram
        if method == "kl":
            self.bins = tuple(hist_bins(b) for b in bits_needed if b == 8)
        elif method in ("percentile", "mse"):
            self.bins = (FINE_BINS,)
        else:
            self.bins = ()
        self.maxabs = {n: 0.0 for n in names}
        self.hist: dict[tuple[str, int], np.ndarray] = {}

    def observe_max(self, acts: dict[str, np.ndarray]) -> None:
        for n in self.names:
            a = _finite(acts.get(n))
            if a is not None and a.size:
                self.maxabs[n] = max(self.maxabs[n], float(np.max(np.abs(a))))

    def observe_hist(self, acts: dict[str, np.ndarray]) -> None:
        for n in self.names:
            a = _finite(acts.get(n))
            if a is None or not a.size:
                continue
            for bins in self.bins + ((FINE_BINS,) if n in self.fine and FINE_BINS not in self.bins else ()):
                top = self.maxabs[n]
                if top <= 0:
                    continue
                # bin index as torch.histc computes it (float32): (x - lo) * bins / (hi - lo)
                hi = np.float32((top / bins) * bins)
                v = np.abs(a.astype(np.float32))
                idx = np.minimum(((v * np.float32(bins)) / hi).astype(np.int64), bins - 1)
                h = np.bincount(idx.ravel(), minlength=bins)
                key = (n, bins)
                if key in self.hist:
                    self.hist[key] += h
                else:
                    self.hist[key] = h

    def exponent(self, name: str, bits: int, method: str) -> int:
        top = self.maxabs.get(name, 0.0)
        qmax = (1 << (bits - 1)) - 1
        if top <= 0:
            return _pow2_exp(MIN_SCALE, up=True)
        if method == "minmax":
            return _pow2_exp(2 * top / (2 * qmax + 1), up=True)
        h = self.hist.get((name, hist_bins(bits) if method == "kl" else FINE_BINS))
        if h is None:
            return _pow2_exp(2 * top / (2 * qmax + 1), up=True)
        step = top / len(h)
        if method == "kl":
            if bits > 8:
                # ESP-PPQ 1.3.x int16 exports carry min-max exponents (every activation of the H6
                # references, tests/fixtures/ppq_refs/*/*_s16.espdl), not the KL search's
                return _pow2_exp(2 * top / (2 * qmax + 1), up=True)
            return _kl_exponent(h, step, bits)
        if method == "percentile":
            c = np.cumsum(h)
            k = int(np.searchsorted(c, c[-1] * PERCENTILE / 100.0))
            clip = (k + 1) * step
            return _pow2_exp(2 * clip / (2 * qmax + 1), up=True)
        if method == "mse":
            return _mse_exponent(h.astype(np.float64), step, bits)
        raise UnsupportedError(f"calibration method {method!r}", supported=list(METHODS))


def _pow2_exp(scale: float, *, up: bool) -> int:
    scale = max(scale, MIN_SCALE)
    l2 = math.log2(scale)
    return int(math.ceil(l2)) if up else int(math.floor(l2 + 0.5))


def _kl_exponent(hist: np.ndarray, step: float, bits: int) -> int:
    """ESP-PPQ's symmetric KL search over clip ranges in multiples of the quantized level count.

    Computed in float32 like ESP-PPQ (torch): with sparse int16 histograms the candidate losses are
    close, and float64 arithmetic would pick other ranges than ESP-PPQ does.
    """
    nb = len(hist)
    q = 1 << (bits - 1)
    hist = hist.astype(np.float32)
    hist[: int(nb * 0.002)] = 0
    hist[int(nb * 0.002)] = 1
    total = np.float32(hist.sum(dtype=np.float32))
    best, best_range = None, q
    for rng in range(q, nb + q - 1, q):
        p = hist[:rng].copy()
        p[rng - 1] += hist[rng:].sum(dtype=np.float32)
        p = p / total
        ratio = rng // q
        qh = hist[:rng].reshape(q, ratio)
        pos = qh > 0
        cnt = np.maximum(pos.sum(axis=1, keepdims=True), 1)
        qh = (qh.sum(axis=1, keepdims=True, dtype=np.float32) / cnt).astype(np.float32)
        qh = np.repeat(qh, ratio, axis=1) * pos
        qh = (qh / qh.sum(dtype=np.float32)).astype(np.float32).ravel()
        pd = p.astype(np.float64)
        kl = float(np.dot(pd, np.log10(pd + 1e-30) - np.log10(qh.astype(np.float64) + 1e-30)))
        if best is None or kl < best:
            best, best_range = kl, rng
    scale = best_range * step / q
    return _pow2_exp(scale, up=False)


def _hist_error(hist: np.ndarray, step: float, bits: int, e: int) -> float:
    """Expected squared quantization error over a histogram of |x| at exponent ``e`` (clipping beyond
    ``qmax * 2**e``, uniform rounding noise below)."""
    qmax = (1 << (bits - 1)) - 1
    centers = (np.arange(len(hist)) + 0.5) * step
    s = 2.0 ** e
    clip = qmax * s
    return float(np.sum(np.where(centers > clip, (centers - clip) ** 2, s * s / 12.0) * hist))


def _mse_exponent(hist: np.ndarray, step: float, bits: int) -> int:
    qmax = (1 << (bits - 1)) - 1
    top = len(hist) * step
    e_hi = _pow2_exp(2 * top / (2 * qmax + 1), up=True)
    best, best_e = None, e_hi
    for e in range(e_hi - 6, e_hi + 1):
        v = _hist_error(hist, step, bits, e)
        if best is None or v < best - 1e-12 * abs(best):
            best, best_e = v, e
    return best_e


def collect(runner: FloatRunner, data: dict[str, np.ndarray], bits_needed: tuple[int, ...], method: str,
            progress: bool = False, fine=()) -> Stats:
    """Statistics of every float value over ``data``; ``fine`` values also get the fine histogram that
    ``Stats.exponent(..., "mse")`` searches."""
    if method not in METHODS:
        raise UnsupportedError(f"calibration method {method!r}", supported=list(METHODS))
    names = list(runner.inputs) + [n for n in runner.out_names if n not in runner.inputs]
    st = Stats(names, bits_needed, method, fine)
    n = next(iter(data.values())).shape[0]
    passes = 2 if st.bins or st.fine else 1
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n * passes, desc="calibrating", unit="sample")
    for p in range(passes):
        for feeds in iter_samples(data):
            acts = runner.run(feeds)
            if p == 0:
                st.observe_max(acts)
            else:
                st.observe_hist(acts)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return st
