"""Float pattern rewrites: standard export patterns become the operator ESP-DL has.

Each rewrite is a named pass over the prepared float graph (:class:`~.prepare.FGraph`) that returns a
:class:`~chunkwise.ir.passes.PassResult` saying what it fused, or why it did nothing. Rewrites keep the
float function (up to float32 rounding: ``tests/test_quant_patterns.py`` runs the original and the
rewritten graph under onnxruntime) and keep the name of the pattern's last value, so the calibration
statistics collected on the original graph hold for every value of the rewritten one.

* ``fuse_layernorm``: ``ReduceMean -> Sub -> Pow(2) | Mul(d, d) -> ReduceMean -> Add(eps) -> Sqrt -> Div
  [-> Mul(scale)] [-> Add(bias)]`` over trailing axes -> ``LayerNormalization`` (PyTorch's
  ``nn.LayerNorm`` at opset < 17).
* ``fuse_rmsnorm``: ``Pow(x, 2) | Mul(x, x) -> ReduceMean -> Add(eps) -> Sqrt -> Div(1, s) | Reciprocal ->
  Mul(x, .) [-> Mul(scale)]``, or ``... -> Sqrt -> Div(x, s) [-> Mul(scale)]`` -> ``RMSNormalization``.
* ``fuse_gelu``: ``Div(x, sqrt 2) | Mul(x, 1/sqrt 2) -> Erf -> Add(1) -> Mul(x, .) -> Mul(0.5)`` (either
  Mul order) -> ``Gelu`` (ESP-DL has Gelu but no Erf module).
* ``fuse_swish``: ``Mul(x, Sigmoid(x))`` -> ``Swish``.
* ``globalmaxpool_to_reducemax``: ``GlobalMaxPool`` (ESP-DL has no module) -> ``ReduceMax`` over the
  spatial axes.
* ``spacetodepth_to_reshapes``: ``SpaceToDepth`` (ESP-DL's module orders channels unlike ONNX) ->
  Reshape / Transpose / Reshape.
* ``minmax_const_to_clip``: ``Max(x, c)`` -> ``Clip(x, c)`` (``Relu`` for ``c == 0``), ``Min(x, c)`` ->
  ``Clip(x, -inf, c)`` for a constant scalar ``c`` (ESP-DL does not register its Max/Min modules).

:func:`float_onnx` builds an ONNX model of a rewritten graph for onnxruntime (raising the opset to the
one that defines the fused operators, with Reduce* ``axes`` moved to inputs from opset 18 on).
"""

from __future__ import annotations

import math

import numpy as np
import onnx

from ..ir.passes import FunctionPass, PassResult, Sequential
from .prepare import FGraph, FNode, check_fgraph, to_onnx

#: the opset that defines each fused operator (for :func:`float_onnx`)
FUSED_OPSET = {"LayerNormalization": 17, "Gelu": 20, "RMSNormalization": 23, "Swish": 24}
REDUCE_AXES_INPUT_SINCE = {"ReduceSum": 13}  # every other Reduce* takes axes as an input from opset 18


# ---- small graph helpers -------------------------------------------------------------------------

class _View:
    """Producers/readers of a graph that does not change while a pattern is matched."""

    def __init__(self, fg: FGraph):
        self.fg = fg
        self.prod = fg.producers()
        self.readers: dict[str, list[FNode]] = {}
        for n in fg.nodes:
            for i in dict.fromkeys(n.inputs):  # a node reading a value twice is one reader
                if i:
                    self.readers.setdefault(i, []).append(n)

    def only_reader(self, v: str, op: str | tuple) -> FNode | None:
        """The single reader of ``v`` if it has op ``op`` and ``v`` is no graph output."""
        rs = self.readers.get(v, [])
        ops = (op,) if isinstance(op, str) else op
        if len(rs) != 1 or rs[0].op not in ops or self.fg.is_output(v):
            return None
        return rs[0]

    def const(self, v: str):
        c = self.fg.consts.get(v)
        return None if c is None else np.asarray(c)

    def scalar(self, v: str) -> float | None:
        c = self.const(v)
        if c is None or c.size != 1 or c.dtype.kind not in "fiu":
            return None
        return float(c.ravel()[0])

    def other(self, node: FNode, v: str) -> str | None:
        """The other input of a binary node that reads ``v`` (None if it reads ``v`` twice or is not binary)."""
        if len(node.inputs) != 2 or v not in node.inputs:
            return None
        a, b = node.inputs
        if a == b:
            return None
        return b if a == v else a


