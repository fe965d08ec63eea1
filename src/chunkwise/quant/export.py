"""Quantized graph construction with ESP-DL's conventions, as ESP-PPQ (1.3.x) exports them.

Pipeline on the prepared float graph (:mod:`.prepare`):

1. ESP-DL rewrites: ``x * sigmoid(x)`` -> ``Swish``; a ``Relu`` right after a Conv/Gemm becomes the
   conv's ``activation`` (ESP-PPQ fuses only Relu; ESP-DL's Conv knows Linear/ReLU/LeakyReLU/PReLU,
   ``dl/dl_define.hpp``).
2. Exponents (ESP-PPQ's ESPDL quantization setting): activations are per-tensor power-of-two from
   calibration; a Relu/Clip after an op with a single reader shares that op's output exponent; passive
   ops (MaxPool, Reshape, Flatten, Slice, Pad, Transpose, Squeeze, Unsqueeze, ...) pass their input
   exponent through; Add/Sub/Concat inputs take the output exponent ("align to output") and a producer
   whose only reader is that op is calibrated to it directly; any input whose exponent or bit width still
   differs from what its reader expects gets a ``RequantizeLinear`` in front of that reader.
3. Layout: NCHW/NCW -> NHWC/NWC for conv-like ops, ``Transpose`` only where an op needs the original
   order (Gemm, Flatten, Reshape, Slice, Pad, ...); Transpose chains are fused and identities removed.
4. Parameters: weights per output channel on esp32p4/esp32s31 and per tensor on esp32s3/c (min-max,
   power of two rounded up), bias at ``e_in + e_w`` as int32 (int8) / int64 (int16) clamped to the
   platform's bias width, weight layouts ``(N/16)HWC16`` / ``(N/8)HWC8`` (``_UNALIGNED``), ``NHWC`` /
   ``HWCN`` on c; LUTs for int8 activations (attribute ``lut`` -> initializer ``<Op>_lut_<i>``), int16
   activations as op ``LUT`` with ``int16_lut_step`` and ``original_op_type`` (Relu/Clip/PRelu/Neg keep
   their op and get a full 65536-entry table).
"""

from __future__ import annotations


import numpy as np

from ..emu.rounding import TARGETS, qrange, quantize as q_quantize, round_array
from ..errors import UnsupportedError
from ..ir.graph import Graph, Node, Tensor, ValueInfo, make_attribute
from ..ir import ops as opdefs
from ..ir.layout import layout_doc, weight_layout
from ..ir.ops import ExpPolicy, Layout
from .prepare import FGraph, FNode, QInfo, supported_float_ops

INT16_LUT_STEP = 32
PER_CHANNEL_TARGETS = ("esp32p4", "esp32s31")
BIAS_BITS = {("esp32p4", 8): 32, ("esp32s31", 8): 32, ("esp32s3", 8): 20, ("c", 8): 32,
             ("esp32p4", 16): 40, ("esp32s31", 16): 40, ("esp32s3", 16): 40, ("c", 16): 64}

# What the exporter does with an op comes from its definition (chunkwise.ir.ops): layout class, exponent
# policy, table activation (``lut`` + ``float_fn``). EXPORTED: the ops exported by the generic rules below,
# i.e. every op with an ESP-DL module that the quantizer takes (no ``refuse["quantize"]``) and that no named
# rewrite removes (``rewritten_by``), plus the RequantizeLinear that insert_requantize makes; an op whose
# rules live in their own module (.products, .rnn) leaves these sets when it registers (:func:`register_rule`).
# The sets below are views of the traits restricted to them (mutable: registration removes ops in place).
EXPORTED = {d.name for d in opdefs.all_defs()
            if d.espdl and "quantize" not in d.refuse and not d.rewritten_by} | {"RequantizeLinear"}


def _trait_ops(**traits) -> set:
    return set(opdefs.names(**traits)) & EXPORTED


CONV_LAYOUT_OPS = _trait_ops(layout=Layout.SPATIAL)
LUT_OPS = {d.name for d in opdefs.all_defs() if d.lut} & EXPORTED
ELEMENTWISE_UNARY = _trait_ops(layout=Layout.ELEMENTWISE)
ADD_LIKE_OPS = _trait_ops(layout=Layout.BROADCAST)
ALIGN_TO_OUTPUT_OPS = _trait_ops(exponent=ExpPolicy.ALIGN)
PASSIVE_OPS = _trait_ops(exponent=ExpPolicy.PASSIVE)
FOLLOW_OPS = _trait_ops(exponent=ExpPolicy.FOLLOW)
ORIGIN_LAYOUT_OPS = _trait_ops(layout=Layout.ORIGIN)
AXIS_OPS = _trait_ops(layout=Layout.AXIS)
INT16_NATIVE_LUT = _trait_ops(int16_native=True)  # int16: keep the op, full 65536-entry table (goldens)
FLOAT_OUTPUT_OPS = _trait_ops(quant_out="float32")  # ESP-DL writes float32 whatever the quant_type (Softmax)
# ESP-PPQ leaves these unquantized (not among its quantized op types): they run with quant_type F32, a
# DequantizeLinear / QuantizeLinear in front of / behind them where their neighbours are integer (Log, Sqrt, Pow)
FLOAT_COMPUTE_OPS = _trait_ops(float_compute=True)
# comparisons: raw integers compared (ESP-DL ignores exponents), so both inputs share the coarser of their
# exponents (ESP-PPQ aligns them jointly); the output is bool (one byte)
COMPARE_OPS = _trait_ops(quant_out="bool")
# nodes the exporter inserts between a float value and its reader (same float value, another form)
INSERTED_OPS = ("Transpose", "RequantizeLinear", "QuantizeLinear", "DequantizeLinear")
REDUCE_OPS = _trait_ops(family="reduce")
_OP_CLASSES = (EXPORTED, CONV_LAYOUT_OPS, LUT_OPS, ELEMENTWISE_UNARY, ADD_LIKE_OPS, ALIGN_TO_OUTPUT_OPS, PASSIVE_OPS,
               FOLLOW_OPS, ORIGIN_LAYOUT_OPS, AXIS_OPS, REDUCE_OPS, INT16_NATIVE_LUT, FLOAT_OUTPUT_OPS,
               FLOAT_COMPUTE_OPS, COMPARE_OPS)

# Operators whose quantization rules live in their own modules (.products, .rnn) register an object here;
# each stage asks it first: ``layout(fg, node, perm, require, rank)``, ``ties(fg, qi, node, tie, fixed,
# calib_exp)`` (optional), ``expected_input(fg, qi, node, u, calib_exp)`` (optional, None: the default) and
# ``export(exporter, node, attrs) -> (op, attrs, inputs)``. ``REWRITES`` run first in :func:`rewrite`.
OP_RULES: dict[str, object] = {}
REWRITES: list = []


def register_rule(op: str, rule) -> None:
    """Register the quantization rules of ``op`` (kept out of the generic trait classes above)."""
    OP_RULES[op] = rule
    for s in _OP_CLASSES:
        s.discard(op)


# ---- float functions for LUTs (float32, as ESP-PPQ evaluates them in torch) ----------------------

def lut_function(node: FNode):
    """The float32 function ESP-PPQ tabulates for a table activation: the op definition's ``float_fn``."""
    d = opdefs.find(node.op)
    if d is None or d.float_fn is None:
        raise UnsupportedError("no table for this operator", node=node.name, op=node.op,
                               supported=sorted(n for n in LUT_OPS if opdefs.find(n).float_fn is not None))
    return d.float_fn(dict(node.attrs))


