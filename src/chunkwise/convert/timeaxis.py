"""Frame-axis analysis: where time lives in every tensor, and what each node needs to stream.

The analysis walks the graph once and gives every value a :class:`Time`: its frame ``axis``, its
``rate`` (input frames per frame of this tensor, a :class:`~fractions.Fraction`: a strided window op
multiplies it by its stride, an up-sampling InsertZeros divides it), its ``delay`` (lookahead: frames
by which the stream lags the offline tensor) and its ``pad`` (leading zero frames that the offline
tensor has and the stream does not carry: a folded frame-axis ``Pad`` whose zeros travel with the data
until a window op takes them as cache state). A chunk of ``C`` input frames carries ``C / rate`` frames
of every streamed tensor.

What an op does with time is its definition's :class:`~chunkwise.ir.ops.TimeRule`; this module has one
handler per rule (:data:`HANDLERS`; its keys are :data:`RULES`, the coverage table's "stream" column).
Facts come from the definitions too: the window geometry from :func:`chunkwise.ir.ops.window`, whether
an op maps zero to zero (a folded Pad's zeros may only travel through such ops) and whether its output
is non-negative (propagated value by value: MaxPool's -inf padding equals a zero cache exactly when its
input is non-negative).

Window ops (Conv, AveragePool, MaxPool) along time need ``L`` past frames, supplied by a StreamingCache
on their input edge; ``L`` is the op's left padding on the frame axis plus the folded pad of its input.
With span ``sp = dilation * (kernel - 1) + 1`` and stride ``s`` a window op is causal iff
``sp - s <= L <= sp - 1``: then the cache holds ``L`` frames (``window_size = L + 1``), the op's time
padding becomes 0 and it emits ``C / s`` frames. Right padding of a causal window op only adds offline
frames after the end of the input, which a stream never produces (a Slice that drops them, PyTorch's
causal-conv idiom, is an identity on the stream). ``L < sp - s`` is lookahead (``allow_lookahead``).

The analysis only *decides*; :mod:`chunkwise.convert.streaming` applies the decisions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable

import numpy as np

from ..errors import StreamingError, UnsupportedError
from ..ir import ops
from ..ir.graph import Graph, Node
from ..ir.ops import TimeRule, opdef

INT64_MAX = 2**63 - 1


@dataclass(frozen=True)
class Time:
    axis: int | None  # None: static (no time axis)
    rate: Fraction = Fraction(1)  # input frames per frame of this tensor
    delay: int = 0  # frames (at this tensor's rate) by which the stream lags the offline tensor
    pad: int = 0  # leading zero frames (at this rate) of the offline tensor that the stream does not carry
    # > 1: the axis holds ``outer`` groups one after the other, each with every frame (a reshape merged an
    # axis before time into it, e.g. [1, C, T, F] -> [C*T, F] for a per-row Gemm); only per-row ops and the
    # reshape back may follow
    outer: int = 1
    tail: int = 0  # trailing zero frames of the offline tensor (a folded right Pad) the stream never produces

    @property
    def streamed(self) -> bool:
        return self.axis is not None

    def with_(self, **kw) -> "Time":
        d = {"axis": self.axis, "rate": self.rate, "delay": self.delay, "pad": self.pad, "outer": self.outer,
             "tail": self.tail}
        d.update(kw)
        return Time(**d)


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
    hoist: bool = True  # may move above Transposes/zero-preserving unary ops (False: exactly where asked)


@dataclass
class Recurrent:
    """A GRU/LSTM whose state is carried between chunks through extra graph inputs and outputs."""

    node: str
    cell: bool  # LSTM: the cell state is carried too


@dataclass
class Decision:
    caches: list[Cache] = field(default_factory=list)
    zero_time_pads: dict[str, int] = field(default_factory=dict)  # window node -> spatial index of time
    pad_folds: dict[str, int] = field(default_factory=dict)  # Pad node -> axis whose padding moved to caches
    tail_slices: dict[str, tuple[int, int]] = field(default_factory=dict)  # Slice node -> (axis, K)
    tail_gathers: dict[str, int] = field(default_factory=dict)  # Gather node -> index in the streamed input
    passthrough_slices: dict[str, int] = field(default_factory=dict)  # node -> axis (identity on time)
    reshapes: dict[str, int] = field(default_factory=dict)  # node -> time index in the new shape
    upsamples: dict[str, tuple[int, int]] = field(default_factory=dict)  # InsertZeros -> (spatial idx, stride)
    recurrent: list[Recurrent] = field(default_factory=list)
    state_inputs: set[str] = field(default_factory=set)  # graph inputs that are recurrent initial state
    time: dict[str, Time] = field(default_factory=dict)
    nonneg: dict[str, bool] = field(default_factory=dict)
    lookahead: dict[str, int] = field(default_factory=dict)  # node -> frames of delay added
    notes: list[str] = field(default_factory=list)


def refuse(node: Node, why: str) -> StreamingError:
    return StreamingError(f"cannot stream node {node.name!r} ({node.op_type}): {why}")


def _const(graph: Graph, name: str):
    t = graph.initializers.get(name) if name else None
    return None if t is None or t.data is None else np.asarray(t.data)


class Consts(dict):
    """initializer name -> array, built lazily (the ``consts`` argument of the op-definition hooks)."""

    def __init__(self, graph: Graph):
        super().__init__()
        self.graph = graph

    def get(self, name, default=None):
        if name in self:
            return self[name]
        c = _const(self.graph, name)
        if c is None:
            return default
        self[name] = c
        return c


@dataclass
class _Cx:
    graph: Graph
    shapes: dict
    chunk: int
    allow_lookahead: bool
    manual: dict
    d: Decision
    consts: Consts
    producers: dict
    consumers: dict
    in_frames: int  # offline frames of the graph input on the frame axis
    stride_needs: list = field(default_factory=list)  # (node, chunk multiple it needs)

    def rank(self, name: str) -> int:
        return len(self.shapes[name])

    def frames(self, node: Node, t: Time, stride: int = 1) -> int:
        """Frames of a streamed tensor per chunk. The chunk must make them whole (and a multiple of ``stride``):
        when it does not, the need is recorded and the analysis goes on, so the refusal at the end names the
        stride of the whole model."""
        need = t.rate * stride
        f = Fraction(self.chunk) / t.rate
        if (Fraction(self.chunk) / need).denominator != 1:
            self.stride_needs.append((node, need.numerator))
        return max(int(f), stride)

    def stream_len(self, t: Time) -> Fraction:
        """Frames of this tensor a stream of the whole offline input produces."""
        return Fraction(self.in_frames) / t.rate


# ---- handlers, one per time rule ---------------------------------------------------------------------


def _zero_or_refuse(cx: _Cx, node: Node, t: Time, what: str = "") -> None:
    if (t.pad or t.tail) and not opdef(node.op_type).zero_to_zero(node, cx.consts):
        raise refuse(node, f"{t.pad or t.tail} frames of zero padding on the frame axis reach it{what}, but it does not map "
                           "zero to zero, so they cannot become a zero StreamingCache past it")


def _contiguous(node: Node, t: Time) -> None:
    """Ops that look along time need its frames in one run (not interleaved with another axis)."""
    if t.outer > 1:
        raise refuse(node, f"the frame axis is interleaved with another axis here ({t.outer} groups, after a reshape "
                           "that merged them); only per-frame ops and the reshape back may follow")


def _frame(cx: _Cx, node: Node, ins: list[Time], streamed) -> Time:
    if len(streamed) > 1 or streamed[0][0] != 0:
        raise refuse(node, "its per-frame data input is not the only streamed input")
    _zero_or_refuse(cx, node, ins[0])
    return ins[0]


def _align(cx: _Cx, node: Node, ins: list[Time], streamed) -> Time:
    """Streamed inputs of a broadcasting/concatenating op: same axis and rate; delays made equal."""
    ref = streamed[0][1]
    for _, t in streamed[1:]:
        if t.axis != ref.axis or t.rate != ref.rate or t.outer != ref.outer:
            raise refuse(node, f"inputs stream at different frame axes/rates ({ref} vs {t})")
        if t.pad != ref.pad or t.tail != ref.tail:
            raise refuse(node, f"its inputs carry different zero padding on the frame axis ({ref.pad} vs {t.pad} "
                               "frames)")
    maxdelay = max(t.delay for _, t in streamed)
    for k, t in streamed:
        if t.delay != maxdelay:
            if not cx.allow_lookahead:
                raise refuse(node, "inputs are not aligned in time")
            cx.d.caches.append(Cache(node.name, k, maxdelay - t.delay, t.axis,
                                     f"delay line aligning input {k} with a lookahead branch", delay_line=True))
    return ref.with_(delay=maxdelay)


def _binary(cx: _Cx, node: Node, ins: list[Time], streamed) -> Time:
    out = _align(cx, node, ins, streamed)
    out_rank = cx.rank(node.outputs[0])
    for k, t in enumerate(ins):
        if not t.streamed and node.inputs[k]:
            shp = cx.shapes.get(node.inputs[k], ())
            pos = out.axis - (out_rank - len(shp))
            if 0 <= pos < len(shp) and shp[pos] != 1:
                raise refuse(node, f"constant input {node.inputs[k]!r} varies along the frame axis")
    _zero_or_refuse(cx, node, out)
    return out


def _window(cx: _Cx, node: Node, ins: list[Time], streamed) -> Time:
    if len(streamed) > 1 or streamed[0][0] != 0:
        raise refuse(node, "only its data input may be streamed")
    x = ins[0]
    _contiguous(node, x)
    rank = cx.rank(node.inputs[0])
    nsp = rank - 2
    if not 1 <= x.axis <= nsp:
        raise refuse(node, f"frame axis {x.axis} is not a spatial axis of its rank-{rank} NHWC/NWC input")
    i = x.axis - 1
    wdims = cx.shapes.get(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] else None
    try:
        w = ops.window(node, nsp, wdims)
    except UnsupportedError as e:
        raise refuse(node, str(e)) from None
    k, dil, s = w.kernel[i], w.dilations[i], w.strides[i]
    own_l, R = w.pads_begin[i], w.pads_end[i] + x.tail
    L = own_l + x.pad
    sp = w.span(i)
    cx.frames(node, x, s)
    if x.delay % s:
        raise refuse(node, f"stride {s} after a lookahead of {x.delay} frames (not a multiple of the stride)")
    if (node.name, 0) in cx.manual:
        cx.d.zero_time_pads[node.name] = i  # a table entry supplies the window; its cache replaces the padding
        return Time(x.axis, x.rate * s, x.delay // s)
    delay = x.delay // s
    if x.delay and L:
        raise refuse(node, "a windowed op with left padding after a lookahead layer would mix warm-up frames "
                           "into its window")
    if L > sp - 1:
        raise refuse(node, f"left padding {L} exceeds the window span {sp} - 1")
    if L < sp - s:
        # With right padding the offline output frame j is aligned to input frame j and reads later frames:
        # lookahead, accepted only on request. Without it the offline op merely starts late (a 'valid' window
        # trims its first outputs): the stream runs it causally and its first outputs are warm-up frames the
        # offline model does not have; the delay aligning the two is recorded either way.
        if R and not cx.allow_lookahead:
            raise refuse(node, f"right padding {R} on the frame axis needs {R} future frames (use "
                               "--allow-lookahead to accept a delayed output)")
        # the stream runs it causally with L' >= sp - s past frames, L' - L a whole number of strides: its
        # output j' is the offline output j' - (L' - L) / s
        new_l = L + s * -(-(sp - s - L) // s)
        extra = (new_l - L) // s
        cx.d.lookahead[node.name] = extra
        if not R:
            cx.d.notes.append(f"{node.name}: no padding on the frame axis ('valid'): the offline output starts "
                              f"{extra} frames late; the stream's first {extra} frames are warm-up")
        delay += extra
        L = new_l
    elif R:
        cx.d.notes.append(f"{node.name}: right padding {R} only adds offline frames after the end of the input; "
                          "the stream produces every frame before them")
    # MaxPool pads with -inf; a zero cache gives the same maxima when its input is non-negative. The zeros of a
    # folded Pad are real zeros offline too, so only the op's own padding needs the proof.
    if node.op_type == "MaxPool" and own_l and not cx.d.nonneg.get(node.inputs[0], False):
        raise refuse(node, "MaxPool pads with -inf but a StreamingCache starts with zeros; this is exact only "
                           "for non-negative inputs (after Relu), which its input is not known to be")
    if L:
        cx.d.caches.append(Cache(node.name, 0, L, x.axis, f"{node.op_type} kernel {k} dilation {dil} stride {s}"
                                 + (f" (+{x.pad} folded Pad frames)" if x.pad else "")))
    cx.d.zero_time_pads[node.name] = i
    return Time(x.axis, x.rate * s, delay)


def pad_values(graph, node, rank):
    pads = _const(graph, node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] else node.attr("pads")
    if pads is None:
        raise refuse(node, "pads are not constant")
    pads = [int(p) for p in np.asarray(pads).ravel()]
    if len(pads) != 2 * rank:
        raise refuse(node, f"{len(pads)} pad values for a rank-{rank} tensor")
    return pads


def _pad(cx: _Cx, node: Node, ins: list[Time], streamed) -> Time:
    if len(streamed) > 1 or streamed[0][0] != 0:
        raise refuse(node, "only its data input may be streamed")
    x = ins[0]
    rank = cx.rank(node.inputs[0])
    pads = pad_values(cx.graph, node, rank)
    L, R = pads[x.axis], pads[x.axis + rank]
    mode = node.attr("mode", "constant") or "constant"
    has_value = len(node.inputs) > 2 and bool(node.inputs[2])
    value = _const(cx.graph, node.inputs[2]) if has_value else None
    if has_value and value is None:
        raise refuse(node, "its padding value is not a constant")
    zero = mode == "constant" and (value is None or not np.any(value))
    if not L and not R:
        if (x.pad or x.tail) and not zero:
            raise refuse(node, f"{mode} padding of other axes would see the folded zero frames")
        return x
    _contiguous(node, x)
    if not zero:
        raise refuse(node, f"{mode} padding of the frame axis (only zero padding equals a fresh cache)")
    if x.delay:
        raise refuse(node, "zero padding of the frame axis after a lookahead layer would mix warm-up frames "
                           "into the padding")
    cx.d.pad_folds[node.name] = x.axis
    # zeros after the end are offline frames a stream never produces; a window op reading them has that much
    # right padding (lookahead, unless its left padding already makes it causal)
    return x.with_(pad=x.pad + L, tail=x.tail + R)


def _transpose(cx: _Cx, node: Node, ins: list[Time], streamed) -> Time:
    x = ins[0]
    perm = node.attr("perm")
    rank = cx.rank(node.inputs[0])
    perm = list(perm) if perm else list(range(rank))[::-1]
    return x.with_(axis=perm.index(x.axis))


def slice_params(graph, node, rank):
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


def _tail(cx: _Cx, node: Node, x: Time, K: int) -> int:
    """The last ``K`` frames of a streamed input: a cache when a chunk carries fewer. Returns the frames the
    node's input carries per chunk in the streaming model."""
    if x.delay:
        raise refuse(node, "a tail head after a lookahead layer would not see the newest frames")
    c = cx.frames(node, x)
    if (node.name, 0) in cx.manual:
        return c + cx.manual[(node.name, 0)]
    if c < K:
        cx.d.caches.append(Cache(node.name, 0, K - c, x.axis, f"tail head on the last {K} frames"))
        return K
    return c