def _reduce_axes(fg: FGraph, n: FNode, rank: int) -> tuple[int, ...] | None:
    axes = n.attrs.get("axes")
    if axes is None and len(n.inputs) > 1 and n.inputs[1]:
        c = fg.consts.get(n.inputs[1])
        if c is None:
            return None
        axes = [int(a) for a in np.asarray(c).ravel()]
    if not axes:
        return None if int(n.attrs.get("noop_with_empty_axes", 0)) else tuple(range(rank))
    return tuple(sorted({int(a) % rank for a in axes}))


def _trailing_axis(fg: FGraph, n: FNode, x: str) -> int | None:
    """The first axis of a ReduceMean over the trailing axes of ``x`` with keepdims=1, else None."""
    shp = fg.shapes.get(x)
    if n.op != "ReduceMean" or shp is None or not int(n.attrs.get("keepdims", 1)):
        return None
    r = len(shp)
    axes = _reduce_axes(fg, n, r)
    if not axes or axes != tuple(range(axes[0], r)):
        return None
    return axes[0]


def _affine_const(v: _View, c: str, norm_shape: tuple[int, ...]) -> np.ndarray | None:
    """A scale/bias constant broadcast over the normalized dims only, as a ``norm_shape`` array."""
    a = v.const(c)
    if a is None or a.dtype.kind != "f":
        return None
    a = a.astype(np.float32)
    lead = a.ndim - len(norm_shape)
    if lead > 0 and any(d != 1 for d in a.shape[:lead]):
        return None
    core = a.reshape(a.shape[lead:]) if lead > 0 else a
    try:
        return np.ascontiguousarray(np.broadcast_to(core, norm_shape), dtype=np.float32)
    except ValueError:
        return None


def _is_square(v: _View, n: FNode, d: str) -> bool:
    """``n`` computes ``d ** 2``: Pow(d, 2) or Mul(d, d)."""
    if n.op == "Pow":
        return n.inputs[0] == d and v.scalar(n.inputs[1]) == 2.0
    return n.op == "Mul" and n.inputs == [d, d]


def _replace(fg: FGraph, old: list[FNode], new: FNode) -> None:
    """Put ``new`` where the first of ``old`` was and drop ``old``."""
    i = min(fg.nodes.index(n) for n in old)
    fg.origin[new.name] = [o for n in old for o in fg.origin.pop(n.name, [n.name])]
    for n in old:
        fg.nodes.remove(n)
    fg.nodes.insert(i, new)


def _drop_unused_consts(fg: FGraph) -> None:
    used = {i for n in fg.nodes for i in n.inputs}
    for k in [k for k in fg.consts if k not in used and k not in fg.outputs]:
        del fg.consts[k]


# ---- LayerNormalization -----------------------------------------------------------------------------

def _affine_step(v: _View, nodes: list, y: str, op: str, norm_shape, shp):
    """The elementwise affine step after a normalization: ``y``'s only reader ``op`` (Mul for the scale, Add for
    the bias) with a constant of the normalized shape and an unchanged output shape joins ``nodes``. Returns the
    new tail value and the constant, or ``(y, None)`` when there is no such step."""
    node = v.only_reader(y, op)
    if node is None:
        return y, None
    c = v.other(node, y)
    const = _affine_const(v, c, norm_shape) if c else None
    if const is None or v.fg.shapes.get(node.outputs[0]) != shp:
        return y, None
    nodes.append(node)
    return node.outputs[0], const


