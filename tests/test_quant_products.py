"""MatMul, Gather and ConvTranspose in the quantizer (chunkwise.quant.products): the float-exact passes checked
with onnxruntime, ESP-PPQ's export forms, the emulator, and bit-exactness with ESP-PPQ's corpus exports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import chunkwise
from chunkwise.errors import UnsupportedError
from chunkwise.quant import quantize, supported_float_ops
from chunkwise.quant.prepare import prepare, to_onnx
from chunkwise.quant.products import conv_transpose_as_conv, gather_nonneg, matmul_to_gemm, param_exponent
from corpus import corpus_models, load_inputs

RNG = np.random.default_rng(0)


def model(nodes, inputs, outputs, inits, opset=13):
    g = helper.make_graph(nodes, "m", [helper.make_tensor_value_info(k, TensorProto.FLOAT, s) for k, s in inputs],
                          [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
                          initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def ort_run(m, feeds):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, feeds)))


def randn(*shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def check_runs(q, tmp_path):
    g = q.graph
    assert g.test_inputs and g.test_outputs
    p = tmp_path / "m.espdl"
    q.save(p)
    back = chunkwise.load(p, target=q.target)
    got = back.run({k: v.data for k, v in g.test_inputs.items()})
    for k, v in g.test_outputs.items():
        np.testing.assert_array_equal(np.asarray(got[k]).reshape(v.data.shape), v.data)


def prepared_equals_original(m, feeds):
    """The prepared float graph (after the product passes) computes what the original does."""
    fg = prepare(m)
    ref = ort_run(m, feeds)
    got = ort_run(to_onnx(fg), feeds)
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-5)
    return fg


# ---- Gather ---------------------------------------------------------------------------------------------

def gather_model(idx, axis=2, shape=(1, 6, 8)):
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3], pads=[2, 0]),
             helper.make_node("Gather", ["c", "i"], ["g"], axis=axis),
             helper.make_node("Gemm", ["g", "fw"], ["y"], transB=1)]
    return model(nodes, [("x", list(shape))], ["y"], {"w": randn(6, shape[1], 3, scale=0.3),
                                                     "i": np.array(idx, np.int64), "fw": randn(5, 6, scale=0.3)})


def test_gather_negative_indices_become_nonnegative_float_exact():
    m = gather_model(-1)
    fg = prepared_equals_original(m, {"x": randn(1, 6, 8)})
    g = next(n for n in fg.nodes if n.op == "Gather")
    assert int(fg.consts[g.inputs[1]]) == 7
    # several indices, another axis
    m2 = model([helper.make_node("Gather", ["x", "i"], ["y"], axis=1)], [("x", [1, 5, 3])], ["y"],
               {"i": np.array([[-1, 0], [-5, 2]], np.int64)})
    fg2 = prepared_equals_original(m2, {"x": randn(1, 5, 3)})
    np.testing.assert_array_equal(fg2.consts[fg2.nodes[0].inputs[1]], [[4, 0], [0, 2]])
    assert gather_nonneg(fg2) == 0  # idempotent


@pytest.mark.parametrize("target", ["esp32p4", "esp32s3", "c"])
def test_gather_last_frame_head_quantizes(target, tmp_path):
    m = gather_model(-1)
    q = quantize(m, randn(16, 6, 8), target=target)
    check_runs(q, tmp_path)
    g = next(n for n in q.graph.nodes if n.op_type == "Gather")
    idx = q.graph.initializers[g.inputs[1]]
    assert idx.dtype == "int64" and int(np.asarray(idx.data)) >= 0
    # the Conv's NWC output is gathered along its stored time axis: no Transpose in front
    assert g.attr("axis") == 1 and "Transpose" not in [n.op_type for n in q.graph.nodes]
    assert q.graph.info(g.outputs[0]).exponents == q.graph.info(g.inputs[0]).exponents
    assert q.quant_report["output_sqnr_db"] > 25


def test_gather_refusals():
    m = gather_model(8)
    with pytest.raises(UnsupportedError, match="out of range"):
        quantize(m, randn(4, 6, 8))
    m2 = model([helper.make_node("Gather", ["x", "i"], ["y"], axis=1)], [("x", [1, 5, 3]), ("i", [2])], ["y"], {})
    m2.graph.input[1].type.tensor_type.elem_type = TensorProto.INT64
    with pytest.raises(UnsupportedError):
        quantize(m2, {"x": randn(4, 5, 3), "i": np.zeros((4, 2))})


# ---- MatMul --------------------------------------------------------------------------------------------

def linear_model(t=12, c=16, n=24, bias=True, relu=False):
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"])]
    out = "mm"
    inits = {"w": randn(c, n, scale=0.25)}
    if bias:
        nodes.append(helper.make_node("Add", ["b", out], ["ab"]))
        inits["b"] = randn(n, scale=0.1)
        out = "ab"
    if relu:
        nodes.append(helper.make_node("Relu", [out], ["r"]))
        out = "r"
    nodes.append(helper.make_node("MatMul", [out, "w2"], ["y"]))
    inits["w2"] = randn(n, 5, scale=0.25)
    return model(nodes, [("x", [1, t, c])], ["y"], inits)


def test_gemm_reshapes_collapse_around_row_wise_activations(tmp_path):
    m = linear_model(relu=False)
    m.graph.node.insert(2, helper.make_node("Tanh", ["ab"], ["th"]))
    m.graph.node[3].input[0] = "th"
    q = quantize(m, randn(16, 12, 16), target="esp32p4")
    check_runs(q, tmp_path)
    assert [n.op_type for n in q.graph.nodes] == ["Reshape", "Gemm", "Tanh", "Gemm", "Reshape"]
    assert q.graph.info(q.graph.nodes[2].outputs[0]).shape == (12, 24)


def test_matmul_to_gemm_float_exact_and_structure():
    m = linear_model(relu=True)
    fg = prepared_equals_original(m, {"x": randn(1, 12, 16)})
    assert [n.op for n in fg.nodes] == ["Reshape", "Gemm", "Reshape", "Relu", "Reshape", "Gemm", "Reshape"]
    gemm = fg.nodes[1]
    assert len(gemm.inputs) == 3 and fg.consts[gemm.inputs[1]].shape == (16, 24)  # bias Add folded into C
    assert matmul_to_gemm(fg) == 0
    # a 2-D input needs no Reshape
    m2 = model([helper.make_node("MatMul", ["x", "w"], ["y"])], [("x", [3, 16])], ["y"], {"w": randn(16, 4)})
    fg2 = prepared_equals_original(m2, {"x": randn(3, 16)})
    assert [n.op for n in fg2.nodes] == ["Gemm"]


@pytest.mark.parametrize("target", ["esp32p4", "esp32s3", "c"])
@pytest.mark.parametrize("bits", [8, 16])
def test_framewise_linear_quantizes_as_gemm(target, bits, tmp_path):
    m = linear_model(relu=True)
    q = quantize(m, randn(16, 12, 16), target=target, bits=bits)
    check_runs(q, tmp_path)
    ops = [n.op_type for n in q.graph.nodes]
    assert ops.count("Gemm") == 2 and "MatMul" not in ops
    for n in q.graph.nodes:
        if n.op_type == "Gemm":
            w = q.graph.initializers[n.inputs[1]]
            assert w.dims[:2] == (1, 1) and w.layout != "UNK"
            assert len(w.exponents) == (w.dims[3] if target == "esp32p4" else 1)
    assert q.quant_report["output_sqnr_db"] > (20 if bits == 8 else 50), q.quant_report["output_sqnr_db"]


@pytest.mark.parametrize("node", ["MatMul_0", "Add_1"])
def test_framewise_linear_mixed_precision(node, tmp_path):
    """int16_nodes may name the MatMul or its bias Add: the Gemm and its Reshapes run in int16 together."""
    m = linear_model(relu=True)
    for i, n in enumerate(m.graph.node):
        n.name = f"{n.op_type}_{i}"
    q = quantize(m, randn(16, 12, 16), target="esp32p4", int16_nodes=[node])
    check_runs(q, tmp_path)
    qt = [(n.op_type, n.attr("quant_type")) for n in q.graph.nodes]
    assert qt == [("Reshape", "S16"), ("Gemm", "S16"), ("RequantizeLinear", "S8"), ("Gemm", "S8"), ("Reshape", "S8")]


@pytest.mark.parametrize("target", ["esp32p4", "esp32s3", "c"])
def test_dynamic_and_batched_matmul(target, tmp_path):
    # both operands activations: ESP-DL's MatMul with B in its row-major order
    m = model([helper.make_node("Tanh", ["a"], ["ta"]), helper.make_node("MatMul", ["ta", "b"], ["y"])],
              [("a", [1, 6, 8]), ("b", [1, 8, 5])], ["y"], {})
    q = quantize(m, {"a": randn(16, 6, 8), "b": randn(16, 8, 5)}, target=target)
    check_runs(q, tmp_path)
    mm = next(n for n in q.graph.nodes if n.op_type == "MatMul")
    assert mm.attr("input1_layout") == "native_kn"
    assert q.quant_report["output_sqnr_db"] > 25
    # a constant B with batch dims stays a MatMul, B packed per matrix with one exponent
    m2 = model([helper.make_node("MatMul", ["a", "w"], ["y"])], [("a", [2, 6, 8])], ["y"], {"w": randn(2, 8, 20)})
    q2 = quantize(m2, randn(16, 2, 6, 8), target=target)
    check_runs(q2, tmp_path)
    mm = next(n for n in q2.graph.nodes if n.op_type == "MatMul")
    w = q2.graph.initializers[mm.inputs[1]]
    assert mm.attr("input1_layout") == "packed" and len(w.exponents) == 1 and w.layout != "UNK"
    assert q2.quant_report["output_sqnr_db"] > 30


def test_constant_first_matmul_operand_refused():
    m = model([helper.make_node("MatMul", ["w", "x"], ["y"])], [("x", [1, 8, 5])], ["y"], {"w": randn(6, 8)})
    with pytest.raises(UnsupportedError, match="constant first operand"):
        quantize(m, randn(4, 8, 5))


def test_param_exponent_is_esp_ppq_percentile_for_int8():
    w = np.zeros(20000, np.float32)
    w[0] = 10.0  # one outlier: ESP-PPQ's kthvalue at int(n * 0.9999) skips it
    w[1:3] = 1.0
    assert param_exponent(w, 8) == int(np.ceil(np.log2(2 * 1.0 / 255)))
    assert param_exponent(w, 16) == int(np.ceil(np.log2(2 * 10.0 / 65535)))
    assert param_exponent(w[:5000], 8) == int(np.ceil(np.log2(2 * 10.0 / 255)))  # <= 10 000 values: the max


# ---- ConvTranspose --------------------------------------------------------------------------------------

CT_CASES = [
    dict(nsp=1, cin=4, cout=6, k=4, s=2, pads=[1, 1], opad=[0], group=1),
    dict(nsp=1, cin=3, cout=5, k=3, s=2, pads=[0, 0], opad=[1], group=1),
    dict(nsp=1, cin=6, cout=6, k=3, s=3, pads=[1, 0], opad=[2], group=6),   # depthwise
    dict(nsp=1, cin=4, cout=4, k=3, s=1, pads=[1, 1], opad=[0], group=1),   # stride 1: no InsertZeros
    dict(nsp=1, cin=4, cout=4, k=3, s=2, pads=[0, 0], opad=[0], group=1, dil=2),
    dict(nsp=2, cin=3, cout=4, k=(1, 4), s=(1, 2), pads=[0, 1, 0, 1], opad=[0, 0], group=1),
    dict(nsp=2, cin=2, cout=3, k=(3, 3), s=(2, 2), pads=[1, 0, 1, 2], opad=[1, 0], group=1),
]


def ct_model(nsp, cin, cout, k, s, pads, opad, group, dil=1, length=10, bias=True, relu=False):
    ks = [k] if nsp == 1 else list(k)
    st = [s] if nsp == 1 else list(s)
    shape = [1, cin] + [length] * nsp
    inits = {"w": randn(cin, cout // group, *ks, scale=0.4)}
    ins = ["x", "w"]
    if bias:
        inits["b"] = randn(cout, scale=0.1)
        ins.append("b")
    nodes = [helper.make_node("ConvTranspose", ins, ["ct" if relu else "y"], name="/up/ConvTranspose",
                              kernel_shape=ks, strides=st, pads=pads, output_padding=opad, group=group,
                              dilations=[dil] * nsp)]
    if relu:
        nodes.append(helper.make_node("Relu", ["ct"], ["y"]))
    return model(nodes, [("x", shape)], ["y"], inits), shape


def _insert_zeros(x, strides, opad):
    nsp = x.ndim - 2
    shp = list(x.shape)
    for i in range(nsp):
        d = shp[2 + i]
        shp[2 + i] = d + (strides[i] - 1) * (d - 1) + opad[i]
    y = np.zeros(shp, x.dtype)
    y[(slice(None), slice(None)) + tuple(slice(0, x.shape[2 + i] * strides[i], strides[i]) for i in range(nsp))] = x
    return y


@pytest.mark.parametrize("case", CT_CASES, ids=[str(i) for i in range(len(CT_CASES))])
def test_conv_transpose_decomposition_is_float_exact(case):
    """InsertZeros + Conv with the flipped, channel-swapped kernel and pads dilation * (k - 1) - pad equals
    ConvTranspose under onnxruntime."""
    m, shape = ct_model(**case)
    x = randn(*shape)
    ref = ort_run(m, {"x": x})["y"]
    nsp, dil = case["nsp"], case.get("dil", 1)
    st = [case["s"]] * nsp if nsp == 1 else list(case["s"])
    ks = [case["k"]] if nsp == 1 else list(case["k"])
    w = numpy_helper.to_array(m.graph.initializer[0])
    p = case["pads"]
    cpads = [dil * (ks[i % nsp] - 1) - p[i] for i in range(2 * nsp)]
    conv = model([helper.make_node("Conv", ["z", "w", "b"], ["y"], kernel_shape=ks, pads=cpads, group=case["group"],
                                   dilations=[dil] * nsp)],
                 [("z", list(_insert_zeros(x, st, case["opad"]).shape))], ["y"],
                 {"w": conv_transpose_as_conv(w, case["group"]), "b": numpy_helper.to_array(m.graph.initializer[1])})
    got = ort_run(conv, {"z": _insert_zeros(x, st, case["opad"])})["y"]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", CT_CASES, ids=[str(i) for i in range(len(CT_CASES))])
@pytest.mark.parametrize("target, bits", [("esp32p4", 8), ("esp32s3", 8), ("c", 8), ("esp32p4", 16), ("c", 16)])
def test_conv_transpose_quantizes(case, target, bits, tmp_path):
    m, shape = ct_model(**case, relu=True)
    q = quantize(m, randn(16, *shape[1:]), target=target, bits=bits)
    check_runs(q, tmp_path)
    ops = [n.op_type for n in q.graph.nodes]
    strided = any(s > 1 for s in np.atleast_1d(case["s"]))
    assert ops == (["InsertZeros", "Conv"] if strided else ["Conv"])
    conv = q.graph.nodes[-1]
    assert conv.attr("activation") == "Relu" and conv.attr("strides") == [1] * case["nsp"]
    if strided:
        iz = q.graph.nodes[0]
        assert iz.attr("stride") == [int(s) for s in np.atleast_1d(case["s"])]
        assert iz.attr("output_padding") == case["opad"]
        assert q.graph.info(iz.outputs[0]).exponents == q.graph.info(iz.inputs[0]).exponents
    assert q.quant_report["output_sqnr_db"] > (25 if bits == 8 else 50), q.quant_report["output_sqnr_db"]


def test_conv_transpose_refusals():
    m, shape = ct_model(nsp=1, cin=4, cout=4, k=3, s=2, pads=[3, 0], opad=[0], group=1)
    with pytest.raises(UnsupportedError, match="larger than the kernel span"):
        quantize(m, randn(4, *shape[1:]))
    m2, shape = ct_model(nsp=1, cin=4, cout=6, k=3, s=2, pads=[0, 0], opad=[0], group=2)
    with pytest.raises(UnsupportedError, match="grouped conv"):
        quantize(m2, randn(4, *shape[1:]))


# ---- PRelu on [N, C, T] -------------------------------------------------------------------------------------

@pytest.mark.parametrize("slope_shape", [(6, 1), (1,)])
@pytest.mark.parametrize("target, bits", [("esp32p4", 8), ("esp32s3", 8), ("c", 8), ("esp32p4", 16)])
def test_prelu_after_conv1d_runs_on_a_4d_view(slope_shape, target, bits, tmp_path):
    """ESP-DL's PRelu reads its channels from shape[3]: a 3-D PRelu is exported as Reshape [N, 1, T, C] (the NWC
    storage, no data moved) -> PRelu -> Reshape back."""
    rng = np.random.default_rng(5)
    slope = (rng.uniform(0.05, 0.4, slope_shape)).astype(np.float32)
    m = model([helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3], pads=[2, 0]),
               helper.make_node("PRelu", ["c", "s"], ["p"]),
               helper.make_node("Conv", ["p", "w2"], ["y"], kernel_shape=[1])],
              [("x", [1, 4, 16])], ["y"],
              {"w": randn(6, 4, 3, scale=0.4), "b": randn(6, scale=0.1), "s": slope, "w2": randn(3, 6, 1, scale=0.4)})
    q = quantize(m, randn(16, 4, 16), target=target, bits=bits)
    check_runs(q, tmp_path)
    g = q.graph
    ops = [n.op_type for n in g.nodes]
    assert ops == ["Conv", "Reshape", "PRelu", "Reshape", "Conv"], ops
    pr = g.nodes[2]
    assert g.info(pr.inputs[0]).shape == (1, 1, 16, 6)  # [N, 1, T, C]: channels at shape[3]
    # ESP-DL's PRelu copies positives unchanged (int16; int8 per-channel on c, no table): one exponent from the
    # Conv to the last Reshape there; the Reshapes pass their input's exponent through everywhere
    exps = [g.info(n.outputs[0]).exponents for n in g.nodes[:4]]
    assert exps[0] == exps[1] and exps[2] == exps[3], exps
    if bits == 16 or (target == "c" and len(slope_shape) > 1):
        assert len(set(exps)) == 1, exps
    assert q.quant_report["output_sqnr_db"] > (25 if bits == 8 else 50), q.quant_report["output_sqnr_db"]


def test_supported_ops_include_products():
    assert {"MatMul", "Gather", "ConvTranspose"} <= supported_float_ops()


# ---- corpus and ESP-PPQ ----------------------------------------------------------------------------------

def assert_same_as_esp_ppq(m, target, bits):
    """Our quantization of corpus model ``m`` against ESP-PPQ 1.3.12's export of it (tools/make_corpus_ppq.py)."""
    ref_path = m.ppq(target, bits)
    if ref_path is None:
        pytest.skip(f"no ESP-PPQ export {target} int{bits} of {m.name}: {m.ppq_status}")
    return same_as_esp_ppq(m.onnx, load_inputs(m.calib, m.input_names), load_inputs(m.heldout, m.input_names),
                           ref_path, target, bits)


