"""The quantizer's steps after the pattern rewrites, as named passes over the annotated float graph.

Each step is a :class:`~chunkwise.ir.passes.Pass` run by :class:`~chunkwise.ir.passes.Sequential` with
:func:`.prepare.check_fgraph` after it (every input produced earlier, each value produced once) plus the
step's own invariants; a broken invariant is a :class:`~chunkwise.ir.passes.GraphCheckError` naming the pass.
The decisions live on the graph itself: a node's width on ``FNode.bits``, a value's width, exponent and
storage order on its annotation ``FGraph.ann[value]`` (:class:`.prepare.ValueAnn`).

Before calibration (:func:`width_passes`): ``check_supported`` (after the rewrites), ``assign_bits``
(``int16_nodes``), ``int8_only_ops``. After it (:func:`export_passes`): ``assign_exponents``,
``apply_layout``, ``insert_requantize``, ``topo_sort``; then :class:`.export.Exporter` builds the IR graph.
"""

from __future__ import annotations

from ..errors import ShapeError
from ..ir import ops as opdefs
from ..ir.ops import Layout
from ..ir.passes import FunctionPass, PassResult
from . import export
from .prepare import FGraph, FNode, check_supported


# ---- invariants (graph -> None when they hold, else what is wrong) ------------------------------------

def _values(fg: FGraph) -> list[str]:
    return [name for name, _ in fg.inputs] + [o for n in fg.nodes for o in n.outputs if o]


def _first(bad: list[str], what: str) -> str | None:
    return f"{len(bad)} {what}: {bad[:5]}" if bad else None


def every_node_has_bits(fg: FGraph) -> str | None:
    return _first([n.name for n in fg.nodes if n.bits not in (8, 16, 32)], "node(s) without a width")


def every_value_has_exponent(fg: FGraph) -> str | None:
    bad = [v for v in _values(fg) if v not in fg.ann or fg.ann[v].exp is None or fg.ann[v].bits is None]
    return _first(bad, "value(s) without an exponent and width")


def every_value_has_layout(fg: FGraph) -> str | None:
    bad = [v for v in _values(fg) if v not in fg.ann or fg.ann[v].perm is None
           or sorted(fg.ann[v].perm) != list(range(len(fg.shapes[v])))]
    return _first(bad, "value(s) without a storage order of their rank")


def _stored(fg: FGraph, v: str) -> list[int]:
    return [fg.shapes[v][i] for i in fg.ann[v].perm]


def conv_inputs_channel_last(fg: FGraph) -> str | None:
    """Channel-last ops (``Layout.SPATIAL``: Conv, pools, Resize, InsertZeros, ...) write NHWC/NWC, and a Conv
    reads its data channel-last: the stored input's last axis is the weights' input channels. (The value a
    Conv reads may be another one than its ONNX input once a Transpose pair cancels: a model input given as
    NWC and transposed to NCW before the Conv is read as stored.)"""
    bad = []
    for n in fg.nodes:
        d = opdefs.find(n.op)
        if d is None or d.layout is not Layout.SPATIAL:
            continue
        for o in n.outputs:
            if o and fg.ann[o].perm != ([0, 2, 3, 1] if len(fg.shapes[o]) == 4 else [0, 2, 1]):
                bad.append(f"{n.name} ({n.op}) writes {o} in order {fg.ann[o].perm}")
        if n.op == "Conv" and n.inputs[1] in fg.consts:
            cin = fg.consts[n.inputs[1]].shape[1] * int(n.attrs.get("group", 1))
            x = n.inputs[0]
            if _stored(fg, x)[-1] != cin:
                bad.append(f"{n.name} reads {x} stored as {_stored(fg, x)}, not channel-last ({cin} channels)")
    return _first(bad, "channel-last op(s) not channel-last")


def readers_get_what_they_expect(calib_exp):
    """Every activation input arrives at the exponent and width its reader expects (:func:`.export.expected_input`)."""
    def cond(fg: FGraph) -> str | None:
        qi, bad = fg.qi, []
        prods = fg.producers()

        def seen(u: str) -> str:
            """The input as insert_requantize saw it (before the node it inserted in front of the reader)."""
            p = prods.get(u)
            inserted = p is not None and p.op in export.INSERTED_OPS and p.op != "Transpose" \
                and p.name.startswith("PPQ_Operation_")
            return p.inputs[0] if inserted else u

        for n in fg.nodes:
            if n.op in export.INSERTED_OPS and n.name.startswith("PPQ_Operation_"):
                continue  # layout Transposes and the requantize nodes themselves
            before = FNode(n.op, n.name, [seen(u) for u in n.inputs], n.outputs, n.attrs, n.bits)
            for u, v in zip(n.inputs, before.inputs):
                if not u or u in fg.consts:
                    continue
                want = export.expected_input(fg, qi, before, export._float_name(fg, v), calib_exp)
                have = (qi.exp[u], qi.vbits[u])
                if tuple(want) != have:
                    bad.append(f"{n.name} reads {u} at (exponent, bits) {have}, expects {tuple(want)}")
        return _first(bad, "reader(s) given another exponent or width")
    return cond