def export_lut(fn, op: str, e_in: int, e_out: int, bits: int, mode: int) -> np.ndarray:
    """The table ESP-PPQ exports: ``fn`` at every input code (int16: every ``INT16_LUT_STEP``-th code and the
    end point 32768, except the ops ESP-DL runs natively in int16), quantized at ``e_out``."""
    if bits == 8:
        xs = np.arange(-128, 128, dtype=np.float32)
    elif op in INT16_NATIVE_LUT:
        xs = np.arange(-32768, 32768, dtype=np.float32)
    else:
        xs = np.arange(-32768, 32768 + INT16_LUT_STEP, INT16_LUT_STEP, dtype=np.float32)
    with np.errstate(all="ignore"):
        f = fn((xs * np.float32(2.0 ** e_in)).astype(np.float32))
    f = np.nan_to_num(np.asarray(f, np.float64), nan=0.0, posinf=1e30, neginf=-1e30)
    return q_quantize(f, e_out, "int8" if bits == 8 else "int16", mode)


# ---- 1. ESP-DL rewrites -------------------------------------------------------------------------

def rewrite(fg: FGraph, log: list[str] | None = None) -> dict[str, list[str]]:
    """Pattern fusions (:mod:`.patterns`: LayerNorm, RMSNorm, Gelu, Swish) and Relu fusion in place.
    Returns ``{new node name: [original node names]}``."""
    from .patterns import rewrite_patterns

    fg.origin = {}
    rewrite_patterns(fg, log)
    for fn in REWRITES:
        fn(fg)
    origin: dict[str, list[str]] = {n.name: list(fg.origin.get(n.name, [n.name])) for n in fg.nodes}
    prods = fg.producers()
    fused = []
    for relu in [n for n in fg.nodes if n.op == "Relu"]:
        x = relu.inputs[0]
        p = prods.get(x)
        if p is None or p.op not in ("Conv", "Gemm") or p.attrs.get("activation"):
            continue
        if len(fg.consumers(x)) != 1 or fg.is_output(x):
            continue
        p.attrs["activation"] = "Relu"
        p.outputs = list(relu.outputs)
        fg.nodes.remove(relu)
        origin[p.name] = origin[p.name] + origin.pop(relu.name)
        prods = fg.producers()
        fused.append(p.name)
    if log is not None:
        log.append(f"fuse_relu: modified ({len(fused)} Conv/Gemm with activation=Relu)" if fused
                   else "fuse_relu: no change (no Relu whose producer is a Conv/Gemm read only by it)")
    return origin


# ---- 2. exponents -------------------------------------------------------------------------------

def downstream_ops(fg: FGraph, node: FNode) -> list[FNode]:
    out = []
    for o in node.outputs:
        for c in fg.consumers(o):
            if c not in out:
                out.append(c)
    return out


def prelu_keeps_exponent(fg: FGraph, node: FNode, bits: int, target: str | None) -> bool:
    """Whether ESP-DL runs this PRelu with its input exponent as output exponent. ``prelu_11c`` (int16 on every
    target: esp32p4 has no int16 kernel, esp32s3's ``EE.VPRELU.S16`` does the same; int8 on the c target)
    copies positive values unchanged whatever the exponents (``dl_base_prelu.cpp``); only the int8 SIMD kernels
    (esp32p4, esp32s31, esp32s3) rescale them to the output exponent. An int8 PRelu with one slope is exported
    as a table (any exponents). ``target=None``: every target (tying is exact everywhere)."""
    if node.op != "PRelu":
        return False
    slope = fg.consts.get(node.inputs[1]) if len(node.inputs) > 1 else None
    if bits == 8 and slope is not None and np.asarray(slope).size == 1:
        return False
    return bits == 16 or target is None or target not in ("esp32p4", "esp32s31", "esp32s3")


def assign_exponents(fg: FGraph, calib_exp, target: str | None = None) -> None:
    """Annotate every value with its width and exponent (``fg.ann``), given each node's width (``FNode.bits``).
    ``calib_exp(value, bits) -> int`` gives the calibrated exponent of a float value. A PRelu that ESP-DL
    runs without rescaling positives (:func:`prelu_keeps_exponent` on ``target``) keeps its input's exponent."""
    for n in fg.nodes:
        if n.op in FLOAT_COMPUTE_OPS:
            n.bits = 32
    bits_of = {n.name: n.bits for n in fg.nodes}
    qi = fg.qi
    prods = fg.producers()
    for name, _ in fg.inputs:
        readers = fg.consumers(name)
        qi.vbits[name] = bits_of[readers[0].name] if readers else 8
    for n in fg.nodes:
        for o in n.outputs:
            qi.vbits[o] = 32 if n.op in FLOAT_OUTPUT_OPS else 1 if n.op in COMPARE_OPS else bits_of[n.name]
    tie: dict[str, str] = {}
    for n in fg.nodes:
        x = n.inputs[0] if n.inputs else ""
        p = prods.get(x)
        # ESP-PPQ's activation fusion pairs a computing op with its activation; after a passive op (its output
        # tied to its input below) the activation keeps its own calibrated exponent
        if n.op in FOLLOW_OPS and p is not None and p.op not in PASSIVE_OPS and len(downstream_ops(fg, p)) == 1 \
                and bits_of[p.name] == bits_of[n.name]:
            tie[x] = n.outputs[0]
        elif n.op in PASSIVE_OPS and x and x not in fg.consts and qi.vbits[x] == bits_of[n.name]:
            # data movement copies integers: its output carries its input's exponent (graph inputs too)
            for o in n.outputs:
                if o:
                    tie[o] = x
    for name, _ in fg.inputs:
        # a graph input has no producer: ESP-PPQ exports the first reader's input config for it, which for
        # Add/Sub/Concat is the reader's output exponent
        readers = fg.consumers(name)
        if readers and readers[0].op in ALIGN_TO_OUTPUT_OPS and qi.vbits[name] == bits_of[readers[0].name]:
            tie[name] = readers[0].outputs[0]
    for n in fg.nodes:
        if n.op not in ALIGN_TO_OUTPUT_OPS:
            continue
        for u in n.inputs:
            p = prods.get(u)
            if u in fg.consts or p is None or p.op in PASSIVE_OPS:
                continue
            if downstream_ops(fg, p) == [n] and bits_of[p.name] == bits_of[n.name]:
                tie[u] = n.outputs[0]

    def resolve(v: str) -> str:
        seen = [v]
        while v in tie:
            v = tie[v]
            if v in seen:
                raise UnsupportedError(f"exponent ties form a cycle through {seen}")
            seen.append(v)
        return v

    fixed: dict[str, int] = {}  # values whose exponent is not calibrated (e.g. an LSTM's cell state)
    for n in fg.nodes:
        rule = OP_RULES.get(n.op)
        if rule is not None and hasattr(rule, "ties"):
            rule.ties(fg, qi, n, tie, fixed, calib_exp)
    kept = set()  # PRelu outputs at their input's exponent: a hard constraint, merged last
    for n in fg.nodes:
        if not prelu_keeps_exponent(fg, n, bits_of[n.name], target):
            continue
        x, y = n.inputs[0], n.outputs[0]
        kept.add(y)
        if qi.vbits.get(x) != bits_of[n.name]:
            # the input arrives through a RequantizeLinear at calib_exp(x, bits) (expected_input): so does Y
            fixed[resolve(y)] = calib_exp(x, bits_of[n.name])
        else:
            rx, ry = resolve(x), resolve(y)
            if rx != ry:
                # the merged values take the coarser of the two exponents (neither side saturates)
                es = [fixed[r] if r in fixed else calib_exp(r, qi.vbits[r]) for r in (rx, ry)]
                tie[ry] = rx
                fixed[rx] = max(es)
    values = [nm for nm, _ in fg.inputs] + [o for n in fg.nodes for o in n.outputs if o]
    for v in values:
        r = resolve(v)
        qi.exp[v] = fixed[r] if r in fixed else 0 if qi.vbits[r] in (1, 32) else calib_exp(r, qi.vbits[r])
    for n in fg.nodes:
        if n.op not in COMPARE_OPS:
            continue
        # an operand read only by the comparison is made at the shared exponent directly (quantizing a graph
        # input twice, or requantizing, rounds twice and flips comparisons of near-equal values)
        e = compare_exponent(fg, qi, n)
        for u in n.inputs:
            if (u and u not in fg.consts and not fg.is_output(u) and qi.vbits[u] == bits_of[n.name]
                    and downstream_readers(fg, u) == [n] and u not in kept):
                qi.exp[u] = e


