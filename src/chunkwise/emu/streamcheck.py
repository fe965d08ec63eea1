"""Streaming vs offline: push chunks through a streaming model and compare with the offline model.

Per-frame outputs (the streaming output has ``c`` frames where the offline one has ``T * c / C``):
chunk ``k`` must equal offline frames ``[k*c - delay, (k+1)*c - delay)`` (frames before 0 are warm-up
and skipped). Outputs whose shape equals the offline one (tail heads) are compared on the last chunk.
On a mismatch the report names the first chunk and the first node whose intermediate value differs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from ..errors import ShapeError
from .check import compare


@dataclass
class StreamCheck:
    bit_exact: bool
    chunks: int
    chunk_frames: int
    frame_axis: int
    delay: int
    outputs: dict[str, dict] = field(default_factory=dict)
    first_bad_chunk: int | None = None
    first_bad_node: str | None = None
    first_bad_value: str | None = None

    def as_dict(self) -> dict:
        return {
            "bit_exact": self.bit_exact, "chunks": self.chunks, "chunk_frames": self.chunk_frames,
            "frame_axis": self.frame_axis, "delay": self.delay, "outputs": self.outputs,
            "first_bad_chunk": self.first_bad_chunk, "first_bad_node": self.first_bad_node,
            "first_bad_value": self.first_bad_value,
        }


def _frame_axis_of(stream_shape, offline_shape):
    """The axis where shapes differ (None when equal); refuses more than one differing axis."""
    if len(stream_shape) != len(offline_shape):
        return "mismatch"
    diff = [i for i, (a, b) in enumerate(zip(stream_shape, offline_shape)) if a != b]
    if not diff:
        return None
    if len(diff) > 1:
        return "mismatch"
    return diff[0]


def split_chunks(x: np.ndarray, chunk: int, axis: int, count: int | None = None) -> list[np.ndarray]:
    n = x.shape[axis] // chunk
    if count is not None:
        if count > n:
            raise ShapeError(f"{count} chunks of {chunk} frames need {count * chunk} frames; the input has "
                             f"{x.shape[axis]}")
        n = count
    return [np.take(x, range(k * chunk, (k + 1) * chunk), axis=axis) for k in range(n)]


def output_delays(streaming) -> dict[str, int]:
    """Per-output lookahead delay recorded by the converter (``streaming_delay_frames`` /
    ``streaming_output_delays`` in the model's metadata; 0 when absent)."""
    meta = streaming.graph.metadata
    base = int(meta.get("streaming_delay_frames", 0) or 0)
    per = json.loads(meta["streaming_output_delays"]) if meta.get("streaming_output_delays") else {}
    return {v.name: int(per.get(v.name, base)) for v in streaming.graph.outputs}


def verify_streaming(streaming, offline, x: dict[str, np.ndarray] | None = None, *, frame_axis: int = 1,
                     chunks: int | None = None, delay: int | dict | None = None, locate: bool = True) -> StreamCheck:
    """Run both models and compare (see module doc). ``x``: offline-shaped inputs (default: its test input).

    ``delay`` (frames per-frame outputs lag the offline ones; an int or ``{output: frames}``) defaults to
    what the streaming model's metadata records. Recurrent state inputs (``streaming_state``) are carried by
    the session; an offline input that is also a state input is given on the first chunk only."""
    if x is None:
        if not offline.graph.test_inputs:
            raise ShapeError("the offline model has no test input; pass an input array")
        x = offline.test_feeds()
    from ..convert.streaming import wrap_negative_gathers

    offline, _ = wrap_negative_gathers(offline)  # ESP-PPQ's Gather(-1): compare with what it means
    x = offline.prepare_inputs(x)
    state = {p["input"] for p in json.loads(streaming.graph.metadata.get("streaming_state", "[]"))}
    delays = output_delays(streaming)
    if isinstance(delay, dict):
        delays.update(delay)
    elif delay is not None:
        delays = {k: int(delay) for k in delays}
    delay = max(delays.values(), default=0)
    names = [k for k in x if k not in state]
    initial = {k: v for k, v in x.items() if k in state}
    s_inputs = {v.name for v in streaming.graph.inputs if v.name not in streaming.graph.initializers}
    if s_inputs - state != set(names):
        raise ShapeError(f"streaming inputs {sorted(s_inputs - state)} differ from offline inputs {sorted(names)}")
    chunk = int(next(v for v in streaming.graph.inputs if v.name == names[0]).shape[frame_axis])
    total = x[names[0]].shape[frame_axis]
    n = total // chunk if chunks is None else chunks
    if n < 1:
        raise ShapeError(f"the input has {total} frames, fewer than one chunk of {chunk}")
    full = (n * chunk == total)
    off_all = offline.run(x)
    parts = {k: split_chunks(x[k], chunk, frame_axis, n) for k in names}
    from .session import Session

    session = Session(streaming)
    res = StreamCheck(True, n, chunk, frame_axis, delay)
    out_names = [v.name for v in streaming.graph.outputs if v.name in off_all]  # not extra state outputs
    stats = {o: {"kind": None, "checked_chunks": 0, "mismatches": 0, "max_abs_diff": 0.0} for o in out_names}
    for k in range(n):
        outs = session.push({**({} if k else initial), **{name: parts[name][k] for name in names}})
        bad_here = False
        for o in out_names:
            got, want = outs[o], off_all[o]
            ax = _frame_axis_of(got.shape, want.shape)
            if ax == "mismatch":
                raise ShapeError(f"output {o!r}: streaming shape {got.shape} does not match offline {want.shape}")
            if ax is None:
                stats[o]["kind"] = "tail"
                if k != n - 1 or not full:
                    continue
                chk = compare(o, got, want)
            else:
                c = got.shape[ax]
                stats[o]["kind"] = "per-frame"
                lo = k * c - delays.get(o, delay)
                if lo < 0:
                    continue
                if lo + c > want.shape[ax]:
                    continue
                chk = compare(o, got, np.take(want, range(lo, lo + c), axis=ax))
            stats[o]["checked_chunks"] += 1
            stats[o]["mismatches"] += chk.mismatches
            stats[o]["max_abs_diff"] = max(stats[o]["max_abs_diff"], chk.max_abs_diff)
            if not chk.bit_exact:
                bad_here = True
        if bad_here and res.first_bad_chunk is None:
            res.bit_exact = False
            res.first_bad_chunk = k
            if locate:
                res.first_bad_node, res.first_bad_value = _locate(streaming, offline, x, parts, names, k, delay,
                                                                  n, full, initial)
    for o in out_names:
        if stats[o]["checked_chunks"] == 0:
            res.bit_exact = False
            stats[o]["note"] = "no chunk could be compared (input shorter than the delay or not a whole number of chunks)"
    res.outputs = stats
    return res


def _locate(streaming, offline, x, parts, names, k, delay, n, full, initial):
    """First node (streaming order) whose output differs from the offline value at chunk ``k``.

    Replays chunks 0..k on the per-node path with every intermediate kept.
    """
    from .session import Session

    o_vals = offline.run(x, intermediates=True)
    sess = Session(streaming, compiled=False)
    for j in range(k + 1):
        s_vals = sess.push({**({} if j else initial), **{name: parts[name][j] for name in names}},
                           intermediates=True)
    for node in streaming.graph.nodes:
        for o in node.outputs:
            if o not in o_vals or o not in s_vals:
                continue
            got, want = s_vals[o], o_vals[o]
            ax = _frame_axis_of(got.shape, want.shape)
            if ax == "mismatch":
                continue
            if ax is None:
                if k != n - 1 or not full:
                    continue
                if not np.array_equal(got, want):
                    return node.name, o
                continue
            c = got.shape[ax]
            if want.shape[ax] != c * n if full else False:
                continue  # carries cached history frames: not comparable frame by frame
            lo = k * c - delay
            if lo < 0 or lo + c > want.shape[ax]:
                continue
            if not np.array_equal(got, np.take(want, range(lo, lo + c), axis=ax)):
                return node.name, o
    return None, None
