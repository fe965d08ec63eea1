"""Pools, reductions, MatMul, GRU and LSTM: goldens, naive references, errors."""

from __future__ import annotations

import numpy as np
import pytest

import naive_pool as naive
from chunkwise.emu.check import check_test_values
from chunkwise.errors import UnsupportedError
from chunkwise.ir.graph import Graph, Node, Tensor, ValueInfo, make_attribute
from chunkwise.model import Model, load
from golden_files import golden_files, golden_id, golden_params

POOLS = ["AveragePool", "GlobalAveragePool", "MaxPool"]
REDUCES = ["ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceSumSquare",
           "ReduceLogSum", "ReduceLogSumExp", "ReduceL1", "ReduceL2"]
OTHERS = ["MatMul", "GRU", "LSTM"]
MINE = set(POOLS) | set(REDUCES) | set(OTHERS)

# The int16 MaxPool goldens put a Conv in front of the pool; that Conv's golden values come from
# ESP-PPQ's float32 arithmetic and differ from the chip's exact integers on near-ties
# (docs/int16-deviations.md). The MaxPool node itself is checked against the naive reference below.
CONV_DEVIATION = {
    "max_pooling_ishap_1_51_5_5_kshape_3_1_s16.espdl",
    "max_pooling_ishap_1_51_7_7_kshape_2_2_s16.espdl",
    "max_pooling_ishap_1_96_5_5_kshape_2_2_s16.espdl",
    "max_pooling_ishap_1_96_7_7_kshape_2_3_s16.espdl",
}


GOLDEN_FILES = golden_files(POOLS + REDUCES + OTHERS)
CONV_DEVIATION_REASON = "preceding int16 Conv: ESP-PPQ float32 near-ties, docs/int16-deviations.md"


def _run(m):
    foreign = {n.op_type for n in m.graph.nodes} - MINE
    try:
        return m.run(m.test_feeds(), intermediates=True)
    except UnsupportedError as e:
        if e.op in foreign:
            pytest.skip(f"needs {e.op}, not implemented yet")
        raise


@pytest.mark.parametrize("path", golden_params(POOLS + REDUCES + OTHERS,
                                                dict.fromkeys(CONV_DEVIATION, CONV_DEVIATION_REASON)))
def test_golden_bit_exact(path):
    m = load(path)
    _run(m)
    checks = check_test_values(m)
    bad = [c for c in checks if not c.bit_exact]
    assert not bad, "; ".join(f"{c.name}: {c.mismatches} off (max {c.max_abs_diff})" for c in bad)


def _node_reference(m, vals, node):
    g = m.graph
    x = vals[node.inputs[0]]
    xi, yi = g.info(node.inputs[0]), g.info(node.outputs[0])
    t = m.target
    if node.op_type in REDUCES:
        axes = [int(a) for a in g.initializers[node.inputs[1]].data.ravel()] if len(node.inputs) > 1 else []
        return naive.reduce(node.op_type, x, axes, int(node.attr("keepdims", 1)), xi.exponent, yi.exponent, t)
    x4 = x[:, None] if x.ndim == 3 else x
    if node.op_type == "GlobalAveragePool":
        y = naive.avg_pool(x4, x4.shape[1:3], (1, 1), (0, 0, 0, 0), xi.exponent, yi.exponent, t)
        return y.reshape(vals[node.outputs[0]].shape)
    ks, st, pads = node.attr("kernel_shape"), node.attr("strides"), node.attr("pads")
    if len(ks) == 1:
        ks, st, pads = [1, ks[0]], [1, st[0]], [0, pads[0], 0, pads[1]]
    if node.op_type == "AveragePool":
        y = naive.avg_pool(x4, ks, st, pads, xi.exponent, yi.exponent, t)
    else:
        y = naive.max_pool(x4, ks, st, pads)
    return y.reshape(vals[node.outputs[0]].shape)


