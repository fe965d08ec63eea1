"""Offline model -> streaming model: StreamingCache insertion with no hand-written table.

Pipeline (each step a named pass, checked after it runs):

1. ``analyse``: where time lives in every tensor; which edges need caches (see :mod:`.timeaxis`).
2. ``insert_caches``: a StreamingCache on each edge that needs past frames (hoisted above Transposes and
   zero-preserving per-frame ops so that ESP-DL's flat memcpy concatenation is a concatenation along
   time); consumers of one history share one cache (a Slice gives the newest frames to one that needs fewer).
3. ``zero_time_padding``: the frame-axis padding of window ops and folded Pads becomes 0 (a Pad left
   with nothing to pad is removed).
4. ``rewrite_slices`` / ``rewrite_gathers``: tail heads take the last K frames (or the newest frame index)
   of what they get; pass-through and right-chop slices keep every frame.
5. ``rewrite_upsamples``: InsertZeros along time emits stride x chunk frames.
6. ``rewrite_reshapes``: shape constants carry the chunk's frame count.
7. ``carry_state``: GRU/LSTM state becomes graph inputs/outputs (``metadata["streaming_state"]``).
8. Graph input shapes become the chunk; value infos get the planned shapes; the metadata records the chunk,
   frame axis and lookahead delay (``streaming_delay_frames``).

Then (unless disabled) the result is verified bit-exactly against the offline graph on seeded random
input, and carries test values: the first chunk and its output from a fresh state.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ShapeError, StreamingError, VerificationError
from ..ir.graph import Graph, Node, Tensor, ValueInfo
from ..ir.passes import PassResult, fresh_name, run_passes
from ..ir.ops import TimeRule, opdef
from .timeaxis import INT64_MAX, Cache, Decision, Consts, analyse, pad_values, slice_params


@dataclass
class TableEntry:
    """A manual cache, as in ESP-PPQ's ``insert_streaming_cache_on_var`` records."""

    var_name: str
    window_size: int
    op_name: str | None = None
    frame_axis: int | None = None


@dataclass
class StreamReport:
    chunk: int
    frame_axis: int
    caches: list[dict] = field(default_factory=list)
    state_bytes: int = 0
    macs_per_chunk: int = 0
    offline_macs: int = 0
    offline_frames: int = 0
    delay_frames: int = 0
    output_delays: dict[str, int] = field(default_factory=dict)
    state: list[dict] = field(default_factory=list)
    latency_frames: int = 0
    outputs: dict[str, str] = field(default_factory=dict)
    passes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    verification: dict | None = None

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    def render(self) -> str:
        lines = [f"chunk: {self.chunk} frames on axis {self.frame_axis} "
                 f"(offline model: {self.offline_frames} frames)"]
        if self.caches:
            lines.append("caches:")
            w = max(len(c["node"]) for c in self.caches)
            for c in self.caches:
                lines.append(f"  {c['node']:<{w}}  {c['frames']:>3} frames  {c['bytes']:>6} B   {c['reason']}")
        else:
            lines.append("caches: none (every op is frame-local)")
        lines.append(f"state: {self.state_bytes} bytes")
        ratio = self.macs_per_chunk / self.offline_macs if self.offline_macs else 0.0
        lines.append(f"MACs per chunk: {self.macs_per_chunk:,} (offline model: {self.offline_macs:,}; {ratio:.3f}x)")
        lines.append(f"algorithmic latency: {self.latency_frames} frames (chunk {self.chunk} + lookahead "
                     f"{self.delay_frames})")
        if self.delay_frames:
            lines.append(f"delay: {self.delay_frames} frames (recorded in the model's metadata as "
                         "streaming_delay_frames; emu run --compare and Session align outputs by it)")
        for p in self.state:
            lines.append(f"recurrent state: {p['node']} {'hidden' if p['kind'] == 'h' else 'cell'} "
                         f"({p.get('bytes', 0)} B): output {p['output']!r} -> input {p['input']!r} between chunks")
        for o, kind in self.outputs.items():
            lines.append(f"output {o}: {kind}")
        for n in self.notes:
            lines.append(f"note: {n}")
        if self.verification is not None:
            v = self.verification
            lines.append(f"verified: {'bit-exact' if v['bit_exact'] else 'MISMATCH'} over {v['chunks']} chunks "
                         f"of seeded random input")
        return "\n".join(lines)


