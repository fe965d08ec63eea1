"""Pattern rewrites (chunkwise.quant.patterns): each fused float graph equals the original under onnxruntime,
and the fused operator quantizes and runs in the emulator."""

from __future__ import annotations

import copy
import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from chunkwise.quant.patterns import (float_onnx, fuse_gelu, fuse_layernorm, fuse_rmsnorm, fuse_swish,
                                      rewrite_patterns)
from chunkwise.quant.prepare import prepare

RNG = np.random.default_rng(7)


def _model(nodes, inits, shape, opset=13):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          initializer=[numpy_helper.from_array(np.asarray(v, np.float32 if np.asarray(v).dtype.kind == "f"
                                                                          else np.int64), k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def layernorm_model(shape=(1, 8, 24), affine=True, square="Pow"):
    sq = (helper.make_node("Pow", ["d", "two"], ["p"]) if square == "Pow" else helper.make_node("Mul", ["d", "d"], ["p"]))
    nodes = [helper.make_node("ReduceMean", ["x"], ["m"], axes=[-1]),
             helper.make_node("Sub", ["x", "m"], ["d"]), sq,
             helper.make_node("ReduceMean", ["p"], ["v"], axes=[-1]),
             helper.make_node("Add", ["v", "eps"], ["ve"]), helper.make_node("Sqrt", ["ve"], ["s"]),
             helper.make_node("Div", ["d", "s"], ["n" if affine else "y"])]
    inits = {"two": np.array(2.0, np.float32), "eps": np.array(1e-5, np.float32)}
    if affine:
        nodes += [helper.make_node("Mul", ["n", "g"], ["ng"]), helper.make_node("Add", ["ng", "b"], ["y"])]
        inits["g"] = RNG.uniform(0.5, 1.5, shape[-1]).astype(np.float32)
        inits["b"] = RNG.normal(0, 0.2, shape[-1]).astype(np.float32)
    return _model(nodes, inits, shape)


def rmsnorm_model(shape=(1, 8, 24), form="div1"):
    nodes = [helper.make_node("Pow", ["x", "two"], ["p"]),
             helper.make_node("ReduceMean", ["p"], ["v"], axes=[-1]),
             helper.make_node("Add", ["v", "eps"], ["ve"]), helper.make_node("Sqrt", ["ve"], ["s"])]
    if form == "div1":
        nodes += [helper.make_node("Div", ["one", "s"], ["r"]), helper.make_node("Mul", ["x", "r"], ["n"])]
    elif form == "recip":
        nodes += [helper.make_node("Reciprocal", ["s"], ["r"]), helper.make_node("Mul", ["x", "r"], ["n"])]
    else:
        nodes += [helper.make_node("Div", ["x", "s"], ["n"])]
    nodes.append(helper.make_node("Mul", ["n", "g"], ["y"]))
    inits = {"two": np.array(2.0, np.float32), "eps": np.array(1e-6, np.float32), "one": np.array(1.0, np.float32),
             "g": RNG.uniform(0.5, 1.5, shape[-1]).astype(np.float32)}
    if form != "div1":
        del inits["one"]
    return _model(nodes, inits, shape)


def gelu_model(shape=(1, 8, 24), form="div"):
    pre = (helper.make_node("Div", ["x", "sq2"], ["a"]) if form == "div"
           else helper.make_node("Mul", ["x", "isq2"], ["a"]))
    nodes = [pre, helper.make_node("Erf", ["a"], ["e"]), helper.make_node("Add", ["e", "one"], ["e1"])]
    if form == "half_first":
        nodes += [helper.make_node("Mul", ["x", "half"], ["h"]), helper.make_node("Mul", ["h", "e1"], ["y"])]
    else:
        nodes += [helper.make_node("Mul", ["x", "e1"], ["xe"]), helper.make_node("Mul", ["xe", "half"], ["y"])]
    inits = {"sq2": np.array(math.sqrt(2), np.float32), "isq2": np.array(1 / math.sqrt(2), np.float32),
             "one": np.array(1.0, np.float32), "half": np.array(0.5, np.float32)}
    return _model(nodes, {k: v for k, v in inits.items() if any(k in n.input for n in nodes)}, shape)


def swish_model(shape=(1, 8, 24)):
    return _model([helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["x", "s"], ["y"])], {}, shape)


def _run(m: onnx.ModelProto, x):
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


CASES = [
    ("layernorm", fuse_layernorm, lambda: layernorm_model(), "LayerNormalization"),
    ("layernorm_noaffine", fuse_layernorm, lambda: layernorm_model(affine=False), "LayerNormalization"),
    ("layernorm_mulsq", fuse_layernorm, lambda: layernorm_model(square="Mul"), "LayerNormalization"),
    ("rmsnorm_div1", fuse_rmsnorm, lambda: rmsnorm_model(form="div1"), "RMSNormalization"),
    ("rmsnorm_recip", fuse_rmsnorm, lambda: rmsnorm_model(form="recip"), "RMSNormalization"),
    ("rmsnorm_divx", fuse_rmsnorm, lambda: rmsnorm_model(form="divx"), "RMSNormalization"),
    ("gelu_div", fuse_gelu, lambda: gelu_model(form="div"), "Gelu"),
    ("gelu_mul", fuse_gelu, lambda: gelu_model(form="mul"), "Gelu"),
    ("gelu_half_first", fuse_gelu, lambda: gelu_model(form="half_first"), "Gelu"),
    ("swish", fuse_swish, lambda: swish_model(), "Swish"),
]


@pytest.mark.parametrize("name, fn, make, op", CASES, ids=[c[0] for c in CASES])
def test_rewrite_keeps_float_function(name, fn, make, op):
    m = make()
    fg = prepare(m) if op != "Swish" else prepare(m)
    fq = copy.deepcopy(fg)
    res = fn(fq)
    assert res.modified, res.reason
    assert [n.op for n in fq.nodes] == [op], [n.op for n in fq.nodes]
    assert fq.outputs == ["y"]
    x = RNG.normal(0, 2, fg.inputs[0][1]).astype(np.float32)
    ref = _run(m, x)
    got = _run(float_onnx(fq), x)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_globalmaxpool_becomes_reducemax():
    from chunkwise.quant.patterns import globalmaxpool_to_reducemax

    m = _model([helper.make_node("GlobalMaxPool", ["x"], ["y"])], {}, (1, 4, 6, 5))
    fg = prepare(m)
    fq = copy.deepcopy(fg)
    assert globalmaxpool_to_reducemax(fq).modified
    assert [n.op for n in fq.nodes] == ["ReduceMax"]
    x = RNG.normal(0, 1, (1, 4, 6, 5)).astype(np.float32)
    np.testing.assert_array_equal(_run(float_onnx(fq), x), _run(m, x))
    import chunkwise

    q = chunkwise.quantize(m, RNG.normal(0, 1, (8, 4, 6, 5)).astype(np.float32), warn=False)
    assert [n.op_type for n in q.graph.nodes] == ["ReduceMax"]
    assert q.quant_report["output_sqnr_db"] > 25


@pytest.mark.parametrize("shape, b", [((1, 3, 4, 6), 2), ((2, 2, 6, 9), 3)])
def test_spacetodepth_becomes_reshape_transpose(shape, b):
    from chunkwise.quant.patterns import spacetodepth_to_reshapes

    m = _model([helper.make_node("SpaceToDepth", ["x"], ["y"], blocksize=b)], {}, shape)
    fg = prepare(m)
    fq = copy.deepcopy(fg)
    assert spacetodepth_to_reshapes(fq).modified
    assert [n.op for n in fq.nodes] == ["Reshape", "Transpose", "Reshape"]
    x = RNG.normal(0, 1, shape).astype(np.float32)
    np.testing.assert_array_equal(_run(float_onnx(fq), x), _run(m, x))
    import chunkwise

    q = chunkwise.quantize(m, RNG.normal(0, 1, (8,) + shape).astype(np.float32), warn=False)
    assert "SpaceToDepth" not in {n.op_type for n in q.graph.nodes}
    assert q.quant_report["output_sqnr_db"] > 25


def test_rewrite_says_why_not():
    fg = prepare(swish_model())
    res = fuse_layernorm(fg)
    assert not res.modified and "ReduceMean" in res.reason
    log: list[str] = []
    rewrite_patterns(copy.deepcopy(fg), log)
    assert [l.split(":")[0] for l in log] == ["fuse_layernorm", "fuse_rmsnorm", "fuse_gelu", "fuse_swish",
                                              "globalmaxpool_to_reducemax", "spacetodepth_to_reshapes",
                                              "minmax_const_to_clip"]
    assert "fuse_swish: modified" in log[3]


def test_layernorm_over_leading_axes_not_fused():
    # a ReduceMean over axis 1 of a [1, 8, 24] tensor is not a trailing-axes LayerNorm
    m = layernorm_model()
    for n in m.graph.node:
        if n.op_type == "ReduceMean":
            for a in n.attribute:
                if a.name == "axes":
                    a.ints[:] = [1]
    fg = prepare(m)
    assert not fuse_layernorm(fg).modified


def test_gelu_with_other_constant_not_fused():
    m = gelu_model()
    for t in m.graph.initializer:
        if t.name == "half":
            t.CopyFrom(numpy_helper.from_array(np.array(0.25, np.float32), "half"))
    fg = prepare(m)
    assert not fuse_gelu(fg).modified


@pytest.mark.parametrize("make", [layernorm_model, rmsnorm_model, gelu_model, swish_model],
                         ids=["layernorm", "rmsnorm", "gelu", "swish"])
@pytest.mark.parametrize("target, bits", [("esp32p4", 8), ("esp32s3", 8), ("esp32p4", 16)])
def test_fused_ops_quantize_and_run(make, target, bits):
    import chunkwise

    m = make()
    calib = RNG.normal(0, 1.5, (16, 8, 24)).astype(np.float32)
    model = chunkwise.quantize(m, calib, target=target, bits=bits)
    ops = {n.op_type for n in model.graph.nodes}
    assert "Erf" not in ops and "ReduceMean" not in ops
    sq = model.quant_report["output_sqnr_db"]
    assert sq is not None and sq > (20 if bits == 8 else 40), sq


def test_quantize_reports_every_named_pass():
    import chunkwise

    m = layernorm_model()
    q = chunkwise.quantize(m, RNG.normal(0, 1, (8, 8, 24)).astype(np.float32), warn=False)
    names = [l.split(":")[0] for l in q.quant_report["passes"]]
    for want in ("constants_to_initializers", "fold_constants", "fold_batchnorm", "merge_pad_into_conv",
                 "check_supported", "fuse_layernorm", "fuse_gelu", "fuse_relu"):
        assert want in names, names
    assert any(l.startswith("fuse_layernorm: modified") for l in q.quant_report["passes"])
    assert any(l.startswith("fold_batchnorm: no change (no BatchNormalization)") for l in q.quant_report["passes"])


def test_a_pass_breaking_the_graph_is_named():
    from chunkwise.ir.passes import FunctionPass, GraphCheckError, PassResult, Sequential
    from chunkwise.quant.prepare import check_fgraph

    fg = prepare(swish_model())

    def bad(g):
        g.nodes[0].inputs = ["nowhere"]
        return PassResult(g, True, "broke it")

    with pytest.raises(GraphCheckError, match="after pass break_it"):
        Sequential([FunctionPass("break_it", bad)], check=check_fgraph)(fg)