def _slice(cx: _Cx, node: Node, ins: list[Time], streamed) -> Time:
    if len(streamed) > 1 or streamed[0][0] != 0:
        raise refuse(node, "only its data input may be streamed")
    x = ins[0]
    rank = cx.rank(node.inputs[0])
    T = cx.shapes[node.inputs[0]][x.axis]
    if node.op_type == "Gather":
        ax = ops.axis_attr(node, rank, 0)
        idx = _const(cx.graph, node.inputs[1])
        if ax != x.axis:
            if idx is None:
                return x  # indices along another axis: per frame whatever they are
            return x if ax > x.axis else x.with_(axis=x.axis - 1 + idx.ndim)
        _contiguous(node, x)
        if idx is None or idx.size != 1:
            raise refuse(node, "gathers along the frame axis with indices that are not one constant frame")
        i = int(idx.ravel()[0])
        i = i + T if i < 0 else i
        produced = cx.stream_len(x) + x.pad  # offline frames a stream of the whole input produces
        if not 0 <= i < min(Fraction(T), produced):
            raise refuse(node, f"selects frame {i} of {T}, which a stream never produces")
        K = int(min(Fraction(T), produced)) - i  # the K-th newest frame of the stream
        have = _tail(cx, node, x, K)
        cx.d.tail_gathers[node.name] = have - K
        cx.d.notes.append(f"{node.name}: tail head on frame {i} of {T} (the last {K} frames); downstream nodes see "
                          "a fixed window")
        return STATIC
    starts, ends, axes, steps = slice_params(cx.graph, node, rank)
    if x.axis not in axes:
        return x
    _contiguous(node, x)
    j = axes.index(x.axis)
    if steps[j] != 1:
        raise refuse(node, f"step {steps[j]} along the frame axis")
    s0 = starts[j] + T if starts[j] < 0 else starts[j]
    e0 = ends[j] + T if ends[j] < 0 else ends[j]
    s0, e0 = min(max(s0, 0), T), min(max(e0, 0), T)
    produced = cx.stream_len(x) + x.pad  # offline frames a stream of the whole input produces
    last = min(Fraction(T), produced)
    if e0 < last:
        raise refuse(node, f"keeps frames [{s0}, {e0}) of {T}: dropping the newest frames needs the future")
    if s0 == 0 and starts[j] >= 0:  # every frame the stream produces: an identity on time
        cx.d.passthrough_slices[node.name] = x.axis
        return x
    if e0 != last:
        raise refuse(node, f"keeps frames [{s0}, {e0}) of {T}, beyond the {last} frames the stream produces")
    K = e0 - s0  # the last K frames (written as -K, or as T - K for this offline length)
    _tail(cx, node, x, K)
    cx.d.tail_slices[node.name] = (x.axis, K)
    cx.d.notes.append(f"{node.name}: tail head on the last {K} frames; downstream nodes see a fixed window")
    return STATIC