def load_table(path: str | Path) -> list[TableEntry]:
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise StreamingError(f"cannot read table {path}: {e}") from None
    if isinstance(raw, dict):
        raw = raw.get("entries", raw.get("streaming_table", []))
    out = []
    for i, r in enumerate(raw):
        if not isinstance(r, dict) or "var_name" not in r or "window_size" not in r:
            raise StreamingError(f"table entry {i} needs var_name and window_size: {r!r}")
        out.append(TableEntry(str(r["var_name"]), int(r["window_size"]), r.get("op_name"), r.get("frame_axis")))
    return out


# ---- passes -----------------------------------------------------------------------------------------


def _quant_type(graph: Graph, name: str) -> str:
    vi = graph.info(name)
    if vi is not None and vi.dtype == "int16":
        return "S16"
    if vi is not None and vi.dtype == "float32":
        return "F32"
    return "S8"


def _cache_node(graph: Graph, src: str, frames: int, axis: int, consumer: str) -> tuple[Node, str]:
    out = fresh_name(graph, f"{src}_{consumer}_SCache_out")
    node = Node("StreamingCache", fresh_name(graph, f"{src}_{consumer}_SCache"), [src], [out])
    node.set_attr("frame_axis", int(axis))
    node.set_attr("quant_type", _quant_type(graph, src))
    node.set_attr("window_size", int(frames + 1))
    vi = graph.info(src)
    graph.value_info[out] = ValueInfo(out, vi.dtype if vi else "int8", None, tuple(vi.exponents) if vi else ())
    return node, out


def _hoist(graph: Graph, c: Cache, shapes, time, consts) -> tuple[str, int, int]:
    """Move a cache up through Transposes and zero-preserving per-frame ops until time is the outermost
    non-unit axis (ESP-DL's StreamingCache concatenates flat memory). A cache may move above an op only
    when the op maps the zeros the cache starts with to the zeros the offline padding has."""
    node = graph.node(c.node)
    idx, axis = c.index, c.axis
    consumers = graph.consumers()
    producers = graph.producers()
    while True:
        src = node.inputs[idx]
        shp = shapes[src]
        if int(np.prod(shp[:axis], dtype=np.int64)) == 1:
            return node.name, idx, axis
        prod = producers.get(src)
        od = opdef(prod.op_type) if prod is not None else None
        movable = od is not None and (od.time == TimeRule.TRANSPOSE or (
            od.time == TimeRule.FRAME and od.zero_to_zero(prod, consts)))
        if not movable or len(consumers.get(src, [])) != 1:
            raise StreamingError(
                f"cannot stream node {c.node!r}: its cache would sit on {src!r} whose frame axis {axis} is not "
                f"outermost (shape {list(shp)}); ESP-DL's StreamingCache concatenates flat memory")
        node, idx, axis = prod, 0, time[prod.inputs[0]].axis


def _same_values(graph: Graph, name: str):
    """A key equal for values that are equal by construction: a value, or a Transpose's (input, perm)
    (ESP-PPQ gives each consumer of a transposed tensor its own Transpose)."""
    prod = graph.producers().get(name)
    if prod is not None and prod.op_type == "Transpose":
        return ("Transpose", prod.inputs[0], tuple(prod.attr("perm") or ()))
    return name


def _drop_dead(graph: Graph, name: str) -> None:
    """Remove the producer of ``name`` when nothing reads it any more (a Transpose a shared cache replaced)."""
    if any(name in n.inputs for n in graph.nodes) or name in {v.name for v in graph.outputs}:
        return
    prod = graph.producers().get(name)
    if prod is not None and prod.op_type == "Transpose":
        graph.nodes.remove(prod)
        graph.value_info.pop(name, None)


def _slice_node(graph: Graph, src: str, out_base: str, node_base: str, start: int, end: int, axis: int) -> tuple:
    sl_out = fresh_name(graph, out_base)
    ins = [src] + [_const_tensor(graph, f"{sl_out}_{k}", [v]) for k, v in
                   (("starts", start), ("ends", end), ("axes", axis), ("steps", 1))]
    sl = Node("Slice", fresh_name(graph, node_base), ins, [sl_out])
    sl.set_attr("quant_type", _quant_type(graph, src))
    vi = graph.value_info[src]
    graph.value_info[sl_out] = ValueInfo(sl_out, vi.dtype, None, vi.exponents)
    return sl, sl_out


