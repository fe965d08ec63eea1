"""Sessions own their state: two sessions of one streaming model and offline ``Model.run`` calls
interleave without touching each other's caches, on the compiled program and on the per-node path."""

from __future__ import annotations

import numpy as np
import pytest

from chunkwise.convert.streaming import random_input, stream
from chunkwise.emu.registry import LOWERINGS, supported_ops
from chunkwise.emu.session import Session
from chunkwise.emu.streamcheck import split_chunks
from chunkwise.errors import ChunkwiseError, ShapeError
from chunkwise.ir.build import GraphBuilder, random_causal_graph
from chunkwise.model import Model

# element-wise table ops the per-node path runs and the streaming converter passes frame by frame
TABLE_OPS = {"LUT": np.tanh, "Exp": np.exp, "Sqrt": lambda v: np.sqrt(np.abs(v)), "Log": lambda v: np.log1p(np.abs(v))}


def _streaming(graph, chunk):
    offline = Model(graph)
    streaming, _ = stream(offline, chunk, verify=False)
    return offline, streaming


def _chunks(offline, chunk, seed):
    x = random_input(offline, seed)
    name = next(iter(x))
    return x, split_chunks(x[name], chunk, 1)


def _alone(streaming, chunks, compiled):
    s = Session(streaming, compiled=compiled)
    return [s.push(c) for c in chunks]


def _interleave(offline, streaming, x, chunks_a, chunks_b, compiled):
    """Sessions a and b pushed in turn, with offline runs of the model (and of the streaming model) between."""
    a, b = Session(streaming, compiled=compiled), Session(streaming, compiled=compiled)
    chunk_feed = {streaming.graph.inputs[0].name: chunks_a[0]}
    got_a, got_b = [], []
    for ca, cb in zip(chunks_a, chunks_b):
        got_a.append(a.push(ca))
        offline.run(x)
        streaming.run(chunk_feed)  # Model.run on the same model: must not reset the sessions' caches
        got_b.append(b.push(cb))
        streaming.run(chunk_feed)
    return a, b, got_a, got_b


def _assert_same(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.keys() == w.keys()
        for k in w:
            np.testing.assert_array_equal(g[k], w[k])


def _check(offline, streaming, chunk, compiled, expect_program):
    x, chunks_a = _chunks(offline, chunk, 1)
    _, chunks_b = _chunks(offline, chunk, 2)
    assert any(not np.array_equal(p, q) for p, q in zip(chunks_a, chunks_b))
    want_a = _alone(streaming, chunks_a, compiled)
    want_b = _alone(streaming, chunks_b, compiled)
    a, b, got_a, got_b = _interleave(offline, streaming, x, chunks_a, chunks_b, compiled)
    assert (a.program is not None) == expect_program, a.why_not_compiled
    _assert_same(got_a, want_a)
    _assert_same(got_b, want_b)
    # the state differs between the two streams, so a shared cache could not have passed
    assert any(not np.array_equal(p[k], q[k]) for p, q in zip(got_a, got_b) for k in p)
    # reset() zeroes only its own session: b continues where it was
    a.reset()
    _assert_same([a.push(c) for c in chunks_a], want_a)
    return a, b


def _compiling_model():
    for seed in range(40):
        graph, facts = random_causal_graph(seed, head="per-frame")
        offline, streaming = _streaming(graph, facts["chunk"])
        if (any(n.op_type == "StreamingCache" for n in streaming.graph.nodes)
                and Session(streaming).program is not None):
            return offline, streaming, facts["chunk"]
    raise AssertionError("no random causal graph with a cache compiles")


def test_two_compiled_sessions_and_offline_runs_interleave():
    offline, streaming, chunk = _compiling_model()
    _check(offline, streaming, chunk, compiled=True, expect_program=True)


def test_two_per_node_sessions_and_offline_runs_interleave():
    offline, streaming, chunk = _compiling_model()
    a, b = _check(offline, streaming, chunk, compiled=False, expect_program=False)
    assert a.plan is not b.plan
    shapes = {k: tuple(v) for k, v in a.shapes.items()}
    assert a.plan is not streaming.plan(shapes)


def test_compiled_and_per_node_sessions_interleave():
    offline, streaming, chunk = _compiling_model()
    x, chunks = _chunks(offline, chunk, 4)
    want = _alone(streaming, chunks, True)
    fast, slow = Session(streaming), Session(streaming, compiled=False)
    got_fast, got_slow = [], []
    for c in chunks:
        got_slow.append(slow.push(c))
        offline.run(x)
        got_fast.append(fast.push(c))
    _assert_same(got_fast, want)
    _assert_same(got_slow, want)


def _model_with_table_op(op: str):
    """A causal conv stack with an element-wise table op in it (run per node when ``op`` has no lowering)."""
    chunk = 2
    b = GraphBuilder(seed=7)
    x = b.input((1, chunk * 5, 8))
    y = b.conv(x, 8, k=3, d=2, act="Relu")
    y = b.lut_act(y, op, TABLE_OPS[op], -5)
    y = b.conv(y, 4, k=2, d=1)
    b.output(y)
    return (*_streaming(b.g, chunk), chunk)


def test_sessions_of_a_model_that_does_not_compile():
    supported_ops()
    unlowered = [op for op in TABLE_OPS if op not in LOWERINGS]
    if not unlowered:
        pytest.skip(f"every op of {sorted(TABLE_OPS)} has a compiled lowering now "
                    "(test_sessions_when_lowering_is_missing still covers the fallback)")
    offline, streaming, chunk = _model_with_table_op(unlowered[0])
    assert Session(streaming).program is None
    _check(offline, streaming, chunk, compiled=True, expect_program=False)


@pytest.mark.parametrize("op", ["Conv", "StreamingCache"])
def test_sessions_when_lowering_is_missing(monkeypatch, op):
    """A node without a lowering runs on the per-node path between compiled rows (a stateful one on kernels
    its program prepared for itself): sessions still own their state."""
    offline, streaming, chunk = _compiling_model()
    supported_ops()
    monkeypatch.delitem(LOWERINGS, op)
    s = Session(streaming)
    assert s.program is not None and {n.op_type for n, _ in s.not_compiled} == {op}
    _check(offline, streaming, chunk, compiled=True, expect_program=True)


def test_push_many_does_not_share_state():
    offline, streaming, chunk = _compiling_model()
    x, chunks = _chunks(offline, chunk, 5)
    for compiled in (True, False):
        want = _alone(streaming, chunks, compiled)
        a, b = Session(streaming, compiled=compiled), Session(streaming, compiled=compiled)
        b.push(chunks[0])
        many = a.push_many(chunks)
        offline.run(x)
        rest = [b.push(c) for c in chunks[1:]]
        _assert_same(rest, want[1:])
        for k in many:
            np.testing.assert_array_equal(many[k], np.stack([w[k] for w in want]))


def test_session_errors_are_chunkwise_errors():
    offline, streaming, chunk = _compiling_model()
    _, chunks = _chunks(offline, chunk, 6)
    s = Session(streaming)
    assert s.program is not None
    with pytest.raises(ChunkwiseError, match="compiled=False"):
        s.push(chunks[0], intermediates=True)
    kept = Session(streaming, compiled=False).push(chunks[0], intermediates=True)
    assert set(v.name for v in streaming.graph.outputs) <= set(kept)
    with pytest.raises(ShapeError):
        s.push(chunks[0][:, :-1] if chunks[0].shape[1] > 1 else np.concatenate([chunks[0]] * 2, axis=1))
    with pytest.raises(ShapeError):
        s.push({"no such input": chunks[0]})