@pytest.mark.parametrize("path", GOLDEN_FILES, ids=[golden_id(p) for p in GOLDEN_FILES])
def test_golden_node_matches_naive(path):
    """Our node's output equals the naive ESP-DL formula on the node's (emulated) input."""
    m = load(path)
    vals = _run(m)
    node = [n for n in m.graph.nodes if n.op_type in MINE][-1]
    want = _node_reference(m, vals, node)
    np.testing.assert_array_equal(vals[node.outputs[0]], want)


# ---- synthetic models ----------------------------------------------------------------------------
def model(op, inputs, outputs, attrs=None, target="esp32p4"):
    """inputs: (name, dtype, shape, exps, const array or None); outputs: (name, dtype, exps)."""
    inits, vis = {}, []
    for name, dtype, shape, exps, const in inputs:
        if const is not None:
            inits[name] = Tensor(name, dtype, tuple(const.shape), np.asarray(const), tuple(exps))
        elif name:
            vis.append(ValueInfo(name, dtype, tuple(shape), tuple(exps)))
    outs = [ValueInfo(n, d, None, tuple(e)) for n, d, e in outputs]
    node = Node(op, "n0", [i[0] for i in inputs], [o[0] for o in outputs],
                {k: make_attribute(v) for k, v in (attrs or {}).items()})
    g = Graph(name="t", nodes=[node], initializers=inits, inputs=vis, outputs=outs)
    return Model(g, target=target)


def rand(rng, dtype, shape, lo=None, hi=None):
    info = np.iinfo(dtype)
    return rng.integers(info.min if lo is None else lo, (info.max if hi is None else hi) + 1,
                        size=shape).astype(dtype)


TARGETS = ["esp32p4", "esp32s3"]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype", ["int8", "int16"])
@pytest.mark.parametrize("op", ["AveragePool", "MaxPool"])
@pytest.mark.parametrize("case", [
    ((1, 7, 9, 5), [3, 3], [1, 1], [1, 1, 1, 1]),
    ((2, 6, 6, 17), [2, 3], [2, 1], [0, 1, 1, 0]),
    ((1, 3, 3, 4), [5, 5], [1, 1], [2, 2, 2, 2]),
    ((1, 8, 3), [3], [2], [1, 1]),
    ((1, 5, 5, 3), [1, 1], [1, 1], [0, 0, 0, 0]),
])
def test_pool_vs_naive(case, op, dtype, target):
    shape, ks, st, pads = case
    rng = np.random.default_rng(hash((case[0], op, dtype)) % 2**32)
    x = rand(rng, dtype, shape)
    e_in, e_out = (-5, -6) if op == "AveragePool" else (-5, -5)
    attrs = {"kernel_shape": ks, "strides": st, "pads": pads}
    m = model(op, [("x", dtype, shape, [e_in], None)], [("y", dtype, [e_out])], attrs, target)
    y = m.run({"x": x})["y"]
    x4 = x[:, None] if x.ndim == 3 else x
    if len(ks) == 1:
        ks, st, pads = [1, ks[0]], [1, st[0]], [0, pads[0], 0, pads[1]]
    if op == "AveragePool":
        want = naive.avg_pool(x4, ks, st, pads, e_in, e_out, target)
    else:
        want = naive.max_pool(x4, ks, st, pads)
    np.testing.assert_array_equal(y, want.reshape(y.shape))


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("shape", [(1, 4, 5, 6), (2, 9, 3)])
def test_global_average_pool_vs_naive(shape, target):
    rng = np.random.default_rng(7)
    x = rand(rng, "int8", shape)
    m = model("GlobalAveragePool", [("x", "int8", shape, [-4], None)], [("y", "int8", [-7])], {}, target)
    y = m.run({"x": x})["y"]
    x4 = x[:, None] if x.ndim == 3 else x
    want = naive.avg_pool(x4, x4.shape[1:3], (1, 1), (0, 0, 0, 0), -4, -7, target)
    assert y.shape == ((shape[0], 1, shape[-1]) if len(shape) == 3 else (shape[0], 1, 1, shape[-1]))
    np.testing.assert_array_equal(y, want.reshape(y.shape))


