"""Shape / data-movement ops, Resize and StreamingCache: goldens, naive references, streaming, errors."""

from __future__ import annotations


import numpy as np
import pytest

import naive_shape as naive
from chunkwise.emu.check import check_test_values
from chunkwise.emu.engine import Plan
from chunkwise.emu.rounding import requantize
from chunkwise.errors import UnsupportedError
from chunkwise.ir.graph import Graph, Node, Tensor, ValueInfo, make_attribute
from chunkwise.model import load
from golden_files import GOLDEN, SHARED, golden_params, load_quiet

ZOO = SHARED / "zoo"
OPS = ["Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Concat", "Split", "Slice", "Gather", "Pad",
       "DepthToSpace", "SpaceToDepth", "ReverseSequence", "ScatterND", "Resize"]
MINE = set(OPS) | {"Identity", "InsertZeros", "StreamingCache"}


@pytest.mark.parametrize("path", golden_params(OPS))
def test_golden(path):
    m = load_quiet(path)
    try:
        checks = check_test_values(m)
    except UnsupportedError as e:
        if e.op not in MINE:
            pytest.skip(f"needs {e.op}, not implemented yet")
        raise
    for c in checks:
        assert c.bit_exact, f"{c.name}: {c.mismatches} mismatches, max {c.max_abs_diff}, first at {c.first_mismatch}"


def test_golden_inventory():
    """Every op of this family has goldens in both suites (Resize: int8 only, ESP-DL has no int16 Resize)."""
    if not GOLDEN.is_dir():
        pytest.skip("../shared/golden not present")
    for suite in ("esp32p4_s8", "esp32p4_s16"):
        for op in OPS:
            if op == "Resize" and suite.endswith("s16"):
                continue
            assert list((GOLDEN / suite / op).glob("*.espdl")), f"no goldens for {suite}/{op}"


# ---- one-node graphs -------------------------------------------------------------------------
def run_node(op, inputs, attrs=None, outs=1, out_exp=None, out_dtype=None, target="esp32p4", plan=False):
    """inputs: list of (array, exp, is_const) or None (omitted). Returns the outputs (or the Plan)."""
    g = Graph(name="t")
    names, shapes, feeds = [], {}, {}
    for i, item in enumerate(inputs):
        if item is None:
            names.append("")
            continue
        a, e, const = item
        a = np.asarray(a)
        name = f"in{i}"
        names.append(name)
        exps = () if e is None else (int(e),)
        if const:
            g.initializers[name] = Tensor(name, str(a.dtype), tuple(a.shape), a, exps)
        else:
            g.inputs.append(ValueInfo(name, str(a.dtype), tuple(a.shape), exps))
            shapes[name] = tuple(a.shape)
            feeds[name] = a
    first = np.asarray(inputs[0][0])
    oexp = inputs[0][1] if out_exp is None else out_exp
    onames = [f"out{k}" for k in range(outs)]
    for o in onames:
        g.outputs.append(ValueInfo(o, out_dtype or str(first.dtype), None, () if oexp is None else (int(oexp),)))
    node = Node(op, "n", names, onames, {k: make_attribute(v) for k, v in (attrs or {}).items()})
    g.nodes.append(node)
    p = Plan(g, target, shapes)
    if plan:
        return p, feeds
    res = p.run(feeds)
    return [res[o] for o in onames]


def rnd(shape, dtype="int8", seed=0):
    lo, hi = (-128, 128) if dtype == "int8" else (-32768, 32768)
    return np.random.default_rng(seed).integers(lo, hi, size=shape).astype(dtype)


