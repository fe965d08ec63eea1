"""Conv / Gemm / ConvTranspose (InsertZeros + Conv): goldens, the int16 deviations, naive references."""

from __future__ import annotations

import numpy as np
import pytest

from chunkwise.emu.check import check_test_values
from chunkwise.emu.ops import conv as conv_mod
from chunkwise.errors import UnsupportedError
from chunkwise.ir.graph import Graph, Node, Tensor, ValueInfo, make_attribute
from chunkwise.model import Model, load
from golden_files import golden_files, golden_params

OPS = ["Conv", "Gemm", "ConvTranspose"]

# ESP-PPQ computes these int16 goldens in torch float32; the chip accumulates exact integers
# (docs/int16-deviations.md). file -> number of output elements that differ by one.
INT16_DEVIATIONS = {
    "conv1d_ishap_1_22_29_kshap_33_22_3_s16.espdl": 3,
    "conv2d_ishap_1_16_100_50_kshap_32_16_1_1_s16.espdl": 28,
    "conv2d_ishap_1_16_20_20_kshap_32_16_1_1_s16.espdl": 2,
    "conv2d_ishap_1_16_22_22_kshap_32_16_5_5_relu_s16.espdl": 1,
    "conv2d_ishap_1_16_3_3_kshap_16_16_3_3_s16.espdl": 1,
    "conv2d_ishap_1_22_19_23_kshap_33_22_3_3_s16.espdl": 14,
    "conv2d_ishap_1_27_3_3_kshap_27_27_5_5_s16.espdl": 1,
    "conv2d_ishap_1_32_19_23_kshap_16_32_3_3_s16.espdl": 2,
    "conv2d_ishap_1_3_100_50_kshap_16_3_3_3_relu_s16.espdl": 4,
    "depthwise_conv2d_ishap_1_32_100_50_kshap_32_1_3_3_relu_s16.espdl": 8,
    "transpose_conv1d_ishap_1_16_20_kshap_16_32_5_relu_s16.espdl": 2,
    "transpose_conv2d_ishap_1_16_20_20_kshap_32_16_5_5_s16.espdl": 15,
    "transpose_conv2d_ishap_1_16_20_20_kshap_35_16_5_5_s16.espdl": 16,
    "transpose_conv2d_ishap_1_3_20_20_kshap_16_3_3_3_relu_s16.espdl": 4,
    "transpose_conv2d_ishap_1_8_20_20_kshap_32_8_1_1_s16.espdl": 7,
}
TIE_WINDOW = 0.006  # output units: every deviation is an exact value this close to k + 0.5


GOLDEN_FILES = golden_files(OPS)
DEVIATION_FILES = [p for p in GOLDEN_FILES if p.name in INT16_DEVIATIONS]
DEVIATION_REASON = "ESP-PPQ float32 golden vs the chip's exact int16 conv: docs/int16-deviations.md"


def _run(m):
    try:
        return m.run(m.test_feeds(), intermediates=True)
    except UnsupportedError as e:
        if e.op not in OPS:
            pytest.skip(f"needs {e.op}, not implemented yet")
        raise


@pytest.mark.parametrize("path", golden_params(OPS, dict.fromkeys(INT16_DEVIATIONS, DEVIATION_REASON)))
def test_golden_bit_exact(path):
    m = load(path)
    _run(m)
    bad = [c for c in check_test_values(m) if not c.bit_exact]
    assert not bad, "; ".join(f"{c.name}: {c.mismatches} off (max {c.max_abs_diff})" for c in bad)


