"""Streaming the model-family corpus (tests/fixtures/corpus): every streamable model, quantized by
``chunkwise.quantize`` and as ESP-PPQ exported it, streams bit-exactly at several chunk sizes, every chunk
compared; the models the corpus marks not streamable are refused with a reason.

A model the quantizer or the emulator cannot take yet (an operator another stage lacks) is skipped with
that stage's error: it is not a streaming result either way.
"""

from __future__ import annotations

import functools
import warnings

import pytest
from corpus import corpus_models, load_inputs
from test_stream_families import _check

import chunkwise
from chunkwise.convert import stream
from chunkwise.errors import StreamingError, UnsupportedError

warnings.simplefilter("ignore")

CHUNKS = (1, 2, 4, 8, 16)


@functools.lru_cache(maxsize=None)
def _load(name: str, source: str):
    m = next(m for m in corpus_models() if m.name == name)
    if source == "chunkwise":
        try:
            return m, chunkwise.quantize(str(m.onnx), load_inputs(m.calib, m.input_names))
        except UnsupportedError as e:
            pytest.skip(f"the quantizer does not take {name} yet: {e}")
    target = source.split("_")[1]
    path = m.ppq(target, 8)
    if path is None:
        pytest.skip(f"ESP-PPQ made no {target} export of {name}: {m.ppq_status.get(f'{target}_s8')}")
    return m, chunkwise.load(path)


def _frame_axis(m, model) -> int:
    """Frame axis of the quantized model's input: the ONNX one when the input kept its ONNX layout (unambiguous
    shape), else 1 (NWC / NHWC)."""
    v = next(v for v in model.graph.inputs if v.name not in model.graph.initializers)
    onnx_shape = tuple(m.input_shapes[m.input_names[0]])
    fa = m.meta["frame_axis_onnx"]
    return fa if tuple(v.shape) == onnx_shape and onnx_shape.count(onnx_shape[fa]) == 1 else 1


def _cases(streamable: bool):
    return [pytest.param(m.name, src, id=f"{m.name}-{src}") for m in corpus_models(streamable=streamable)
            for src in ("chunkwise", "ppq_esp32p4", "ppq_esp32s3")]


@pytest.mark.parametrize("name, source", _cases(True))
def test_streamable_corpus_model_streams_bit_exactly(name, source):
    m, model = _load(name, source)
    fa = _frame_axis(m, model)
    try:
        model.plan({v.name: tuple(v.shape) for v in model.graph.inputs if v.name not in model.graph.initializers})
    except UnsupportedError as e:
        pytest.skip(f"the emulator does not run this offline model: {e}")
    streamed = []
    for c in CHUNKS:
        lookahead = False
        try:
            try:
                s, r = stream(model, c, frame_axis=fa)
            except StreamingError as e:
                if "allow-lookahead" not in str(e):
                    raise
                lookahead = True
                s, r = stream(model, c, frame_axis=fa, allow_lookahead=True)
        except StreamingError as e:
            if "multiple of the cumulative stride" in str(e) and not streamed:
                continue  # chunks below the model's total stride
            raise
        assert r.verification["bit_exact"]
        if lookahead:
            assert r.delay_frames > 0 and s.graph.metadata["streaming_delay_frames"] == str(r.delay_frames)
        _check(model, s, frame_axis=fa)
        streamed.append(c)
    assert len(streamed) >= 2, f"{name} streamed only at chunk sizes {streamed}"


@pytest.mark.parametrize("name, source", _cases(False))
def test_unstreamable_corpus_model_is_refused_with_a_reason(name, source):
    m, model = _load(name, source)
    fa = _frame_axis(m, model)
    for c in (2, 4):
        with pytest.raises(StreamingError, match="cannot stream node"):
            stream(model, c, frame_axis=fa, allow_lookahead=False)
