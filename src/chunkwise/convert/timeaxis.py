"""Frame-axis analysis: where time lives in every tensor, and what each node needs to stream.

For a chunk of ``C`` input frames every streamed tensor carries ``C / rate`` new frames on its
``axis`` (``rate`` is the cumulative stride). Window ops (Conv, AveragePool, MaxPool) along time
need ``L`` past frames, supplied by a StreamingCache on their input edge; ``L`` is the op's left
padding on the frame axis. With span ``sp = dilation * (kernel - 1) + 1`` and stride ``s`` a window
op is causal iff ``sp - s <= L <= sp - 1`` and its right padding is 0: then the cache holds ``L``
frames (``window_size = L + 1``), the op's time padding becomes 0, and it emits ``C / s`` frames.

The analysis only *decides*; :mod:`chunkwise.convert.streaming` applies the decisions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import StreamingError
from ..ir.graph import Graph, Node
from ..ir.ops import TimeRule

INT64_MAX = 2**63 - 1

# The time rules (chunkwise.ir.ops.TimeRule) this analysis implements: the coverage table's "stream" column.
RULES = frozenset({TimeRule.FRAME, TimeRule.BINARY, TimeRule.WINDOW, TimeRule.PAD, TimeRule.TRANSPOSE,
                   TimeRule.SLICE, TimeRule.RESHAPE, TimeRule.AXES, TimeRule.CONTRACT})

PER_FRAME_UNARY = {
    "Relu", "LeakyRelu", "PRelu", "Clip", "Sigmoid", "Tanh", "Swish", "HardSigmoid", "HardSwish", "Elu", "Gelu",
    "Exp", "Log", "Sqrt", "Neg", "LUT", "Identity", "RequantizeLinear", "QuantizeLinear", "DequantizeLinear",
    "Not",
}
BINARY = {"Add", "Sub", "Mul", "Div", "Mod", "Pow", "Max", "Min", "Equal", "Greater", "GreaterOrEqual", "Less",
          "LessOrEqual", "And", "Or", "Xor"}
WINDOW = {"Conv", "AveragePool", "MaxPool"}
NONNEG_PRODUCERS = {"Relu", "Sigmoid", "HardSigmoid"}


@dataclass(frozen=True)
class Time:
    axis: int | None  # None: static (no time axis)
    rate: int = 1  # input frames per frame of this tensor
    delay: int = 0  # frames (at this tensor's rate) by which the stream lags the offline tensor

    @property
    def streamed(self) -> bool:
        return self.axis is not None


STATIC = Time(None)


@dataclass
class Cache:
    """Insert a StreamingCache of ``frames`` past frames on edge ``node.inputs[index]``."""

    node: str
    index: int
    frames: int
    axis: int
    reason: str
    delay_line: bool = False  # cache + Slice[0:c]: delays a branch by ``frames``
    hoist: bool = True  # may move above Transposes/unary ops (False: exactly where asked)


@dataclass
class Decision:
    caches: list[Cache] = field(default_factory=list)
    zero_time_pads: dict[str, int] = field(default_factory=dict)  # node -> spatial index of time
    pad_folds: dict[str, tuple[int, int]] = field(default_factory=dict)  # Pad node -> (axis, L) moved to a cache
    chops: dict[str, str] = field(default_factory=dict)  # Slice node -> window node whose right pad it drops
    tail_slices: dict[str, tuple[int, int]] = field(default_factory=dict)  # node -> (axis, K)
    passthrough_slices: dict[str, int] = field(default_factory=dict)  # node -> axis (identity on time)
    reshapes: dict[str, int] = field(default_factory=dict)  # node -> time index in the new shape
    time: dict[str, Time] = field(default_factory=dict)
    lookahead: dict[str, int] = field(default_factory=dict)  # node -> frames of delay added
    notes: list[str] = field(default_factory=list)


def refuse(node: Node, why: str) -> StreamingError:
    return StreamingError(f"cannot stream node {node.name!r} ({node.op_type}): {why}")


def _const(graph: Graph, name: str):
    t = graph.initializers.get(name) if name else None
    return None if t is None or t.data is None else np.asarray(t.data)


def window_params(node: Node, rank: int, axis: int):
    """(spatial index, kernel, dilation, stride, left pad, right pad) of a window op along ``axis``."""
    nsp = rank - 2
    if not 1 <= axis <= nsp:
        raise refuse(node, f"frame axis {axis} is not a spatial axis of its rank-{rank} NHWC/NWC input")
    i = axis - 1
    ks = node.attr("kernel_shape")
    if not ks or len(ks) != nsp:
        raise refuse(node, f"kernel_shape {ks} does not match its {nsp}-D input")
    dil = node.attr("dilations") or [1] * nsp
    st = node.attr("strides") or [1] * nsp
    pads = node.attr("pads") or [0] * (2 * nsp)
    return i, int(ks[i]), int(dil[i]), int(st[i]), int(pads[i]), int(pads[i + nsp])


def analyse(graph: Graph, shapes: dict[str, tuple[int, ...]], chunk: int, frame_axis: int,
            allow_lookahead: bool = False, manual: dict[tuple[str, int], int] | None = None) -> Decision:
    """Decide caches and rewrites for a chunk of ``chunk`` frames. ``shapes``: offline shapes of every value."""
    manual = manual or {}
    d = Decision()
    time = d.time
    producers = graph.producers()
    consumers = graph.consumers()
    extra_left: dict[str, int] = {}
    for v in graph.inputs:
        if v.name in graph.initializers:
            continue
        rank = len(shapes[v.name])
        if not 0 <= frame_axis < rank:
            raise StreamingError(f"frame axis {frame_axis} is out of range for input {v.name!r} of rank {rank}")
        if shapes[v.name][frame_axis] % chunk:
            pass  # verification handles the tail; the model itself only needs chunk | strides
        time[v.name] = Time(frame_axis)

    def t_of(name: str) -> Time:
        return time.get(name, STATIC) if name else STATIC

    for node in graph.nodes:
        ins = [t_of(i) for i in node.inputs]
        streamed = [(k, t) for k, t in enumerate(ins) if t.streamed]
        if not streamed:
            for o in node.outputs:
                time[o] = STATIC
            continue
        op = node.op_type
        x = ins[0]
        out = x
        if op in PER_FRAME_UNARY:
            if len(streamed) > 1 or streamed[0][0] != 0:
                raise refuse(node, "more than one streamed input")
        elif op in BINARY or op == "Concat":
            ref = streamed[0][1]
            for k, t in streamed[1:]:
                if t.axis != ref.axis or t.rate != ref.rate:
                    raise refuse(node, f"inputs stream at different frame axes/rates ({ref} vs {t})")
            if op == "Concat":
                ax = int(node.attr("axis", 0))
                rank = len(shapes[node.inputs[0]])
                if ax % rank == ref.axis:
                    raise refuse(node, "concatenation along the frame axis")
            for k, t in enumerate(ins):
                if not t.streamed and node.inputs[k]:
                    shp = shapes.get(node.inputs[k], ())
                    out_rank = len(shapes[node.outputs[0]])
                    pos = ref.axis - (out_rank - len(shp))
                    if 0 <= pos < len(shp) and shp[pos] != 1:
                        raise refuse(node, f"constant input {node.inputs[k]!r} varies along the frame axis")
            maxdelay = max(t.delay for _, t in streamed)
            for k, t in streamed:
                if t.delay != maxdelay:
                    if not allow_lookahead:
                        raise refuse(node, "inputs are not aligned in time")
                    d.caches.append(Cache(node.name, k, maxdelay - t.delay, t.axis,
                                          f"delay line aligning input {k} with lookahead branch", delay_line=True))
            out = Time(ref.axis, ref.rate, maxdelay)
        elif op in WINDOW:
            out = _window(graph, node, x, shapes, chunk, d, allow_lookahead, manual, producers, consumers,
                          extra_left.get(node.name, 0))
        elif op == "Pad":
            _pad(graph, node, x, shapes, consumers, d, extra_left)
        elif op == "Transpose":
            perm = node.attr("perm")
            rank = len(shapes[node.inputs[0]])
            perm = list(perm) if perm else list(range(rank))[::-1]
            out = Time(perm.index(x.axis), x.rate, x.delay)
        elif op == "Slice":
            out = _slice(graph, node, x, shapes, chunk, d, manual)
        elif op in ("Reshape", "Flatten", "Squeeze", "Unsqueeze"):
            out = _reshape(node, x, shapes, d)
        elif op in ("Softmax", "LogSoftmax", "LpNormalization"):
            rank = len(shapes[node.inputs[0]])
            ax = int(node.attr("axis", -1)) % rank
            if ax == x.axis:
                raise refuse(node, "normalizes along the frame axis (needs the whole sequence)")
        elif op in ("LayerNormalization", "RMSNormalization"):
            rank = len(shapes[node.inputs[0]])
            ax = int(node.attr("axis", -1)) % rank
            if x.axis >= ax:
                raise refuse(node, "normalizes over the frame axis (needs the whole sequence)")
        elif op in ("GlobalAveragePool", "GlobalMaxPool"):
            raise refuse(node, "global pooling over time needs the whole sequence; add a tail Slice before it "
                               "or pool per chunk explicitly")
        elif op.startswith("Reduce"):
            rank = len(shapes[node.inputs[0]])
            axes = node.attr("axes")
            if axes is None and len(node.inputs) > 1:
                c = _const(graph, node.inputs[1])
                axes = None if c is None else [int(a) for a in c.ravel()]
            axes = list(range(rank)) if not axes else [a % rank for a in axes]
            if x.axis in axes:
                raise refuse(node, "reduces over the frame axis (needs the whole sequence)")
            if not int(node.attr("keepdims", 1)):
                out = Time(x.axis - sum(1 for a in axes if a < x.axis), x.rate, x.delay)
        elif op in ("Gemm", "MatMul"):
            rank = len(shapes[node.inputs[0]])
            if len(streamed) > 1:
                raise refuse(node, "both operands are streamed")
            if streamed[0][0] != 0 or x.axis == rank - 1:
                raise refuse(node, "contracts over the frame axis; add a tail Slice (last K frames) before it")
        elif op in ("Gather", "Split", "Resize", "DepthToSpace", "SpaceToDepth", "ReverseSequence",
                    "ScatterND"):
            _check_not_time_axis(graph, node, x, shapes)
        elif op in ("GRU", "LSTM", "RNN"):
            raise refuse(node, "recurrent state is not carried between chunks (no state-carry support)")
        elif op == "StreamingCache":
            raise refuse(node, "the model already streams (it has StreamingCache nodes)")
        else:
            raise refuse(node, "no streaming rule for this operator")
        for o in node.outputs:
            time[o] = out
    return d


def _check_not_time_axis(graph, node, x, shapes):
    op = node.op_type
    rank = len(shapes[node.inputs[0]])
    if op in ("Gather", "Split"):
        if int(node.attr("axis", 0)) % rank == x.axis:
            raise refuse(node, f"{op} along the frame axis")
    elif op in ("Resize", "DepthToSpace", "SpaceToDepth", "ReverseSequence", "ScatterND"):
        if shapes[node.inputs[0]][x.axis] != shapes[node.outputs[0]][x.axis] or op in (
                "ReverseSequence", "ScatterND"):
            raise refuse(node, f"{op} mixes frames along the frame axis")


def pad_values(graph, node, rank):
    pads = _const(graph, node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] else node.attr("pads")
    if pads is None:
        raise refuse(node, "pads are not constant")
    pads = [int(p) for p in np.asarray(pads).ravel()]
    if len(pads) != 2 * rank:
        raise refuse(node, f"{len(pads)} pad values for a rank-{rank} tensor")
    return pads


def _pad(graph, node, x, shapes, consumers, d, extra_left):
    rank = len(shapes[node.inputs[0]])
    pads = pad_values(graph, node, rank)
    L, R = pads[x.axis], pads[x.axis + rank]
    if not L and not R:
        return
    if R:
        raise refuse(node, f"pads {R} frames after the end: that needs the future")
    mode = node.attr("mode", "constant") or "constant"
    value = _const(graph, node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
    if mode != "constant" or (value is not None and np.any(value != 0)):
        raise refuse(node, f"{mode} padding of the frame axis (only zero padding equals a fresh cache)")
    users = consumers.get(node.outputs[0], [])
    if len(users) != 1 or users[0].op_type not in WINDOW or users[0].inputs[0] != node.outputs[0]:
        raise refuse(node, "zero padding of the frame axis can only be folded into a single Conv/Pool consumer")
    d.pad_folds[node.name] = (x.axis, L)
    extra_left[users[0].name] = L


def _window(graph, node, x, shapes, chunk, d, allow_lookahead, manual, producers, consumers, pad_left):
    rank = len(shapes[node.inputs[0]])
    i, k, dil, s, L, R = window_params(node, rank, x.axis)
    L += pad_left
    if R:
        R = _right_chop(graph, node, x, shapes, consumers, d, R, s)
    sp = dil * (k - 1) + 1
    c_in = chunk // x.rate
    if chunk % x.rate or c_in % s:
        raise refuse(node, f"the chunk must be a multiple of the cumulative stride {x.rate * s} "
                           f"(valid chunk sizes: {', '.join(str(x.rate * s * m) for m in range(1, 6))}, ...)")
    if (node.name, 0) in manual:
        L = manual[(node.name, 0)]  # a table entry supplies the window; its cache replaces the time padding
        d.zero_time_pads[node.name] = i
        return Time(x.axis, x.rate * s, x.delay)
    delay = x.delay
    if x.delay and L:
        raise refuse(node, "a windowed op with left padding after a lookahead layer would mix warm-up frames "
                           "into its window")
    if R:
        if s != 1:
            raise refuse(node, f"right padding {R} with stride {s}: lookahead is supported for stride 1 only")
        if not allow_lookahead:
            raise refuse(node, f"right padding {R} on the frame axis needs {R} future frames "
                               "(use --allow-lookahead to accept a delayed output)")
    if L > sp - 1:
        raise refuse(node, f"left padding {L} exceeds the window span {sp} - 1")
    if L < sp - s:
        if not allow_lookahead:
            raise refuse(node, f"left padding {L} < span {sp} - stride {s}: the op looks {sp - s - L} frames ahead "
                               "(use --allow-lookahead to accept a delayed output)")
        if s != 1:
            raise refuse(node, "lookahead is supported for stride 1 only")
    if L < sp - s or R:
        extra = sp - 1 - L
        d.lookahead[node.name] = extra
        delay = x.delay + extra
        L = sp - 1
    # AveragePool: ESP-DL divides by the whole kernel area whatever count_include_pad says, so zero
    # padding and a zero cache give the same first frames.
    if node.op_type == "MaxPool" and L:
        prod = producers.get(node.inputs[0])
        nonneg = prod is not None and (prod.op_type in NONNEG_PRODUCERS or (
            prod.op_type in ("Conv", "Gemm") and prod.attr("activation") == "Relu"))
        if not nonneg:
            raise refuse(node, "MaxPool pads with -inf but a StreamingCache starts with zeros; this is exact only "
                               "for non-negative inputs (after Relu)")
    if L:
        d.caches.append(Cache(node.name, 0, L, x.axis, f"{node.op_type} kernel {k} dilation {dil} stride {s}"))
    d.zero_time_pads[node.name] = i
    return Time(x.axis, x.rate * s, delay)


def _right_chop(graph, node, x, shapes, consumers, d, R, s):
    """A Slice right after the op that drops its last R/s outputs makes it causal (PyTorch's idiom)."""
    users = consumers.get(node.outputs[0], [])
    if len(users) != 1 or users[0].op_type != "Slice":
        return R
    sl = users[0]
    rank = len(shapes[sl.inputs[0]])
    starts, ends, axes, steps = _slice_params(graph, sl, rank)
    if x.axis not in axes:
        return R
    j = axes.index(x.axis)
    T = shapes[sl.inputs[0]][x.axis]
    s0 = starts[j] + T if starts[j] < 0 else starts[j]
    e0 = min(ends[j] + T if ends[j] < 0 else ends[j], T)
    dropped = T - e0
    if s0 != 0 or steps[j] != 1 or dropped * s != R:
        return R
    d.chops[sl.name] = node.name
    d.notes.append(f"{node.name}: right padding {R} chopped by {sl.name}: streamed as a causal op")
    return 0


def _slice_params(graph, node, rank):
    starts = _const(graph, node.inputs[1]) if len(node.inputs) > 1 else None
    ends = _const(graph, node.inputs[2]) if len(node.inputs) > 2 else None
    axes = _const(graph, node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] else None
    steps = _const(graph, node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4] else None
    if starts is None or ends is None:
        raise refuse(node, "Slice starts/ends are not constant")
    starts, ends = [int(v) for v in starts.ravel()], [int(v) for v in ends.ravel()]
    axes = [int(a) % rank for a in axes.ravel()] if axes is not None else list(range(len(starts)))
    steps = [int(v) for v in steps.ravel()] if steps is not None else [1] * len(starts)
    return starts, ends, axes, steps


def _slice(graph, node, x, shapes, chunk, d, manual):
    rank = len(shapes[node.inputs[0]])
    starts, ends, axes, steps = _slice_params(graph, node, rank)
    if x.axis not in axes:
        return x
    if node.name in d.chops:
        d.passthrough_slices[node.name] = x.axis
        return x
    j = axes.index(x.axis)
    if steps[j] != 1:
        raise refuse(node, f"step {steps[j]} along the frame axis")
    T = shapes[node.inputs[0]][x.axis]
    s0 = starts[j] + T if starts[j] < 0 else starts[j]
    e0 = ends[j] + T if ends[j] < 0 else ends[j]
    s0, e0 = min(max(s0, 0), T), min(max(e0, 0), T)
    if e0 < T:
        raise refuse(node, f"keeps frames [{s0}, {e0}) of {T}: dropping the newest frames needs the future "
                           "(a right-chopped causal conv is recognised only directly after its Conv)")
    if x.delay:
        raise refuse(node, "a tail Slice after a lookahead layer would not see the newest frames")
    if s0 == 0 and starts[j] >= 0:  # [0, T): every frame, an identity on time
        d.passthrough_slices[node.name] = x.axis
        return x
    K = e0 - s0  # the last K frames (written as -K, or as T - K for this offline length)
    c = chunk // x.rate
    if (node.name, 0) not in manual and c < K:
        d.caches.append(Cache(node.name, 0, K - c, x.axis, f"tail slice of the last {K} frames"))
    d.tail_slices[node.name] = (x.axis, K)
    d.notes.append(f"{node.name}: tail head on the last {K} frames; downstream nodes see a fixed window")
    return STATIC


def _reshape(node, x, shapes, d):
    src = shapes[node.inputs[0]]
    dst = shapes[node.outputs[0]]
    before = int(np.prod(src[:x.axis], dtype=np.int64))
    for jx in range(len(dst)):
        if int(np.prod(dst[:jx], dtype=np.int64)) == before and dst[jx] == src[x.axis]:
            if node.op_type == "Reshape":
                d.reshapes[node.name] = jx
            return Time(jx, x.rate, x.delay)
    raise refuse(node, f"reshapes {list(src)} -> {list(dst)} across the frame axis; add a tail Slice "
                       "(last K frames) before it")
