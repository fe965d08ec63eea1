"""Kernels on edge shapes: 1-element axes, kernel == input size, stride > input, unaligned channels.

CI runs this file a second time with ``NUMBA_BOUNDSCHECK=1`` (and a fresh ``NUMBA_CACHE_DIR`` so numba
recompiles every kernel with bounds checks): an index outside an array inside jitted code then
raises IndexError instead of silently reading or writing neighbouring memory. The plain run compares
the edge cases with slow references (``naive_*.py`` and the naive convolution below).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest

import chunkwise
from chunkwise.convert import stream
from chunkwise.convert.streaming import random_input
from chunkwise.emu.check import check_test_values
from chunkwise.emu.session import Session
from chunkwise.emu.streamcheck import split_chunks
from chunkwise.errors import ChunkwiseError
from chunkwise.ir.build import GraphBuilder, random_causal_graph
from chunkwise.model import Model

import naive_pool
import naive_shape

FIXTURES = Path(__file__).resolve().parent / "fixtures"
GOLDEN = sorted((FIXTURES / "golden").rglob("*.espdl"))
BOUNDSCHECK = os.environ.get("NUMBA_BOUNDSCHECK") == "1"
warnings.simplefilter("ignore", chunkwise.TargetGuessWarning)


def _int8(shape, seed=0):
    return np.random.default_rng(seed).integers(-128, 128, size=shape, dtype=np.int8)


def _run(b: GraphBuilder, x: np.ndarray) -> tuple[Model, np.ndarray]:
    m = Model(b.g)
    out = m.run({"input": x})
    (y,) = out.values()
    planned = m.plan({"input": x.shape}).specs[b.g.outputs[0].name].shape
    assert y.shape == planned
    again = m.run({"input": x})
    assert next(iter(again.values())).tobytes() == y.tobytes()
    return m, y


# ---- every op family: the golden fixtures ------------------------------------------------------
@pytest.mark.parametrize("path", GOLDEN, ids=lambda p: f"{p.parent.parent.name}/{p.parent.name}/{p.stem}")
def test_golden_fixture_runs_inside_its_arrays(path):
    m = chunkwise.load(path)
    try:
        checks = check_test_values(m)
    except ChunkwiseError as e:  # a refusal is fine here (other tests decide what must be supported)
        pytest.skip(f"refused: {e}")
    for c in checks:
        assert c.mismatches >= 0


# ---- convolution ------------------------------------------------------------------------------
def naive_conv(x4, w4, bias, shifts, strides, dil, pads, group, relu, target):
    """NHWC int conv, one output at a time with explicit bounds tests (no padding array)."""
    n, h, wd, cin = x4.shape
    kh, kw, cg, cout = w4.shape
    sh, sw = strides
    dh, dw = dil
    pt, pl, pb, pr = pads
    oh = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + pl + pr - dw * (kw - 1) - 1) // sw + 1
    cout_g = cout // group
    out = np.zeros((n, oh, ow, cout), dtype=x4.dtype)
    for b in range(n):
        for i in range(oh):
            for j in range(ow):
                for co in range(cout):
                    g = co // cout_g
                    acc = int(bias[co])
                    for a in range(kh):
                        for c in range(kw):
                            y, xx = i * sh - pt + a * dh, j * sw - pl + c * dw
                            if 0 <= y < h and 0 <= xx < wd:
                                for ci in range(cg):
                                    acc += int(x4[b, y, xx, g * cg + ci]) * int(w4[a, c, ci, co])
                    v = naive_pool.shift_round(acc, int(shifts[co]), target)
                    if relu:
                        v = max(v, 0)
                    out[b, i, j, co] = naive_pool.sat(v, str(x4.dtype))
    return out


def _conv_reference(m: Model, x: np.ndarray) -> np.ndarray:
    g = m.graph
    (node,) = [n for n in g.nodes if n.op_type in ("Conv", "Gemm")]
    w = g.initializers[node.inputs[1]]
    bias = g.initializers[node.inputs[2]].data.astype(np.int64)
    e_in = g.inputs[0].exponent
    e_out = g.outputs[0].exponent
    shifts = [e_out - e_in - int(e) for e in w.exponents]
    relu = node.attr("activation", "Linear") == "Relu"
    if node.op_type == "Gemm":
        w4 = w.data.reshape(1, 1, *w.data.shape[-2:])
        x4 = x.reshape(1, 1, -1, x.shape[-1])
        y = naive_conv(x4, w4, bias, shifts, (1, 1), (1, 1), (0, 0, 0, 0), 1, relu, m.target)
        return y.reshape(x.shape[:-1] + (w4.shape[-1],))
    group = int(node.attr("group", 1))
    wl = w.data
    if x.ndim == 3:
        x4 = x.reshape(x.shape[0], 1, x.shape[1], x.shape[2])
        w4 = wl.reshape(1, *wl.shape)
        s, d = node.attr("strides"), node.attr("dilations")
        p = node.attr("pads")
        strides, dil, pads = (1, s[0]), (1, d[0]), (0, p[0], 0, p[1])
    else:
        x4, w4 = x, wl
        strides, dil, pads = tuple(node.attr("strides")), tuple(node.attr("dilations")), tuple(node.attr("pads"))
    if group > 1:
        w4 = w4.reshape(w4.shape[0], w4.shape[1], 1, w4.shape[2])
    y = naive_conv(x4, w4, bias, shifts, strides, dil, pads, group, relu, m.target)
    return y.reshape(y.shape[0], y.shape[2], y.shape[3]) if x.ndim == 3 else y


CONV_CASES = {
    # name: (input shape, conv kwargs)
    "1x1x1": ((1, 1, 1), dict(cout=1, k=1)),
    "kernel_eq_input_unaligned": ((1, 5, 3), dict(cout=17, k=5, pads=(0, 0))),
    "stride_gt_input": ((1, 3, 4), dict(cout=5, k=1, s=5, pads=(0, 0))),
    "dilated_causal_short": ((1, 2, 4), dict(cout=16, k=3, d=2)),
    "dilated_kernel_eq_input": ((1, 7, 2), dict(cout=3, k=4, d=2, pads=(0, 0))),
    "depthwise_kernel_eq_input": ((1, 4, 3), dict(depthwise=True, k=4, pads=(0, 0))),
    "depthwise_unaligned_stride": ((1, 3, 17), dict(depthwise=True, k=3, s=4, pads=(2, 0))),
    "depthwise_1_channel": ((1, 6, 1), dict(depthwise=True, k=2, act="Relu")),
    "wide_channels_relu": ((1, 2, 33), dict(cout=31, k=2, act="Relu")),
    "2d_1x1x1x1": ((1, 1, 1, 1), dict(cout=1, k=1, k2=1)),
    "2d_kernel_eq_input": ((1, 3, 3, 3), dict(cout=5, k=3, k2=3, pads=(0, 0))),
    "2d_padded_features": ((1, 2, 2, 16), dict(cout=16, k=2, k2=3, pad2=1, d=3)),
    "2d_depthwise_unaligned": ((1, 4, 3, 19), dict(depthwise=True, k=3, k2=1, s=2, pads=(1, 1))),
}


@pytest.mark.parametrize("name", sorted(CONV_CASES))
def test_conv_edge_shapes(name):
    shape, kw = CONV_CASES[name]
    b = GraphBuilder(seed=len(name))
    x = b.input(shape)
    b.output(b.conv(x, **kw))
    xa = _int8(shape, len(name))
    m, y = _run(b, xa)
    if not BOUNDSCHECK:
        np.testing.assert_array_equal(y, _conv_reference(m, xa))


@pytest.mark.parametrize("shape,nout", [((1, 1), 1), ((1, 1), 17), ((1, 3, 1), 16), ((1, 33), 5)])
def test_gemm_edge_shapes(shape, nout):
    b = GraphBuilder(seed=nout)
    x = b.input(shape)
    b.output(b.gemm(x, nout, act="Relu" if nout % 2 else "Linear"))
    xa = _int8(shape, nout)
    m, y = _run(b, xa)
    if not BOUNDSCHECK:
        np.testing.assert_array_equal(y, _conv_reference(m, xa))


# ---- pooling ----------------------------------------------------------------------------------
POOL_CASES = [
    ((1, 3, 4), 3, 1, (0, 0)),  # kernel == input
    ((1, 2, 5), 1, 5, (0, 0)),  # stride > input
    ((1, 1, 16), 4, 1, (3, 0)),  # one frame, causal padding wider than the input
    ((1, 5, 17), 2, 3, (1, 1)),  # unaligned channels
    ((1, 3, 2, 5), 3, 2, (0, 0)),  # 2-D, kernel == time axis
    ((1, 1, 1, 1), 1, 1, (0, 0)),
]


@pytest.mark.parametrize("op", ["AveragePool", "MaxPool"])
@pytest.mark.parametrize("shape,k,s,pads", POOL_CASES)
def test_pool_edge_shapes(op, shape, k, s, pads):
    b = GraphBuilder(seed=k)
    x = b.input(shape)
    b.output(b.pool(x, op, k, s, pads))
    xa = _int8(shape, k + s)
    m, y = _run(b, xa)
    if BOUNDSCHECK:
        return
    if len(shape) == 3:
        x4 = xa.reshape(shape[0], 1, shape[1], shape[2])
        kern, strides, p4 = (1, k), (1, s), (0, pads[0], 0, pads[1])
    else:
        x4, kern, strides, p4 = xa, (k, 1), (s, 1), (pads[0], 0, pads[1], 0)
    if op == "MaxPool":
        ref = naive_pool.max_pool(x4, kern, strides, p4)
    else:
        e = b.g.inputs[0].exponent
        ref = naive_pool.avg_pool(x4, kern, strides, p4, e, e, m.target)
    np.testing.assert_array_equal(y, ref.reshape(y.shape))


# ---- element-wise, shape and movement ops -------------------------------------------------------
@pytest.mark.parametrize("op", ["Add", "Sub", "Mul"])
@pytest.mark.parametrize("sa,sb", [((1, 1, 1), (1, 1, 1)), ((1, 1, 5), (1, 7, 5)), ((1, 7, 1), (1, 1, 17)),
                                   ((1, 3, 2, 1), (1, 1, 2, 16))])
def test_binary_broadcast_edges(op, sa, sb):
    b = GraphBuilder(seed=3)
    x = b.input(sa)
    other = b.conv(x, cout=sb[-1], k=1) if sa[-1] != sb[-1] else x
    if op in ("Add", "Sub") and b.exp(other) != b.exp(x):
        other = b.conv(x, cout=sb[-1], k=1, out_exp=b.exp(x))
    # reshape the second operand's time axis by a pool with stride > input when it must be 1
    y = b.binary(op, x, other)
    b.output(y)
    _run(b, _int8(sa, 1))


@pytest.mark.parametrize("shape,perm", [((1, 1, 1), (2, 1, 0)), ((1, 5, 1), (0, 2, 1)), ((1, 1, 3, 17), (0, 3, 2, 1)),
                                        ((2, 3, 1, 4), (3, 0, 2, 1))])
def test_transpose_edges(shape, perm):
    b = GraphBuilder(seed=4)
    x = b.input(shape)
    b.output(b.transpose(x, perm))
    xa = _int8(shape, 4)
    _, y = _run(b, xa)
    np.testing.assert_array_equal(y, naive_shape.transpose(xa, perm))


@pytest.mark.parametrize("shape,left", [((1, 1, 1), 1), ((1, 1, 17), 5), ((1, 4, 2, 3), 4)])
def test_pad_edges(shape, left):
    b = GraphBuilder(seed=5)
    x = b.input(shape)
    b.output(b.pad_time(x, left))
    xa = _int8(shape, 5)
    _, y = _run(b, xa)
    pads = [0] * (2 * len(shape))
    pads[1] = left
    np.testing.assert_array_equal(y, naive_shape.pad(xa, pads, "constant", 0))


@pytest.mark.parametrize("shape,start,end", [((1, 1, 3), 0, 1), ((1, 5, 2), -1, 2**63 - 1), ((1, 5, 2), 4, 5),
                                             ((1, 6, 2, 3), -6, 2**63 - 1)])
def test_slice_edges(shape, start, end):
    b = GraphBuilder(seed=6)
    x = b.input(shape)
    b.output(b.slice_time(x, start, end))
    xa = _int8(shape, 6)
    _, y = _run(b, xa)
    np.testing.assert_array_equal(y, xa[:, start:end])


@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 3, 17), (2, 1, 1, 5)])
def test_lut_relu_flatten_edges(shape):
    b = GraphBuilder(seed=7)
    x = b.input(shape)
    s = b.sigmoid(x)
    r = b.relu(x)
    b.output(b.flatten(b.binary("Mul", s, r)))
    xa = _int8(shape, 7)
    m, y = _run(b, xa)
    vals = m.run({"input": xa}, intermediates=True)
    table = b.g.initializers[next(k for k in b.g.initializers if "lut" in k)].data
    np.testing.assert_array_equal(vals[s], table[xa.astype(np.int64) + 128])
    assert y.shape == (shape[0], int(np.prod(shape[1:])))


# ---- compiled streaming programs (one njit interpreter over preallocated arenas) ------------------
@pytest.mark.parametrize("seed", [2, 7, 13, 21, 34])
def test_compiled_program_edges(seed):
    graph, facts = random_causal_graph(seed)
    offline = Model(graph)
    for chunk in sorted({facts["stride"], facts["chunk"]}):
        try:
            smodel, _ = stream(offline, chunk)
        except ChunkwiseError:
            continue
        x = random_input(offline, seed)
        name = next(iter(x))
        chunks = split_chunks(x[name], chunk, 1)
        comp = Session(smodel, compiled=True)
        plain = Session(smodel, compiled=False)
        many = comp.push_many([{name: c} for c in chunks])
        for k, c in enumerate(chunks):
            want = plain.push({name: c})
            for o, v in want.items():
                assert many[o][k].tobytes() == v.tobytes()


# ---- MatMul and recurrent layers (no golden files): tiny and unaligned sizes -----------------------
def _single_node(op, inputs, outputs, attrs, target="esp32p4") -> Model:
    """inputs: (name, dtype, shape, exps, const or None), "" for omitted; outputs: (name, dtype, exps)."""
    from chunkwise.ir.graph import Graph, Node, Tensor, ValueInfo, make_attribute

    g = Graph(name="bounds")
    for name, dtype, shape, exps, const in inputs:
        if const is not None:
            g.initializers[name] = Tensor(name, dtype, tuple(const.shape), const, tuple(exps))
        elif name:
            g.inputs.append(ValueInfo(name, dtype, tuple(shape), tuple(exps)))
    g.outputs = [ValueInfo(n, d, None, tuple(e)) for n, d, e in outputs]
    g.nodes = [Node(op, "n0", [i[0] for i in inputs], [o[0] for o in outputs],
                    {k: make_attribute(v) for k, v in attrs.items()})]
    return Model(g, target=target)


@pytest.mark.parametrize("target", ["esp32p4", "c"])
@pytest.mark.parametrize("sa,sb", [((1, 1), (1, 1)), ((1, 3), (3, 17)), ((2, 1, 5), (5, 1)), ((1, 16), (16,)),
                                   ((3, 2, 31), (31, 9))])
def test_matmul_edges(sa, sb, target):
    rng = np.random.default_rng(len(sa) + sb[-1])
    a = rng.integers(-128, 128, size=sa).astype(np.int8)
    b = rng.integers(-128, 128, size=sb).astype(np.int8)
    m = _single_node("MatMul", [("a", "int8", sa, [-5], None), ("b", "int8", sb, [-6], b)],
                     [("y", "int8", [-4])], {"activation": "Linear"}, target)
    try:
        y = m.run({"a": a})["y"]
    except ChunkwiseError as e:
        pytest.skip(f"refused: {e}")
    assert y.tobytes() == m.run({"a": a})["y"].tobytes()


@pytest.mark.parametrize("op", ["GRU", "LSTM"])
@pytest.mark.parametrize("seq,in_size,hid,ndir", [(1, 1, 1, 1), (2, 3, 17, 2), (1, 16, 1, 2)])
def test_rnn_edges(op, seq, in_size, hid, ndir):
    rng = np.random.default_rng(seq * 100 + hid)
    gates = 3 if op == "GRU" else 4
    w = rng.integers(-128, 128, size=(ndir, gates * hid, in_size)).astype(np.int8)
    r = rng.integers(-128, 128, size=(ndir, gates * hid, hid)).astype(np.int8)
    bias = rng.integers(-2000, 2000, size=(ndir, 2 * gates * hid)).astype(np.int16)
    x = rng.integers(-128, 128, size=(seq, 1, in_size)).astype(np.int8)
    none = ("", "", None, [], None)
    ins = [("x", "int8", x.shape, [-5], None), ("w", "int8", w.shape, [-7], w), ("r", "int8", r.shape, [-7], r),
           ("b", "int16", None, [-9], bias), none, none]
    if op == "LSTM":
        ins.append(none)
    outs = [("y", "int8", [-6]), ("yh", "int8", [-6])] + ([("yc", "int16", [-9])] if op == "LSTM" else [])
    attrs = {"hidden_size": hid, "direction": "bidirectional" if ndir == 2 else "forward", "gate_exponent": -9}
    if op == "GRU":
        attrs["linear_before_reset"] = 1
    m = _single_node(op, ins, outs, attrs)
    try:
        out = m.run({"x": x})
    except ChunkwiseError as e:
        pytest.skip(f"refused: {e}")
    again = m.run({"x": x})
    for k, v in out.items():
        assert v.tobytes() == again[k].tobytes()