def downstream_readers(fg: FGraph, v: str) -> list[FNode]:
    out = []
    for c in fg.consumers(v):
        if c not in out:
            out.append(c)
    return out


def compare_exponent(fg: FGraph, qi: QInfo, node: FNode) -> int:
    """The exponent both inputs of a comparison take: the coarser of its activation inputs'."""
    es = [qi.exp[_float_name(fg, u)] for u in node.inputs if u and u not in fg.consts]
    return max(es) if es else 0


def expected_input(fg: FGraph, qi: QInfo, node: FNode, u: str, calib_exp) -> tuple[int, int]:
    """(exponent, bits) that ``node`` wants for its activation input ``u``."""
    rule = OP_RULES.get(node.op)
    if rule is not None and hasattr(rule, "expected_input"):
        want = rule.expected_input(fg, qi, node, u, calib_exp)
        if want is not None:
            return want
    b = qi.bits[node.name]
    if b == 32:
        return 0, 32  # a float32 op (FLOAT_COMPUTE_OPS)
    if node.op in COMPARE_OPS:
        return compare_exponent(fg, qi, node), b
    if node.op in ALIGN_TO_OUTPUT_OPS or (node.op in PASSIVE_OPS and u == node.inputs[0]):
        # ESP-DL copies (or negates) the integers of a passive op: its data input must already be at the
        # output exponent (the same value unless the input comes from another width or a float op)
        return qi.exp[node.outputs[0]], b
    if qi.vbits[u] == b:
        return qi.exp[u], b
    return calib_exp(u, b), b


# ---- 3. layout ----------------------------------------------------------------------------------

def _nhwc_perm(rank: int) -> list[int]:
    return [0, 2, 3, 1] if rank == 4 else [0, 2, 1]


def _identity(rank: int) -> list[int]:
    return list(range(rank))


def _inverse(perm: list[int]) -> list[int]:
    return [perm.index(i) for i in range(len(perm))]


def _compose(p1: list[int], p2: list[int]) -> list[int]:
    """Perm of transpose(transpose(x, p1), p2)."""
    return [p1[i] for i in p2]


class Namer:
    def __init__(self):
        self.ops = 0
        self.vars = 0

    def op(self) -> str:
        s = f"PPQ_Operation_{self.ops}"
        self.ops += 1
        return s

    def var(self) -> str:
        s = f"PPQ_Variable_{self.vars}"
        self.vars += 1
        return s


def apply_layout(fg: FGraph, namer: Namer) -> None:
    """Choose NHWC/NWC perms (annotated on the values: ``fg.perm``, the perm of the ONNX shape), insert
    Transposes where needed."""
    qi, perm = fg.qi, fg.perm
    shapes = fg.shapes

    def rank(v):
        return len(shapes[v])

    def insert_transpose(node: FNode, idx: int, p: list[int], want: list[int]) -> None:
        u = node.inputs[idx]
        out = namer.var()
        t = FNode("Transpose", namer.op(), [u], [out], {"perm": list(p)})
        fg.nodes.insert(fg.nodes.index(node), t)
        qi.bits[t.name] = qi.vbits[u]
        qi.vbits[out] = qi.vbits[u]
        qi.exp[out] = qi.exp[u]
        shapes[out] = shapes[u]  # the same logical tensor, stored in another order
        perm[out] = list(want)
        node.inputs[idx] = out

    def require(node: FNode, idx: int, want: list[int]) -> None:
        u = node.inputs[idx]
        have = perm.get(u)
        if have is None:
            perm[u] = want
        elif have != want:
            insert_transpose(node, idx, _compose(_inverse(have), want), want)

    def act_inputs(node):
        return [i for i, u in enumerate(node.inputs) if u and u not in fg.consts]

    for node in list(fg.nodes):
        op = node.op
        ins = act_inputs(node)
        if op in OP_RULES:
            OP_RULES[op].layout(fg, node, perm, require, rank)
        elif op in CONV_LAYOUT_OPS:
            r = rank(node.inputs[0])
            if r not in (3, 4):
                raise UnsupportedError(f"input of rank {r}", node=node.name, op=op, supported=["rank 3 (NCW)",
                                                                                             "rank 4 (NCHW)"])
            require(node, 0, _nhwc_perm(r))
            for o in node.outputs:
                perm[o] = _nhwc_perm(rank(o))
        elif op in ELEMENTWISE_UNARY or op == "Swish":
            u = node.inputs[0]
            if op == "PRelu" and rank(u) == 4 and node.inputs[1] in fg.consts \
                    and np.asarray(fg.consts[node.inputs[1]]).size > 1:
                require(node, 0, _nhwc_perm(4))  # ESP-DL's PRelu reads a per-channel slope along shape[3]
                u = node.inputs[0]
            if u not in perm:
                perm[u] = _identity(rank(u))
            p = perm[u]
            for o in node.outputs:
                perm[o] = p
            if op == "PRelu" and rank(u) != 4:
                raise UnsupportedError(f"PRelu on a rank-{rank(u)} tensor", node=node.name, op=op,
                                       supported=["4-D (NCHW) input (ESP-DL's PRelu reads shape[3] as channels)"])
            if op == "PRelu" and node.inputs[1] in fg.consts:
                a = np.asarray(fg.consts[node.inputs[1]])
                c = fg.shapes[u][1] if len(fg.shapes[u]) > 1 else 1
                if a.size not in (1, c) or (a.size == c and c > 1 and a.shape[0] != c):
                    # ESP-DL's PRelu takes alpha[0] == 1 (one slope) or == channels (dl_module_prelu.hpp)
                    raise UnsupportedError(f"PRelu slope of shape {list(a.shape)}", node=node.name, op=op,
                                           supported=["one slope", "one slope per channel, shape [C, 1, ...]"])
        elif op in ADD_LIKE_OPS:
            ps = []
            for i in ins:
                u = node.inputs[i]
                if u not in perm:
                    perm[u] = _identity(rank(u))
                ps.append(perm[u])
            out_r = rank(node.outputs[0])
            if len(ins) == 2 and len(ps[0]) != len(ps[1]):
                for i in ins:
                    require(node, i, _identity(rank(node.inputs[i])))
                target = _identity(out_r)
            else:
                target = _choose_perm(ps, out_r)
                if len(target) != out_r:
                    for i in ins:
                        require(node, i, _identity(rank(node.inputs[i])))
                    target = _identity(out_r)
                else:
                    for i in ins:
                        require(node, i, target)
            for i, u in enumerate(node.inputs):
                if u in fg.consts:
                    _permute_const(fg, node, i, target, out_r)
            perm[node.outputs[0]] = target
        elif op == "Concat":
            ps = []
            for i in ins:
                u = node.inputs[i]
                if u not in perm:
                    perm[u] = _identity(rank(u))
                ps.append(perm[u])
            if all(p == ps[0] for p in ps) and not any(u in fg.consts for u in node.inputs):
                p = ps[0]
                ax = int(node.attrs.get("axis", 0)) % len(p)
                node.attrs["axis"] = p.index(ax)
                perm[node.outputs[0]] = p
            else:
                for i in ins:
                    require(node, i, _identity(rank(node.inputs[i])))
                perm[node.outputs[0]] = _identity(rank(node.outputs[0]))
        elif op == "Slice":
            u = node.inputs[0]
            if u not in perm:
                perm[u] = _identity(rank(u))
            p = perm[u]
            if p != _identity(len(p)):
                _remap_slice_axes(fg, node, p)
            perm[node.outputs[0]] = p
        elif op in AXIS_OPS:
            u = node.inputs[0]
            if u not in perm:
                perm[u] = _identity(rank(u))
            _axis_layout(fg, node, perm, require)
        elif op in ORIGIN_LAYOUT_OPS:
            for i in ins:
                require(node, i, _identity(rank(node.inputs[i])))
            for o in node.outputs:
                perm[o] = _identity(rank(o))
        else:
            raise UnsupportedError("no layout rule", node=node.name, op=op, supported=sorted(supported_float_ops()))
    for name, _ in fg.inputs:
        perm.setdefault(name, _identity(rank(name)))
    sink_transposes(fg, qi, perm, namer)
    fuse_transposes(fg, perm)


