"""Streaming converter on op families built directly in the IR (issue 14): frame-axis Pad following the data,
ops along other axes, up-sampling along time, recurrent state, lookahead in the model, tail heads, refusals.

Every streamed model is checked chunk by chunk against the offline model, at several chunk sizes, by hand
(``_check``), independently of the converter's own verification.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from typer.testing import CliRunner

import chunkwise
from chunkwise.cli import app
from chunkwise.convert import stream
from chunkwise.convert.streaming import random_input
from chunkwise.emu.streamcheck import split_chunks, verify_streaming
from chunkwise.errors import StreamingError
from chunkwise.ir.build import GraphBuilder
from chunkwise.ir.graph import Node, ValueInfo, make_attribute
from chunkwise.model import Model

warnings.simplefilter("ignore", chunkwise.TargetGuessWarning)


def _check(offline: Model, streaming: Model, seed: int = 3, frame_axis: int = 1) -> int:
    """Push every chunk and compare every per-frame chunk (and tail outputs on the last chunk) by hand.
    Returns the number of chunk comparisons made."""
    x = random_input(offline, seed)
    meta = streaming.graph.metadata
    state = {p["input"] for p in json.loads(meta.get("streaming_state", "[]"))}
    delay = int(meta.get("streaming_delay_frames", 0))
    data = [k for k in x if k not in state]
    chunk = next(v.shape for v in streaming.graph.inputs if v.name == data[0])[frame_axis]
    full = offline.run(x)
    sess = streaming.session()
    parts = {k: split_chunks(x[k], chunk, frame_axis) for k in data}
    n = len(parts[data[0]])
    outs = []
    for k in range(n):
        feed = {d: parts[d][k] for d in data}
        if k == 0:
            feed.update({s: x[s] for s in state if s in x})
        outs.append(sess.push(feed))
    compared = 0
    for o, want in full.items():
        got = [c[o] for c in outs]
        diff = [i for i, (a, b) in enumerate(zip(got[0].shape, want.shape)) if a != b]
        if not diff:  # a tail head: the last chunk has seen the whole input
            np.testing.assert_array_equal(got[-1], want)
            compared += 1
            continue
        ax = diff[0]
        c = got[0].shape[ax]
        for k, g in enumerate(got):
            lo = k * c - delay
            if lo >= 0 and lo + c <= want.shape[ax]:
                np.testing.assert_array_equal(g, np.take(want, range(lo, lo + c), axis=ax))
                compared += 1
    assert compared > 0
    return compared


def _reduce(b: GraphBuilder, x: str, axes, out_shape, keepdims: int = 1) -> str:
    an = b._init("axes", np.array(axes, dtype=np.int64))
    return b._node("ReduceMean", [x, an], out_shape, b.exp(x), keepdims=keepdims)


def _stream_all(b: GraphBuilder, chunks, **kw):
    offline = Model(b.g)
    reports = []
    for c in chunks:
        s, r = stream(offline, c, **kw)
        assert r.verification["bit_exact"]
        _check(offline, s)
        reports.append((s, r))
    return reports


# ---- frame-axis Pad follows the data -------------------------------------------------------------------

def _ppq_pad(b: GraphBuilder, x: str, left: int) -> str:
    """ESP-PPQ's export of F.pad on an NWC tensor: Transpose -> Pad (NCW) -> Transpose."""
    t = b.transpose(x, [0, 2, 1])
    shp = b.shapes[t]
    pads = [0, 0, left, 0, 0, 0]
    p = b.pad(t, pads)
    assert b.shapes[p] == (shp[0], shp[1], shp[2] + left)
    return p