def insert_caches(graph: Graph, d: Decision, shapes, chunk: int, report: StreamReport) -> PassResult:
    """One StreamingCache per history: consumers of one value (or of equal Transposes of it) share a cache of
    the most frames any of them needs; one that needs fewer reads the newest frames through a Slice."""
    if not d.caches:
        return PassResult(graph, False, "no window op needs past frames")
    consts = Consts(graph)
    groups: dict[tuple, list[tuple[Cache, str, int, int]]] = {}
    order = {n.name: i for i, n in enumerate(graph.nodes)}
    for k, c in enumerate(d.caches):
        if c.delay_line or not c.hoist:
            name, idx, axis = c.node, c.index, c.axis
        else:
            name, idx, axis = _hoist(graph, c, shapes, d.time, consts)
        src = graph.node(name).inputs[idx]
        key = ("delay", k) if c.delay_line else (_same_values(graph, src), axis)
        groups.setdefault(key, []).append((c, name, idx, axis))
    for key, members in groups.items():
        members.sort(key=lambda m: order[m[1]])
        c0, name0, idx0, axis = members[0]
        first = graph.node(name0)
        src = first.inputs[idx0]
        frames = max(m[0].frames for m in members)
        cnode, out = _cache_node(graph, src, frames, axis, first.name)
        graph.nodes.insert(graph.nodes.index(first), cnode)
        reasons = sorted({m[0].reason for m in members})
        report.caches.append({"node": cnode.name, "input": src, "consumer": ", ".join(m[1] for m in members),
                              "frames": frames, "axis": axis, "reason": "; ".join(reasons), "bytes": 0})
        for c, name, idx, _ in members:
            consumer = graph.node(name)
            own_src = consumer.inputs[idx]
            feed = out
            if c.delay_line:  # cache + Slice[0:c]: the branch lags by the cached frames
                n = int(chunk / d.time[src].rate)
                sl, feed = _slice_node(graph, out, f"{src}_{name}_delayed", f"{src}_{name}_delay", 0, n, axis)
                graph.nodes.insert(graph.nodes.index(consumer), sl)
            elif c.frames < frames:  # the newest frames of the shared cache
                sl, feed = _slice_node(graph, out, f"{src}_{name}_last", f"{src}_{name}_SCache_slice",
                                       frames - c.frames, INT64_MAX, axis)
                graph.nodes.insert(graph.nodes.index(consumer), sl)
            consumer.inputs[idx] = feed
            if len(members) > 1:
                report.notes.append(f"{name} reads {c.frames} frames of the shared {frames}-frame cache of {src!r}")
            if own_src != src:
                _drop_dead(graph, own_src)
    return PassResult(graph, True, f"{len(groups)} caches for {len(d.caches)} edges")


def _const_tensor(graph: Graph, base: str, values, shape=None, dtype: str = "int64") -> str:
    name = fresh_name(graph, base)
    shape = (len(values),) if shape is None else tuple(shape)
    graph.initializers[name] = Tensor(name, dtype, shape, np.array(values, dtype=dtype).reshape(shape), (0,),
                                      None, "", "raw")
    return name


def _const(graph: Graph, name: str):
    t = graph.initializers.get(name)
    return None if t is None or t.data is None else np.asarray(t.data)