def _match_layernorm(v: _View, r1: FNode):
    fg = v.fg
    x = r1.inputs[0]
    axis = _trailing_axis(fg, r1, x)
    if axis is None:
        return None
    m = r1.outputs[0]
    sub = v.only_reader(m, "Sub")
    if sub is None or sub.inputs != [x, m]:
        return None
    d = sub.outputs[0]
    rd = v.readers.get(d, [])
    if fg.is_output(d) or len(rd) != 2:
        return None
    sq = [n for n in rd if _is_square(v, n, d)]
    div = [n for n in rd if n.op == "Div" and n.inputs[0] == d]
    if len(sq) != 1 or len(div) != 1:
        return None
    sq, div = sq[0], div[0]
    r2 = v.only_reader(sq.outputs[0], "ReduceMean")
    if r2 is None or _trailing_axis(fg, r2, d) != axis:
        return None
    add = v.only_reader(r2.outputs[0], "Add")
    eps_name = v.other(add, r2.outputs[0]) if add is not None else None
    eps = v.scalar(eps_name) if eps_name else None
    if eps is None:
        return None
    sqrt = v.only_reader(add.outputs[0], "Sqrt")
    if sqrt is None or v.only_reader(sqrt.outputs[0], "Div") is not div or div.inputs[1] != sqrt.outputs[0]:
        return None
    nodes = [r1, sub, sq, r2, add, sqrt, div]
    shp = fg.shapes[x]
    norm_shape = tuple(shp[axis:])
    y, scale = _affine_step(v, nodes, div.outputs[0], "Mul", norm_shape, shp)
    y, bias = _affine_step(v, nodes, y, "Add", norm_shape, shp)
    return nodes, x, y, axis, eps, scale, bias


def fuse_layernorm(fg: FGraph) -> PassResult:
    fused = []
    while True:
        v = _View(fg)
        for r1 in [n for n in fg.nodes if n.op == "ReduceMean"]:
            m = _match_layernorm(v, r1)
            if m is not None:
                break
        else:
            break
        nodes, x, y, axis, eps, scale, bias = m
        name = nodes[0].name.rsplit("/", 1)[0] + "/LayerNormalization" if "/" in nodes[0].name \
            else f"{nodes[0].name}_LayerNormalization"
        norm_shape = tuple(fg.shapes[x][axis:])
        s_name = f"{name}.scale"
        fg.consts[s_name] = scale if scale is not None else np.ones(norm_shape, np.float32)
        ins = [x, s_name]
        if bias is not None:
            fg.consts[f"{name}.bias"] = bias
            ins.append(f"{name}.bias")
        _replace(fg, nodes, FNode("LayerNormalization", name, ins, [y],
                                  {"axis": axis, "epsilon": float(np.float32(eps))}))
        fused.append(name)
    _drop_unused_consts(fg)
    if not fused:
        return PassResult(fg, False, "no ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div pattern over trailing axes")
    return PassResult(fg, True, f"{len(fused)} LayerNormalization: {', '.join(fused)}")


# ---- RMSNormalization -------------------------------------------------------------------------------

def _match_rmsnorm(v: _View, sq: FNode):
    fg = v.fg
    x = sq.inputs[0]
    if not _is_square(v, sq, x):
        return None
    r = v.only_reader(sq.outputs[0], "ReduceMean")
    if r is None:
        return None
    axis = _trailing_axis(fg, r, sq.outputs[0])
    if axis is None or fg.shapes.get(x) != fg.shapes.get(sq.outputs[0]):
        return None
    add = v.only_reader(r.outputs[0], "Add")
    eps_name = v.other(add, r.outputs[0]) if add is not None else None
    eps = v.scalar(eps_name) if eps_name else None
    if eps is None:
        return None
    sqrt = v.only_reader(add.outputs[0], "Sqrt")
    if sqrt is None:
        return None
    s = sqrt.outputs[0]
    nodes = [sq, r, add, sqrt]
    nxt = v.only_reader(s, ("Div", "Reciprocal"))
    if nxt is None:
        return None
    if nxt.op == "Div" and nxt.inputs == [x, s]:
        nodes.append(nxt)
        y = nxt.outputs[0]
    else:
        if nxt.op == "Div" and not (nxt.inputs[1] == s and v.scalar(nxt.inputs[0]) == 1.0):
            return None
        inv = nxt.outputs[0]
        mul = v.only_reader(inv, "Mul")
        if mul is None or v.other(mul, inv) != x:
            return None
        nodes += [nxt, mul]
        y = mul.outputs[0]
    shp = fg.shapes[x]
    if fg.shapes.get(y) != shp:
        return None
    norm_shape = tuple(shp[axis:])
    y, scale = _affine_step(v, nodes, y, "Mul", norm_shape, shp)
    return nodes, x, y, axis, eps, scale