# ---- shape ops -------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["int8", "int16"])
def test_reshape_flatten_squeeze_unsqueeze(dtype):
    x = rnd((1, 4, 1, 6), dtype)
    (y,) = run_node("Reshape", [(x, -5, False), (np.array([0, -1, 3], np.int64), None, True)])
    assert y.shape == (1, 8, 3) and np.array_equal(y.ravel(), x.ravel())
    (y,) = run_node("Flatten", [(x, -5, False)], {"axis": -1})
    assert y.shape == (4, 6) and np.array_equal(y.ravel(), x.ravel())
    (y,) = run_node("Squeeze", [(x, -5, False), (np.array([-2], np.int64), None, True)])
    assert y.shape == (1, 4, 6)
    (y,) = run_node("Squeeze", [(x, -5, False)])
    assert y.shape == (4, 6)
    (y,) = run_node("Unsqueeze", [(x, -5, False), (np.array([0, -1], np.int64), None, True)])
    assert y.shape == (1, 1, 4, 1, 6, 1) and np.array_equal(y.ravel(), x.ravel())
    (y,) = run_node("Identity", [(x, -5, False)])
    assert np.array_equal(y, x)


def test_reshape_errors():
    x = rnd((2, 6))
    with pytest.raises(UnsupportedError, match="does not hold"):
        run_node("Reshape", [(x, -5, False), (np.array([5, 2], np.int64), None, True)])
    with pytest.raises(UnsupportedError, match="constant"):
        run_node("Reshape", [(x, -5, False), (np.array([12], np.int64), None, False)])


@pytest.mark.parametrize("perm", [[0, 2, 1], [2, 0, 1], [0, -1, 1], None])
def test_transpose(perm):
    x = rnd((2, 3, 5), "int16")
    (y,) = run_node("Transpose", [(x, -9, False)], {"perm": perm} if perm else {})
    p = [q % 3 for q in perm] if perm else [2, 1, 0]
    np.testing.assert_array_equal(y, naive.transpose(x, p))


def test_transpose_5d():
    x = rnd((1, 2, 3, 4, 5))
    (y,) = run_node("Transpose", [(x, -5, False)], {"perm": [0, 1, -3, -1, -2]})
    np.testing.assert_array_equal(y, naive.transpose(x, [0, 1, 2, 4, 3]))


# ---- movement ops ----------------------------------------------------------------------------
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concat(axis):
    a, b, c = rnd((2, 3, 4), seed=1), rnd((2, 3, 4), seed=2), rnd((2, 3, 4), seed=3)
    shp = list(b.shape)
    shp[axis] = 5
    b = rnd(tuple(shp), seed=4)
    (y,) = run_node("Concat", [(a, -5, False), (b, -5, False), (c, -5, True)], {"axis": axis})
    np.testing.assert_array_equal(y, naive.concat([a, b, c], axis % 3))


def test_concat_copies_integers_whatever_the_exponents():
    """dl_module_concat.hpp memcpys every input: no requantization even if exponents differ."""
    a, b = rnd((1, 2, 3), seed=1), rnd((1, 2, 3), seed=2)
    (y,) = run_node("Concat", [(a, -5, False), (b, -7, False)], {"axis": 1}, out_exp=-6)
    np.testing.assert_array_equal(y, np.concatenate([a, b], axis=1))


def test_split():
    x = rnd((1, 10, 3))
    ys = run_node("Split", [(x, -5, False), (np.array([3, 3, 4], np.int64), None, True)], {"axis": 1}, outs=3)
    for y, (s, e) in zip(ys, [(0, 3), (3, 6), (6, 10)]):
        np.testing.assert_array_equal(y, x[:, s:e])
    # without a split input ESP-DL reads num_outputs as the piece size
    ys = run_node("Split", [(x, -5, False)], {"axis": 1, "num_outputs": 4}, outs=3)
    assert [y.shape[1] for y in ys] == [4, 4, 2]
    with pytest.raises(UnsupportedError, match="pieces"):
        run_node("Split", [(x, -5, False)], {"axis": 1, "num_outputs": 4}, outs=2)


SLICES = [
    ([0, 1, 1], [1, 9, -1], [0, 1, 2], [1, 3, 2]),
    ([-1], [-(2**63) + 1], [1], [-1]),                # full flip (ESP-PPQ's form)
    ([-1, -1], [-(2**63) + 1, -(2**63) + 1], [1, 2], [-1, -1]),
    ([0], [10], [0], [3]),
    ([2], [-1], [-1], None),
    ([-2], [-(2**63) + 1], [1], [-1]),                # partial negative range: ESP-DL's own result
    ([3], [0], [2], [-1]),
    ([1, 0], [2**40, 3], None, None),                 # int64 saturated to int32, no axes / steps
]