def same_as_esp_ppq(onnx_path, calib, heldout, ref_path, target, bits):
    """Same model, calibration samples and test input as ESP-PPQ's export ``ref_path``: same nodes (up to the
    Transposes ESP-PPQ puts in front of a Gather), attributes,
    exponents and parameters, so the same integers on ESP-PPQ's test input as its model gives in the emulator,
    and as ESP-PPQ's own expected outputs where the emulator reproduces them on its model (its int16 exports
    carry float32 near-tie roundings in a few values, tests/fixtures/corpus/README.md). Gather indices are
    compared after ours were made non-negative (ESP-PPQ writes -1, which ESP-DL does not wrap)."""
    ref = chunkwise.load(ref_path, target=target)
    ours = quantize(str(onnx_path), calib, target=target, bits=bits, test_input=heldout, clip_outputs=True)
    go, gr = ours.graph, ref.graph
    # ESP-PPQ moves a Gather's input back to NCW with a Transpose; we gather the stored (NWC) axis directly
    no_t = [n for n in go.nodes if n.op_type != "Transpose"]
    nr_t = [n for n in gr.nodes if n.op_type != "Transpose"]
    assert [n.op_type for n in no_t] == [n.op_type for n in nr_t]
    assert len(go.nodes) <= len(gr.nodes)
    skip = ("lut", "transA", "axis" if "Gather" in [n.op_type for n in no_t] else "")
    for no, nr in zip(no_t, nr_t):
        assert [go.info(o).exponents for o in no.outputs if o] == [gr.info(o).exponents for o in nr.outputs if o]
        assert {k: no.attr(k) for k in nr.attrs if k not in skip} == {k: nr.attr(k) for k in nr.attrs if k not in skip}
        for i, (u, v) in enumerate(zip(no.inputs, nr.inputs)):
            if v not in gr.initializers:
                continue
            a, b = go.initializers[u], gr.initializers[v]
            want = np.asarray(b.data)
            if nr.op_type == "Gather" and i == 1:
                want = np.where(want < 0, want + go.info(no.inputs[0]).shape[int(no.attr("axis"))], want)
            elif b.dtype == "int64":
                continue  # shapes / axes: ESP-PPQ's graph may spell a Reshape target differently
            assert a.exponents == b.exponents and a.layout == b.layout, (nr.name, v)
            np.testing.assert_array_equal(np.asarray(a.data), want)
    ours_inputs = set(go.input_names)
    for vi in list(gr.inputs) + list(gr.outputs):
        if vi.name in ours_inputs or vi.name in go.output_names:
            assert go.info(vi.name).exponents == vi.exponents, vi.name
    feeds = {k: v.data for k, v in gr.test_inputs.items()}
    # inputs only the reference has: zero initial states of the form ESP-PPQ accepts (make_rnn_state_refs.py)
    assert all(not np.any(v) for k, v in feeds.items() if k not in ours_inputs)
    got = ours.run({k: v for k, v in feeds.items() if k in ours_inputs})
    try:
        emu_ref = ref.run(feeds)
    except UnsupportedError:  # ESP-PPQ's export does not run on ESP-DL (a negative Gather index)
        emu_ref = None
    for k, v in gr.test_outputs.items():
        g = np.asarray(got[k]).reshape(v.data.shape)
        if emu_ref is not None:
            e = np.asarray(emu_ref[k]).reshape(v.data.shape)
            np.testing.assert_array_equal(g, e)
            if not np.array_equal(e, v.data):
                continue
        np.testing.assert_array_equal(g, v.data)
    return ours