# ---- naive exact conv ----------------------------------------------------------------------------
def conv_exact(x, w, bias, strides, pads, dil, group):
    """Exact integer accumulator (Python ints via int64; no overflow at these sizes). x NHWC, w [kh,kw,cg,co]."""
    x = x.astype(np.int64)
    n, h, wd, c = x.shape
    kh, kw, cg, co = w.shape
    pt, pl, pb, pr = pads
    xp = np.zeros((n, h + pt + pb, wd + pl + pr, c), dtype=np.int64)
    xp[:, pt:pt + h, pl:pl + wd] = x
    oh = (h + pt + pb - dil[0] * (kh - 1) - 1) // strides[0] + 1
    ow = (wd + pl + pr - dil[1] * (kw - 1) - 1) // strides[1] + 1
    acc = np.zeros((n, oh, ow, co), dtype=np.int64)
    cout_g = co // group
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, i * dil[0]:i * dil[0] + strides[0] * (oh - 1) + 1:strides[0],
                       j * dil[1]:j * dil[1] + strides[1] * (ow - 1) + 1:strides[1], :]
            for g in range(group):
                acc[..., g * cout_g:(g + 1) * cout_g] += (patch[..., g * cg:(g + 1) * cg]
                                                          @ w[i, j, :, g * cout_g:(g + 1) * cout_g].astype(np.int64))
    if bias is not None:
        acc += bias.astype(np.int64)
    return acc


def _conv_node_exact(m, vals, node):
    """(exact real output in output units, emulated output) of a Conv node."""
    g = m.graph
    x = vals[node.inputs[0]]
    wt = g.initializers[node.inputs[1]]
    w = wt.data
    b = g.initializers[node.inputs[2]].data if len(node.inputs) > 2 and node.inputs[2] else None
    group = int(node.attr("group", 1) or 1)
    st, pads, dil = list(node.attr("strides")), list(node.attr("pads")), list(node.attr("dilations"))
    if x.ndim == 3:
        x, w = x[:, None], w[None]
        st, dil, pads = [1, st[0]], [1, dil[0]], [0, pads[0], 0, pads[1]]
    if group > 1:
        w = w.reshape(w.shape[0], w.shape[1], 1, -1)
    acc = conv_exact(x, w, b, st, pads, dil, group)
    e_in, e_out = g.info(node.inputs[0]).exponent, g.info(node.outputs[0]).exponent
    e_w = np.array(wt.exponents if len(wt.exponents) > 1 else list(wt.exponents) * acc.shape[-1])
    return acc / 2.0 ** (e_out - e_in - e_w), vals[node.outputs[0]].reshape(acc.shape)


@pytest.mark.skipif(not DEVIATION_FILES, reason="../shared/golden not available")
@pytest.mark.parametrize("path", DEVIATION_FILES, ids=[p.name for p in DEVIATION_FILES])
def test_int16_deviations_are_float32_near_ties(path):
    """The documented deviations: exactly the listed count, each off by one, each a near-tie of the
    exact integer result (which our kernel rounds correctly, half to even)."""
    m = load(path)
    vals = _run(m)
    node = m.graph.nodes[-1]
    assert node.op_type == "Conv"
    real, got = _conv_node_exact(m, vals, node)
    lo, hi = -32768, 32767
    ref = np.clip(np.rint(real), lo, hi)
    if node.attr("activation") == "Relu":
        ref = np.maximum(ref, 0)
    np.testing.assert_array_equal(got, ref)  # our kernel = exact integer arithmetic, half-even
    name = m.graph.outputs[0].name
    want = m.graph.test_outputs[name].data.reshape(got.shape).astype(np.int64)
    bad = got.astype(np.int64) != want
    assert int(bad.sum()) == INT16_DEVIATIONS[path.name]
    assert np.all(np.abs(got.astype(np.int64)[bad] - want[bad]) == 1)
    frac = real[bad] - np.floor(real[bad])
    assert np.all(np.abs(frac - 0.5) < TIE_WINDOW), frac


# ---- synthetic -----------------------------------------------------------------------------------
def _conv_model(x_shape, w, bias, attrs, e_in, e_w, e_out, dtype, target):
    inits = {"w": Tensor("w", dtype, tuple(w.shape), w, tuple(e_w))}
    ins = ["x", "w"]
    if bias is not None:
        inits["b"] = Tensor("b", "int64" if dtype == "int16" else "int32", tuple(bias.shape), bias,
                            tuple(e_in + e for e in e_w))
        ins.append("b")
    node = Node("Conv", "n0", ins, ["y"], {k: make_attribute(v) for k, v in attrs.items()})
    g = Graph(name="t", nodes=[node], initializers=inits, inputs=[ValueInfo("x", dtype, tuple(x_shape), (e_in,))],
              outputs=[ValueInfo("y", dtype, None, (e_out,))])
    return Model(g, target=target)