def test_average_pool_rounds_ties_by_target():
    """(1 + 2) / 2 = 1.5 -> 2 on both; (1 + 0) / 2 = 0.5 -> 0 half-even (esp32p4), 1 half-up (esp32s3)."""
    x = np.array([[[1], [0], [1], [2]]], dtype=np.int8)  # NWC
    attrs = {"kernel_shape": [2], "strides": [2], "pads": [0, 0]}
    got = {t: model("AveragePool", [("x", "int8", x.shape, [0], None)], [("y", "int8", [0])], attrs, t)
           .run({"x": x})["y"].ravel().tolist() for t in TARGETS}
    assert got == {"esp32p4": [0, 2], "esp32s3": [1, 2]}


REDUCE_CASES = [
    ((10, 10), [0], 0), ((10, 10), [1], 1), ((10,), [0], 0), ((5, 10, 10, 5), [0, 1], 1),
    ((5, 10, 10, 5), [2, 3], 1), ((5, 10, 10, 5), [0, 1, 2, 3], 0), ((5, 6, 5, 3, 10), [0, 2, 3], 0),
    ((4, 3, 5, 6), [1, 3], 1), ((4, 3, 5, 6), [-4, -2], 0), ((3, 4, 5), [1], 0),
]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype", ["int8", "int16"])
@pytest.mark.parametrize("op", REDUCES)
def test_reduce_vs_naive(op, dtype, target):
    rng = np.random.default_rng(abs(hash((op, dtype))) % 2**32)
    for shape, axes, keep in REDUCE_CASES:
        if op == "ReduceProd":
            x = rand(rng, dtype, shape, -40, 40)
        elif op in ("ReduceLogSum",):
            x = rand(rng, dtype, shape, 0, 60)
        else:
            x = rand(rng, dtype, shape)
        n = int(np.prod([shape[a] for a in axes]))
        e_in = -5 if dtype == "int8" else -12
        e_out = {"ReduceSum": e_in + 4, "ReduceL1": e_in + 6, "ReduceSumSquare": 2 * e_in + 10,
                 "ReduceProd": -4 if dtype == "int8" else -6}.get(op, e_in + 1 if op != "ReduceMean" else e_in - 1)
        ax = np.array(axes, dtype=np.int64)
        m = model(op, [("x", dtype, shape, [e_in], None), ("axes", "int64", ax.shape, [0], ax)],
                  [("y", dtype, [e_out])], {"keepdims": keep}, target)
        y = m.run({"x": x})["y"]
        want = naive.reduce(op, x, axes, keep, e_in, e_out, target)
        assert n >= 1
        np.testing.assert_array_equal(y, want, err_msg=f"{shape} axes={axes} keepdims={keep}")


def test_reduce_sum_without_axes_reduces_all():
    x = np.arange(-6, 6, dtype=np.int8).reshape(3, 4)
    m = model("ReduceSum", [("x", "int8", x.shape, [0], None)], [("y", "int8", [0])], {"keepdims": 0})
    assert m.run({"x": x})["y"].tolist() == [int(x.sum())]


# ---- MatMul --------------------------------------------------------------------------------------
MATMUL_CASES = [
    ((1, 10), (10, 16)), ((3, 10), (10, 9)), ((2, 3, 10), (2, 10, 32)), ((10,), (3, 10, 20)),
    ((2, 5, 10), (10,)), ((4, 10), (10,)), ((10,), (10,)), ((5, 32, 10), (1, 10, 33)),
    ((2, 1, 4, 10), (3, 10, 16)), ((1, 3, 7, 12), (2, 1, 12, 8)),
    # large enough for the exact float GEMM path; K = 1100 int8 needs float64 for a dynamic B
    ((4, 64, 48), (48, 40)), ((2, 32, 600), (2, 600, 24)), ((1, 20, 1100), (1100, 8)),
]