QREFS = Path(__file__).resolve().parent / "fixtures" / "quant_refs"


def quant_ref(case, target, bits):
    """(onnx, calib, heldout, ESP-PPQ export) of tests/fixtures/quant_refs/<case> (tools/make_quant_refs.py)."""
    d = QREFS / case
    ref = d / f"ppq_{target}_s{bits}.espdl"
    if not ref.exists():
        status = json.loads((QREFS / "status.json").read_text()).get(case, {})
        pytest.skip(f"ESP-PPQ made no {target} int{bits} export of {case}: {status.get(f'{target}_s{bits}')}")
    names = [i["name"] for i in json.loads((d / "meta.json").read_text())["inputs"]]
    return d / "model.onnx", load_inputs(d / "calib.npz", names), load_inputs(d / "heldout.npz", names), ref


REF_JOBS = [("esp32p4", 8), ("esp32s3", 8), ("c", 8), ("esp32p4", 16), ("esp32s3", 16), ("c", 16)]


@pytest.mark.parametrize("case", ["matmul_dynamic", "matmul_batched", "convt1d_dw", "convt1d_opad", "convt2d",
                                  "gather_last", "gather_pos"])
@pytest.mark.parametrize("target, bits", REF_JOBS)
def test_bit_exact_with_esp_ppq_refs(case, target, bits):
    same_as_esp_ppq(*quant_ref(case, target, bits), target, bits)