def _reshape(cx: _Cx, node: Node, ins: list[Time], streamed) -> Time:
    """A reshape keeps the flat order, so it streams when each frame's elements stay one contiguous run per
    group of the new axis holding time. In flat terms the input is ``[P, n, Q]`` (``P`` elements before the
    ``n`` rows of time, ``Q`` per row); the new time axis ``j`` has ``o' = P / prod(dst[:j])`` groups of
    ``n'`` rows of ``R' = prod(dst[j+1:])`` elements with ``n' R' = n Q``. The rate scales by ``n / n'``:
    kept ([1, T, C] -> [T, C]), merged ([1, T, F, C] -> [T*F, C]: F rows per frame), split
    ([1, T*F, C] -> [1, T, F, C]) or, with ``o' > 1``, interleaved ([1, C, T, F] -> [C*T, F], for a per-row
    Gemm and the reshape back)."""
    x = ins[0]
    src = cx.shapes[node.inputs[0]]
    dst = cx.shapes[node.outputs[0]]
    a = x.axis
    P = int(np.prod(src[:a], dtype=np.int64)) * x.outer
    n = src[a] // x.outer
    Q = int(np.prod(src[a + 1:], dtype=np.int64))
    best = None
    for jx in range(len(dst)):
        A = int(np.prod(dst[:jx], dtype=np.int64))
        if not A or P % A:
            continue
        o = P // A
        if dst[jx] % o:
            continue
        n2 = dst[jx] // o
        R = int(np.prod(dst[jx + 1:], dtype=np.int64))
        if n2 < 1 or n2 * R != n * Q:
            continue
        if best is None or (n2, -o) > (best[1], -best[2]):  # most rows, fewest groups
            best = (jx, n2, o)
    if best is None:
        raise refuse(node, f"reshapes {list(src)} -> {list(dst)} across the frame axis; add a tail Slice "
                           "(last K frames) or a Gather of the last frame before it")
    jx, n2, o = best
    f = Fraction(n2, n)  # rows of the new axis per row of the old one
    if o > 1 and (x.delay or x.pad or x.tail):
        raise refuse(node, "interleaves the frame axis with another axis after a delay or folded padding")
    delay, pad, tail = x.delay * f, x.pad * f, x.tail * f
    if delay.denominator != 1 or pad.denominator != 1 or tail.denominator != 1:
        raise refuse(node, "splits the frame axis into groups of frames after a delay or padding of other than "
                           "whole groups")
    out = x.with_(axis=jx, rate=x.rate / f, delay=int(delay), pad=int(pad), tail=int(tail), outer=o)
    cx.frames(node, out)
    if node.op_type == "Reshape":  # Flatten / Squeeze / Unsqueeze take their shape from the input
        cx.d.reshapes[node.name] = out.axis
    return out