# ---- passes -----------------------------------------------------------------------------------------

def _check_supported(fg: FGraph) -> PassResult:
    check_supported(fg, after_rewrites=True)
    return PassResult(fg, False, "every operator left after the rewrites is exported")


def _assign_bits(bits: int, int16_nodes, origin: dict[str, list[str]]):
    def run(fg: FGraph) -> PassResult:
        names = {n for v in origin.values() for n in v}
        wanted = [str(n) for n in int16_nodes]
        unknown = [n for n in wanted if n not in names]
        if unknown:
            raise ShapeError(f"int16_nodes names unknown node(s) {unknown}; the model's nodes are "
                             f"{sorted(names)[:20]}{' ...' if len(names) > 20 else ''}")
        wide = 0
        for n in fg.nodes:
            n.bits = 16 if bits == 16 or any(o in wanted for o in origin.get(n.name, [n.name])) else 8
            wide += n.bits == 16
        return PassResult(fg, True, f"{wide} of {len(fg.nodes)} nodes int16")
    return run


def _int8_only_ops(fg: FGraph) -> PassResult:
    # ESP-DL's int16 Resize does nothing (resize<int16_t> is empty): an op whose definition says ESP-DL has
    # no int16 kernel runs in int8, with RequantizeLinear at its boundaries, in an int16 or mixed model
    narrowed = [n for n in fg.nodes if n.bits == 16 and opdefs.find(n.op) is not None
                and opdefs.find(n.op).int8_only]
    for n in narrowed:
        n.bits = 8
    if narrowed:
        ops = ", ".join(sorted({n.op for n in narrowed}))
        return PassResult(fg, True, f"{len(narrowed)} {ops} kept in int8")
    return PassResult(fg, False, "no int16 node of an int8-only op")


def width_passes(bits: int, int16_nodes, origin: dict[str, list[str]]) -> list:
    """The passes run after the rewrites, before calibration: which ops are left and each node's width."""
    return [
        FunctionPass("check_supported_after_rewrites", _check_supported),
        FunctionPass("assign_bits", _assign_bits(bits, int16_nodes, origin)),
        FunctionPass("int8_only_ops", _int8_only_ops, requires=(every_node_has_bits,),
                     ensures=(every_node_has_bits,)),
    ]


def _assign_exponents(calib_exp, target: str):
    def run(fg: FGraph) -> PassResult:
        export.assign_exponents(fg, calib_exp, target)
        return PassResult(fg, True, f"{len(_values(fg))} values")
    return run


def _apply_layout(namer: export.Namer):
    def run(fg: FGraph) -> PassResult:
        before = len(fg.nodes)
        export.apply_layout(fg, namer)
        moved = sum(1 for v in _values(fg) if fg.ann[v].perm != list(range(len(fg.ann[v].perm))))
        transposes = sum(1 for n in fg.nodes if n.op == "Transpose")
        return PassResult(fg, True, f"{moved} values channel-last, {before} -> {len(fg.nodes)} nodes, "
                                    f"{transposes} Transpose")
    return run


def _insert_requantize(namer: export.Namer, calib_exp):
    def run(fg: FGraph) -> PassResult:
        before = len(fg.nodes)
        export.insert_requantize(fg, namer, calib_exp)
        added = len(fg.nodes) - before
        return PassResult(fg, bool(added), f"{added} Requantize/Quantize/DequantizeLinear" if added
                          else "every reader gets the exponent and width it expects")
    return run


def _topo_sort(fg: FGraph) -> PassResult:
    order = [id(n) for n in fg.nodes]
    export.topo_sort(fg)
    changed = order != [id(n) for n in fg.nodes]
    return PassResult(fg, changed, "ESP-PPQ's node order" if changed else "already in ESP-PPQ's node order")


def export_passes(calib_exp, target: str, namer: export.Namer) -> list:
    """The passes run after calibration, up to the graph :class:`.export.Exporter` writes."""
    readers_ok = readers_get_what_they_expect(calib_exp)
    return [
        FunctionPass("assign_exponents", _assign_exponents(calib_exp, target), requires=(every_node_has_bits,),
                     ensures=(every_value_has_exponent,)),
        FunctionPass("apply_layout", _apply_layout(namer), requires=(every_value_has_exponent,),
                     ensures=(every_value_has_exponent, every_value_has_layout, conv_inputs_channel_last)),
        FunctionPass("insert_requantize", _insert_requantize(namer, calib_exp), requires=(every_value_has_layout,),
                     ensures=(every_value_has_exponent, every_value_has_layout, readers_ok)),
        FunctionPass("topo_sort", _topo_sort, ensures=(readers_ok,)),
    ]