def test_wavenet_pad_feeds_filter_and_gate_with_one_shared_cache():
    b = GraphBuilder(11)
    x = b.input((1, 16, 8))
    h = b.conv(x, 8, k=2)
    for d in (1, 2, 4):
        p = _ppq_pad(b, h, d)  # one padded tensor, two consumers (each through its own Transpose)
        f = b.conv_full(b.transpose(p, [0, 2, 1]), 8, kernel=[2], dilations=[d], out_exp=-4)
        g = b.conv_full(b.transpose(p, [0, 2, 1]), 8, kernel=[2], dilations=[d], out_exp=-4)
        z = b.binary("Mul", b.tanh(f), b.sigmoid(g), out_exp=b.exp(h))
        h = b.binary("Add", h, z)
    b.output(h)
    for s, r in _stream_all(b, [1, 2, 4, 16]):
        ops = [n.op_type for n in s.graph.nodes]
        assert "Pad" not in ops
        assert ops.count("StreamingCache") == 4  # conv k=2 + one shared cache per layer
        assert sorted(c["frames"] for c in r.caches) == [1, 1, 2, 4]


def test_consumers_needing_different_histories_share_the_longest_cache():
    """One padded tensor read by a k=3 conv (2 frames of history) and a k=5 conv with 2 more frames of its own
    padding (4 frames): one 4-frame cache; the k=3 conv reads its newest frames through a Slice."""
    b = GraphBuilder(29)
    x = b.input((1, 12, 6))
    y = b.conv(x, 6, k=1)
    p = b.pad_time(y, 2)
    a = b.conv_full(p, 6, kernel=[3], out_exp=b.exp(y) + 2)
    c = b.conv_full(p, 6, kernel=[5], pads=[2, 0], out_exp=b.exp(y) + 2)
    b.output(b.binary("Add", a, c))
    for s, r in _stream_all(b, [1, 2, 3]):
        assert [cc["frames"] for cc in r.caches] == [4]
        assert [n.op_type for n in s.graph.nodes].count("StreamingCache") == 1


@pytest.mark.parametrize("pool", ["MaxPool", "AveragePool"])
@pytest.mark.parametrize("signed", [False, True])
def test_pad_then_pool(pool, signed):
    """F.pad + a pool: the Pad's zeros are real zeros offline, so a zero cache equals them even for MaxPool
    of a signed input."""
    b = GraphBuilder(12)
    x = b.input((1, 12, 6))
    y = b.conv(x, 6, k=1, act="Linear" if signed else "Relu")
    y = b.pool(b.pad_time(y, 2), pool, 3, pads=(0, 0))
    b.output(b.conv(y, 4, k=1))
    _stream_all(b, [1, 3, 4])


def test_maxpool_own_padding_needs_nonneg_input_proven_through_the_graph():
    b = GraphBuilder(13)
    x = b.input((1, 12, 6))
    y = b.conv(x, 6, k=1, act="Relu")
    y = b.transpose(b.transpose(y, [0, 2, 1]), [0, 2, 1])  # non-negativity travels through data movement
    y = b.pool(y, "MaxPool", 3)
    b.output(y)
    _stream_all(b, [2, 3])


@pytest.mark.parametrize("between", ["relu", "requantize", "tanh", "transpose2"])
def test_pad_travels_through_zero_preserving_ops(between):
    b = GraphBuilder(14)
    x = b.input((1, 12, 6))
    y = b.conv(x, 6, k=1)
    p = b.pad_time(y, 2)
    if between == "relu":
        p = b.relu(p)
    elif between == "requantize":
        p = b.requantize(p, b.exp(p) + 1)
    elif between == "tanh":
        p = b.tanh(p)
    else:
        p = b.transpose(b.transpose(p, [0, 2, 1]), [0, 2, 1])
    b.output(b.conv(p, 6, k=3, pads=(0, 0)))
    _stream_all(b, [1, 2, 3])