_WHOLE = {"norm": "normalizes over the frame axis (needs the whole sequence)",
          "reduce": "reduces over the frame axis (needs the whole sequence)",
          "movement": "mixes frames along the frame axis"}


def _axes(cx: _Cx, node: Node, ins: list[Time], streamed) -> Time:
    d = opdef(node.op_type)
    x = streamed[0][1]
    rank = cx.rank(node.inputs[0])
    axes = d.axes(node, rank, cx.consts)
    if x.axis in axes:
        why = "concatenation along the frame axis" if node.op_type == "Concat" else _WHOLE.get(
            d.family, "acts along the frame axis (needs the whole sequence)")
        raise refuse(node, why)
    if node.op_type == "Concat":
        for k, t in enumerate(ins):
            if not t.streamed and node.inputs[k]:
                raise refuse(node, f"concatenates the constant {node.inputs[k]!r} (its frame count is the offline "
                                   "length)")
        out = _align(cx, node, ins, streamed)
    else:
        if len(streamed) > 1 or streamed[0][0] != 0:
            raise refuse(node, "only its data input may be streamed")
        out = x
        if d.family == "reduce" and not int(node.attr("keepdims", 1)):
            out = x.with_(axis=x.axis - sum(1 for a in axes if a < x.axis))
    _zero_or_refuse(cx, node, out)
    return out