def zero_time_padding(graph: Graph, d: Decision, shapes) -> PassResult:
    changed = False
    for name, i in d.zero_time_pads.items():
        node = graph.node(name)
        pads = list(node.attr("pads") or [])
        if not pads:
            continue
        nsp = len(pads) // 2
        if pads[i] or pads[i + nsp]:
            pads[i] = pads[i + nsp] = 0
            node.set_attr("pads", pads, "ints")
            changed = True
    for name, axis in d.pad_folds.items():
        node = graph.node(name)
        rank = len(shapes[node.inputs[0]])
        pads = pad_values(graph, node, rank)
        pads[axis] = pads[axis + rank] = 0  # left: cache state; right: frames after the end, never produced
        changed = True
        if not any(pads):  # nothing left to pad: the single consumer reads the Pad's input directly
            for user in graph.consumers().get(node.outputs[0], []):
                user.inputs = [node.inputs[0] if i == node.outputs[0] else i for i in user.inputs]
            graph.nodes.remove(node)
            graph.value_info.pop(node.outputs[0], None)
            continue
        if len(node.inputs) > 1 and node.inputs[1]:
            node.inputs[1] = _const_tensor(graph, f"{node.name}_pads_stream", pads)
        else:
            node.set_attr("pads", pads, "ints")
    return PassResult(graph, changed, "" if changed else "no padding on the frame axis")


def rewrite_slices(graph: Graph, d: Decision, shapes) -> PassResult:
    targets = {**{k: ("tail", v[0], v[1]) for k, v in d.tail_slices.items()},
               **{k: ("pass", v, 0) for k, v in d.passthrough_slices.items()}}
    if not targets:
        return PassResult(graph, False, "no slice on the frame axis")
    for name, (kind, axis, K) in targets.items():
        node = graph.node(name)
        rank = len(shapes[node.outputs[0]])  # its input may now be a cache output
        starts, ends, axes, steps = slice_params(graph, node, rank)
        j = axes.index(axis)
        starts[j] = -K if kind == "tail" else 0
        ends[j] = INT64_MAX
        node.inputs[1] = _const_tensor(graph, f"{name}_starts_stream", starts)
        node.inputs[2] = _const_tensor(graph, f"{name}_ends_stream", ends)
    return PassResult(graph, True, f"{len(targets)} slices")


def rewrite_gathers(graph: Graph, d: Decision) -> PassResult:
    if not d.tail_gathers:
        return PassResult(graph, False, "no frame selection by Gather")
    for name, index in d.tail_gathers.items():
        node = graph.node(name)
        old = _const(graph, node.inputs[1])
        new = np.full(old.shape, index, dtype=old.dtype if old.dtype.kind == "i" else np.int64)
        node.inputs[1] = _const_tensor(graph, f"{name}_index_stream", new.ravel().tolist(), shape=new.shape,
                                       dtype=str(new.dtype))
    return PassResult(graph, True, f"{len(d.tail_gathers)} gathers take the newest frame index")


def rewrite_upsamples(graph: Graph, d: Decision) -> PassResult:
    """InsertZeros along time: a chunk of c frames becomes stride x c frames (stride - 1 zeros after the last)."""
    if not d.upsamples:
        return PassResult(graph, False, "no up-sampling along time")
    for name, (i, s) in d.upsamples.items():
        node = graph.node(name)
        nsp = len(graph.info(node.inputs[0]).shape or ()) - 2 if graph.info(node.inputs[0]) else None
        stride = [int(v) for v in (node.attr("stride") or [1])]
        opad = [int(v) for v in (node.attr("output_padding") or [0])]
        n = max(len(stride), len(opad), i + 1, nsp or 0)
        stride = stride * n if len(stride) == 1 else stride
        opad = opad * n if len(opad) == 1 else opad
        opad[i] = s - 1
        node.set_attr("stride", stride, "ints")
        node.set_attr("output_padding", opad, "ints")
    return PassResult(graph, True, f"{len(d.upsamples)} InsertZeros emit stride x chunk frames")


STATE_KINDS = {"h": (5, 1, "hidden"), "c": (6, 2, "cell")}