@pytest.mark.parametrize("name, target, bits", [
    (name, t, b) for name in ("crn2d", "upsample_tcn", "gru_state", "tc_resnet")
    for t, b in (("esp32p4", 8), ("esp32s3", 8), ("esp32p4", 16))] + [
    # swish_mlp on esp32s3: ESP-PPQ's Swish fusion gives its first Swish another exponent (quant/patterns.py)
    ("swish_mlp", "esp32p4", 8), ("swish_mlp", "esp32p4", 16)])
def test_bit_exact_with_esp_ppq_corpus_export(name, target, bits):
    """ConvTranspose -> InsertZeros + Conv; MatMul + Add on [B, T, C] -> Reshape/Gemm/Reshape, the Reshapes
    between two Gemms dropped around row-wise activations; the last-frame Gather (ESP-PPQ's -1 is the last
    index here, gathered on the stored NWC axis), as ESP-PPQ exports them."""
    assert_same_as_esp_ppq(next(c for c in corpus_models() if c.name == name), target, bits)


@pytest.mark.parametrize("name", ["tc_resnet", "crn2d", "upsample_tcn", "mlp_gelu", "swish_mlp", "convtasnet"])
@pytest.mark.parametrize("target, bits", [("esp32p4", 8), ("esp32s3", 8), ("c", 16)])
def test_corpus_product_models_quantize_and_run(name, target, bits, tmp_path):
    m = next(c for c in corpus_models() if c.name == name)
    q = quantize(str(m.onnx), load_inputs(m.calib, m.input_names), target=target, bits=bits,
                 test_input=load_inputs(m.heldout, m.input_names))
    check_runs(q, tmp_path)
    floor = {"convtasnet": 18}.get(name, 25) if bits == 8 else 40  # convtasnet: 3 masked depthwise blocks, 19.7 dB
    assert q.quant_report["output_sqnr_db"] > floor, q.quant_report["output_sqnr_db"]