def fuse_rmsnorm(fg: FGraph) -> PassResult:
    fused = []
    while True:
        v = _View(fg)
        for sq in [n for n in fg.nodes if n.op in ("Pow", "Mul")]:
            m = _match_rmsnorm(v, sq)
            if m is not None:
                break
        else:
            break
        nodes, x, y, axis, eps, scale = m
        base = nodes[0].name.rsplit("/", 1)[0] if "/" in nodes[0].name else nodes[0].name
        name = f"{base}/RMSNormalization"
        norm_shape = tuple(fg.shapes[x][axis:])
        s_name = f"{name}.scale"
        fg.consts[s_name] = scale if scale is not None else np.ones(norm_shape, np.float32)
        _replace(fg, nodes, FNode("RMSNormalization", name, [x, s_name], [y],
                                  {"axis": axis, "epsilon": float(np.float32(eps))}))
        fused.append(name)
    _drop_unused_consts(fg)
    if not fused:
        return PassResult(fg, False, "no Pow/ReduceMean/Add/Sqrt/Div(or Reciprocal, Mul) pattern over trailing axes")
    return PassResult(fg, True, f"{len(fused)} RMSNormalization: {', '.join(fused)}")


# ---- Gelu -------------------------------------------------------------------------------------------

def _close(a: float | None, b: float, rel: float = 1e-5) -> bool:
    return a is not None and abs(a - b) <= rel * abs(b)


def _match_gelu(v: _View, erf: FNode):
    fg = v.fg
    pre = v.prod.get(erf.inputs[0])
    if pre is None or v.only_reader(pre.outputs[0], "Erf") is not erf:
        return None
    if pre.op == "Div" and _close(v.scalar(pre.inputs[1]), math.sqrt(2.0)):
        x = pre.inputs[0]
    elif pre.op == "Mul" and len(pre.inputs) == 2:
        cs = [i for i in pre.inputs if v.scalar(i) is not None]
        if len(cs) != 1 or not _close(v.scalar(cs[0]), 1.0 / math.sqrt(2.0)):
            return None
        x = v.other(pre, cs[0])
    else:
        return None
    if x is None or x in fg.consts:
        return None
    add = v.only_reader(erf.outputs[0], "Add")
    if add is None or not _close(v.scalar(v.other(add, erf.outputs[0]) or ""), 1.0):
        return None
    a = add.outputs[0]
    m1 = v.only_reader(a, "Mul")
    if m1 is None:
        return None
    o = v.other(m1, a)
    if o == x:  # x * (1 + erf) then * 0.5
        m2 = v.only_reader(m1.outputs[0], "Mul")
        if m2 is None or not _close(v.scalar(v.other(m2, m1.outputs[0]) or ""), 0.5):
            return None
        return [pre, erf, add, m1, m2], x, m2.outputs[0]
    # (0.5 * x) * (1 + erf)
    h = v.prod.get(o) if o else None
    if h is None or h.op != "Mul" or v.only_reader(o, "Mul") is not m1:
        return None
    c = v.other(h, x)
    if c is None or not _close(v.scalar(c), 0.5):
        return None
    return [h, pre, erf, add, m1], x, m1.outputs[0]


def fuse_gelu(fg: FGraph) -> PassResult:
    fused = []
    while True:
        v = _View(fg)
        for erf in [n for n in fg.nodes if n.op == "Erf"]:
            m = _match_gelu(v, erf)
            if m is not None:
                break
        else:
            break
        nodes, x, y = m
        base = nodes[0].name.rsplit("/", 1)[0] if "/" in nodes[0].name else nodes[0].name
        name = f"{base}/Gelu"
        _replace(fg, nodes, FNode("Gelu", name, [x], [y], {}))
        fused.append(name)
    _drop_unused_consts(fg)
    if not fused:
        return PassResult(fg, False, "no Div(sqrt 2)/Erf/Add(1)/Mul/Mul(0.5) pattern")
    return PassResult(fg, True, f"{len(fused)} Gelu: {', '.join(fused)}")


