"""Float ONNX -> quantized ESP-DL model (``.espdl`` conventions of ESP-PPQ).

>>> model = quantize("kws.onnx", "calib.npy", target="esp32p4")    # doctest: +SKIP
>>> model.save("kws.espdl"); model.quant_report["output_sqnr_db"]  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np

from ..emu.rounding import TARGETS, quantize as q_quantize
from ..errors import UnsupportedError
from ..ir.graph import Tensor
from ..ir.passes import Sequential
from .calibrate import METHODS, FloatRunner, collect, load_calib
from .export import INSERTED_OPS, Exporter, Namer, rewrite
from .pipeline import export_passes, width_passes
from .prepare import FGraph, check_fgraph, prepare, supported_float_ops as _supported_float_ops
from . import products, rnn  # noqa: F401,E402  (register their operators' rules)
from .report import ErrorAccumulator, plot_report, sqnr_problem


class QuantizationWarning(UserWarning):
    """The quantized model's output is far from the float model's (see ``quant_report``)."""

__all__ = ["quantize", "plot_report", "supported_float_ops", "METHODS", "REPORT_SAMPLES"]


def supported_float_ops() -> set[str]:
    """Float ONNX operators the quantizer takes (the coverage table's "quantize" column), from the operator
    definitions (:func:`.prepare.supported_float_ops`)."""
    return _supported_float_ops()


REPORT_SAMPLES = 4
OUTPUT_METHOD = "mse"  # calibration of graph outputs unless clip_outputs=True


def quantize(onnx_path_or_model, calib, *, target: str = "esp32p4", bits: int = 8, calib_method: str = "kl",
             int16_nodes=(), test_input=None, progress: bool = False, clip_outputs: bool = False,
             warn: bool = True):
    """Quantize a float ONNX model for ESP-DL and return a :class:`chunkwise.Model`.

    ``calib``: an .npy ``[N, ...input shape without batch]``, an .npz (one array per input), a directory
    of .npy samples, an array or a dict of arrays. ``int16_nodes``: ONNX node names kept in int16 in an
    int8 model (mixed precision; RequantizeLinear nodes are inserted at the boundaries). ``test_input``
    (default: the first calibration sample, in the ONNX layout) is run through the emulator and stored as
    the model's test input/output. The model's ``quant_report`` holds per-layer SQNR / cosine similarity
    against onnxruntime's float activations (and ``passes``: what each rewrite pass did, or why not); an
    output SQNR below 10 dB raises a :class:`QuantizationWarning` naming the worst layer (``warn=False``:
    no warning). Graph outputs get the power of two with the least squared error over their calibration
    histogram (min-max with ``calib_method="minmax"``) unless ``clip_outputs=True``, which applies
    ``calib_method`` to them too, as ESP-PPQ does.
    """
    from ..model import Model

    if target not in TARGETS:
        raise UnsupportedError(f"target {target!r}", supported=sorted(TARGETS))
    if bits not in (8, 16):
        raise UnsupportedError(f"bits={bits}", supported=["8", "16"])
    if calib_method not in METHODS:
        raise UnsupportedError(f"calibration method {calib_method!r}", supported=list(METHODS))
    if isinstance(int16_nodes, str):
        int16_nodes = [int16_nodes]

    passes_log: list[str] = []
    fg = prepare(onnx_path_or_model, passes_log)
    data = load_calib(calib, fg.inputs)
    runner = FloatRunner(fg)

    fq = copy.deepcopy(fg)
    origin = rewrite(fq, passes_log)
    fq = Sequential(width_passes(bits, int16_nodes, origin), check=check_fgraph)(fq, passes_log)
    bits_of = {n.name: n.bits for n in fq.nodes}
    needed = tuple(sorted(set(bits_of.values()) | {bits}))
    outputs = set(fg.outputs)
    stats = collect(runner, data, needed, calib_method, progress=progress,
                    fine=() if clip_outputs or calib_method == "minmax" else outputs)
    memo: dict = {}

    def calib_exp(v: str, b: int) -> int:
        key = (v, b)
        if key not in memo:
            # graph outputs: the power of two with the least squared error over the calibration
            # histogram (clipping the last layer costs output SQNR directly; KL ignores how much)
            # (calib_method="minmax" keeps its promise: nothing is clipped, outputs included)
            # int16 outputs: min-max, as ESP-PPQ's int16 exports (the fine histogram is coarser than int16 steps)
            out_method = calib_method if calib_method == "minmax" or b != 8 else OUTPUT_METHOD
            method = out_method if v in outputs and not clip_outputs else calib_method
            memo[key] = stats.exponent(v, b, method)
        return memo[key]

    namer = Namer()
    fq = Sequential(export_passes(calib_exp, target, namer), check=check_fgraph)(fq, passes_log)
    graph = Exporter(fq, target, namer).build(fg.name or "main_graph", fg.inputs, fq.outputs)
    perm = fq.perm
    model = Model(graph, target=target)

    # ---- test values ------------------------------------------------------------------------
    if test_input is None:
        feeds_f = {k: v[0] for k, v in data.items()}
    else:
        feeds_f = load_calib(test_input, fg.inputs)
        feeds_f = {k: v[0] for k, v in feeds_f.items()}
    mode = TARGETS[target]

    def to_model_feeds(ff):
        out = {}
        for name, _ in fg.inputs:
            vi = graph.info(name)
            x = np.transpose(ff[name], perm[name])
            # a graph input read by a float32 op (Log, Sqrt) stays float32
            out[name] = np.ascontiguousarray(x, np.float32) if vi.dtype == "float32" else \
                q_quantize(x, vi.exponent, vi.dtype, mode)
        return out

    qfeeds = to_model_feeds(feeds_f)
    result = model.run(qfeeds)
    for name, _ in fg.inputs:
        vi = graph.info(name)
        graph.test_inputs[name] = Tensor(name=name, dtype=vi.dtype, dims=tuple(qfeeds[name].shape),
                                         data=qfeeds[name], exponents=vi.exponents)
    for vi in graph.outputs:
        a = np.ascontiguousarray(result[vi.name])
        graph.test_outputs[vi.name] = Tensor(name=vi.name, dtype=str(a.dtype), dims=tuple(a.shape), data=a,
                                             exponents=vi.exponents)

    # ---- report -----------------------------------------------------------------------------
    model.quant_report = _report(fg, fq, graph, model, runner, data, perm, feeds_f, target, bits, calib_method,
                                 to_model_feeds)
    model.quant_report["passes"] = passes_log
    if warn:
        problem = sqnr_problem(model.quant_report)
        if problem:
            warnings.warn(problem, QuantizationWarning, stacklevel=2)
    return model


def _float_source(fq: FGraph, v: str) -> str:
    prods = fq.producers()
    while v.startswith("PPQ_Variable_") and v in prods and prods[v].op in INSERTED_OPS:
        v = prods[v].inputs[0]
    return v


def _report(fg, fq, graph, model, runner, data, perm, feeds_f, target, bits, method, to_model_feeds) -> dict:
    acc = ErrorAccumulator()
    n = next(iter(data.values())).shape[0]
    samples = [feeds_f] + [{k: v[i] for k, v in data.items()} for i in range(min(n, REPORT_SAMPLES))]
    names = [v for v in graph.value_info if v not in graph.input_names]
    for ff in samples:
        fl = runner.run(ff)
        got = model.run(to_model_feeds(ff), intermediates=True)
        for v in names:
            src = _float_source(fq, v)
            if src not in fl or v not in got:
                continue
            ref = np.transpose(fl[src], perm[v]) if fl[src].ndim == len(perm[v]) else fl[src]
            deq = model.dequantize(v, got[v])
            if ref.shape != deq.shape:
                continue
            acc.add(v, ref, deq)
    producers = fq.producers()
    layers = []
    for v in names:
        if v not in acc.acc:
            continue
        p = producers.get(v)
        vi = graph.info(v)
        layers.append({"name": v, "node": p.name if p else "", "op": p.op if p else "", "exponent": vi.exponent,
                       "bits": 8 if vi.dtype == "int8" else 16, **acc.result(v)})
    outputs = {o: acc.result(o) for o in graph.output_names if o in acc.acc}
    out_sqnr = min((r["sqnr_db"] for r in outputs.values()), default=None)
    return {"target": target, "bits": bits, "calib_method": method, "samples": len(samples),
            "calibration_samples": int(n), "layers": layers, "outputs": outputs,
            "output_sqnr_db": None if out_sqnr is None or math.isnan(out_sqnr) else out_sqnr}