def _choose_perm(ps: list[list[int]], r: int) -> list[int]:
    nhwc = _nhwc_perm(r) if r in (3, 4) else None
    if nhwc is not None and any(p == nhwc for p in ps) and not all(p == nhwc for p in ps):
        return nhwc
    for p in ps:
        if p != _identity(len(p)):
            return p
    return ps[0]


def node_axes(fg: FGraph, node: FNode, r: int) -> list[int]:
    """The axes (normalized, sorted) a Reduce* node reduces: from its ``axes`` attribute or input 1."""
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1]:
        if node.inputs[1] not in fg.consts:
            raise UnsupportedError("reduction axes must be a constant", node=node.name, op=node.op)
        axes = [int(a) for a in np.asarray(fg.consts[node.inputs[1]]).ravel()]
    if not axes:
        if int(node.attrs.get("noop_with_empty_axes", 0)):
            raise UnsupportedError("noop_with_empty_axes=1 without axes", node=node.name, op=node.op,
                                   supported=["explicit axes", "noop_with_empty_axes=0"])
        return list(range(r))
    return sorted({int(a) % r for a in axes})


def _axis_layout(fg: FGraph, node: FNode, perm: dict[str, list[int]], require) -> None:
    """Ops acting along axes (Reduce*, Softmax, LogSoftmax, LpNormalization, Split): they run on their
    input's layout; the axes they name are remapped to storage order (``_axes`` / ``axis``)."""
    u = node.inputs[0]
    p = perm[u]
    r = len(p)
    if node.op in REDUCE_OPS:
        axes = node_axes(fg, node, r)
        keep = int(node.attrs.get("keepdims", 1))
        if not keep and p != _identity(r):
            require(node, 0, _identity(r))
            p = _identity(r)
        node.attrs["_axes"] = sorted(p.index(a) for a in axes)
        out_r = len(fg.shapes[node.outputs[0]])
        perm[node.outputs[0]] = p if keep else _identity(out_r)
        return
    default = 0 if node.op == "Split" else -1
    if node.op in ("Softmax", "LogSoftmax") and fg.opset < 13 and "axis" not in node.attrs:
        default = 1  # opset < 13: flatten from axis 1; equal to the last axis only for rank 2
    ax = int(node.attrs.get("axis", default)) % r
    if node.op in ("Softmax", "LogSoftmax") and fg.opset < 13 and ax != r - 1:
        raise UnsupportedError(f"opset-{fg.opset} {node.op} over axes {ax}..{r - 1} (flattened)", node=node.name,
                               op=node.op, supported=["the last axis", "opset >= 13 (one axis)"])
    node.attrs["axis"] = p.index(ax)
    for o in node.outputs:
        if o:
            perm[o] = p


def _remap_slice_axes(fg: FGraph, node: FNode, p: list[int]) -> None:
    """Slice on a permuted tensor: axis ``a`` of the original order is axis ``p.index(a)`` in storage."""
    r = len(p)
    for k in (1, 2):
        if len(node.inputs) <= k or node.inputs[k] not in fg.consts:
            raise UnsupportedError("Slice starts/ends must be constants", node=node.name, op="Slice")
    n = int(np.asarray(fg.consts[node.inputs[1]]).size)
    if len(node.inputs) > 3 and node.inputs[3]:
        if node.inputs[3] not in fg.consts:
            raise UnsupportedError("Slice axes must be constants", node=node.name, op="Slice")
        axes = [int(a) % r for a in np.asarray(fg.consts[node.inputs[3]]).ravel()]
    else:
        axes = list(range(n))
    new = np.array([p.index(a) for a in axes], np.int64)
    name = node.inputs[3] if len(node.inputs) > 3 and node.inputs[3] else f"{node.name}_axes"
    if len([n2 for n2 in fg.nodes if name in n2.inputs]) > 1:
        name = f"{name}_{node.name}"
    fg.consts[name] = new
    ins = list(node.inputs) + [""] * (4 - len(node.inputs))
    ins[3] = name
    node.inputs = ins


def _permute_const(fg: FGraph, node: FNode, idx: int, p: list[int], r: int) -> None:
    """Broadcast-compatible re-layout of a constant operand read in perm ``p``."""
    name = node.inputs[idx]
    if not name or name not in fg.consts:
        return
    c = np.asarray(fg.consts[name])
    if c.ndim == 0 or c.size == 1 or p == _identity(len(p)):
        return
    if c.ndim < r:
        c = c.reshape((1,) * (r - c.ndim) + c.shape)
    new = f"{name}_{'_'.join(map(str, p))}"
    fg.consts[new] = np.ascontiguousarray(np.transpose(c, p))
    node.inputs[idx] = new


def sink_transposes(fg: FGraph, qi: QInfo, perm: dict[str, list[int]], namer: Namer) -> None:
    """``Transpose -> unary element-wise op -> Transpose`` becomes ``op -> Transpose -> Transpose`` (then
    fused, usually to nothing): the op runs on the first Transpose's input storage. This removes the
    transposes around a model's own ``x.transpose(1, 2) ... .transpose(1, 2)`` when an activation sits
    between (LayerNorm -> transpose -> Relu -> Conv). Only for ops whose constants are scalars (a layout-
    free function) and when the Transpose keeps the exponent and width of its input."""
    changed = True
    while changed:
        changed = False
        for t in [n for n in fg.nodes if n.op == "Transpose"]:
            x, y = t.inputs[0], t.outputs[0]
            rs = fg.consumers(y)
            if len(rs) != 1 or fg.is_output(y):
                continue
            u = rs[0]
            acts = [i for i in u.inputs if i and i not in fg.consts]
            consts = [i for i in u.inputs if i and i in fg.consts]
            if (u.op not in ELEMENTWISE_UNARY or u.op in ("PRelu", "Identity") or acts != [y] or len(u.outputs) != 1
                    or any(np.asarray(fg.consts[c]).size != 1 for c in consts)):
                continue
            z = u.outputs[0]
            rz = fg.consumers(z)
            if len(rz) != 1 or rz[0].op != "Transpose" or fg.is_output(z):
                continue
            if qi.vbits[x] != qi.vbits[y] or qi.exp[x] != qi.exp[y] or qi.bits[u.name] != qi.vbits[y]:
                continue
            a = list(t.attrs["perm"])
            y2 = namer.var()
            u.inputs = [x if i == y else i for i in u.inputs]
            old = perm[z]
            perm[z] = _compose(old, _inverse(a))
            t.inputs, t.outputs = [z], [y2]
            perm[y2] = old
            fg.shapes[y2] = fg.shapes[z]
            qi.vbits[y2], qi.exp[y2] = qi.vbits[z], qi.exp[z]
            qi.bits[t.name] = qi.vbits[z]
            rz[0].inputs = [y2 if i == z else i for i in rz[0].inputs]
            fg.nodes.remove(t)
            fg.nodes.insert(fg.nodes.index(u) + 1, t)
            changed = True