CONV_CASES = [
    # x shape, kernel (kh, kw), cin, cout, group, strides, pads, dilations
    ((1, 6, 7, 8), (3, 3), 8, 16, 1, [1, 1], [1, 1, 1, 1], [1, 1]),
    ((1, 9, 9, 6), (3, 2), 6, 9, 1, [2, 1], [0, 1, 1, 0], [1, 2]),
    ((2, 5, 5, 12), (3, 3), 12, 12, 12, [1, 1], [1, 1, 1, 1], [1, 1]),
    ((1, 11, 4), (5,), 4, 7, 1, [1], [2, 2], [1]),
    # large enough for the BLAS path: 1x1 direct, 1x1 strided, k x k with pads/dilation, 1-D
    ((1, 16, 12, 24), (1, 1), 24, 40, 1, [1, 1], [0, 0, 0, 0], [1, 1]),
    ((1, 17, 13, 16), (1, 1), 16, 24, 1, [2, 2], [0, 0, 0, 0], [1, 1]),
    ((1, 14, 15, 10), (3, 3), 10, 20, 1, [2, 1], [1, 0, 2, 1], [1, 2]),
    ((2, 40, 12), (5,), 12, 24, 1, [1], [4, 0], [2]),
    # depthwise, strided, large
    ((1, 20, 18, 32), (3, 3), 32, 32, 32, [2, 2], [1, 1, 1, 1], [1, 1]),
]


def _rounded(acc, shifts, target):
    """Exact integer division by 2**shift with the target's rule (Python ints through int64); shift >= 0."""
    assert np.all(shifts >= 0)
    q, r = np.divmod(acc, 2 ** shifts)
    half = np.where(shifts > 0, 2 ** np.maximum(shifts - 1, 0), 1)  # shift 0: r == 0 < half, no rounding
    if target == "esp32p4":
        return q + ((r > half) | ((r == half) & (q % 2 == 1)))
    return q + (r >= half)


def _check_conv(x_shape, k, cin, cout, group, st, pads, dil, *, dtype, target, x=None, w=None, bias=None,
                e_w=None, e_in=None, e_out=None, relu=None, seed=1):
    """Run one Conv node and compare with :func:`conv_exact`; returns the kernel's strategy."""
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype)
    if x is None:
        x = rng.integers(info.min, info.max + 1, size=x_shape).astype(dtype)
    w_shape = tuple(k) + ((cin, 1) if group > 1 else (cin, cout))
    if w is None:
        w = rng.integers(info.min, info.max + 1, size=w_shape).astype(dtype)
    if bias is None:
        bias = rng.integers(-2**20, 2**20, size=cout).astype("int64" if dtype == "int16" else "int32")
    if e_w is None:
        e_w = [int(v) for v in rng.integers(-16 if dtype == "int16" else -9, -6, size=cout)]
    if e_in is None:
        e_in, e_out = (-5, -5) if dtype == "int8" else (-12, -11)
    if relu is None:
        relu = bool(rng.integers(2))
    attrs = {"kernel_shape": list(k), "strides": st, "pads": pads, "dilations": dil, "group": group,
             "activation": "Relu" if relu else "Linear"}
    m = _conv_model(x_shape, w, bias, attrs, e_in, e_w, e_out, dtype, target)
    y = m.run({"x": x})["y"]
    x4, w4 = (x[:, None], w[None]) if len(x_shape) == 3 else (x, w)
    st4, pads4, dil4 = ((st, pads, dil) if len(x_shape) == 4
                        else ([1, st[0]], [0, pads[0], 0, pads[1]], [1, dil[0]]))
    if group > 1:
        w4 = w4.reshape(w4.shape[0], w4.shape[1], 1, -1)
    acc = conv_exact(x4, w4, bias, st4, pads4, dil4, group)
    want = _rounded(acc, np.array([e_out - e_in - e for e in e_w], dtype=np.int64), target)
    if relu:
        want = np.maximum(want, 0)
    want = np.clip(want, info.min, info.max).astype(dtype)
    np.testing.assert_array_equal(y, want.reshape(y.shape), err_msg=str(x_shape))
    (plan,) = m._plans.values()
    return plan.steps[0].prepared.info["strategy"]