def _contract(cx: _Cx, node: Node, ins: list[Time], streamed) -> Time:
    x = ins[0]
    rank = cx.rank(node.inputs[0])
    if len(streamed) > 1:
        raise refuse(node, "both operands are streamed (attention over the whole sequence needs every frame)")
    if streamed[0][0] != 0 or x.axis == rank - 1:
        raise refuse(node, "contracts over the frame axis; add a tail Slice (last K frames) or a Gather of the last "
                           "frame before it")
    if node.op_type == "Gemm" and int(node.attr("transA", 0) or 0):
        raise refuse(node, "transA=1 contracts over the frame axis")
    _zero_or_refuse(cx, node, x)
    return x


def _upsample(cx: _Cx, node: Node, ins: list[Time], streamed) -> Time:
    if len(streamed) > 1 or streamed[0][0] != 0:
        raise refuse(node, "only its data input may be streamed")
    x = ins[0]
    rank = cx.rank(node.inputs[0])
    nsp = rank - 2
    if not 1 <= x.axis <= nsp:
        return x  # acts along the spatial axes only
    stride = [int(v) for v in (node.attr("stride") or [1])]
    stride = stride * nsp if len(stride) == 1 else stride
    if len(stride) != nsp:
        raise refuse(node, f"stride {stride} does not fit a {nsp}-D input")
    i = x.axis - 1
    s = stride[i]
    if s == 1:
        return x
    _contiguous(node, x)
    cx.d.upsamples[node.name] = (i, s)
    return Time(x.axis, x.rate / s, x.delay * s, x.pad * s, tail=x.tail * s)