# ---- Swish ------------------------------------------------------------------------------------------

def fuse_swish(fg: FGraph) -> PassResult:
    """``Mul(x, Sigmoid(x))`` -> ``Swish`` (named after the producer of ``x``, as ESP-PPQ names it)."""
    fused = []
    v = _View(fg)
    for sig in [n for n in fg.nodes if n.op == "Sigmoid"]:
        x, s = sig.inputs[0], sig.outputs[0]
        mul = v.only_reader(s, "Mul")
        if mul is None or sorted(mul.inputs) != sorted([x, s]) or x == s:
            continue
        src = v.prod.get(x)
        name = f"{src.name if src is not None else sig.name}/Swish"
        _replace(fg, [sig, mul], FNode("Swish", name, [x], list(mul.outputs)))
        fused.append(name)
    if not fused:
        return PassResult(fg, False, "no Mul(x, Sigmoid(x))")
    return PassResult(fg, True, f"{len(fused)} Swish")


# ---- GlobalMaxPool ----------------------------------------------------------------------------------

def globalmaxpool_to_reducemax(fg: FGraph) -> PassResult:
    """``GlobalMaxPool`` (no ESP-DL module) -> ``ReduceMax`` over the spatial axes, keepdims=1 (float-exact)."""
    done = []
    for n in [n for n in fg.nodes if n.op == "GlobalMaxPool"]:
        r = len(fg.shapes[n.inputs[0]])
        axes = list(range(2, r))
        if not axes:
            continue
        new = FNode("ReduceMax", n.name, [n.inputs[0]], list(n.outputs), {"axes": axes, "keepdims": 1})
        if fg.opset >= 18:
            nm = f"{n.name}.axes"
            fg.consts[nm] = np.array(axes, np.int64)
            new.inputs.append(nm)
            del new.attrs["axes"]
        _replace(fg, [n], new)
        done.append(n.name)
    if not done:
        return PassResult(fg, False, "no GlobalMaxPool")
    return PassResult(fg, True, f"{len(done)} GlobalMaxPool -> ReduceMax")


# ---- SpaceToDepth -----------------------------------------------------------------------------------