@pytest.mark.parametrize("left, right, delay", [(1, 1, 1), (2, 2, 0), (0, 2, 2)])
def test_pad_after_the_end_is_right_padding_of_the_window_that_reads_it(left, right, delay):
    """F.pad on both sides ('same'): lookahead, with --allow-lookahead; with left padding that already makes the
    window causal, the right zeros only add offline frames after the end."""
    b = GraphBuilder(35)
    x = b.input((1, 12, 6))
    y = b.conv(x, 6, k=1)
    p = b.pad(b.transpose(y, [0, 2, 1]), [0, 0, left, 0, 0, right])  # ESP-PPQ's Transpose -> Pad -> Transpose
    z = b.conv_full(b.transpose(p, [0, 2, 1]), 6, kernel=[3])
    b.output(b.conv(z, 4, k=1))
    if delay:
        with pytest.raises(StreamingError, match="future frames"):
            stream(Model(b.g), 2)
    for s, r in _stream_all(b, [1, 2, 3], allow_lookahead=bool(delay)):
        assert r.delay_frames == delay
        assert "Pad" not in [n.op_type for n in s.graph.nodes]


def test_pad_refused_above_an_op_that_does_not_map_zero_to_zero():
    b = GraphBuilder(15)
    x = b.input((1, 12, 6))
    p = b.sigmoid(b.pad_time(b.conv(x, 6, k=1), 2))
    b.output(b.conv(p, 6, k=3, pads=(0, 0)))
    with pytest.raises(StreamingError, match=r"Sigmoid.*does not map zero to zero"):
        stream(Model(b.g), 2)


def test_pad_2d_time_and_frequency():
    b = GraphBuilder(16)
    x = b.input((1, 10, 8, 3))
    p = b.pad(x, [0, 1, 1, 0, 0, 0, 1, 0])  # time left 1, frequency both sides 1
    y = b.conv_full(p, 4, kernel=[2, 3], strides=[1, 2])
    y = b.conv_full(b.pad(y, [0, 1, 0, 0, 0, 0, 0, 0]), 4, kernel=[2, 1], depthwise=True)
    b.output(y)
    _stream_all(b, [1, 2, 5])


def test_causal_conv_idiom_full_padding_then_slice():
    """PyTorch's causal conv: pads (k-1)d on both sides, then drop the last (k-1)d outputs."""
    b = GraphBuilder(17)
    x = b.input((1, 12, 4))
    y = b.conv(x, 4, k=3, d=2, pads=(4, 4))
    b.output(b.slice_time(y, 0, -4))
    _stream_all(b, [1, 4])


# ---- ops along other axes ------------------------------------------------------------------------------

def test_ops_along_features_stream_without_caches():
    b = GraphBuilder(18)
    x = b.input((1, 12, 8))
    y = b.conv(x, 8, k=1)
    a, c = b.split(y, [3, 5], axis=2)
    y = b.concat([c, a], axis=2)
    y = b.layer_norm(y)
    m = _reduce(b, y, [2], (1, 12, 1))
    y = b.binary("Sub", y, m)
    y = b.matmul(y, 6)
    sm = b._node("Softmax", [y], b.shapes[y], 0, dtype="float32", axis=-1)
    b.g.nodes[-1].attrs["quant_type"] = make_attribute("S8")
    b.output(sm)
    b.output(b.gather(y, 0, axis=2))  # one feature: [1, T]
    for s, r in _stream_all(b, [1, 3]):
        assert not r.caches