@pytest.mark.parametrize("target", ["esp32p4", "esp32s3", "c"])
@pytest.mark.parametrize("dtype", ["int8", "int16"])
@pytest.mark.parametrize("const_b", [True, False])
def test_matmul_vs_naive(const_b, dtype, target):
    rng = np.random.default_rng(3)
    for sa, sb in MATMUL_CASES:
        a, b = rand(rng, dtype, sa), rand(rng, dtype, sb)
        ea, eb = (-5, -6) if dtype == "int8" else (-12, -13)
        eo = ea + eb + (7 if dtype == "int8" else 16) + int(np.log2(sa[-1]))
        relu = bool(rng.integers(2))
        attrs = {"activation": "Relu" if relu else "Linear"}
        feed_b = b if (const_b or b.ndim == 1) else naive.pack_dynamic_b(b, target)
        m = model("MatMul", [("a", dtype, sa, [ea], None), ("b", dtype, sb, [eb], b if const_b else None)],
                  [("y", dtype, [eo])], attrs, target)
        feeds = {"a": a} if const_b else {"a": a, "b": feed_b}
        y = m.run(feeds)["y"]
        want = naive.matmul(a, b, ea, eb, eo, relu, target)
        np.testing.assert_array_equal(y, want, err_msg=f"{sa} x {sb}")


@pytest.mark.parametrize("target", ["esp32p4", "c"])
def test_matmul_native_kn_dynamic_b(target):
    """Newer ESP-PPQ exports mark a dynamic B ``input1_layout='native_kn'``: plain row-major."""
    rng = np.random.default_rng(9)
    for sa, sb in MATMUL_CASES:
        if len(sb) == 1:
            continue
        a, b = rand(rng, "int16", sa), rand(rng, "int16", sb)
        eo = -5 + int(np.log2(sa[-1]))
        m = model("MatMul", [("a", "int16", sa, [-12], None), ("b", "int16", sb, [-13], None)],
                  [("y", "int16", [eo])], {"input1_layout": "native_kn"}, target)
        y = m.run({"a": a, "b": b})["y"]
        np.testing.assert_array_equal(y, naive.matmul(a, b, -12, -13, eo, False, target), err_msg=f"{sa} x {sb}")


def test_matmul_dynamic_b_is_read_packed():
    """Feeding a dynamic B in plain row-major order gives what the chip would compute: not A @ B."""
    rng = np.random.default_rng(5)
    a, b = rand(rng, "int8", (2, 8)), rand(rng, "int8", (8, 32))
    m = model("MatMul", [("a", "int8", a.shape, [0], None), ("b", "int8", b.shape, [0], None)],
              [("y", "int8", [6])])
    packed = m.run({"a": a, "b": naive.pack_dynamic_b(b, "esp32p4")})["y"]
    plain = m.run({"a": a, "b": b})["y"]
    np.testing.assert_array_equal(packed, naive.matmul(a, b, 0, 0, 6, False, "esp32p4"))
    assert not np.array_equal(plain, packed)