@pytest.mark.parametrize("target", ["esp32p4", "esp32s3"])
@pytest.mark.parametrize("dtype", ["int8", "int16"])
@pytest.mark.parametrize("case", CONV_CASES, ids=[str(c[0]) for c in CONV_CASES])
def test_conv_vs_exact(case, dtype, target):
    strategy = _check_conv(*case, dtype=dtype, target=target)
    macs = np.prod(case[0][:-1]) * np.prod(case[1]) * case[2] * case[3]  # upper bound (stride 1)
    if case[4] > 1:
        assert strategy.startswith("depthwise loops")
    elif macs > 8 * conv_mod.GEMM_MIN_MACS:
        # random full-range int16 weights never fit float32's 2**24: those must take float64
        assert strategy == ("gemm float32" if dtype == "int8" else "gemm float64"), strategy


@pytest.mark.parametrize("target", ["esp32p4", "esp32s3"])
def test_gemm_float32_bound_is_exact_at_the_edge(target):
    """With x = w = -128 except one 127 * 127 term, K = 1024 terms sum to 16129 + 16384 * 1023 < 2**24:
    float32 is exact. K = 1025 gives an odd sum above 2**24, which float32 cannot hold, so the kernel
    must switch to float64. The bias cancels the sum (shift 0), so any accumulation error shows."""
    for cin, want in ((1024, "gemm float32"), (1025, "gemm float64")):
        x = np.full((1, 6, 6, cin), -128, dtype=np.int8)
        x[..., 0] = 127
        w = np.full((1, 1, cin, 8), -128, dtype=np.int8)
        w[0, 0, 0, :] = 127
        total = 127 * 127 + 128 * 128 * (cin - 1)
        bias = (np.arange(8) - 4 - total).astype(np.int32)
        got = _check_conv((1, 6, 6, cin), (1, 1), cin, 8, 1, [1, 1], [0, 0, 0, 0], [1, 1], dtype="int8",
                          target=target, x=x, w=w, bias=bias, e_w=[0] * 8, e_in=0, e_out=0, relu=False)
        assert got == want
        assert conv_mod.gemm_dtype(w.reshape(cin, 8), bias, np.zeros(8, dtype=np.int64), "int8") == \
            np.dtype(want.split()[1])


def test_gemm_refuses_when_float64_is_not_exact():
    w = np.full((1, 1, 4, 2), 32767, dtype=np.int64)
    assert conv_mod.gemm_dtype(w.reshape(4, 2), np.zeros(2), np.zeros(2, dtype=np.int64), "int16") == np.float64
    big = np.full((2**23, 1), 32767, dtype=np.int64)  # 32768 * 32767 * 2**23 > 2**52
    assert conv_mod.gemm_dtype(big, np.zeros(1), np.zeros(1, dtype=np.int64), "int16") is None
    assert conv_mod.gemm_dtype(w.reshape(4, 2), np.zeros(2), np.array([51, 0]), "int16") is None


def test_conv_rejects_auto_pad_and_activation():
    w = np.zeros((3, 3, 4, 4), dtype=np.int8)
    for attrs, match in (({"auto_pad": "SAME_UPPER"}, "auto_pad"), ({"activation": "Sigmoid"}, "activation")):
        m = _conv_model((1, 5, 5, 4), w, None, {"kernel_shape": [3, 3], **attrs}, -5, [-5], -5, "int8", "esp32p4")
        with pytest.raises(UnsupportedError, match=match):
            m.run({"x": np.zeros((1, 5, 5, 4), dtype=np.int8)})


