"""Streaming sessions: push chunks through a model whose StreamingCache nodes keep state.

Every session owns its state. A compiled session lowers the model's prepared plan (shared through
``Model.plan``, read-only here: lowering copies its constants) into its own :class:`~.program.Program`,
whose arena holds the caches. A session on the per-node path (``compiled=False``, or a graph without a
lowering for one of its ops) prepares its own :class:`~.engine.Plan`, so its StreamingCache state is
its alone. Neither ever runs or resets the plan ``Model.run`` uses: two sessions of one model and any
number of offline runs interleave freely.
"""

from __future__ import annotations

import json

import numpy as np

from ..errors import ShapeError, UnsupportedError


class Session:
    """Chunk-by-chunk execution of a (streaming) model from a zero state.

    ``push(chunk)`` runs one chunk (an array for single-input models, or ``{name: array}``) and returns
    ``{output_name: array}``; ``reset()`` zeroes every cache; ``push_many(chunks)`` runs a sequence and
    returns each output stacked along a new leading axis.

    A streaming model with recurrent layers (``metadata["streaming_state"]``) carries their state: each
    push feeds the previous push's state outputs back as state inputs (zeros at first, or what the caller
    passes for them); ``state`` holds it. ``delay`` is the lookahead (``streaming_delay_frames``) by which
    per-frame outputs lag the offline model's.
    """

    def __init__(self, model, compiled: bool = True):
        self.model = model
        # recurrent state a streaming model carries between chunks (chunkwise.convert.streaming.carry_state)
        meta = model.graph.metadata
        self.state_pairs = json.loads(meta.get("streaming_state", "[]"))
        self.delay = int(meta.get("streaming_delay_frames", 0) or 0)  # frames the outputs lag the offline ones
        state_inputs = {p["input"] for p in self.state_pairs}
        names = [v.name for v in model.graph.inputs if v.name not in model.graph.initializers]
        all_names = names
        names = [n for n in names if n not in state_inputs]
        self.input_names = names
        shapes = {}
        for v in model.graph.inputs:
            if v.name in all_names:
                if v.shape is None or not all(isinstance(d, int) for d in v.shape):
                    raise ShapeError(f"input {v.name!r} has no fixed shape {v.shape}; cannot stream it")
                shapes[v.name] = tuple(v.shape)
        self.shapes = shapes
        self.program = None
        self.why_not_compiled = "disabled"
        if compiled:
            from .program import compile_plan

            # the model's plan is only read (shapes, constants); the program owns the session's state
            self.program, self.why_not_compiled = compile_plan(
                model.plan(shapes), carry=[(p["output"], p["input"]) for p in self.state_pairs])
        if self.program is not None:
            self.plan = self.program.plan  # what the program was lowered from; never run by the session
        else:
            from .engine import Plan

            self.plan = Plan(model.graph, model.target, shapes)  # this session's own kernels and caches
        self.pushed = 0
        self.state = {}
        self._zero_state()
        # A single integer input given as an array of exactly its dtype and shape needs no other check
        # (its values are in range by construction): push() skips prepare_inputs for it.
        self._exact = None
        if len(names) == 1:
            v = next(v for v in model.graph.inputs if v.name == names[0])
            if v.dtype in ("int8", "int16") and not self.state_pairs:
                self._exact = (names[0], np.dtype(v.dtype), shapes[names[0]])

    def _zero_state(self) -> None:
        dtypes = {v.name: v.dtype for v in self.model.graph.inputs}
        self.state = {p["input"]: np.zeros(self.shapes[p["input"]], dtype=dtypes[p["input"]])
                      for p in self.state_pairs}

    def _feeds(self, chunk) -> dict[str, np.ndarray]:
        exact = self._exact
        if exact is not None and type(chunk) is np.ndarray and chunk.dtype == exact[1] and chunk.shape == exact[2]:
            return {exact[0]: chunk}
        if not isinstance(chunk, dict):
            if len(self.input_names) != 1:
                raise ShapeError(f"the model has inputs {self.input_names}: pass a dict")
            chunk = {self.input_names[0]: chunk}
        if self.state_pairs:  # carried state, unless the caller gives it (e.g. an initial state)
            chunk = {**self.state, **chunk}
        return self.model.prepare_inputs(chunk)

    def _carry(self, outs: dict[str, np.ndarray]) -> None:
        for p in self.state_pairs:
            self.state[p["input"]] = np.array(outs[p["output"]]).reshape(self.shapes[p["input"]])

    def push(self, chunk, *, intermediates: bool = False) -> dict[str, np.ndarray]:
        """One chunk. ``intermediates=True`` (per-node path) also returns every intermediate value."""
        if self.program is not None and not intermediates:
            outs = self.program.push(chunk)  # one compiled call for an exact-dtype or float chunk, else None
            if outs is not None:  # (the program carried the recurrent state itself)
                self.pushed += 1
                if self.state_pairs:
                    self._carry(outs)
                return outs
        feeds = self._feeds(chunk)
        self.pushed += 1
        if self.program is not None and not intermediates:
            outs = self.program.run(feeds)
        elif self.program is not None:
            raise UnsupportedError("intermediates are not kept by a compiled session: "
                                   "use Session(model, compiled=False)")
        else:
            outs = self.plan.run(feeds, keep=intermediates)  # copies: the caller owns them
        if self.state_pairs:
            self._carry(outs)
        return outs

    def push_many(self, chunks) -> dict[str, np.ndarray]:
        """A sequence of chunks: a list of chunks, an array ``[N, *chunk shape]`` (single-input models) or
        ``{name: [N, *chunk shape]}``. Validated once, then run in one compiled call when the model compiles.
        Outputs are stacked on a new leading axis."""
        if self.state_pairs:  # each chunk's state comes from the previous one
            if isinstance(chunks, np.ndarray):
                chunks = list(chunks)
            elif isinstance(chunks, dict):
                n = len(next(iter(chunks.values())))
                chunks = [{k: v[i] for k, v in chunks.items()} for i in range(n)]
            outs: dict[str, list[np.ndarray]] = {}
            for c in chunks:
                for k, v in self.push(c).items():
                    outs.setdefault(k, []).append(v)
            return {k: np.stack(v) for k, v in outs.items()}
        if isinstance(chunks, np.ndarray):
            if len(self.input_names) != 1:
                raise ShapeError(f"the model has inputs {self.input_names}: pass {{name: [N, *chunk shape]}}")
            chunks = {self.input_names[0]: chunks}
        if not isinstance(chunks, dict):
            chunks = list(chunks)
            if not chunks:
                return {}
            if not isinstance(chunks[0], dict):
                chunks = [{self.input_names[0]: c} for c in chunks]
            chunks = {k: np.stack([c[k] for c in chunks]) for k in chunks[0]}
        feeds = self.model.prepare_inputs(chunks, batch=True)
        n = next(iter(feeds.values())).shape[0]
        if self.program is None:
            outs: dict[str, list[np.ndarray]] = {}
            for i in range(n):
                out = self.plan.run({k: v[i] for k, v in feeds.items()})
                for k, v in out.items():
                    outs.setdefault(k, []).append(v)
            self.pushed += n
            return {k: np.stack(v) for k, v in outs.items()}
        out = self.program.run_batch(feeds)
        self.pushed += n
        return out

    def reset(self) -> None:
        """Zero this session's caches (no other session's, and not those of ``Model.run``)."""
        if self.program is not None:
            self.program.reset()
        else:
            self.plan.reset()
        self.pushed = 0
        self._zero_state()

    @property
    def not_compiled(self) -> list:
        """``[(node, reason)]`` of the nodes that run on the per-node path (every node when the session has no
        compiled program)."""
        if self.program is not None:
            return list(self.program.not_compiled)
        return [(n, self.why_not_compiled) for n in self.model.graph.nodes]

    @property
    def state_bytes(self) -> int:
        return self.plan.state_bytes