# ---- GRU / LSTM ----------------------------------------------------------------------------------
def _rnn_model(op, dtype, seq, in_size, hid, ndir, bias, init, target, rng):
    gates = 3 if op == "GRU" else 4
    ex, ew, er, ey = (-5, -7, -7, -6) if dtype == "int8" else (-11, -14, -14, -12)
    ge = -9
    x = rand(rng, dtype, (seq, 1, in_size))
    w = rand(rng, dtype, (ndir, gates * hid, in_size))
    r = rand(rng, dtype, (ndir, gates * hid, hid))
    b = rand(rng, "int16", (ndir, 2 * gates * hid), -2000, 2000) if bias else None
    h0 = rand(rng, dtype, (ndir, 1, hid)) if init else None
    c0 = rand(rng, "int16", (ndir, 1, hid), -3000, 3000) if (init and op == "LSTM") else None
    ins = [("x", dtype, x.shape, [ex], None), ("w", dtype, w.shape, [ew], w), ("r", dtype, r.shape, [er], r),
           ("b", "int16", None, [ge], b) if bias else ("", "", None, [], None), ("", "", None, [], None),
           ("h0", dtype, None if h0 is None else h0.shape, [ey], h0) if init else ("", "", None, [], None)]
    if op == "LSTM":
        ins.append(("c0", "int16", c0.shape, [ge], c0) if init else ("", "", None, [], None))
    outs = [("y", dtype, [ey]), ("yh", dtype, [ey])] + ([("yc", "int16", [ge])] if op == "LSTM" else [])
    attrs = {"hidden_size": hid, "direction": "bidirectional" if ndir == 2 else "forward", "gate_exponent": ge}
    if op == "GRU":
        attrs["linear_before_reset"] = 1
    m = model(op, ins, outs, attrs, target)
    return m, dict(x=x, w=w, r=r, b=b, h0=None if h0 is None else h0.reshape(ndir, hid),
                   c0=None if c0 is None else c0.reshape(ndir, hid), ex=ex, ew=ew, er=er, ey=ey, ge=ge)


RNN_CASES = [(5, 16, 8, 1, True, False), (4, 7, 5, 2, True, True), (6, 32, 16, 1, False, True), (3, 8, 8, 2, False, False)]


@pytest.mark.parametrize("target", ["esp32p4", "esp32s3", "c"])
@pytest.mark.parametrize("dtype", ["int8", "int16"])
@pytest.mark.parametrize("op", ["GRU", "LSTM"])
def test_rnn_vs_naive(op, dtype, target):
    rng = np.random.default_rng(11)
    for seq, in_size, hid, ndir, bias, init in RNN_CASES:
        m, p = _rnn_model(op, dtype, seq, in_size, hid, ndir, bias, init, target, rng)
        outs = m.run({"x": p["x"]})
        x2 = p["x"].reshape(seq, in_size)
        if op == "GRU":
            want = naive.gru(x2, p["w"], p["r"], p["b"], p["h0"], p["ex"], p["ew"], p["er"], p["ey"], p["ey"],
                             p["ge"], target)
            names = ["y", "yh"]
        else:
            want = naive.lstm(x2, p["w"], p["r"], p["b"], p["h0"], p["c0"], p["ex"], p["ew"], p["er"], p["ey"],
                              p["ey"], p["ge"], target)
            names = ["y", "yh", "yc"]
        for name, w in zip(names, want):
            np.testing.assert_array_equal(outs[name], w, err_msg=f"{name} {seq, in_size, hid, ndir, bias, init}")
        assert np.abs(outs["y"].astype(np.int64)).max() > 0


def test_gate_lut_matches_naive():
    from chunkwise.emu.ops.rnn import gate_lut

    for ge in (-8, -9, -12):
        for bound, is_tanh in ((6.3, False), (3.5, True)):
            table, qmin, qmax = gate_lut(ge, bound, is_tanh)
            ref = naive.Lut(ge, bound, is_tanh)
            assert (qmin, qmax) == (ref.qmin, ref.qmax)
            np.testing.assert_array_equal(table, np.array(ref.table, dtype=np.float32))


# ---- errors --------------------------------------------------------------------------------------
def _prepare_error(op, inputs, outputs, attrs, match):
    m = model(op, inputs, outputs, attrs)
    feeds = {i[0]: np.zeros(i[2], dtype=i[1]) for i in inputs if i[0] and i[4] is None}
    with pytest.raises(UnsupportedError, match=match) as e:
        m.run(feeds)
    assert e.value.node == "n0" and e.value.op == op


X8 = ("x", "int8", (1, 6, 6, 4), [-5], None)