def fuse_transposes(fg: FGraph, perm: dict[str, list[int]]) -> None:
    changed = True
    while changed:
        changed = False
        for t in [n for n in fg.nodes if n.op == "Transpose"]:
            if t not in fg.nodes:
                continue
            readers = fg.consumers(t.outputs[0])
            if len(readers) == 1 and readers[0].op == "Transpose" and not fg.is_output(t.outputs[0]):
                t2 = readers[0]
                t.attrs["perm"] = _compose(list(t.attrs["perm"]), list(t2.attrs["perm"]))
                t.outputs = list(t2.outputs)
                fg.nodes.remove(t2)
                changed = True
        for t in [n for n in fg.nodes if n.op == "Transpose"]:
            p = list(t.attrs["perm"])
            if p == _identity(len(p)) and not fg.is_output(t.outputs[0]):
                src, dst = t.inputs[0], t.outputs[0]
                fg.nodes.remove(t)
                for n in fg.nodes:
                    n.inputs = [src if i == dst else i for i in n.inputs]
                changed = True


def topo_sort(fg: FGraph) -> None:
    """Order nodes as ESP-PPQ's exporter does: Kahn's algorithm, FIFO queue, readers in graph order."""
    prods = fg.producers()
    ups = {id(n): len({id(prods[u]) for u in n.inputs if u in prods}) for n in fg.nodes}
    readers: dict[str, list[FNode]] = {}
    for n in fg.nodes:
        for u in n.inputs:
            if u in prods:
                readers.setdefault(u, []).append(n)
    queue = [n for n in fg.nodes if ups[id(n)] == 0]
    out = []
    while queue:
        n = queue.pop(0)
        out.append(n)
        seen = set()
        for o in n.outputs:
            for r in readers.get(o, []):
                if id(r) in seen:
                    continue
                seen.add(id(r))
                ups[id(r)] -= 1
                if ups[id(r)] == 0:
                    queue.append(r)
    if len(out) != len(fg.nodes):
        stuck = [n.name for n in fg.nodes if n not in out]
        raise UnsupportedError(f"the graph has a cycle through {stuck[:5]}")
    fg.nodes[:] = out


# ---- 4. requantize nodes ------------------------------------------------------------------------

def insert_requantize(fg: FGraph, namer: Namer, calib_exp) -> None:
    """A Requantize/Quantize/DequantizeLinear in front of every reader whose input's exponent or width is not
    the one it expects (:func:`expected_input`)."""
    qi, perm = fg.qi, fg.perm
    for node in list(fg.nodes):
        if node.op in INSERTED_OPS and node.name.startswith("PPQ_Operation_"):
            continue  # layout Transposes inserted here carry their input's width and exponent
        for idx, u in enumerate(list(node.inputs)):
            if not u or u in fg.consts:
                continue
            want_e, want_b = expected_input(fg, qi, node, _float_name(fg, u), calib_exp)
            if (want_e, want_b) == (qi.exp[u], qi.vbits[u]):
                continue
            out = namer.var()
            # float32 (Softmax, Log, ...) -> int: QuantizeLinear; int -> float32 (Log, Sqrt): DequantizeLinear
            kind = ("QuantizeLinear" if qi.vbits[u] == 32 else "DequantizeLinear" if want_b == 32
                    else "RequantizeLinear")
            r = FNode(kind, namer.op(), [u], [out], {"_exp_in": qi.exp[u], "_exp_out": want_e})
            fg.nodes.insert(fg.nodes.index(node), r)
            qi.bits[r.name] = want_b
            qi.vbits[out] = want_b
            qi.exp[out] = want_e
            fg.shapes[out] = fg.shapes[u]
            perm[out] = perm[u]
            node.inputs[idx] = out


def _float_name(fg: FGraph, u: str) -> str:
    """The calibrated float value behind ``u`` (through inserted Transposes)."""
    prods = fg.producers()
    while u.startswith("PPQ_Variable_") and u in prods and prods[u].op in INSERTED_OPS:
        u = prods[u].inputs[0]
    return u


# ---- 5. parameters and the IR -------------------------------------------------------------------

def _pow2_up(x: float, qmax: int) -> int:
    s = max(2.0 * x / (2 * qmax + 1), 2.0 ** -24)
    return int(np.ceil(np.log2(s)))


def weight_exponents(w: np.ndarray, axis: int | None, bits: int) -> np.ndarray:
    qmax = (1 << (bits - 1)) - 1
    a = np.abs(w.astype(np.float64))
    if axis is None:
        return np.array([_pow2_up(float(a.max(initial=0.0)), qmax)])
    a = np.moveaxis(a, axis, 0).reshape(a.shape[axis], -1)
    return np.array([_pow2_up(float(v), qmax) for v in a.max(axis=1, initial=0.0)])


def const_exponent(c: np.ndarray, bits: int, mode: int) -> int:
    """The power-of-two exponent with the least squared error for a constant operand (Mul/Div/Mod): its
    values are known, so clipping a few outliers may beat min-max (ESP-PPQ's percentile observer does
    likewise for int8). Searched from min-max down by up to 3 steps; ties keep the wider range."""
    e_max = int(weight_exponents(c, None, bits)[0])
    c64 = c.astype(np.float64)
    dtype = "int8" if bits == 8 else "int16"
    best, best_e = None, e_max
    for e in range(e_max, e_max - 4, -1):
        err = float(np.sum((c64 - q_quantize(c, e, dtype, mode).astype(np.float64) * 2.0 ** e) ** 2))
        if best is None or err < best:
            best, best_e = err, e
    return best_e


def _quant_per_channel(w: np.ndarray, exps: np.ndarray, axis: int, dtype: str, mode: int) -> np.ndarray:
    shape = [1] * w.ndim
    shape[axis] = -1
    e = exps.reshape(shape) if len(exps) > 1 else exps.reshape([1] * w.ndim)
    scaled = w.astype(np.float64) * np.power(2.0, -e.astype(np.float64))
    lo, hi = qrange(dtype)
    return np.clip(round_array(scaled, mode), lo, hi).astype(dtype)


def check_registered(nodes) -> None:
    """Every exported node is a module ESP-DL's runtime registers (``dl_module_creator.hpp``; ``espdl=True`` on
    its definition): a chip cannot load a model holding any other, even one with a ``dl_module_*.hpp`` header."""
    for node in nodes:
        d = opdefs.find(node.op_type)
        if d is None or not d.espdl:
            raise UnsupportedError("the quantizer would export an operator ESP-DL does not register "
                                   "(dl_module_creator.hpp): a chip could not load the model",
                                   node=node.name, op=node.op_type)