@pytest.mark.parametrize("starts,ends,axes,steps", SLICES)
def test_slice(starts, ends, axes, steps):
    x = rnd((4, 6, 5), "int16")
    ins = [(x, -9, False), (np.array(starts, np.int64), None, True), (np.array(ends, np.int64), None, True),
           (np.array(axes, np.int64), None, True) if axes is not None else None,
           (np.array(steps, np.int64), None, True) if steps is not None else None]
    while ins[-1] is None:
        ins.pop()
    (y,) = run_node("Slice", ins)
    np.testing.assert_array_equal(y, naive.espdl_slice(x, starts, ends, axes, steps))


def test_slice_full_flip_is_onnx():
    x = rnd((1, 5, 7))
    ins = [(x, -5, False), (np.array([-1, -1], np.int64), None, True),
           (np.array([-(2**63) + 1] * 2, np.int64), None, True), (np.array([1, 2], np.int64), None, True),
           (np.array([-1, -1], np.int64), None, True)]
    (y,) = run_node("Slice", ins)
    np.testing.assert_array_equal(y, x[:, ::-1, ::-1])


def test_slice_empty_is_refused():
    x = rnd((4, 6))
    with pytest.raises(UnsupportedError, match="empty or out of range"):
        run_node("Slice", [(x, -5, False), (np.array([3], np.int64), None, True),
                           (np.array([3], np.int64), None, True)])


@pytest.mark.parametrize("axis,ind", [(0, [[0, 1], [1, 2]]), (1, [2, 0, 0]), (-1, [[3]])])
def test_gather(axis, ind):
    x = rnd((3, 4, 5), "int16")
    idx = np.array(ind, np.int64)
    (y,) = run_node("Gather", [(x, -8, False), (idx, None, True)], {"axis": axis})
    np.testing.assert_array_equal(y, naive.gather(x, idx, axis % 3))


def test_gather_negative_index_refused():
    with pytest.raises(UnsupportedError, match="negative"):
        run_node("Gather", [(rnd((3, 4)), -5, False), (np.array([-1], np.int64), None, True)])


PADS = [
    ((64,), [3, 3], "constant"),
    ((10, 100), [5, 0, 5, 1], "constant"),
    ((2, 10, 9), [0, 2, 1, 0, 2, 1], "edge"),
    ((5, 9, 33), [0, 3, 1, 0, 4, 2], "reflect"),
    ((2, 4, 15, 6), [1, 3, 1, 1, 0, 4, 2, 2], "edge"),
    ((1, 5, 9, 7), [0, 3, 1, 1, 0, 4, 2, 2], "reflect"),
    ((2, 2, 3, 4, 5), [1, 1, 1, 1, 1, 1, 1, 1, 1, 2], "constant"),
    ((2, 2, 5, 4, 6), [0, 0, 1, 1, 2, 0, 0, 2, 2, 1], "reflect"),
    ((1, 2, 3, 2, 2), [0, 1, 1, 1, 1, 0, 1, 1, 1, 1], "edge"),
    ((1, 2, 3, 2, 2, 2), [0, 1, 0, 1, 0, 1, 1, 0, 1, 0, 1, 0], "constant"),
]


@pytest.mark.parametrize("dtype", ["int8", "int16"])
@pytest.mark.parametrize("shape,pads,mode", PADS)
def test_pad(shape, pads, mode, dtype):
    x = rnd(shape, dtype)
    ins = [(x, -5, False), (np.array(pads, np.int64), None, True)]
    value = 0
    if mode == "constant":
        value = 37
        ins.append((np.array(value, dtype=dtype), -5, True))
    (y,) = run_node("Pad", ins, {"mode": mode})
    np.testing.assert_array_equal(y, naive.pad(x, pads, mode, value))