@pytest.mark.parametrize("op,attrs,match", [
    ("MaxPool", {"kernel_shape": [3, 3], "dilations": [2, 2]}, "dilations"),
    ("MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}, "ceil_mode"),
    ("AveragePool", {"kernel_shape": [3, 3], "auto_pad": "SAME_UPPER"}, "auto_pad"),
    ("AveragePool", {"kernel_shape": [2, 2], "pads": [2, 0, 0, 0]}, "smaller than the kernel"),
    ("AveragePool", {"kernel_shape": [9, 9]}, "does not fit"),
    ("AveragePool", {}, "kernel_shape"),
    ("MaxPool", {"kernel_shape": [2, 2, 2]}, "kernel_shape"),
])
def test_pool_errors(op, attrs, match):
    _prepare_error(op, [X8], [("y", "int8", [-5])], attrs, match)


def test_pool_dtype_error():
    _prepare_error("MaxPool", [("x", "int8", (1, 4, 4, 2), [0], None)], [("y", "int16", [0])],
                   {"kernel_shape": [2, 2]}, "dtype")


@pytest.mark.parametrize("shape,axes,attrs,match", [
    ((2, 3, 4, 5, 6), [1, 3], {}, "KRKRK"),
    ((2, 3, 4), [], {"noop_with_empty_axes": 1}, "noop_with_empty_axes"),
    ((2, 3, 4), [3], {}, "out of range"),
    ((2, 3, 4), [1, -2], {}, "twice"),
    ((2, 3, 4), [], {"axes": [1]}, "attribute"),
])
def test_reduce_errors(shape, axes, attrs, match):
    ax = np.array(axes, dtype=np.int64)
    ins = [("x", "int8", shape, [-4], None)] + ([("axes", "int64", ax.shape, [0], ax)] if axes else [])
    _prepare_error("ReduceSum", ins, [("y", "int8", [-4])], attrs, match)


@pytest.mark.parametrize("sa,sb,match", [
    ((2, 3), (4, 5), "inner dimensions"),
    ((1, 2, 3, 4, 5), (5, 6), "rank 5"),
    ((2, 3, 4), (3, 4, 5), "broadcast"),
])
def test_matmul_errors(sa, sb, match):
    _prepare_error("MatMul", [("a", "int8", sa, [0], None), ("b", "int8", sb, [0], None)],
                   [("y", "int8", [0])], {}, match)


def test_matmul_layout_errors():
    a = ("a", "int8", (2, 3), [0], None)
    _prepare_error("MatMul", [a, ("b", "int8", (3, 4), [0], None)], [("y", "int8", [0])],
                   {"input1_layout": "nk"}, "input1_layout")
    _prepare_error("MatMul", [a, ("b", "int8", (3, 4), [0], np.zeros((3, 4), np.int8))], [("y", "int8", [0])],
                   {"input1_layout": "native_kn"}, "constant")


def test_matmul_activation_error():
    _prepare_error("MatMul", [("a", "int8", (2, 3), [0], None), ("b", "int8", (3, 4), [0], None)],
                   [("y", "int8", [0])], {"activation": "PRelu"}, "activation")


@pytest.mark.parametrize("op,change,match", [
    ("GRU", {"linear_before_reset": 0}, "linear_before_reset"),
    ("GRU", {"direction": "reverse"}, "reverse"),
    ("LSTM", {"input_forget": 1}, "input_forget"),
    ("LSTM", {"clip": 3.0}, "clip"),
    ("GRU", {"hidden_size": 5}, "W shape"),
])
def test_rnn_attribute_errors(op, change, match):
    rng = np.random.default_rng(0)
    m, p = _rnn_model(op, "int8", 3, 16, 8, 1, True, False, "esp32p4", rng)
    node = m.graph.nodes[0]
    for k, v in change.items():
        node.attrs[k] = make_attribute(v)
    with pytest.raises(UnsupportedError, match=match):
        m.run({"x": p["x"]})


def test_rnn_batch_error():
    rng = np.random.default_rng(0)
    m, p = _rnn_model("LSTM", "int8", 3, 16, 8, 1, False, False, "esp32p4", rng)
    m.graph.inputs[0].shape = (3, 2, 16)
    with pytest.raises(UnsupportedError, match="batch"):
        m.run({"x": np.zeros((3, 2, 16), dtype=np.int8)})