def test_results_are_not_overwritten_by_the_next_run():
    """Conv kernels write into buffers the plan owns; what run() hands out must be the caller's."""
    rng = np.random.default_rng(3)
    w = rng.integers(-128, 128, size=(3, 3, 8, 16)).astype(np.int8)
    attrs = {"kernel_shape": [3, 3], "strides": [1, 1], "pads": [1, 1, 1, 1], "dilations": [1, 1], "group": 1}
    m = _conv_model((1, 12, 12, 8), w, None, attrs, -5, [-7], -5, "int8", "esp32p4")
    x1, x2 = (rng.integers(-128, 128, size=(1, 12, 12, 8)).astype(np.int8) for _ in range(2))
    first = m.run({"x": x1})["y"]
    kept = m.run({"x": x1}, intermediates=True)["y"]
    saved = first.copy()
    second = m.run({"x": x2})["y"]
    assert not np.array_equal(second, saved)
    np.testing.assert_array_equal(first, saved)
    np.testing.assert_array_equal(kept, saved)


@pytest.mark.parametrize("group", [1, 8], ids=["gemm", "depthwise"])
def test_huge_pads_are_refused_before_allocation(group):
    """Fuzzing: pads of 2**31 made prepare() allocate a 240 GiB accumulator row (MemoryError)."""
    from chunkwise.errors import ChunkwiseError

    w = np.ones((3, 3, 8, 1 if group > 1 else 8), dtype=np.int8)
    attrs = {"kernel_shape": [3, 3], "pads": [1, 2**31, 1, 1], "group": group}
    m = _conv_model((1, 6, 6, 8), w, None, attrs, -5, [-5], -5, "int8", "esp32p4")
    with pytest.raises(ChunkwiseError, match="limit"):
        m.run({"x": np.zeros((1, 6, 6, 8), dtype=np.int8)})


@pytest.mark.parametrize("name", ["imagenet_mobilenetv2_s8_p4", "imagenet_mobilenetv2_s8_s3", "yolo11n_320_s8_p4",
                                  "pp_ocr_v6_rec_s16_p4"])
def test_zoo_gemm_path_equals_integer_loops(shared_dir, name, monkeypatch):
    """Every intermediate of real models: the BLAS path (float32 / float64 by the weights' bound) gives
    the integer loops' values exactly (ESP-DL zoo models carry no test values of their own)."""
    path = shared_dir / "zoo" / f"{name}.espdl"
    if not path.exists():
        pytest.skip(f"{path} is absent")
    runs, strategies = [], []
    for min_macs in (conv_mod.GEMM_MIN_MACS, 2**62):
        monkeypatch.setattr(conv_mod, "GEMM_MIN_MACS", min_macs)
        m = load(path)
        rng = np.random.default_rng(7)
        feeds = {v.name: rng.integers(-128, 128, size=v.shape).astype(v.dtype) for v in m.graph.inputs}
        runs.append(m.run(feeds, intermediates=True))
        (plan,) = m._plans.values()
        strategies.append({s.prepared.info.get("strategy") for s in plan.steps if s.node.op_type == "Conv"})
    assert any(s and s.startswith("gemm") for s in strategies[0])
    assert not any(s and s.startswith("gemm") for s in strategies[1])
    fast, loops = runs
    assert fast.keys() == loops.keys()
    for k in fast:
        np.testing.assert_array_equal(fast[k], loops[k], err_msg=k)


def test_one_model_run_from_several_threads():
    """A plan's steps share work buffers and output buffers; runs from several threads are serialized
    (Plan.run holds a lock), so each caller gets its own input's result."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(11)
    w = rng.integers(-128, 128, size=(3, 3, 16, 32)).astype(np.int8)
    attrs = {"kernel_shape": [3, 3], "strides": [1, 1], "pads": [1, 1, 1, 1], "dilations": [1, 1], "group": 1}
    m = _conv_model((1, 24, 24, 16), w, None, attrs, -5, [-7], -5, "int8", "esp32p4")
    xs = [rng.integers(-128, 128, size=(1, 24, 24, 16)).astype(np.int8) for _ in range(6)]
    want = [m.run({"x": x})["y"] for x in xs]
    with ThreadPoolExecutor(3) as pool:
        got = list(pool.map(lambda x: m.run({"x": x})["y"], xs * 4))
    for i, y in enumerate(got):
        np.testing.assert_array_equal(y, want[i % len(xs)])
