"""Streaming: the converter, chunked emulation and streaming-vs-offline verification."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import chunkwise
from chunkwise.cli import app
from chunkwise.convert import TableEntry, stream
from chunkwise.emu.streamcheck import split_chunks, verify_streaming
from chunkwise.errors import ShapeError, StreamingError
from chunkwise.ir.build import GraphBuilder, random_causal_graph
from chunkwise.model import Model

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
ZOO = SHARED / "zoo"
warnings.simplefilter("ignore", chunkwise.TargetGuessWarning)


def _check_every_chunk(offline: Model, streaming: Model, chunk: int, seed: int = 7, delay: int = 0):
    """Independent of verify_streaming: push chunks and compare every per-frame chunk by hand."""
    from chunkwise.convert.streaming import random_input

    x = random_input(offline, seed)
    name = next(iter(x))
    full = offline.run(x)
    sess = streaming.session()
    outs = [sess.push({name: c}) for c in split_chunks(x[name], chunk, 1)]
    for o, want in full.items():
        got = [c[o] for c in outs]
        if got[-1].shape == want.shape:  # tail head: the last chunk sees the whole history
            np.testing.assert_array_equal(got[-1], want)
        else:
            c = got[0].shape[1]
            for k, g in enumerate(got):
                lo = k * c - delay
                if lo >= 0:
                    np.testing.assert_array_equal(g, want[:, lo:lo + c])


@settings(max_examples=80, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 10**6))
def test_random_causal_graphs_stream_bit_exactly(seed):
    graph, facts = random_causal_graph(seed)
    offline = Model(graph)
    streaming, report = stream(offline, facts["chunk"])
    assert report.verification["bit_exact"]
    _check_every_chunk(offline, streaming, facts["chunk"])


@pytest.mark.parametrize("two_d", [False, True])
@pytest.mark.parametrize("head", ["per-frame", "tail"])
def test_random_graph_families(two_d, head):
    for seed in range(12):
        graph, facts = random_causal_graph(seed, two_d=two_d, head=head)
        offline = Model(graph)
        streaming, report = stream(offline, facts["chunk"])
        _check_every_chunk(offline, streaming, facts["chunk"])
        kinds = set(report.outputs.values())
        assert kinds == ({"per-frame"} if head == "per-frame" else {"tail (fixed window)"})


def _tcn(b: GraphBuilder, frames=12, chopped=False, pad_node=False):
    x = b.input((1, frames, 8))
    y = b.conv(x, 16, k=1)
    if chopped:
        z = b.conv(y, 16, k=3, d=2, pads=(4, 4), depthwise=True, act="Relu")
        z = b.slice_time(z, 0, -4)
    elif pad_node:
        z = b.pad_time(y, 4)
        z = b.conv(z, 16, k=3, d=2, pads=(0, 0), depthwise=True, act="Relu")
    else:
        z = b.conv(y, 16, k=3, d=2, depthwise=True, act="Relu")
    z = b.binary("Mul", z, b.sigmoid(z), out_exp=b.exp(y))
    y = b.binary("Add", y, z)
    return y


@pytest.mark.parametrize("variant", ["causal", "chopped", "pad_node"])
def test_right_chopped_and_standalone_pad_are_streamed(variant):
    b = GraphBuilder(1)
    y = _tcn(b, chopped=variant == "chopped", pad_node=variant == "pad_node")
    b.output(y)
    offline = Model(b.g)
    streaming, report = stream(offline, 2)
    assert [c["frames"] for c in report.caches] == [4]
    ops = [n.op_type for n in streaming.graph.nodes]
    assert ops.count("StreamingCache") == 1
    _check_every_chunk(offline, streaming, 2)


def test_residual_branch_gets_no_cache():
    """ESP-PPQ 1.3.12 puts a cache on a value that also feeds a residual Add (5 vs 3 frames)."""
    b = GraphBuilder(2)
    b.output(_tcn(b))
    streaming, _ = stream(Model(b.g), 3)
    add = next(n for n in streaming.graph.nodes if n.op_type == "Add")
    producers = streaming.graph.producers()
    assert all(producers[i].op_type != "StreamingCache" for i in add.inputs)


def test_strided_chunk_error_lists_valid_sizes():
    b = GraphBuilder(3)
    x = b.input((1, 12, 4))
    b.output(b.conv(x, 4, k=3, s=2))
    with pytest.raises(StreamingError, match=r"multiple of the cumulative stride 2 \(valid chunk sizes: 2, 4, 6"):
        stream(Model(b.g), 3)


@pytest.mark.parametrize("case, message", [
    ("same", "right padding 1 on the frame axis needs 1 future frames"),
    ("gap", "global pooling over time"),
    ("flatten", "contracts over the frame axis; add a tail Slice"),
    ("maxpool_signed", "MaxPool pads with -inf"),
    ("drop_newest", "dropping the newest frames needs the future"),
])
def test_refusals_name_the_node_and_why(case, message):
    b = GraphBuilder(4)
    x = b.input((1, 12, 8))
    if case == "same":
        y = b.conv(x, 8, k=3, pads=(1, 1))
    elif case == "gap":
        y = b._node("GlobalAveragePool", [b.conv(x, 8, k=3)], (1, 1, 8), -4)
    elif case == "flatten":
        y = b.gemm(b.flatten(b.conv(x, 8, k=3)), 4)  # Flatten merges time into features; Gemm then needs all
    elif case == "maxpool_signed":
        y = b.pool(b.conv(x, 8, k=1), "MaxPool", 3)
    else:
        y = b.slice_time(b.conv(x, 8, k=1), 0, -2)
    b.output(y)
    with pytest.raises(StreamingError, match=message) as e:
        stream(Model(b.g), 3)
    assert "cannot stream node" in str(e.value)


def test_lookahead_is_delayed_and_verified():
    b = GraphBuilder(5)
    x = b.input((1, 12, 8))
    y = b.conv(x, 8, k=3, pads=(1, 1), out_exp=b.exp(x))
    b.output(b.binary("Add", x, y))  # the residual branch needs a delay line
    offline = Model(b.g)
    streaming, report = stream(offline, 3, allow_lookahead=True)
    assert report.delay_frames == 1 and report.latency_frames == 4
    _check_every_chunk(offline, streaming, 3, delay=1)


def test_manual_table_entry():
    b = GraphBuilder(6)
    x = b.input((1, 12, 8))
    y = b.conv(x, 8, k=1)
    z = b.conv(y, 8, k=3, d=1)
    b.output(z)
    offline = Model(b.g)
    conv = b.g.nodes[-1].name
    streaming, report = stream(offline, 3, table=[TableEntry(y, 3, conv)])
    assert [c["reason"] for c in report.caches] == ["table entry"]
    _check_every_chunk(offline, streaming, 3)


def test_streaming_model_carries_test_values_and_round_trips(tmp_path):
    graph, facts = random_causal_graph(11, head="tail")
    streaming, _ = stream(Model(graph), facts["chunk"])
    assert streaming.graph.test_inputs and streaming.graph.test_outputs
    path = tmp_path / "s.espdl"
    streaming.save(path)
    again = chunkwise.load(path)
    from chunkwise.emu.check import check_test_values

    assert all(c.bit_exact for c in check_test_values(again))
    assert again.target == "esp32p4" and not again.target_guessed


@pytest.mark.parametrize("seed", range(40))
def test_compiled_program_equals_per_node_plan(seed):
    """The compiled program and the per-node path are one implementation, run two ways."""
    from chunkwise.convert.streaming import random_input
    from chunkwise.emu.session import Session

    graph, facts = random_causal_graph(seed)
    streaming, _ = stream(Model(graph), facts["chunk"], verify=False)
    x = random_input(Model(graph), seed)
    name = next(iter(x))
    chunks = split_chunks(x[name], facts["chunk"], 1)
    fast, slow = Session(streaming), Session(streaming, compiled=False)
    assert fast.program is not None, fast.why_not_compiled
    many = fast.push_many(chunks)
    fast.reset()
    for k, c in enumerate(chunks):
        a, b = fast.push(c), slow.push(c)
        for o in a:
            np.testing.assert_array_equal(a[o], b[o])
            np.testing.assert_array_equal(many[o][k], b[o])


def test_session_reset_and_push_many_agree():
    graph, facts = random_causal_graph(21, head="per-frame")
    streaming, _ = stream(Model(graph), facts["chunk"])
    from chunkwise.convert.streaming import random_input

    x = random_input(Model(graph), 3)
    name = next(iter(x))
    chunks = split_chunks(x[name], facts["chunk"], 1)
    s = streaming.session()
    first = [s.push(c) for c in chunks]
    s.reset()
    second = s.push_many(chunks)
    for o in first[0]:
        np.testing.assert_array_equal(np.stack([f[o] for f in first]), second[o])


def test_verify_reports_first_bad_chunk_and_node():
    graph, facts = random_causal_graph(5, head="per-frame")
    offline = Model(graph)
    streaming, _ = stream(offline, facts["chunk"])
    broken = streaming.graph.copy()
    cache = next((n for n in broken.nodes if n.op_type == "StreamingCache"), None)
    if cache is None:
        pytest.skip("this random graph has no cache")
    cache.set_attr("window_size", int(cache.attr("window_size")) + 1)  # one frame too many
    res = verify_streaming(Model(broken), offline, None if offline.graph.test_inputs else
                           __import__("chunkwise.convert.streaming", fromlist=["x"]).random_input(offline, 1))
    assert not res.bit_exact
    assert res.first_bad_chunk is not None


# ---- the tutorial pairs from ESP-DL (ESP-PPQ's own exports) ------------------------------------------------

needs_zoo = pytest.mark.skipif(not ZOO.is_dir(), reason="../shared/zoo is absent")


@needs_zoo
@pytest.mark.parametrize("target", ["esp32p4", "esp32s3"])
def test_tutorial_pair_cli(target):
    runner = CliRunner()
    res = runner.invoke(app, ["emu", "run", str(ZOO / f"tutorial_tcn_{target}_streaming_model.espdl"),
                              "--compare", str(ZOO / f"tutorial_tcn_{target}_model.espdl"), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["bit_exact"] is True and doc["chunks"] == 8


@needs_zoo
@pytest.mark.parametrize("target", ["esp32p4", "esp32s3"])
def test_converter_on_tutorial_model(target, tmp_path):
    out = tmp_path / "stream.espdl"
    runner = CliRunner()
    res = runner.invoke(app, ["stream", str(ZOO / f"tutorial_tcn_{target}_model.espdl"), "-o", str(out),
                              "--chunk", "3", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["verification"]["bit_exact"]
    assert sorted(c["frames"] for c in report["caches"]) == [2, 2, 2, 4]
    res = runner.invoke(app, ["emu", "run", str(out), "--compare", str(ZOO / f"tutorial_tcn_{target}_model.espdl")])
    assert res.exit_code == 0, res.output


def test_cli_compare_failure_exit_code(tmp_path):
    graph, facts = random_causal_graph(5, head="per-frame")
    offline = Model(graph)
    streaming, _ = stream(offline, facts["chunk"])
    broken = streaming.graph.copy()
    for n in broken.nodes:
        if n.op_type == "StreamingCache":
            n.set_attr("window_size", int(n.attr("window_size")) + 1)
    if not any(n.op_type == "StreamingCache" for n in broken.nodes):
        pytest.skip("this random graph has no cache")
    Model(broken).save(tmp_path / "bad.espdl")
    offline.save(tmp_path / "off.espdl")
    from chunkwise.convert.streaming import random_input

    np.save(tmp_path / "x.npy", random_input(offline, 0)[graph.inputs[0].name])
    res = CliRunner().invoke(app, ["emu", "run", str(tmp_path / "bad.espdl"), "--compare",
                                   str(tmp_path / "off.espdl"), "--input", str(tmp_path / "x.npy")])
    assert res.exit_code == 3
    assert "first mismatching chunk" in res.output


def test_push_fast_path_matches_validated_inputs():
    """An array of exactly the input's dtype and shape skips prepare_inputs; other forms (float chunks,
    dicts, other integer dtypes) are validated and quantized. All give the same outputs, and a wrong
    shape or an out-of-range value is still refused."""
    graph, facts = random_causal_graph(8, head="per-frame")
    streaming, _ = stream(Model(graph), facts["chunk"])
    from chunkwise.convert.streaming import random_input

    x = random_input(Model(graph), 2)
    name = next(iter(x))
    chunks = split_chunks(x[name], facts["chunk"], 1)
    a, b = streaming.session(), streaming.session()
    assert a._exact is not None and chunks[0].dtype == a._exact[1]
    for c in chunks:
        fast = a.push(c)
        slow = b.push({name: c.astype(np.int32)})
        for o in fast:
            np.testing.assert_array_equal(fast[o], slow[o])
    with pytest.raises(ShapeError):
        a.push(chunks[0][:, :0])
    wide = chunks[0].astype(np.int32)
    wide.flat[0] = 1000
    with pytest.raises(ShapeError, match="outside"):
        a.push(wide)