@pytest.mark.parametrize("mode,pads,shape,msg", [
    ("wrap", [1, 1], (4,), "mode"),
    ("reflect", [4, 0], (4,), "smaller than the axis"),
    ("edge", [1, 0, 0, 0, 0, 0, 0, 0, 0, 0], (1, 2, 2, 2, 2), "axis 0"),
    ("edge", [0, 1, 0, 0, 0, 0, 0, 0, 0, 0], (2, 2, 2, 2, 2), "batch > 1"),
    ("constant", [-1, 1], (4,), "negative"),
])
def test_pad_refusals(mode, pads, shape, msg):
    with pytest.raises(UnsupportedError, match=msg):
        run_node("Pad", [(rnd(shape), -5, False), (np.array(pads, np.int64), None, True)], {"mode": mode})


@pytest.mark.parametrize("bs,c,mode", [(2, 8, "CRD"), (3, 18, "CRD"), (2, 8, "DCR"), (3, 27, "DCR"), (2, 4, "CRD")])
def test_depth_to_space(bs, c, mode):
    x = rnd((1, 2, 3, c), "int16")
    (y,) = run_node("DepthToSpace", [(x, -9, False)], {"blocksize": bs, "mode": mode})
    np.testing.assert_array_equal(y, naive.depth_to_space(x, bs, mode))


def test_depth_to_space_dcr_needs_blocksize_channels():
    with pytest.raises(UnsupportedError, match="DCR"):
        run_node("DepthToSpace", [(rnd((1, 2, 2, 12)), -5, False)], {"blocksize": 2, "mode": "DCR"})


@pytest.mark.parametrize("shape,bs", [((2, 8, 4, 8), 4), ((1, 12, 3, 9), 3), ((1, 6, 2, 4), 2)])
def test_space_to_depth(shape, bs):
    x = rnd(shape)
    (y,) = run_node("SpaceToDepth", [(x, -5, False)], {"blocksize": bs})
    np.testing.assert_array_equal(y, naive.space_to_depth(x, bs))


@pytest.mark.parametrize("batch_axis,time_axis,shape", [(0, 1, (3, 7, 2)), (1, 0, (7, 3, 2)), (0, 1, (2, 9))])
def test_reverse_sequence(batch_axis, time_axis, shape):
    x = rnd(shape, "int16")
    nb = shape[batch_axis]
    lens = np.array([1, 7, 4, 0][:nb] if nb > 2 else [9, 3], np.int64)
    (y,) = run_node("ReverseSequence", [(x, -9, False), (lens, None, True)],
                    {"batch_axis": batch_axis, "time_axis": time_axis})
    np.testing.assert_array_equal(y, naive.reverse_sequence(x, lens, batch_axis, time_axis))


@pytest.mark.parametrize("dtype", ["int8", "int16"])
@pytest.mark.parametrize("reduction", ["none", "add", "mul", "max", "min"])
def test_scatter_nd(reduction, dtype):
    data = rnd((4, 3, 5), dtype, seed=5)
    ind = np.array([[1, 2], [3, 0], [1, 2]], np.int64)  # duplicate: applied in order
    upd = rnd((3, 5), dtype, seed=6)
    lo, hi = (-128, 127) if dtype == "int8" else (-32768, 32767)
    (y,) = run_node("ScatterND", [(data, -5, False), (ind, None, True), (upd, -5, False)], {"reduction": reduction})
    np.testing.assert_array_equal(y, naive.scatter_nd(data, ind, upd, reduction, lo, hi))


def test_scatter_nd_runtime_indices_checked():
    data, upd = rnd((4, 3)), rnd((1, 3))
    p, feeds = run_node("ScatterND", [(data, -5, False), (np.array([[1]], np.int64), None, False), (upd, -5, False)],
                        plan=True)
    out = p.run(feeds)["out0"]
    np.testing.assert_array_equal(out[1], upd[0])
    feeds["in1"] = np.array([[7]], np.int64)
    with pytest.raises(UnsupportedError, match="out of range"):
        p.run(feeds)


@pytest.mark.parametrize("shape,stride,opad", [((1, 3, 4, 2), [2, 2], [0, 0]), ((1, 5, 3), [3], [1]),
                                               ((2, 2, 3, 4), [2], [1])])
