"""Element-wise, comparison and requantize kernels: golden models, naive references, errors."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

import naive_elementwise as nv
from chunkwise.emu.engine import Plan
from chunkwise.errors import UnsupportedError
from chunkwise.ir.graph import Graph, Node, Tensor, ValueInfo, make_attribute
from golden_files import golden_params, load_quiet

OPS = ["Add", "Sub", "Mul", "Div", "Mod", "Pow", "Equal", "Greater", "GreaterOrEqual", "Less",
       "LessOrEqual", "Neg", "Relu", "LeakyRelu", "PRelu", "Clip", "Requantize"]


# ---- deviations of ESP-PPQ's goldens from the chip, checked element by element -------------------------
def _single_node_operands(m, plan):
    g = m.graph
    node = g.nodes[-1]
    vals = dict(m.test_feeds())
    vals.update({k: t.data for k, t in g.initializers.items() if t.data is not None})
    return node, vals, g


def _exp(g, name):
    v = g.info(name)
    return int((v.exponents if v is not None else g.initializers[name].exponents)[0])


def _check_mul_s16(m, ours, golden, plan):
    """ESP-PPQ multiplies in float32; the esp32p4 SIMD kernel (esp.vmulas.s16.qacc, exact 40-bit
    lanes, then esp.srcmb.s16.qacc) rounds the exact product. They differ only where float32
    rounding of a product above 2**24 moves it across a rounding boundary."""
    node, vals, g = _single_node_operands(m, plan)
    assert node.op_type == "Mul"
    a = np.broadcast_to(vals[node.inputs[0]], ours.shape)
    b = np.broadcast_to(vals[node.inputs[1]], ours.shape)
    k = Fraction(2) ** (_exp(g, node.inputs[0]) + _exp(g, node.inputs[1]) - _exp(g, node.outputs[0]))
    bad = np.argwhere(ours != golden)
    assert len(bad) <= max(3, ours.size // 1000)
    for idx in map(tuple, bad):
        p = int(a[idx]) * int(b[idx])
        assert abs(p) > 2 ** 24
        assert int(ours[idx]) == nv.sat(nv.round_exact(p * k, True), "int16")
        assert int(golden[idx]) == nv.sat(nv.round_exact(Fraction(float(np.float32(p))) * k, True), "int16")


def _check_prelu_s16(m, ours, golden, plan):
    """ESP-PPQ rounds half to even; ESP-DL's int16 PRelu on esp32p4 is the C prelu_11c
    (dl_base_prelu.cpp:37), an arithmetic right shift (DL_RIGHT_SHIFT, dl_define.hpp:68)."""
    node, vals, g = _single_node_operands(m, plan)
    x = vals[node.inputs[0]]
    alpha = np.asarray(vals[node.inputs[1]]).ravel()
    alpha = np.broadcast_to(alpha, (x.shape[-1],))
    e_in, e_a, e_out = _exp(g, node.inputs[0]), _exp(g, node.inputs[1]), _exp(g, node.outputs[0])
    np.testing.assert_array_equal(ours, nv.prelu_c(x, alpha, e_in, e_a, e_out, "int16"))
    k = Fraction(2) ** (e_in + e_a - e_out)
    bad = np.argwhere(ours != golden)
    assert len(bad) > 0
    for idx in map(tuple, bad[:200]):
        v = int(x[idx])
        assert v < 0
        assert int(golden[idx]) == nv.round_exact(v * int(alpha[idx[-1]]) * k, True)


DEVIATIONS = {("esp32p4_s16", "Mul"): _check_mul_s16, ("esp32p4_s16", "PRelu"): _check_prelu_s16}


@pytest.mark.parametrize("path", golden_params(OPS))
def test_golden(path):
    m = load_quiet(path)
    feeds = m.test_feeds()
    outs = m.run(feeds)
    plan = m.plan({k: v.shape for k, v in feeds.items()})
    handler = DEVIATIONS.get((path.parent.parent.name, path.parent.name))
    for name, t in m.graph.test_outputs.items():
        ours, golden = outs[name], t.data
        assert ours.shape == golden.shape
        if ours.dtype.kind == "f":
            np.testing.assert_allclose(ours, golden, atol=2e-5, rtol=0)
        elif handler is not None:
            handler(m, ours, golden, plan)
        else:
            np.testing.assert_array_equal(ours, golden)


# ---- tiny synthetic graphs ---------------------------------------------------------------------------------
def run_node(op, inputs, out_dtype, out_exp, *, attrs=None, consts=(), target="esp32p4", out_exps=None):
    """Run one node. ``inputs``: list of (array, exponent); indices in ``consts`` become initializers."""
    names = [f"in{i}" for i in range(len(inputs))]
    g = Graph(name="t")
    for i, (arr, e) in enumerate(inputs):
        arr = np.asarray(arr)
        exps = () if e is None else (e,)
        if i in consts:
            g.initializers[names[i]] = Tensor(names[i], str(arr.dtype), tuple(arr.shape), arr, exps)
        else:
            g.inputs.append(ValueInfo(names[i], str(arr.dtype), tuple(arr.shape), exps))
    oexps = out_exps if out_exps is not None else (() if out_exp is None else (out_exp,))
    g.outputs.append(ValueInfo("y", out_dtype, None, oexps))
    node = Node(op, f"node_{op}", names, ["y"])
    for k, v in (attrs or {}).items():
        node.attrs[k] = make_attribute(v)
    g.nodes.append(node)
    feeds = {n: np.asarray(a) for i, (n, (a, _)) in enumerate(zip(names, inputs)) if i not in consts}
    plan = Plan(g, target, {k: v.shape for k, v in feeds.items()})
    return plan.run(feeds)["y"], plan


TARGETS = [("esp32p4", True), ("esp32s3", False), ("c", False)]
rng = np.random.default_rng(1234)


def rand(shape, dtype):
    lo, hi = nv.RANGES[dtype]
    return rng.integers(lo, hi + 1, size=shape).astype(dtype)


BCAST_SHAPES = [((2, 3, 4, 5), (1, 1, 1, 5)), ((5,), (2, 1, 5)), ((2, 1, 4, 1), (1, 3, 1, 6)),
                ((1, 96, 5, 1), (1, 96, 5, 17)), ((3, 1), (1,)), ((1,), (4, 33))]


@pytest.mark.parametrize("dtype", ["int8", "int16"])
@pytest.mark.parametrize("sa,sb", BCAST_SHAPES)
def test_add_sub_broadcast_naive(sa, sb, dtype):
    a, b = rand(sa, dtype), rand(sb, dtype)
    y, _ = run_node("Add", [(a, -5), (b, -5)], dtype, -5, attrs={"quant_type": "S8" if dtype == "int8" else "S16"})
    np.testing.assert_array_equal(y, nv.add(a, b, dtype))
    y, _ = run_node("Sub", [(a, -5), (b, -5)], dtype, -5)
    np.testing.assert_array_equal(y, nv.sub(a, b, dtype))
    y, _ = run_node("Max", [(a, -5), (b, -5)], dtype, -5)
    np.testing.assert_array_equal(y, nv.binary(max, a, b, dtype))
    y, _ = run_node("Min", [(b, -5), (a, -5)], dtype, -5)
    np.testing.assert_array_equal(y, nv.binary(min, b, a, dtype))


@pytest.mark.parametrize("target,half_even", TARGETS)
@pytest.mark.parametrize("dtype", ["int8", "int16"])
@pytest.mark.parametrize("sa,sb", BCAST_SHAPES + [((1, 7, 7, 512), (1, 7, 7, 512)), ((2, 9), (2, 9))])
def test_mul_rounding_naive(sa, sb, dtype, target, half_even):
    a, b = rand(sa, dtype), rand(sb, dtype)
    ea, eb, eo = (-6, -5, -7) if dtype == "int8" else (-13, -13, -12)
    y, plan = run_node("Mul", [(a, ea), (b, eb)], dtype, eo, target=target)
    d0 = _esp_d0(sa, sb)
    via_float = target == "c" or d0 < 16 // np.dtype(dtype).itemsize
    np.testing.assert_array_equal(y, nv.mul(a, b, ea, eb, eo, dtype, half_even, via_float))


def _esp_d0(sa, sb):
    """Length of ESP-DL's merged last axis for these shapes: the trailing run of axes that broadcast
    the same way (both equal, or input 0 is 1, or input 1 is 1); axes of 1 in both fit any run."""
    shape, pa, pb = nv.out_shape(sa, sb)
    n, kind = 1, None
    for x, y, o in zip(reversed(pa), reversed(pb), reversed(shape)):
        if x == 1 and y == 1:
            continue
        k = "eq" if x == y else ("a1" if x == 1 else "b1")
        if kind is None:
            kind = k
        elif k != kind:
            break
        n *= o
    return n


def test_mul_int16_float_path_differs_from_exact():
    """The C-path model and the SIMD model really differ on int16 (so the path choice is tested)."""
    a = np.array([[-14194, -22698, 14404]], dtype=np.int16)
    b = np.array([[-14884, 15119, -11746]], dtype=np.int16)
    exact = nv.mul(a, b, -13, -13, -12, "int16", True, False)
    viaf = nv.mul(a, b, -13, -13, -12, "int16", True, True)
    assert (exact != viaf).all()
    y, plan = run_node("Mul", [(a, -13), (b, -13)], "int16", -12)  # d0 = 3 < 8: C path
    np.testing.assert_array_equal(y, viaf)
    a16 = np.tile(a, (1, 3))
    b16 = np.tile(b, (1, 3))
    y, plan = run_node("Mul", [(a16, -13), (b16, -13)], "int16", -12)  # d0 = 9 >= 8: SIMD
    np.testing.assert_array_equal(y, np.tile(exact, (1, 3)))


@pytest.mark.parametrize("target,half_even", TARGETS)
def test_mul_ties(target, half_even):
    """Products that are exact halves after the shift: 3 * 1 >> 1 = 1.5, 5 * 1 >> 1 = 2.5, -1.5, -2.5."""
    a = np.array([3, 5, -3, -5] * 4, dtype=np.int8)
    b = np.ones(16, dtype=np.int8)
    y, _ = run_node("Mul", [(a, -1), (b, 0)], "int8", 0, target=target)
    expect = [2, 2, -2, -2] if half_even else [2, 3, -1, -2]
    np.testing.assert_array_equal(y, np.array(expect * 4, dtype=np.int8))


@pytest.mark.parametrize("target,half_even", TARGETS)
@pytest.mark.parametrize("din,dout,e_in,e_out", [("int8", "int8", -3, -1), ("int8", "int8", -7, -8),
                                                  ("int16", "int8", -13, -6), ("int8", "int16", -4, -9),
                                                  ("int16", "int16", -15, -12)])
@pytest.mark.parametrize("op", ["RequantizeLinear", "QuantizeLinear"])
def test_requantize_naive(op, din, dout, e_in, e_out, target, half_even):
    x = rand((3, 70), din)
    x[0, :8] = [1, 3, 5, -1, -3, -5, 2, -2]
    scale = np.array(2.0 ** (e_out - e_in), dtype=np.float32)
    zp = np.zeros((), dtype=dout)
    y, _ = run_node(op, [(x, e_in), (scale, 0), (zp, 0)], dout, e_out, consts=(1, 2), target=target)
    np.testing.assert_array_equal(y, nv.requant(x, e_in, e_out, dout, half_even))


@pytest.mark.parametrize("target,half_even", TARGETS)
def test_quantize_dequantize_float(target, half_even):
    x = np.array([0.25, 0.75, -0.25, -0.75, 1.2, 1000.0, -1000.0, 0.49999997], dtype=np.float32)
    y, _ = run_node("QuantizeLinear", [(x, None), (np.float32(0.5), 0), (np.int8(0), 0)], "int8", -1,
                    consts=(1, 2), target=target)
    np.testing.assert_array_equal(y, [nv.sat(nv.round_float32(v * 2, half_even), "int8") for v in x])
    q = rand((4, 5), "int16")
    y, _ = run_node("DequantizeLinear", [(q, -9), (np.float32(2 ** -9), 0), (np.int16(0), 0)], "float32", None,
                    consts=(1, 2), target=target)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, q.astype(np.float64) * 2.0 ** -9)


@pytest.mark.parametrize("target,half_even", TARGETS)
@pytest.mark.parametrize("dtype", ["int8", "int16"])
def test_relu_leaky_clip_naive(dtype, target, half_even):
    x = rand((2, 3, 4, 20), dtype)
    x.ravel()[:6] = [1, 3, -1, -3, 5, -5]
    y, _ = run_node("Relu", [(x, -5)], dtype, -6, target=target)
    np.testing.assert_array_equal(y, nv.relu(x, -5, -6, dtype, half_even))
    y, _ = run_node("Relu", [(x, -5)], dtype, -3, target=target)
    np.testing.assert_array_equal(y, nv.relu(x, -5, -3, dtype, half_even))
    y, _ = run_node("LeakyRelu", [(x, -5)], dtype, -4, attrs={"alpha": 0.1}, target=target)
    np.testing.assert_array_equal(y, nv.leaky_relu(x, 0.1, -5, -4, dtype, half_even))
    lo, hi = (-20, 90) if dtype == "int8" else (-3000, 9000)
    mn, mx = np.array(lo, dtype=dtype), np.array(hi, dtype=dtype)
    y, _ = run_node("Clip", [(x, -5), (mn, -5), (mx, -5)], dtype, -4, consts=(1, 2), target=target)
    np.testing.assert_array_equal(y, nv.clip(x, lo, hi, -5, -4, dtype, half_even))


@pytest.mark.parametrize("target,half_even", TARGETS)
@pytest.mark.parametrize("dtype", ["int8", "int16"])
def test_prelu_naive(dtype, target, half_even):
    x = rand((1, 3, 5, 24), dtype)
    alpha = rand((24, 1, 1), dtype)
    y, plan = run_node("PRelu", [(x, -5), (alpha, -8)], dtype, -6, consts=(1,), target=target)
    al = alpha.ravel()
    if dtype == "int8" and target != "c":
        np.testing.assert_array_equal(y, nv.prelu_simd(x, al, -5, -8, -6, dtype, half_even))
    else:
        np.testing.assert_array_equal(y, nv.prelu_c(x, al, -5, -8, -6, dtype))


def test_lut_activation_int8():
    x = np.arange(-128, 128, dtype=np.int8).reshape(1, 256)
    table = rng.integers(-128, 128, size=256).astype(np.int8)
    names = ["in0"]
    g = Graph(name="t")
    g.inputs.append(ValueInfo("in0", "int8", x.shape, (-5,)))
    g.outputs.append(ValueInfo("y", "int8", None, (-6,)))
    g.initializers["Relu_lut_0"] = Tensor("Relu_lut_0", "int8", (256,), table, (-6,))
    node = Node("Relu", "r", names, ["y"])
    node.attrs["lut"] = make_attribute("Relu_lut_0")
    g.nodes.append(node)
    y = Plan(g, "esp32p4", {"in0": x.shape}).run({"in0": x})["y"]
    np.testing.assert_array_equal(y, table[x.astype(np.int64) + 128])


@pytest.mark.parametrize("target,half_even", TARGETS)
@pytest.mark.parametrize("dtype", ["int8", "int16"])
@pytest.mark.parametrize("sa,sb,const", [((2, 20), (2, 20), ()), ((2, 20), (1,), (1,)), ((1,), (3, 20), (0,)),
                                         ((4, 1), (4, 9), ())])
def test_div_naive(sa, sb, const, dtype, target, half_even):
    a, b = rand(sa, dtype), rand(sb, dtype)
    a.ravel()[:2] = 0
    b.ravel()[:1] = 0
    y, plan = run_node("Div", [(a, -5), (b, -4)], dtype, -6, consts=const, target=target)
    info = plan.steps[0].prepared.info
    lut = dtype == "int8" and (a.size == 1 or b.size == 1)
    assert info["lut"] == lut
    if dtype == "int8":
        variant = "1_n" if a.shape[-1] == 1 else ("n_1" if b.shape[-1] == 1 else "n_n")
    else:
        variant = "n_1" if b.shape[-1] == 1 else ("1_n" if a.shape[-1] == 1 else "n_n")
    assert info["variant"] == variant
    np.testing.assert_array_equal(y, nv.div(a, b, -5, -4, -6, dtype, half_even, variant, lut))


@pytest.mark.parametrize("op,fn", [("Equal", lambda x, y: x == y), ("Greater", lambda x, y: x > y),
                                   ("GreaterOrEqual", lambda x, y: x >= y), ("Less", lambda x, y: x < y),
                                   ("LessOrEqual", lambda x, y: x <= y)])
@pytest.mark.parametrize("sa,sb", BCAST_SHAPES[:4])
def test_compare_naive(op, fn, sa, sb):
    a, b = rand(sa, "int8") // 16, rand(sb, "int8") // 16
    y, _ = run_node(op, [(a, -4), (b, -4)], "bool", 0)
    assert y.dtype == np.bool_
    np.testing.assert_array_equal(y, nv.binary(lambda x, z: bool(fn(x, z)), a, b, np.bool_))


def test_logic_and_neg():
    a = np.array([[0, 1, 1, 0]], dtype=np.bool_)
    b = np.array([[0, 0, 1, 1]], dtype=np.bool_)
    for op, expect in [("And", [0, 0, 1, 0]), ("Or", [0, 1, 1, 1]), ("Xor", [0, 1, 0, 1])]:
        y, _ = run_node(op, [(a, None), (b, None)], "bool", None)
        np.testing.assert_array_equal(y, np.array([expect], dtype=bool))
    y, _ = run_node("Not", [(a, None)], "bool", None)
    np.testing.assert_array_equal(y, ~a)
    x = np.array([-128, -1, 0, 1, 127], dtype=np.int8)
    y, _ = run_node("Neg", [(x, -3)], "int8", -3)
    np.testing.assert_array_equal(y, [127, 1, 0, -1, -127])


# ---- errors ------------------------------------------------------------------------------------------------
def test_broadcast_merging_to_5_axes_is_unsupported():
    a, b = rand((2, 1, 2, 1, 2), "int8"), rand((1, 2, 1, 2, 1), "int8")
    assert np.broadcast_shapes(a.shape, b.shape) == (2, 2, 2, 2, 2)  # numpy accepts it; ESP-DL does not
    with pytest.raises(UnsupportedError) as ei:
        run_node("Add", [(a, -4), (b, -4)], "int8", -4)
    assert "node_Add" in str(ei.value) and "4" in str(ei.value)


def test_incompatible_shapes():
    with pytest.raises(UnsupportedError) as ei:
        run_node("Mul", [(rand((2, 3), "int8"), -4), (rand((2, 4), "int8"), -4)], "int8", -4)
    assert "node_Mul" in str(ei.value)


def test_dtype_mismatch_and_quant_type():
    with pytest.raises(UnsupportedError) as ei:
        run_node("Sub", [(rand((2, 3), "int8"), -4), (rand((2, 3), "int16"), -4)], "int8", -4)
    assert "node_Sub" in str(ei.value)
    with pytest.raises(UnsupportedError):
        run_node("Add", [(rand((2, 3), "int8"), -4), (rand((2, 3), "int8"), -4)], "int8", -4,
                 attrs={"quant_type": "S16"})


def test_prelu_needs_4d():
    with pytest.raises(UnsupportedError) as ei:
        run_node("PRelu", [(rand((1, 5, 8), "int16"), -5), (rand((8, 1, 1), "int16"), -8)], "int16", -5,
                 consts=(1,))
    assert "node_PRelu" in str(ei.value)