def carry_state(graph: Graph, d: Decision, shapes) -> PassResult:
    """Recurrent state as graph inputs/outputs: ``<node>_h_in`` -> ``<node>_h_out`` (LSTM: also ``_c_``).

    A state input that is already a graph input (the offline model's own initial state) stays; a state
    output that is already a graph output keeps its name. The pairs go to ``metadata["streaming_state"]``
    (JSON: a list of ``{node, kind, input, output}``); an application copies each output to its input
    between chunks, as ``Session.push`` does.
    """
    if not d.recurrent:
        return PassResult(graph, False, "no recurrent layer")
    pairs = []
    outputs = {v.name for v in graph.outputs}
    inputs = {v.name for v in graph.inputs}
    for r in d.recurrent:
        node = graph.node(r.node)
        for kind in ("h", "c") if r.cell else ("h",):
            k_in, k_out, _what = STATE_KINDS[kind]
            while len(node.inputs) <= k_in:
                node.inputs.append("")
            out = node.outputs[k_out] if len(node.outputs) > k_out else ""
            ovi = graph.info(out) if out else None
            if out not in outputs:
                new = fresh_name(graph, f"{node.name}_{kind}_out")
                if out:
                    for user in graph.nodes:
                        user.inputs = [new if i == out else i for i in user.inputs]
                    graph.value_info.pop(out, None)
                while len(node.outputs) <= k_out:
                    node.outputs.append("")
                node.outputs[k_out] = new
                out = new
                if ovi is None:
                    raise StreamingError(f"cannot stream node {node.name!r}: its {_what} state output has no type")
                graph.value_info[out] = ValueInfo(out, ovi.dtype, ovi.shape, tuple(ovi.exponents))
                graph.outputs.append(ValueInfo(out, ovi.dtype, ovi.shape, tuple(ovi.exponents)))
            ovi = graph.info(out)
            src = node.inputs[k_in]
            if src and src in inputs:
                name = src
            else:
                name = fresh_name(graph, f"{node.name}_{kind}_in")
                vi = ValueInfo(name, ovi.dtype, shapes.get(out) or ovi.shape, tuple(ovi.exponents))
                graph.inputs.append(vi)
                graph.value_info[name] = ValueInfo(name, vi.dtype, vi.shape, vi.exponents)
                node.inputs[k_in] = name
            pairs.append({"node": node.name, "kind": kind, "input": name, "output": out})
        if len(node.inputs) > 4 and node.inputs[4]:
            node.inputs[4] = ""  # sequence_lens: the offline length; a chunk is always whole
    graph.metadata = dict(graph.metadata)
    graph.metadata["streaming_state"] = json.dumps(pairs)
    return PassResult(graph, True, f"{len(pairs)} state inputs/outputs")


def rewrite_reshapes(graph: Graph, d: Decision, shapes, chunk: int) -> PassResult:
    if not d.reshapes:
        return PassResult(graph, False, "no reshape keeps the frame axis")
    for name, jx in d.reshapes.items():
        node = graph.node(name)
        shape = list(shapes[node.outputs[0]])
        t = d.time[node.outputs[0]]
        shape[jx] = int(chunk / t.rate) * t.outer
        node.inputs[1] = _const_tensor(graph, f"{name}_shape_stream", shape)
    return PassResult(graph, True, f"{len(d.reshapes)} reshapes")


# ---- the converter ----------------------------------------------------------------------------------


def _offline_shapes(model) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for v in model.graph.inputs:
        if v.name in model.graph.initializers:
            continue
        if v.shape is None or not all(isinstance(s, int) for s in v.shape):
            raise ShapeError(f"input {v.name!r} has no fixed shape; the offline model must declare one")
        shapes[v.name] = tuple(v.shape)
    plan = model.plan(shapes)
    return {k: s.shape for k, s in plan.specs.items()}, plan


def _apply_table(graph: Graph, entries: list[TableEntry], frame_axis: int
                 ) -> tuple[dict[tuple[str, int], int], dict[tuple[str, int], int]]:
    """(edge -> cached frames, edge -> frame axis) of the table's entries."""
    manual: dict[tuple[str, int], int] = {}
    axes: dict[tuple[str, int], int] = {}
    consumers = graph.consumers()
    for e in entries:
        users = consumers.get(e.var_name)
        if not users:
            raise StreamingError(f"table entry: no node reads variable {e.var_name!r}")
        if e.op_name:
            users = [u for u in users if u.name == e.op_name]
            if not users:
                raise StreamingError(f"table entry: {e.op_name!r} does not read {e.var_name!r}")
        for u in users:
            for i, name in enumerate(u.inputs):
                if name == e.var_name:
                    if e.window_size < 2:
                        raise StreamingError(f"table entry for {e.var_name!r}: window_size must be >= 2")
                    manual[(u.name, i)] = e.window_size - 1
                    axes[(u.name, i)] = frame_axis if e.frame_axis is None else int(e.frame_axis)
    return manual, axes