def spacetodepth_to_reshapes(fg: FGraph) -> PassResult:
    """``SpaceToDepth`` (ESP-DL's module orders channels unlike ONNX) -> Reshape [N, C, H/b, b, W/b, b],
    Transpose [0, 3, 5, 1, 2, 4], Reshape [N, C*b*b, H/b, W/b]: ONNX's definition, float-exact."""
    done = []
    for n in [n for n in fg.nodes if n.op == "SpaceToDepth"]:
        shp = fg.shapes.get(n.inputs[0])
        b = int(n.attrs.get("blocksize", 0))
        if shp is None or len(shp) != 4 or b < 1 or shp[2] % b or shp[3] % b:
            continue
        nb, c, h, w = shp
        s1, s2 = f"{n.name}.shape6", f"{n.name}.shape4"
        fg.consts[s1] = np.array([nb, c, h // b, b, w // b, b], np.int64)
        fg.consts[s2] = np.array([nb, c * b * b, h // b, w // b], np.int64)
        v1, v2 = f"{n.name}/blocks", f"{n.name}/moved"
        new = [FNode("Reshape", f"{n.name}/Reshape", [n.inputs[0], s1], [v1]),
               FNode("Transpose", f"{n.name}/Transpose", [v1], [v2], {"perm": [0, 3, 5, 1, 2, 4]}),
               FNode("Reshape", f"{n.name}/Reshape_1", [v2, s2], list(n.outputs))]
        i = fg.nodes.index(n)
        fg.nodes[i:i + 1] = new
        for k in new:
            fg.origin[k.name] = [n.name]
        fg.shapes[v1] = (nb, c, h // b, b, w // b, b)
        fg.shapes[v2] = (nb, b, b, c, h // b, w // b)
        done.append(n.name)
    if not done:
        return PassResult(fg, False, "no SpaceToDepth on a 4-D input divisible by its blocksize")
    return PassResult(fg, True, f"{len(done)} SpaceToDepth -> Reshape/Transpose/Reshape")


# ---- Max / Min with a constant ------------------------------------------------------------------------

def minmax_const_to_clip(fg: FGraph) -> PassResult:
    """``Max(x, c)`` -> ``Clip(x, c)`` (``Relu(x)`` when ``c == 0``), ``Min(x, c)`` -> ``Clip(x, -inf, c)`` for a
    constant scalar ``c`` (either operand order): ESP-DL has Max/Min headers but does not register the modules
    (``dl_module_creator.hpp``). Float-exact; the node keeps its name and output."""
    done = []
    for n in [n for n in fg.nodes if n.op in ("Max", "Min")]:
        if len(n.inputs) != 2 or len(n.outputs) != 1:
            continue
        cs = [i for i in n.inputs if i in fg.consts]
        xs = [i for i in n.inputs if i not in fg.consts]
        if len(cs) != 1 or len(xs) != 1:
            continue
        c = np.asarray(fg.consts[cs[0]])
        x = xs[0]
        if c.size != 1 or c.ndim > len(fg.shapes.get(x, ())) or not np.issubdtype(c.dtype, np.floating):
            continue  # a broadcast constant could change the shape; integer data is not quantized
        v = np.float32(c.reshape(()))
        if n.op == "Max" and v == 0:
            new = FNode("Relu", n.name, [x], list(n.outputs))
        else:
            # ESP-DL's Clip reads input 1 as min and input 2 as max (dl_module_clip.hpp): a max-only Clip
            # takes -inf as min (quantized to the type's minimum)
            bounds = [v] if n.op == "Max" else [np.float32(-np.inf), v]
            ins = [x]
            for k, b in zip(("min", "max"), bounds):
                nm = f"{n.name}_{k}"
                while nm in fg.consts:
                    nm += "_"
                fg.consts[nm] = np.array(b, np.float32)
                ins.append(nm)
            new = FNode("Clip", n.name, ins, list(n.outputs))
        _replace(fg, [n], new)
        done.append(f"{n.name} -> {new.op}")
    _drop_unused_consts(fg)
    if not done:
        return PassResult(fg, False, "no Max/Min with a constant scalar operand")
    return PassResult(fg, True, f"{len(done)} Max/Min: {', '.join(done)}")


# ---- the sequence -----------------------------------------------------------------------------------

PATTERN_PASSES = [
    FunctionPass("fuse_layernorm", fuse_layernorm),
    FunctionPass("fuse_rmsnorm", fuse_rmsnorm),
    FunctionPass("fuse_gelu", fuse_gelu),
    FunctionPass("fuse_swish", fuse_swish),
    FunctionPass("globalmaxpool_to_reducemax", globalmaxpool_to_reducemax),
    FunctionPass("spacetodepth_to_reshapes", spacetodepth_to_reshapes),
    FunctionPass("minmax_const_to_clip", minmax_const_to_clip),
]


def rewrite_patterns(fg: FGraph, log: list[str] | None = None) -> FGraph:
    """Run every pattern pass in order on ``fg`` (in place); ``log`` gets one line per pass."""
    return Sequential(PATTERN_PASSES, check=check_fgraph)(fg, log)


def float_onnx(fg: FGraph) -> onnx.ModelProto:
    """An onnxruntime-runnable model of a (rewritten) float graph: the opset raised to define the fused
    operators; from opset 18 on, Reduce* ``axes`` attributes become inputs."""
    need = max([fg.opset] + [FUSED_OPSET.get(n.op, 0) for n in fg.nodes])
    if need == fg.opset:
        return to_onnx(fg)
    import copy

    g = copy.deepcopy(fg)
    g.opset = need
    for n in g.nodes:
        if n.op.startswith("Reduce") and need >= 18 and "axes" in n.attrs:
            nm = f"{n.name}.axes"
            g.consts[nm] = np.array(n.attrs.pop("axes"), np.int64)
            n.inputs = [n.inputs[0], nm]
    m = to_onnx(g)
    m.ir_version = 10
    return m
