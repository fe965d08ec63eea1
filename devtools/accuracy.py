"""Quantization accuracy against a reference export: output SQNR on held-out input, ours vs theirs.

For a float ONNX model, calibration data and a reference ``.espdl`` (e.g. ESP-PPQ's export with the same
calibration data, target and bits), both quantized models are emulated on the same held-out input and
compared with onnxruntime's float output.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_TO_ESPDL = {3: (0, 2, 1), 4: (0, 2, 3, 1)}


def sqnr_db(ref: np.ndarray, test: np.ndarray) -> float:
    ref = np.asarray(ref, dtype=np.float64).ravel()
    err = ref - np.asarray(test, dtype=np.float64).ravel()
    num, den = float(np.sum(ref * ref)), float(np.sum(err * err))
    if den == 0.0:
        return float("inf")
    return 10.0 * np.log10(max(num, 1e-30) / den)


def _to_model_layout(x: np.ndarray, shape: tuple) -> np.ndarray:
    if tuple(x.shape) == tuple(shape):
        return x
    perm = _TO_ESPDL.get(x.ndim)
    if perm is not None and tuple(np.transpose(x, perm).shape) == tuple(shape):
        return np.ascontiguousarray(np.transpose(x, perm))
    raise ValueError(f"cannot map input of shape {x.shape} to the model's {shape}")


def _to_onnx_layout(y: np.ndarray, shape: tuple) -> np.ndarray:
    if tuple(y.shape) == tuple(shape):
        return y
    perm = _TO_ESPDL.get(y.ndim)
    if perm is not None:
        inv = np.argsort(perm)
        if tuple(np.transpose(y, inv).shape) == tuple(shape):
            return np.transpose(y, inv)
    return y.reshape(shape)


def emulated_sqnr(model, onnx_model, inputs: list[np.ndarray]) -> float:
    """Output SQNR (dB) of an emulated quantized model vs onnxruntime float, over ``inputs`` (ONNX layout)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    in_name = sess.get_inputs()[0].name
    name = next(v.name for v in model.graph.inputs if v.name not in model.graph.initializers)
    shape = tuple(next(v.shape for v in model.graph.inputs if v.name == name))
    refs, tests = [], []
    for x in inputs:
        x = np.asarray(x, dtype=np.float32)
        f = sess.run(None, {in_name: x})[0]
        out = model.run({name: _to_model_layout(x, shape)})
        y = next(iter(out.items()))
        q = model.dequantize(y[0], y[1])
        refs.append(f)
        tests.append(_to_onnx_layout(q, f.shape))
    return sqnr_db(np.concatenate([r.ravel() for r in refs]), np.concatenate([t.ravel() for t in tests]))


@dataclass
class Comparison:
    model: str
    target: str
    bits: int
    ours_db: float
    ref_db: float

    @property
    def delta_db(self) -> float:
        return self.ours_db - self.ref_db