def stream(model, chunk: int, *, frame_axis: int = 1, table: list[TableEntry] | None = None,
           allow_lookahead: bool = False, verify: bool = True, seed: int = 0, chunks_to_verify: int | None = None):
    """Convert an offline quantized model into a streaming one. Returns ``(streaming_model, report)``."""
    from ..model import Model

    if chunk < 1:
        raise StreamingError(f"chunk must be >= 1 frame, got {chunk}")
    model, wrapped = wrap_negative_gathers(model)
    shapes, off_plan = _offline_shapes(model)
    graph = model.graph.copy()
    graph.test_inputs.clear()
    graph.test_outputs.clear()
    manual, manual_axes = _apply_table(graph, table or [], frame_axis)
    d = analyse(graph, shapes, chunk, frame_axis, allow_lookahead, manual)
    report = StreamReport(chunk=chunk, frame_axis=frame_axis, notes=wrapped + list(d.notes))
    for (node, idx), frames in manual.items():
        d.caches.append(Cache(node, idx, frames, manual_axes[(node, idx)], "table entry", hoist=False))
    delays = {o.name: d.time[o.name].delay for o in graph.outputs if d.time.get(o.name) and d.time[o.name].streamed}
    delay = max(delays.values(), default=0)
    report.delay_frames = delay
    graph = run_passes(graph, [
        ("insert_caches", lambda g: insert_caches(g, d, shapes, chunk, report)),
        ("zero_time_padding", lambda g: zero_time_padding(g, d, shapes)),
        ("rewrite_slices", lambda g: rewrite_slices(g, d, shapes)),
        ("rewrite_gathers", lambda g: rewrite_gathers(g, d)),
        ("rewrite_upsamples", lambda g: rewrite_upsamples(g, d)),
        ("rewrite_reshapes", lambda g: rewrite_reshapes(g, d, shapes, chunk)),
        ("carry_state", lambda g: carry_state(g, d, shapes)),
    ], report.passes)
    state = json.loads(graph.metadata.get("streaming_state", "[]"))
    report.state = state
    state_inputs = {p["input"] for p in state}
    for v in graph.inputs:
        if v.name in graph.initializers or v.name in state_inputs:
            continue
        shp = list(v.shape)
        if shp[frame_axis] % chunk and not allow_lookahead:
            report.notes.append(f"offline input {v.name!r} has {shp[frame_axis]} frames, not a multiple of {chunk}")
        shp[frame_axis] = chunk
        v.shape = tuple(shp)
    graph.metadata = dict(graph.metadata)
    graph.metadata.setdefault("target", model.target)
    graph.metadata["streaming_chunk"] = str(chunk)
    graph.metadata["streaming_frame_axis"] = str(frame_axis)
    graph.metadata["streaming_delay_frames"] = str(delay)
    if any(v != delay for v in delays.values()):
        graph.metadata["streaming_output_delays"] = json.dumps(delays)
    report.output_delays = delays
    smodel = Model(graph, target=model.target)
    splan = smodel.plan({v.name: tuple(v.shape) for v in graph.inputs if v.name not in graph.initializers})
    for name, spec in splan.specs.items():
        vi = graph.info(name)
        if vi is not None and name not in graph.initializers:
            vi.shape = spec.shape
    by_name = {c["node"]: c for c in report.caches}
    for step in splan.steps:
        if step.node.name in by_name:
            by_name[step.node.name]["bytes"] = int(step.prepared.state_bytes)
    rnn_bytes = 0
    for p in state:  # recurrent state the application keeps between chunks
        vi = graph.info(p["input"])
        rnn_bytes += int(np.prod(vi.shape)) * np.dtype(vi.dtype).itemsize
        p["bytes"] = int(np.prod(vi.shape)) * np.dtype(vi.dtype).itemsize
    report.state_bytes = splan.state_bytes + rnn_bytes
    report.macs_per_chunk = splan.macs
    report.offline_macs = off_plan.macs
    report.offline_frames = int(next(iter(shapes[v.name] for v in model.graph.inputs
                                          if v.name not in model.graph.initializers
                                          and v.name not in d.state_inputs))[frame_axis])
    report.latency_frames = chunk + delay
    for o in graph.outputs:
        t = d.time.get(o.name)
        report.outputs[o.name] = "per-frame" if t is not None and t.streamed else "tail (fixed window)"
    x = random_input(model, seed)
    if verify:
        from ..emu.streamcheck import verify_streaming

        chk = verify_streaming(smodel, model, x, frame_axis=frame_axis, delay=delays or delay,
                               chunks=chunks_to_verify)
        report.verification = chk.as_dict()
        if not chk.bit_exact:
            raise VerificationError(
                f"the streaming model is not bit-exact with the offline model (first mismatch in chunk "
                f"{chk.first_bad_chunk}, first differing node {chk.first_bad_node!r}); not written. "
                "This is a converter bug or an unsupported pattern: please report it with the model")
    _embed_test_values(smodel, x, chunk, frame_axis)
    return smodel, report


