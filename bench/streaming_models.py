"""The streaming models the benchmarks time against onnxruntime: every streamable model of the model-family
corpus (``tests/fixtures/corpus``, quantized by ``chunkwise.quantize`` from its ONNX and calibration data) and
seeded random causal models (``tests/randgraph.random_onnx_model``, quantized from their smoothed-noise
calibration), each converted by ``chunkwise.convert.stream`` at its smallest chunk.

For each: the streaming model, one chunk (the streaming model's test input: its integer dtype and shape),
the float ONNX model and the input onnxruntime runs it on: the whole offline window (the corpus model's
held-out sample; the random model's first calibration sample), i.e. what a user re-running the float model
on every new window would pay.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RANDOM_SEEDS = tuple(range(12))


@dataclass
class StreamingCase:
    name: str
    streaming: object  # chunkwise Model
    chunk: dict  # {input name: array} of one chunk, exact dtype and shape
    onnx: object  # float onnx.ModelProto
    window: dict  # {input name: float32 array}: the offline window
    chunk_frames: int
    ops: list


def _paths():
    for p in (str(REPO), str(REPO / "tools")):
        if p not in sys.path:
            sys.path.insert(0, p)


def corpus_names() -> list[str]:
    _paths()
    try:
        from tests.corpus import corpus_models
    except Exception:
        return []
    return [m.name for m in corpus_models(streamable=True)]


def _stream(q, chunks, frame_axis):
    from chunkwise.convert import stream

    last = None
    for c in chunks:
        try:
            sm, rep = stream(q, c, frame_axis=frame_axis)
            return sm, c
        except Exception as e:  # a chunk the converter refuses: the next candidate
            last = e
    raise last


def _chunk(sm) -> dict:
    if sm.graph.test_inputs:
        feeds = {k: np.ascontiguousarray(v) for k, v in sm.test_feeds().items()}
    else:
        from chunkwise.convert.streaming import random_input

        feeds = random_input(sm, 0)
    names = sm.session().input_names  # recurrent state inputs are carried by the session
    return {k: v for k, v in feeds.items() if k in names}


def build_corpus(name: str, target: str = "esp32p4") -> StreamingCase:
    _paths()
    import onnx

    import chunkwise
    from stream_report import corpus_candidates, espdl_frame_axis
    from tests.corpus import corpus_models, load_inputs

    cm = next(m for m in corpus_models() if m.name == name)
    meta = cm.meta
    fa_onnx = int(meta.get("frame_axis_onnx", 2))
    shapes = cm.input_shapes
    first = cm.input_names[0]
    T = int(shapes[first][fa_onnx])
    calib = load_inputs(cm.calib, cm.input_names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = chunkwise.quantize(str(cm.onnx), calib[first] if len(calib) == 1 else calib, target=target)
    q_in = next(v for v in q.graph.inputs if v.name == first)
    fa = espdl_frame_axis(shapes[first], q_in.shape, fa_onnx)
    sm, c = _stream(q, corpus_candidates(meta, T), fa)
    held = load_inputs(cm.heldout, cm.input_names)
    window = {k: np.ascontiguousarray(v[:1], dtype=np.float32) for k, v in held.items()}
    return StreamingCase(f"corpus:{name}", sm, _chunk(sm), onnx.load(str(cm.onnx)), window, c,
                         list(meta.get("ops", [])))


def build_random(seed: int, target: str = "esp32p4") -> StreamingCase:
    _paths()
    import chunkwise
    from stream_report import espdl_frame_axis
    from tests.randgraph import random_calib, random_onnx_model

    m, facts = random_onnx_model(seed)
    calib = random_calib(m, seed, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = chunkwise.quantize(m, calib, target=target)
    q_in = next(v for v in q.graph.inputs if v.name not in q.graph.initializers)
    onnx_shape = [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
    fa = espdl_frame_axis(onnx_shape, q_in.shape, facts["frame_axis_onnx"])
    sm, c = _stream(q, facts["chunk_candidates"], fa)
    window = {m.graph.input[0].name: np.ascontiguousarray(calib[:1], dtype=np.float32)}
    return StreamingCase(f"random:{seed}", sm, _chunk(sm), m, window, c, list(facts["ops"]))


def case_ids() -> list[str]:
    return [f"corpus:{n}" for n in corpus_names()] + [f"random:{s}" for s in RANDOM_SEEDS]


def build(case_id: str) -> StreamingCase:
    kind, _, arg = case_id.partition(":")
    return build_corpus(arg) if kind == "corpus" else build_random(int(arg))