def _rnn_time_axis(node: Node) -> int:
    return 1 if int(node.attr("layout", 0) or 0) else 0


def _recurrent(cx: _Cx, node: Node, ins: list[Time], streamed) -> list[Time]:
    direction = node.attr("direction", "forward") or "forward"
    if direction != "forward":
        raise refuse(node, f"direction={direction!r}: the backward direction needs every future frame "
                           "(only forward recurrent layers stream)")
    if len(streamed) > 1 or streamed[0][0] != 0:
        raise refuse(node, "only its sequence input X may be streamed (the initial state is carried state)")
    x = ins[0]
    _contiguous(node, x)
    t_ax = _rnn_time_axis(node)
    if x.axis != t_ax:
        raise refuse(node, f"the frame axis is axis {x.axis} of X, not its sequence axis {t_ax}")
    if x.pad or x.tail:
        raise refuse(node, "zero padding of the frame axis reaches its input (the padding frames would update its "
                           "state)")
    if x.delay:
        raise refuse(node, "after a lookahead layer its warm-up frames would enter the recurrent state")
    for k in (5, 6):
        name = node.inputs[k] if len(node.inputs) > k else ""
        if name and name in cx.graph.initializers:
            c = _const(cx.graph, name)
            if c is None or np.any(c):
                raise refuse(node, "a non-zero constant initial state (a stream starts from a zero state or from "
                                   "a state input)")
    cell = node.op_type == "LSTM"
    cx.d.recurrent.append(Recurrent(node.name, cell))
    cx.d.notes.append(f"{node.name}: {'hidden and cell' if cell else 'hidden'} state carried between chunks as "
                      "graph inputs/outputs (streaming_state in the model's metadata)")
    y = Time(0, x.rate)  # Y is [seq, directions, batch, hidden]
    return [y] + [STATIC] * (len(node.outputs) - 1)


def _cache(cx: _Cx, node: Node, ins, streamed):
    raise refuse(node, opdef(node.op_type).refuse.get("stream", "the model already streams"))