class Exporter:
    def __init__(self, fg: FGraph, target: str, namer: Namer):
        self.fg, self.target, self.namer = fg, target, namer
        self.qi, self.perm = fg.qi, fg.perm  # the graph's annotations (widths, exponents, storage orders)
        self.mode = TARGETS[target]
        self.luts: list[Tensor] = []
        self.params: dict[str, Tensor] = {}

    def dtype(self, bits: int) -> str:
        return {1: "bool", 8: "int8", 16: "int16", 32: "float32"}[bits]

    def shape(self, v: str) -> tuple[int, ...]:
        s = self.fg.shapes[v]
        p = self.perm.get(v) or list(range(len(s)))
        return tuple(int(s[i]) for i in p)

    def vinfo(self, v: str) -> ValueInfo:
        return ValueInfo(v, self.dtype(self.qi.vbits[v]), self.shape(v), (int(self.qi.exp[v]),))

    def param(self, name: str, data: np.ndarray, dtype: str, exps, layout: str = "UNK") -> str:
        data = np.asarray(data).astype(dtype)
        data = np.ascontiguousarray(data) if data.ndim else data.copy()
        self.params[name] = Tensor(name=name, dtype=dtype, dims=tuple(int(d) for d in data.shape), data=data,
                                   exponents=tuple(int(e) for e in exps), layout=layout,
                                   doc_string=layout_doc(layout))
        return name

    def int64_param(self, name: str) -> str:
        return self.param(name, np.asarray(self.fg.consts[name]).astype(np.int64), "int64", [0])

    def act_const(self, name: str, exp: int, bits: int, new_name: str | None = None) -> str:
        c = np.asarray(self.fg.consts[name], dtype=np.float32)
        q = q_quantize(c, exp, self.dtype(bits), self.mode)
        return self.param(new_name or name, q, self.dtype(bits), [exp])

    # ---- nodes ------------------------------------------------------------------------------
    def build(self, graph_name: str, origin_inputs, outputs) -> Graph:
        nodes = [self.node(n) for n in self.fg.nodes]
        check_registered(nodes)
        g = Graph(name=graph_name)
        g.nodes = nodes
        g.initializers = {t.name: t for t in self.luts}
        g.initializers.update(self.params)
        g.inputs = [self.vinfo(n) for n, _ in origin_inputs]
        g.outputs = [self.vinfo(o) for o in outputs]
        vi = {}
        for n, _ in origin_inputs:
            vi[n] = self.vinfo(n)
        for n in self.fg.nodes:
            for o in n.outputs:
                if o:
                    vi[o] = self.vinfo(o)
        g.value_info = vi
        g.ir_version = 8
        g.metadata = {"target": self.target}
        g.producer_name = "chunkwise"
        return g

    def node(self, n: FNode) -> Node:
        qt = {8: "S8", 16: "S16", 32: "F32"}[self.qi.bits[n.name]]
        op = n.op
        attrs: dict = {"quant_type": qt}
        inputs = list(n.inputs)
        a = n.attrs
        if op in OP_RULES:
            op, attrs, inputs = OP_RULES[op].export(self, n, attrs)
        elif op == "Conv":
            inputs = self.conv_params(n)
            nsp = len(self.fg.shapes[n.inputs[0]]) - 2
            attrs.update(activation=a.get("activation", "Linear"), dilations=list(a.get("dilations", [1] * nsp)),
                         group=int(a.get("group", 1)),
                         kernel_shape=list(a.get("kernel_shape") or self.fg.consts[n.inputs[1]].shape[2:]),
                         pads=list(a.get("pads", [0] * (2 * nsp))), strides=list(a.get("strides", [1] * nsp)))
            if a.get("auto_pad", "NOTSET") not in ("NOTSET", ""):
                raise UnsupportedError(f"auto_pad={a['auto_pad']}", node=n.name, op=op, supported=["explicit pads"])
        elif op == "Gemm":
            inputs = self.gemm_params(n)
            attrs.update(activation=a.get("activation", "Linear"), alpha=1.0, beta=1.0, transB=0)
        elif op in ("AveragePool", "MaxPool"):
            nsp = len(self.fg.shapes[n.inputs[0]]) - 2
            if a.get("auto_pad", "NOTSET") not in ("NOTSET", ""):
                raise UnsupportedError(f"auto_pad={a['auto_pad']}", node=n.name, op=op, supported=["explicit pads"])
            attrs.update(ceil_mode=int(a.get("ceil_mode", 0)), kernel_shape=list(a["kernel_shape"]),
                         pads=list(a.get("pads", [0] * (2 * nsp))), strides=list(a.get("strides", [1] * nsp)))
            if op == "AveragePool":
                attrs["count_include_pad"] = int(a.get("count_include_pad", 0))
            else:
                attrs["dilations"] = list(a.get("dilations", [1] * nsp))
        elif op in FLOAT_COMPUTE_OPS:  # float32 in and out, no table; float constants stay float32
            inputs = [self.param(u, np.asarray(self.fg.consts[u], np.float32), "float32", [0])
                      if u in self.fg.consts else u for u in inputs]
        elif op in LUT_OPS:
            op, attrs, inputs = self.lut_node(n, attrs)
        elif op in ADD_LIKE_OPS:
            inputs = self.binary_consts(n)
            if op == "Mod":
                attrs["fmod"] = int(a.get("fmod", 0))
        elif op == "Concat":
            attrs["axis"] = int(a.get("axis", 0))
            e_out, b = self.qi.exp[n.outputs[0]], self.qi.bits[n.name]
            inputs = [self.act_const(i, e_out, b) if i in self.fg.consts else i for i in inputs]
        elif op == "Flatten":
            attrs["axis"] = int(a.get("axis", 1))
        elif op == "Reshape":
            attrs["allowzero"] = int(a.get("allowzero", 0))
            inputs = [inputs[0], self.int64_param(inputs[1])]
        elif op == "Transpose":
            attrs["perm"] = [int(v) for v in a["perm"]]
        elif op in ("Slice", "Squeeze", "Unsqueeze"):
            if "axes" in a:  # opset < 13
                nm = f"{n.name}_axes"
                self.fg.consts[nm] = np.array(a["axes"], np.int64)
                inputs = inputs + [nm]
            inputs = [inputs[0]] + [self.int64_param(i) if i else "" for i in inputs[1:]]
        elif op == "Pad":
            attrs["mode"] = a.get("mode", "constant")
            ins = [inputs[0], self.int64_param(inputs[1])]
            if len(inputs) > 2 and inputs[2]:
                ins.append(self.act_const(inputs[2], self.qi.exp[n.inputs[0]], self.qi.bits[n.name]))
            inputs = ins
        elif op == "RequantizeLinear":
            vs, vz = self.namer.var(), self.namer.var()
            self.param(vs, np.array(2.0 ** (a["_exp_out"] - a["_exp_in"]), np.float32), "float32", [0])
            self.param(vz, np.array(0), self.dtype(self.qi.bits[n.name]), [0])
            inputs = [inputs[0], vs, vz]
        elif op == "DequantizeLinear":
            vs, vz = self.namer.var(), self.namer.var()
            self.param(vs, np.array(2.0 ** a["_exp_in"], np.float32), "float32", [0])
            self.param(vz, np.array(0), self.dtype(self.qi.vbits[n.inputs[0]]), [0])
            inputs = [inputs[0], vs, vz]
        elif op == "QuantizeLinear":
            vs, vz = self.namer.var(), self.namer.var()
            self.param(vs, np.array(2.0 ** a["_exp_out"], np.float32), "float32", [0])
            self.param(vz, np.array(0), self.dtype(self.qi.bits[n.name]), [0])
            inputs = [inputs[0], vs, vz]
        elif op in ("GlobalAveragePool", "GlobalMaxPool"):
            inputs = inputs[:1]  # the activation alone: ESP-DL's global pools take no parameters or attributes
        elif op in REDUCE_OPS:
            nm = f"{n.name}_axes"
            self.fg.consts[nm] = np.array(a["_axes"], np.int64)
            inputs = [inputs[0], self.int64_param(nm)]
            attrs["keepdims"] = int(a.get("keepdims", 1))
        elif op in ("Softmax", "LogSoftmax", "LpNormalization", "Split"):
            attrs["axis"] = int(a["axis"])
            if op == "LpNormalization":
                attrs["p"] = int(a.get("p", 2))
            if op == "Split":
                inputs = [inputs[0], self.split_sizes(n)]
        elif op == "LayerNormalization":
            inputs = self.norm_params(n, quantized=True)
            attrs.update(axis=int(a.get("axis", -1)), epsilon=float(a.get("epsilon", 1e-5)))
        elif op == "RMSNormalization":
            inputs = self.norm_params(n, quantized=False)
            attrs.update(axis=int(a.get("axis", -1)), epsilon=float(a.get("epsilon", 1e-5)))
        elif op == "DepthToSpace":
            attrs.update(blocksize=int(a["blocksize"]), mode=str(a.get("mode", "DCR")))
        elif op == "Resize":
            inputs = self.resize_inputs(n, attrs)
        elif op == "ScatterND":
            if len(inputs) < 3 or inputs[1] not in self.fg.consts:
                raise UnsupportedError("ScatterND indices must be a constant", node=n.name, op=op)
            attrs["reduction"] = str(a.get("reduction", "none"))
            e_out, b = self.qi.exp[n.outputs[0]], self.qi.bits[n.name]
            inputs = [self.act_const(inputs[0], e_out, b) if inputs[0] in self.fg.consts else inputs[0],
                      self.int64_param(inputs[1]),
                      self.act_const(inputs[2], e_out, b) if inputs[2] in self.fg.consts else inputs[2]]
        elif op == "ReverseSequence":
            if len(inputs) < 2 or inputs[1] not in self.fg.consts:
                raise UnsupportedError("sequence_lens must be a constant", node=n.name, op=op)
            attrs.update(batch_axis=int(a.get("batch_axis", 1)), time_axis=int(a.get("time_axis", 0)))
            inputs = [inputs[0], self.int64_param(inputs[1])]
        else:
            raise UnsupportedError("operator is not supported by the exporter", node=n.name, op=op,
                                   supported=sorted(supported_float_ops()))
        node = Node(op, n.name, inputs, list(n.outputs))
        for k in sorted(attrs):
            v = attrs[k]
            node.attrs[k] = make_attribute(v, "ints" if isinstance(v, list) else None)
        return node

    def lut_node(self, n: FNode, attrs: dict):
        bits = self.qi.bits[n.name]
        x = n.inputs[0]
        e_in, e_out = self.qi.exp[x], self.qi.exp[n.outputs[0]]
        inputs = [x]
        if n.op == "Clip":
            lo_hi = []
            for k in (1, 2):
                nm = n.inputs[k] if len(n.inputs) > k else ""
                if not nm and k == 1 and len(n.inputs) > 2 and n.inputs[2]:
                    # ESP-DL's Clip reads input 1 as min (dl_module_clip.hpp): a max-only Clip gets the type's
                    # minimum as min
                    nm = f"{n.name}_min"
                    self.param(nm, np.array(qrange(self.dtype(bits))[0]), self.dtype(bits), [e_in])
                    lo_hi.append(None)
                    inputs.append(nm)
                    continue
                if not nm:
                    lo_hi.append(None)
                    continue
                if nm not in self.fg.consts:
                    raise UnsupportedError("Clip bounds must be constants", node=n.name, op="Clip")
                self.act_const(nm, e_in, bits)
                lo_hi.append(self.params[nm].data.astype(np.float32) * np.float32(2.0 ** e_in))
                inputs.append(nm)
            lo, hi = lo_hi

            def fn(v, lo=lo, hi=hi):
                if lo is not None:
                    v = np.maximum(v, lo)
                if hi is not None:
                    v = np.minimum(v, hi)
                return v.astype(np.float32)
        elif n.op == "PRelu":
            slope = np.asarray(self.fg.consts[n.inputs[1]], np.float32)
            e_s = int(weight_exponents(slope, None, bits)[0])
            self.act_const(n.inputs[1], e_s, bits)
            inputs.append(n.inputs[1])
            if slope.size != 1:
                return "PRelu", attrs, inputs  # per-channel slope: no table
            s = np.float32(self.params[n.inputs[1]].data.ravel()[0] * 2.0 ** e_s)

            def fn(v, s=s):
                return np.where(v >= 0, v, v * s).astype(np.float32)
        else:
            fn = lut_function(n)
        for k in ("alpha", "beta"):  # copied as the ONNX node gives them, as ESP-PPQ does (ESP-DL has the
            if k in n.attrs and n.op in ("LeakyRelu", "HardSigmoid", "Elu"):  # ONNX defaults otherwise)
                attrs[k] = float(n.attrs[k])
        op = n.op
        table = export_lut(fn, op, e_in, e_out, bits, self.mode)
        if bits == 16 and op not in INT16_NATIVE_LUT:
            attrs["int16_lut_step"] = INT16_LUT_STEP
            attrs["original_op_type"] = op
            op = "LUT"
        name = None
        for t in self.luts:  # identical tables are shared, as ESP-PPQ 1.3 exports them
            if (t.name.startswith(f"{n.op}_lut_") and t.exponents == (int(e_out),) and t.dtype == self.dtype(bits)
                    and np.array_equal(t.data, table)):
                name = t.name
                break
        if name is None:
            name = f"{n.op}_lut_{len(self.luts)}"
            self.luts.append(Tensor(name=name, dtype=self.dtype(bits), dims=(len(table),), data=table,
                                    exponents=(int(e_out),), layout=None, doc_string=""))
        attrs["lut"] = name
        return op, attrs, inputs

    def binary_consts(self, n: FNode) -> list[str]:
        bits = self.qi.bits[n.name]
        out = []
        for u in n.inputs:
            if u in self.fg.consts:
                c = np.asarray(self.fg.consts[u], np.float32)
                if n.op in ALIGN_TO_OUTPUT_OPS:
                    e = self.qi.exp[n.outputs[0]]
                elif n.op in COMPARE_OPS:
                    e = compare_exponent(self.fg, self.qi, n)
                else:
                    e = const_exponent(c, bits, self.mode)
                out.append(self.act_const(u, e, bits))
            else:
                out.append(u)
        return out

    def split_sizes(self, n: FNode) -> str:
        """Split sizes as an int64 input (ESP-DL reads only the input): from input 1, the opset < 13
        attribute, or equal parts."""
        x = n.inputs[0]
        shp = self.fg.shapes[x]
        r = len(shp)
        ax = int(n.attrs["axis"])
        dim = shp[(self.perm.get(x) or list(range(r)))[ax]]
        if len(n.inputs) > 1 and n.inputs[1]:
            if n.inputs[1] not in self.fg.consts:
                raise UnsupportedError("Split sizes must be a constant", node=n.name, op="Split")
            sizes = [int(v) for v in np.asarray(self.fg.consts[n.inputs[1]]).ravel()]
        elif n.attrs.get("split"):
            sizes = [int(v) for v in n.attrs["split"]]
        else:
            k = len(n.outputs)
            c = -(-dim // k)
            sizes = [min(c, dim - i * c) for i in range(k)]
        nm = f"{n.name}_split"
        self.fg.consts[nm] = np.array(sizes, np.int64)
        return self.int64_param(nm)

    def norm_params(self, n: FNode, quantized: bool) -> list[str]:
        """LayerNormalization: scale and bias at the activation width, per-tensor min-max power-of-two
        exponents; RMSNormalization: float32 scale (ESP-PPQ keeps it unquantized)."""
        bits = self.qi.bits[n.name]
        ins = [n.inputs[0]]
        for i in n.inputs[1:3]:
            if not i:
                continue
            if i not in self.fg.consts:
                raise UnsupportedError("normalization scale/bias must be constants", node=n.name, op=n.op)
            c = np.asarray(self.fg.consts[i], np.float32)
            if quantized:
                e = int(weight_exponents(c, None, bits)[0])
                ins.append(self.act_const(i, e, bits))
            else:
                ins.append(self.param(i, c, "float32", [0]))
        return ins

    def resize_inputs(self, n: FNode, attrs: dict) -> list[str]:
        a = n.attrs
        if self.qi.bits[n.name] != 8:
            raise UnsupportedError("int16 Resize (ESP-DL's int16 resize does nothing)", node=n.name, op="Resize",
                                   supported=["int8 Resize"])
        x = n.inputs[0]
        r = len(self.fg.shapes[x])
        attrs.update(mode=str(a.get("mode", "nearest")),
                     coordinate_transformation_mode=str(a.get("coordinate_transformation_mode", "half_pixel")),
                     nearest_mode=str(a.get("nearest_mode", "round_prefer_floor")))
        scales = n.inputs[2] if len(n.inputs) > 2 and n.inputs[2] else ""
        sizes = n.inputs[3] if len(n.inputs) > 3 and n.inputs[3] else ""
        # ESP-DL reads scales / sizes in the ONNX (NCHW) order, whatever the activation layout
        if scales and scales in self.fg.consts and np.asarray(self.fg.consts[scales]).size == r:
            v = np.asarray(self.fg.consts[scales], np.float32).ravel()
            return [x, "", self.param(f"{n.name}_scales", v, "float32", [0])]
        if sizes and sizes in self.fg.consts:
            v = np.asarray(self.fg.consts[sizes], np.int64).ravel()
            return [x, "", "", self.param(f"{n.name}_sizes", v, "int64", [0])]
        raise UnsupportedError("Resize needs constant scales or sizes for every axis", node=n.name, op="Resize")

    def bias(self, n: FNode, b_name: str, e: np.ndarray, cout: int) -> str:
        bits = self.qi.bits[n.name]
        b = np.asarray(self.fg.consts[b_name], np.float64).ravel()
        if b.size != cout:
            raise UnsupportedError(f"bias has {b.size} values for {cout} output channels", node=n.name, op=n.op)
        width = BIAS_BITS[(self.target, bits)]
        ee = np.broadcast_to(e, (cout,)).astype(np.float64)
        # ESP-PPQ rounds b / 2**e in float32 (torch): floor(v + 0.5) rounds v + 0.5 to float32 first,
        # which matters for int16 biases beyond 2**23
        v = (b.astype(np.float32) * np.power(2.0, -ee).astype(np.float32)).astype(np.float32)
        if self.mode == TARGETS["esp32p4"]:
            v = np.rint(v).astype(np.float64)
        else:
            v = np.floor((v + np.float32(0.5)).astype(np.float32)).astype(np.float64)
        lim = 2.0 ** (width - 1)
        v = np.clip(v, -lim, lim - 1)
        dtype = "int32" if bits == 8 else "int64"
        return self.param(b_name, v.astype(dtype), dtype, [int(x) for x in e])

    def conv_params(self, n: FNode) -> list[str]:
        bits = self.qi.bits[n.name]
        if len(n.inputs) < 2 or n.inputs[1] not in self.fg.consts:
            raise UnsupportedError("Conv weight must be a constant", node=n.name, op="Conv")
        w = np.asarray(self.fg.consts[n.inputs[1]], np.float32)  # [Cout, Cin/g, k...]
        x = n.inputs[0]
        cin = self.fg.shapes[x][1]
        cout = w.shape[0]
        group = int(n.attrs.get("group", 1))
        nsp = w.ndim - 2
        depthwise = group > 1
        if depthwise and not (group == cin == cout and w.shape[1] == 1):
            raise UnsupportedError(f"grouped conv with group={group}, {cin} in / {cout} out channels", node=n.name,
                                   op="Conv", supported=["group=1", "depthwise (group = in = out channels)"])
        if nsp not in (1, 2):
            raise UnsupportedError(f"{nsp}-D conv", node=n.name, op="Conv", supported=["1-D", "2-D"])
        per_ch = self.target in PER_CHANNEL_TARGETS
        e_w = weight_exponents(w, 0 if per_ch else None, bits)
        q = _quant_per_channel(w, e_w, 0, self.dtype(bits), self.mode)
        if nsp == 2:
            logical = q.transpose(2, 3, 0, 1) if depthwise else q.transpose(2, 3, 1, 0)
        else:
            logical = q.transpose(2, 0, 1) if depthwise else q.transpose(2, 1, 0)
        layout = weight_layout(nsp + 2, cout, self.dtype(bits), self.target, depthwise)
        wname = self.param(n.inputs[1], logical, self.dtype(bits), e_w, layout)
        ins = [x, wname]
        e_in = self.qi.exp[x]
        if len(n.inputs) > 2 and n.inputs[2]:
            ins.append(self.bias(n, n.inputs[2], e_in + e_w, cout))
        return ins

    def gemm_params(self, n: FNode) -> list[str]:
        bits = self.qi.bits[n.name]
        a = n.attrs
        if float(a.get("alpha", 1.0)) != 1.0 or float(a.get("beta", 1.0)) != 1.0 or int(a.get("transA", 0)):
            raise UnsupportedError("Gemm with alpha/beta != 1 or transA", node=n.name, op="Gemm",
                                   supported=["alpha=1, beta=1, transA=0"])
        if n.inputs[1] not in self.fg.consts:
            raise UnsupportedError("Gemm weight B must be a constant", node=n.name, op="Gemm")
        if len(self.fg.shapes[n.inputs[0]]) != 2:
            raise UnsupportedError(f"Gemm input of rank {len(self.fg.shapes[n.inputs[0]])}", node=n.name, op="Gemm",
                                   supported=["rank 2 [1, K]"])
        w = np.asarray(self.fg.consts[n.inputs[1]], np.float32)
        if int(a.get("transB", 0)):
            w = w.T
        k, cout = w.shape
        per_ch = self.target in PER_CHANNEL_TARGETS
        e_w = weight_exponents(w, 1 if per_ch else None, bits)
        q = _quant_per_channel(w, e_w, 1, self.dtype(bits), self.mode)
        layout = weight_layout(4, cout, self.dtype(bits), self.target)
        wname = self.param(n.inputs[1], q.reshape(1, 1, k, cout), self.dtype(bits), e_w, layout)
        ins = [n.inputs[0], wname]
        if len(n.inputs) > 2 and n.inputs[2]:
            if n.inputs[2] not in self.fg.consts:
                raise UnsupportedError("Gemm bias C must be a constant", node=n.name, op="Gemm")
            ins.append(self.bias(n, n.inputs[2], self.qi.exp[n.inputs[0]] + e_w, cout))
        return ins