def test_insert_zeros(shape, stride, opad):
    x = rnd(shape)
    (y,) = run_node("InsertZeros", [(x, 2, False)], {"stride": stride, "output_padding": opad}, out_exp=1)
    nsp = len(shape) - 2
    st = stride * nsp if len(stride) == 1 else stride
    op = opad * nsp if len(opad) == 1 else opad
    np.testing.assert_array_equal(y, naive.insert_zeros(x, st, op))


# ---- Resize ----------------------------------------------------------------------------------
def _resize(x, e_in, e_out, mode, ctm, scales=None, sizes=None, target="esp32p4"):
    ins = [(x, e_in, False), None,
           (np.array(scales, np.float32), None, True) if scales is not None else None,
           (np.array(sizes, np.int64), None, True) if sizes is not None else None]
    while ins[-1] is None:
        ins.pop()
    (y,) = run_node("Resize", ins, {"mode": mode, "coordinate_transformation_mode": ctm}, out_exp=e_out,
                    target=target)
    return y


@pytest.mark.parametrize("shape,scales,sizes", [
    ((1, 5, 5, 16), [1, 1, 2, 3], None), ((1, 5, 7, 3), None, [1, 3, 15, 9]), ((1, 7, 4), [1, 1, 3], None),
    ((1, 6, 6, 2), [1, 1, 0.5, 1.5], None), ((1, 5, 5, 16), [1, 1, 2, 2], None)])
@pytest.mark.parametrize("e_out", [-5, -4, -6])
def test_resize_nearest(shape, scales, sizes, e_out):
    x = rnd(shape)
    y = _resize(x, -5, e_out, "nearest", "asymmetric", scales, sizes)
    nsp = len(shape) - 2
    if sizes is not None:
        out_sp = sizes[2:]
        sc = [np.float32(np.float32(o) / np.float32(i)) for o, i in zip(out_sp, shape[1:1 + nsp])]
    else:
        sc = scales[2:]
        out_sp = [int(np.float32(np.float32(i) * np.float32(s))) for i, s in zip(shape[1:1 + nsp], sc)]
    ref = naive.resize_nearest(x, out_sp, sc, lambda v: requantize(np.array([v]), e_out + 5, "int8", 0)[0])
    np.testing.assert_array_equal(y, ref)


@pytest.mark.parametrize("shape,scales,ctm", [
    ((1, 5, 5, 6), [1, 1, 2, 2], "half_pixel"), ((1, 4, 6, 3), [1, 1, 3, 1.5], "half_pixel"),
    ((1, 5, 5, 4), [1, 1, 2, 2], "align_corners"), ((1, 5, 7), [1, 1, 3], "align_corners"),
    ((1, 6, 5), [1, 1, 2.5], "half_pixel"), ((1, 7, 9, 2), [1, 1, 1.5, 2.5], "half_pixel")])
@pytest.mark.parametrize("e_out", [-5, -4])
def test_resize_linear(shape, scales, ctm, e_out):
    x = rnd(shape, seed=3)
    y = _resize(x, -5, e_out, "linear", ctm, scales)
    nsp = len(shape) - 2
    sc = scales[2:]
    out_sp = [int(np.float32(np.float32(i) * np.float32(s))) for i, s in zip(shape[1:1 + nsp], sc)]
    ref = naive.resize_linear(x, out_sp, sc, ctm == "align_corners", -5, e_out, -128, 127)
    np.testing.assert_array_equal(y, ref)


def test_resize_linear_interpolates():
    """A sanity property independent of float details: a linear ramp stays a ramp (within one step)."""
    x = (np.arange(8, dtype=np.int8) * 10).reshape(1, 8, 1)
    y = _resize(x, -5, -5, "linear", "align_corners", [1, 1, 2]).ravel()
    ideal = np.linspace(0, 70, 16)
    assert np.max(np.abs(y - ideal)) <= 0.5 + 1e-9


@pytest.mark.parametrize("dtype,shape,msg", [("int16", (1, 4, 4, 2), "int16"), ("int8", (2, 4, 4, 2), "batch")])
def test_resize_refusals(dtype, shape, msg):
    with pytest.raises(UnsupportedError, match=msg):
        _resize(rnd(shape, dtype), -5, -5, "nearest", "asymmetric", [1, 1, 2, 2])
    with pytest.raises(UnsupportedError, match="mode"):
        _resize(rnd((1, 4, 4, 2)), -5, -5, "cubic", "asymmetric", [1, 1, 2, 2])