def wrap_negative_gathers(model):
    """ESP-PPQ exports ``x[:, -1]`` as a Gather of index -1, which ESP-DL does not wrap (the emulator refuses
    it). The converter streams what the model means (ONNX semantics): a copy with the indices made
    non-negative is both converted and used as the offline reference. Returns (model, notes)."""
    from ..model import Model

    g = model.graph
    bad = [n for n in g.nodes if n.op_type == "Gather" and len(n.inputs) > 1 and _const(g, n.inputs[1]) is not None
           and np.any(_const(g, n.inputs[1]) < 0)]
    if not bad:
        return model, []
    probe = g.copy()
    for n in bad:  # in range for any size: the planner then gives every shape
        n2 = probe.node(n.name)
        n2.inputs[1] = _const_tensor(probe, f"{n.name}_probe_index", [0] * max(_const(g, n.inputs[1]).size, 1),
                                     shape=_const(g, n.inputs[1]).shape, dtype="int64")
    probe_model = Model(probe, target=model.target)
    shapes, _ = _offline_shapes(probe_model)
    fixed = g.copy()
    notes = []
    for n in bad:
        n2 = fixed.node(n.name)
        idx = _const(g, n.inputs[1])
        rank = len(shapes[n.inputs[0]])
        axis = int(n.attr("axis", 0) or 0) % rank
        dim = shapes[n.inputs[0]][axis]
        new = np.where(idx < 0, idx + dim, idx).astype(np.int64)
        n2.inputs[1] = _const_tensor(fixed, f"{n.name}_index_wrapped", new.ravel().tolist(), shape=new.shape)
        notes.append(f"{n.name}: index {idx.tolist()} made non-negative ({new.tolist()}): ESP-DL does not wrap "
                     "negative Gather indices")
    return Model(fixed, target=model.target), notes


def random_input(model, seed: int) -> dict[str, np.ndarray]:
    """Seeded integer input over most of each input's range (offline shape)."""
    from ..emu.rounding import qrange

    rng = np.random.default_rng(seed)
    out = {}
    for v in model.graph.inputs:
        if v.name in model.graph.initializers:
            continue
        if v.dtype in ("int8", "int16"):
            lo, hi = qrange(v.dtype)
            out[v.name] = rng.integers(lo // 2, hi // 2 + 1, size=v.shape).astype(v.dtype)
        else:
            out[v.name] = rng.standard_normal(v.shape).astype(np.float32)
    return out


def _embed_test_values(smodel, x, chunk: int, frame_axis: int) -> None:
    g = smodel.graph
    state = {p["input"] for p in json.loads(g.metadata.get("streaming_state", "[]"))}
    first = {k: np.ascontiguousarray(v if k in state else np.take(v, range(chunk), axis=frame_axis))
             for k, v in x.items()}
    for v in g.inputs:  # a state the offline model did not take as input starts at zero
        if v.name in state and v.name not in first:
            first[v.name] = np.zeros(v.shape, dtype=v.dtype)
    outs = smodel.run(first)
    for k, v in first.items():
        vi = g.info(k)
        g.test_inputs[k] = Tensor(k, vi.dtype, tuple(v.shape), v, tuple(vi.exponents), None, "", "raw")
    for k, v in outs.items():
        vi = g.info(k)
        g.test_outputs[k] = Tensor(k, vi.dtype if vi else str(v.dtype), tuple(v.shape), v,
                                   tuple(vi.exponents) if vi else (), None, "", "raw")