def test_2d_ops_along_frequency_and_channels_stream_without_caches():
    b = GraphBuilder(30)
    x = b.input((1, 8, 4, 3))
    y = b.conv_full(x, 4, kernel=[1, 3], pads=[0, 1, 0, 1])
    scales = b._init("scales", np.array([1, 1, 2, 1], dtype=np.float32))
    roi = b._init("roi", np.zeros(0, dtype=np.float32))
    y = b._node("Resize", [y, roi, scales], (1, 8, 8, 4), b.exp(y), mode="nearest",
                coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    y = b.pad(y, [0, 0, 1, 0, 0, 0, 1, 0])  # frequency only
    st, en, ax = (b._init(n, np.array(v, dtype=np.int64)) for n, v in (("st", [1]), ("en", [9]), ("ax", [2])))
    y = b._node("Slice", [y, st, en, ax], (1, 8, 8, 4), b.exp(y))
    scale = b._init("rms_scale", np.ones(4, dtype=np.float32))
    y = b._node("RMSNormalization", [y, scale], (1, 8, 8, 4), -5, axis=-1, epsilon=1e-5)
    y = b._node("LpNormalization", [y], (1, 8, 8, 4), -7, axis=-1, p=2)
    y = _reduce(b, y, [2], (1, 8, 4), keepdims=0)
    b.output(y)
    for s, r in _stream_all(b, [1, 2, 4]):
        assert not r.caches


def test_per_row_matmul_over_an_interleaved_reshape():
    """[1, C, T, F] -> [C*T, F] -> MatMul -> [1, C, T, N]: time interleaved with channels in between (the
    quantizer's MatMul lowering); a window op on the interleaved tensor is refused."""
    b = GraphBuilder(32)
    x = b.input((1, 8, 6, 3))
    y = b.conv_full(x, 4, kernel=[2, 1], pads=[1, 0, 0, 0])  # [1, T, F, C]
    t = b.transpose(y, [0, 3, 1, 2])  # [1, C, T, F]
    r = b.reshape(t, [4 * 8, 6])
    m = b.matmul(r, 5)
    back = b.reshape(m, [1, 4, 8, 5])
    b.output(b.conv_full(b.transpose(back, [0, 2, 3, 1]), 3, kernel=[2, 1], pads=[1, 0, 0, 0]))
    _stream_all(b, [1, 2, 4])

    b = GraphBuilder(33)
    x = b.input((1, 8, 6, 3))
    r = b.reshape(b.transpose(x, [0, 3, 1, 2]), [1, 3 * 8, 6])
    b.output(b.conv_full(r, 4, kernel=[2], pads=[1, 0]))
    with pytest.raises(StreamingError, match="interleaved"):
        stream(Model(b.g), 2)


def test_insert_zeros_along_frequency_streams_per_frame():
    b = GraphBuilder(19)
    x = b.input((1, 8, 4, 3))
    y = b.insert_zeros(x, [1, 2], [0, 1])
    y = b.conv_full(y, 3, kernel=[2, 3], pads=[1, 1, 0, 1])
    b.output(y)
    _stream_all(b, [1, 2])


# ---- up-sampling along time ----------------------------------------------------------------------------

def test_conv_transpose_decoder_stride8_kernel16():
    """ConvTranspose1d(k=16, stride=8) as InsertZeros + Conv: a chunk of c frames gives 8c samples; the
    overlap lives in a 15-frame cache."""
    b = GraphBuilder(20)
    x = b.input((1, 8, 6))
    y = b.conv(x, 6, k=2, act="Relu")
    z = b.insert_zeros(y, [8])
    z = b.conv_full(z, 1, kernel=[16], pads=[15, 15])
    b.output(b.slice_time(z, 0, 64))  # the first T*stride samples, as Conv-TasNet's decoder keeps
    for c in (1, 2, 4):
        (s, r), = _stream_all(b, [c])
        out = s.graph.outputs[0]
        assert s.graph.info(out.name).shape[1] == 8 * c
        assert sorted(cc["frames"] for cc in r.caches) == [1, 15]


def test_decimation_and_upsampling_compose():
    b = GraphBuilder(21)
    x = b.input((1, 16, 4))
    y = b.conv_full(x, 6, kernel=[4], strides=[2], pads=[2, 0])  # 16 -> 8 frames
    y = b.insert_zeros(y, [2])
    y = b.conv_full(y, 4, kernel=[4], pads=[3, 3])  # back to 16 frames (+ trailing frames)
    b.output(b.slice_time(y, 0, 16))
    _stream_all(b, [2, 4, 8])


def test_upsampling_with_padding_is_lookahead():
    b = GraphBuilder(22)
    x = b.input((1, 8, 4))
    y = b.insert_zeros(x, [4], [3])
    y = b.conv_full(y, 4, kernel=[8], pads=[5, 5])  # ConvTranspose padding 2: looks 2 samples ahead
    b.output(y)
    with pytest.raises(StreamingError, match="allow-lookahead"):
        stream(Model(b.g), 2)
    for s, r in _stream_all(b, [1, 2], allow_lookahead=True):
        assert r.delay_frames == 2


# ---- recurrent state ----------------------------------------------------------------------------------

def _rnn(b: GraphBuilder, x: str, op: str, hidden: int, direction: str = "forward", state_input: bool = False):
    """GRU/LSTM over [1, T, C] (layout 0 inside: [T, 1, C]); returns ([1, T, hidden], state output names)."""
    T, C = b.shapes[x][1], b.shapes[x][2]
    nd = 2 if direction == "bidirectional" else 1
    gates = 3 if op == "GRU" else 4
    xt = b.transpose(x, [1, 0, 2])
    w = b._init("W", b.rng.integers(-90, 91, size=(nd, gates * hidden, C)).astype(np.int8), (-7,))
    r = b._init("R", b.rng.integers(-90, 91, size=(nd, gates * hidden, hidden)).astype(np.int8), (-7,))
    bias = b._init("B", b.rng.integers(-300, 301, size=(nd, 2 * gates * hidden)).astype(np.int16), (-9,))
    inputs = [xt, w, r, bias, ""]
    if state_input:
        b.g.inputs.append(ValueInfo("h0", "int8", (nd, 1, hidden), (-7,)))
        b.shapes["h0"] = (nd, 1, hidden)
        inputs.append("h0")
    y, yh = b._name("Y"), b._name("Y_h")
    outs = [y, yh]
    b._value(y, (T, nd, 1, hidden), -7)
    b._value(yh, (nd, 1, hidden), -7)
    if op == "LSTM":
        yc = b._name("Y_c")
        b._value(yc, (nd, 1, hidden), -9, "int16")
        outs.append(yc)
    node = Node(op, b._name(op), inputs, outs)
    node.attrs["hidden_size"] = make_attribute(hidden)
    node.attrs["direction"] = make_attribute(direction)
    node.attrs["gate_exponent"] = make_attribute(-9)
    if op == "GRU":
        node.attrs["linear_before_reset"] = make_attribute(1)
    b.g.nodes.append(node)
    out = b.reshape(y, [1, T, nd * hidden])
    return out, outs[1:]


@pytest.mark.parametrize("op", ["GRU", "LSTM"])
def test_recurrent_state_is_carried_between_chunks(op, tmp_path):
    b = GraphBuilder(23)
    x = b.input((1, 12, 16))
    y = b.conv(x, 16, k=2, out_exp=-5)
    y, _ = _rnn(b, y, op, 16)
    b.output(b.conv(y, 4, k=1))
    offline = Model(b.g)
    for c in (1, 3, 4):
        s, r = stream(offline, c)
        assert r.verification["bit_exact"]
        pairs = json.loads(s.graph.metadata["streaming_state"])
        assert [p["kind"] for p in pairs] == (["h"] if op == "GRU" else ["h", "c"])
        node = pairs[0]["node"]
        assert pairs[0]["input"] == f"{node}_h_in" and pairs[0]["output"] == f"{node}_h_out"
        assert {v.name for v in s.graph.inputs} >= {p["input"] for p in pairs}
        assert {v.name for v in s.graph.outputs} >= {p["output"] for p in pairs}
        assert _check(offline, s) == 12 // c
    # the model on disk carries it too: emu run --compare and --chunks feed the state back
    s.save(tmp_path / "s.espdl")
    offline.save(tmp_path / "o.espdl")
    np.save(tmp_path / "x.npy", random_input(offline, 5)["input"])
    res = CliRunner().invoke(app, ["emu", "run", str(tmp_path / "s.espdl"), "--compare", str(tmp_path / "o.espdl"),
                                   "--input", str(tmp_path / "x.npy"), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["bit_exact"]
    res = CliRunner().invoke(app, ["emu", "run", str(tmp_path / "s.espdl"), "--chunks", "3", "--input",
                                   str(tmp_path / "x.npy")])
    assert res.exit_code == 0, res.output


def test_recurrent_initial_state_input_is_the_state_input(tmp_path):
    b = GraphBuilder(24)
    x = b.input((1, 8, 16))
    y, (yh,) = _rnn(b, x, "GRU", 16, state_input=True)
    b.output(y)
    b.output(yh)
    offline = Model(b.g)
    s, r = stream(offline, 2)
    pairs = json.loads(s.graph.metadata["streaming_state"])
    assert pairs == [{"node": pairs[0]["node"], "kind": "h", "input": "h0", "output": yh}]
    _check(offline, s)
    sess = s.session()
    assert sess.input_names == ["input"]
    # emu run --compare takes the offline model's inputs, the initial state included
    s.save(tmp_path / "s.espdl")
    offline.save(tmp_path / "o.espdl")
    np.savez(tmp_path / "x.npz", **random_input(offline, 4))
    res = CliRunner().invoke(app, ["emu", "run", str(tmp_path / "s.espdl"), "--compare", str(tmp_path / "o.espdl"),
                                   "--input", str(tmp_path / "x.npz")])
    assert res.exit_code == 0, res.output


def test_bidirectional_rnn_is_refused():
    b = GraphBuilder(25)
    x = b.input((1, 8, 16))
    y, _ = _rnn(b, x, "GRU", 8, direction="bidirectional")
    b.output(y)
    with pytest.raises(StreamingError, match="bidirectional.*backward direction needs every future frame"):
        stream(Model(b.g), 2)


# ---- lookahead recorded in the model -------------------------------------------------------------------

def test_lookahead_delay_is_in_the_model(tmp_path):
    b = GraphBuilder(26)
    x = b.input((1, 12, 8))
    y = b.conv(x, 8, k=3, pads=(1, 1), out_exp=b.exp(x))
    b.output(b.binary("Add", x, y))
    offline = Model(b.g)
    s, r = stream(offline, 3, allow_lookahead=True)
    assert s.graph.metadata["streaming_delay_frames"] == "1"
    assert s.session().delay == 1
    assert "delay: 1 frames" in r.render()
    s.save(tmp_path / "s.espdl")
    offline.save(tmp_path / "o.espdl")
    again = chunkwise.load(tmp_path / "s.espdl")
    assert verify_streaming(again, offline, random_input(offline, 1)).bit_exact
    np.save(tmp_path / "x.npy", random_input(offline, 2)["input"])
    cmd = ["emu", "run", str(tmp_path / "s.espdl"), "--compare", str(tmp_path / "o.espdl"), "--input",
           str(tmp_path / "x.npy")]
    res = CliRunner().invoke(app, cmd)
    assert res.exit_code == 0, res.output
    # an explicit wrong delay is still honoured (and fails)
    res = CliRunner().invoke(app, cmd + ["--delay", "0"])
    assert res.exit_code == 3
    res = CliRunner().invoke(app, ["inspect", str(tmp_path / "s.espdl")])
    assert res.exit_code == 0, res.output
    assert "lag the offline model by 1 frames" in res.output


@pytest.mark.parametrize("pads, delay", [((1, 2), 1), ((0, 0), 1), ((0, 1), 2)])
def test_strided_lookahead_and_valid_windows(pads, delay):
    """A strided window that starts early (L < span - stride) runs causally with L' = L + a whole number of
    strides: its output lags by (L' - L) / stride frames."""
    b = GraphBuilder(34)
    x = b.input((1, 16, 4))
    y = b.conv_full(x, 4, kernel=[5] if pads == (0, 1) else [4], strides=[2], pads=list(pads))
    b.output(b.conv(y, 3, k=1))
    kw = {"allow_lookahead": True} if pads[1] else {}
    if pads[1]:
        with pytest.raises(StreamingError, match="future frames"):
            stream(Model(b.g), 2)
    for s, r in _stream_all(b, [2, 4], **kw):
        assert r.delay_frames == delay


# ---- tail heads ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("head", ["gather_last", "gather_k3", "slice_last_flatten", "gather_matmul", "gather_mean"])
def test_tail_heads(head):
    b = GraphBuilder(27)
    x = b.input((1, 12, 8))
    y = b.conv(x, 8, k=3, act="Relu")
    if head == "gather_last":
        y = b.gemm(b.gather(y, 11, axis=1), 5)
    elif head == "gather_k3":
        y = b.gemm(b.gather(y, 9, axis=1), 5)  # the third-newest frame: the input needs 3 frames
    elif head == "slice_last_flatten":
        y = b.gemm(b.flatten(b.slice_time(y, -1, 12)), 5)
    elif head == "gather_matmul":
        y = b.matmul(b.gather(y, 11, axis=1), 5)
    else:
        g = b.gather(y, 11, axis=1)
        y = _reduce(b, g, [1], (1, 1))
    b.output(y)
    for s, r in _stream_all(b, [1, 2, 4]):
        assert set(r.outputs.values()) == {"tail (fixed window)"}


def test_esp_ppq_negative_gather_index_is_made_non_negative():
    """ESP-PPQ exports x[:, -1] as Gather(-1), which ESP-DL does not wrap: the stream selects the newest frame."""
    def build(index):
        b = GraphBuilder(31)
        x = b.input((1, 12, 8))
        y = b.conv(x, 8, k=3, act="Relu")
        b.output(b.gemm(b.gather(y, index, axis=1), 5))
        return Model(b.g)

    meant = build(11)
    for c in (1, 3, 4):
        s, r = stream(build(-1), c)
        assert r.verification["bit_exact"]
        assert any("made non-negative" in n for n in r.notes)
        gather = next(n for n in s.graph.nodes if n.op_type == "Gather")
        assert int(s.graph.initializers[gather.inputs[1]].data) == c - 1
        _check(meant, s)


# ---- refusals ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case, message", [
    ("concat_time", "concatenation along the frame axis"),
    ("layernorm_time", "normalizes over the frame axis"),
    ("reduce_time", "reduces over the frame axis"),
    ("attention", "both operands are streamed"),
    ("pad_right", "needs 2 future frames"),
    ("pad_to_output", "reach the graph output"),
])
def test_clean_refusals(case, message, tmp_path):
    b = GraphBuilder(28)
    x = b.input((1, 12, 8))
    y = b.conv(x, 8, k=1)
    if case == "concat_time":
        y = b.concat([y, y], axis=1)
    elif case == "layernorm_time":
        y = b._node("LayerNormalization", [b.transpose(y, [0, 2, 1])], (1, 8, 12), -5, axis=-1)
    elif case == "reduce_time":
        y = _reduce(b, y, [1], (1, 1, 8))
    elif case == "attention":
        y = b._node("MatMul", [y, b.transpose(y, [0, 2, 1])], (1, 12, 12), b.exp(y) + 4)
    elif case == "pad_right":
        y = b.conv_full(b.pad(y, [0, 0, 0, 0, 2, 0]), 8, kernel=[3])
    else:
        y = b.pad_time(y, 2)
    b.output(y)
    with pytest.raises(StreamingError, match=message) as e:
        stream(Model(b.g), 3)
    assert "cannot stream node" in str(e.value)
    Model(b.g).save(tmp_path / "o.espdl")
    res = CliRunner().invoke(app, ["stream", str(tmp_path / "o.espdl"), "-o", str(tmp_path / "s.espdl"), "-c", "3"])
    assert res.exit_code == 2
    assert not (tmp_path / "s.espdl").exists()