HANDLERS: dict[TimeRule, Callable] = {
    TimeRule.FRAME: _frame,
    TimeRule.BINARY: _binary,
    TimeRule.WINDOW: _window,
    TimeRule.PAD: _pad,
    TimeRule.TRANSPOSE: _transpose,
    TimeRule.SLICE: _slice,
    TimeRule.RESHAPE: _reshape,
    TimeRule.AXES: _axes,
    TimeRule.CONTRACT: _contract,
    TimeRule.UPSAMPLE: _upsample,
    TimeRule.RECURRENT: _recurrent,
}

# The time rules (chunkwise.ir.ops.TimeRule) this analysis implements: the coverage table's "stream" column.
RULES = frozenset(HANDLERS)


def _state_inputs(graph: Graph, consumers) -> set[str]:
    """Graph inputs read only as the initial state (inputs 5, 6) of recurrent layers."""
    out = set()
    for v in graph.inputs:
        if v.name in graph.initializers:
            continue
        users = consumers.get(v.name, [])
        if users and all(opdef(u.op_type).time == TimeRule.RECURRENT
                         and all(k in (5, 6) for k, i in enumerate(u.inputs) if i == v.name) for u in users):
            out.add(v.name)
    return out


def analyse(graph: Graph, shapes: dict[str, tuple[int, ...]], chunk: int, frame_axis: int,
            allow_lookahead: bool = False, manual: dict[tuple[str, int], int] | None = None) -> Decision:
    """Decide caches and rewrites for a chunk of ``chunk`` frames. ``shapes``: offline shapes of every value."""
    d = Decision()
    time = d.time
    consumers = graph.consumers()
    consts = Consts(graph)
    d.state_inputs = _state_inputs(graph, consumers)
    in_frames = None
    for v in graph.inputs:
        if v.name in graph.initializers or v.name in d.state_inputs:
            continue
        rank = len(shapes[v.name])
        if not 0 <= frame_axis < rank:
            raise StreamingError(f"frame axis {frame_axis} is out of range for input {v.name!r} of rank {rank}")
        time[v.name] = Time(frame_axis)
        in_frames = shapes[v.name][frame_axis] if in_frames is None else in_frames
    for name, t in graph.initializers.items():
        if t.data is not None:
            d.nonneg[name] = bool(np.all(np.asarray(t.data) >= 0))
    cx = _Cx(graph, shapes, chunk, allow_lookahead, manual or {}, d, consts, graph.producers(), consumers,
             in_frames or chunk)

    def t_of(name: str) -> Time:
        return time.get(name, STATIC) if name else STATIC

    for node in graph.nodes:
        od = opdef(node.op_type, node=node.name)
        ins = [t_of(i) for i in node.inputs]
        try:
            nn = bool(od.nonneg(node, consts, [d.nonneg.get(i, False) for i in node.inputs]))
        except Exception:  # a hook that cannot decide on this node: not known to be non-negative
            nn = False
        for o in node.outputs:
            d.nonneg[o] = nn
        streamed = [(k, t) for k, t in enumerate(ins) if t.streamed]
        if not streamed:
            for o in node.outputs:
                time[o] = STATIC
            continue
        handler = HANDLERS.get(od.time)
        if handler is None or not od.espdl:
            raise refuse(node, od.refuse.get("stream") or "no streaming rule for this operator")
        out = handler(cx, node, ins, streamed)
        outs = out if isinstance(out, list) else [out] * len(node.outputs)
        for o, t in zip(node.outputs, outs):
            if o:
                time[o] = t
    if cx.stride_needs:
        step = math.lcm(*(m for _, m in cx.stride_needs))
        raise refuse(cx.stride_needs[0][0], f"the chunk must be a multiple of the cumulative stride {step} "
                                            f"(valid chunk sizes: {', '.join(str(step * m) for m in range(1, 6))}, "
                                            "...)")
    producers = cx.producers
    for v in graph.outputs:
        t = time.get(v.name)
        if t is not None and t.outer > 1:
            raise refuse(producers.get(v.name), f"the graph output {v.name!r} interleaves the frame axis with "
                                                "another axis (reshape it back first)")
        if t is not None and t.pad:
            p = producers.get(v.name)
            raise refuse(p, f"{t.pad} frames of frame-axis zero padding reach the graph output {v.name!r} "
                            "(a stream never produces them)")
    return d