# ---- StreamingCache --------------------------------------------------------------------------
def _cache_plan(chunk, window, feat=3, dtype="int8", frame_axis=1):
    x = rnd((1, chunk, feat), dtype)
    return run_node("StreamingCache", [(x, -6, False)], {"window_size": window, "frame_axis": frame_axis}, plan=True)


@pytest.mark.parametrize("dtype", ["int8", "int16"])
@pytest.mark.parametrize("chunk,window", [(1, 3), (3, 3), (2, 5), (5, 3), (4, 2)])
def test_streaming_cache_equals_sliding_window(chunk, window, dtype):
    """Chunk t's output is frames [t*k, t*k + k + W - 1) of zeros(W - 1) ++ the whole sequence."""
    p, _ = _cache_plan(chunk, window, dtype=dtype)
    full = rnd((1, chunk * 6, 3), dtype, seed=11)
    padded = np.concatenate([np.zeros((1, window - 1, 3), dtype), full], axis=1)
    assert p.state_bytes == (window - 1) * 3 * np.dtype(dtype).itemsize
    p.reset()
    for t in range(6):
        y = p.run({"in0": full[:, t * chunk:(t + 1) * chunk]})["out0"]
        assert y.shape == (1, chunk + window - 1, 3)
        np.testing.assert_array_equal(y, padded[:, t * chunk:t * chunk + chunk + window - 1])


def test_streaming_cache_reset_and_outputs_independent():
    p, _ = _cache_plan(2, 4)
    a, b = rnd((1, 2, 3), seed=1), rnd((1, 2, 3), seed=2)
    y1 = p.run({"in0": a})["out0"]
    snapshot = y1.copy()
    y2 = p.run({"in0": b})["out0"]
    np.testing.assert_array_equal(y1, snapshot)  # an earlier output is not overwritten by the state
    np.testing.assert_array_equal(y2[:, 1:3], a)
    p.reset()
    y3 = p.run({"in0": b})["out0"]
    np.testing.assert_array_equal(y3[:, :3], 0)
    np.testing.assert_array_equal(y3[:, 3:], b)


def test_streaming_cache_negative_axis_and_refusals():
    p, _ = _cache_plan(2, 3, frame_axis=-2)
    y = p.run({"in0": np.ones((1, 2, 3), np.int8)})["out0"]
    assert y.shape == (1, 4, 3)
    with pytest.raises(UnsupportedError, match="window_size"):
        _cache_plan(2, 1)
    with pytest.raises(UnsupportedError, match="frame_axis"):
        _cache_plan(2, 3, frame_axis=3)


@pytest.mark.skipif(not ZOO.is_dir(), reason="../shared/zoo not present")
@pytest.mark.parametrize("target", ["esp32p4", "esp32s3"])
def test_tcn_streaming_equals_offline(target):
    """The tutorial pair: push the offline test input 3 frames at a time; the last output equals offline."""
    off = load(ZOO / f"tutorial_tcn_{target}_model.espdl", target=target)
    st = load(ZOO / f"tutorial_tcn_{target}_streaming_model.espdl", target=target)
    (tin,) = off.graph.test_inputs.values()
    (tout,) = off.graph.test_outputs.values()
    sin = st.graph.inputs[0]
    chunk = int(sin.shape[1])
    x = tin.data
    assert x.shape[1] % chunk == 0
    try:
        plan = st.plan({sin.name: (1, chunk, x.shape[2])})
    except UnsupportedError as e:
        if e.op not in MINE:
            pytest.skip(f"needs {e.op}, not implemented yet")
        raise
    assert sum(1 for s in plan.steps if s.node.op_type == "StreamingCache") == 5
    for run in range(2):  # a second pass after reset() gives the same result
        plan.reset()
        for t in range(0, x.shape[1], chunk):
            y = plan.run({sin.name: np.ascontiguousarray(x[:, t:t + chunk])})[st.graph.outputs[0].name]
        np.testing.assert_array_equal(y.reshape(tout.data.shape), tout.data)
