"""Streaming sessions: push chunks through a model whose StreamingCache nodes keep state."""

from __future__ import annotations

import numpy as np

from ..errors import ShapeError


class Session:
    """Chunk-by-chunk execution of a (streaming) model from a zero state.

    ``push(chunk)`` runs one chunk (an array for single-input models, or ``{name: array}``) and returns
    ``{output_name: array}``; ``reset()`` zeroes every cache; ``push_many(chunks)`` runs a sequence and
    returns each output stacked along a new leading axis.
    """

    def __init__(self, model, compiled: bool = True):
        self.model = model
        names = [v.name for v in model.graph.inputs if v.name not in model.graph.initializers]
        self.input_names = names
        shapes = {}
        for v in model.graph.inputs:
            if v.name in names:
                if v.shape is None or not all(isinstance(d, int) for d in v.shape):
                    raise ShapeError(f"input {v.name!r} has no fixed shape {v.shape}; cannot stream it")
                shapes[v.name] = tuple(v.shape)
        self.shapes = shapes
        self.plan = model.plan(shapes)
        self.plan.reset()
        self.program = None
        self.why_not_compiled = "disabled"
        if compiled:
            from .program import compile_plan

            self.program, self.why_not_compiled = compile_plan(self.plan)
            if self.program is not None:
                self.program.reset()
        self.pushed = 0
        # A single integer input given as an array of exactly its dtype and shape needs no other check
        # (its values are in range by construction): push() skips prepare_inputs for it.
        self._exact = None
        if len(names) == 1:
            v = next(v for v in model.graph.inputs if v.name == names[0])
            if v.dtype in ("int8", "int16"):
                self._exact = (names[0], np.dtype(v.dtype), shapes[names[0]])

    def _feeds(self, chunk) -> dict[str, np.ndarray]:
        exact = self._exact
        if exact is not None and type(chunk) is np.ndarray and chunk.dtype == exact[1] and chunk.shape == exact[2]:
            return {exact[0]: chunk}
        if not isinstance(chunk, dict):
            if len(self.input_names) != 1:
                raise ShapeError(f"the model has inputs {self.input_names}: pass a dict")
            chunk = {self.input_names[0]: chunk}
        return self.model.prepare_inputs(chunk)

    def push(self, chunk, *, intermediates: bool = False) -> dict[str, np.ndarray]:
        """One chunk. ``intermediates=True`` (per-node path) also returns every intermediate value."""
        feeds = self._feeds(chunk)
        self.pushed += 1
        if self.program is not None and not intermediates:
            return self.program.run(feeds)
        if self.program is not None:
            raise ValueError("intermediates need Session(model, compiled=False)")
        return self.plan.run(feeds, keep=intermediates)  # copies: the caller owns them

    def push_many(self, chunks) -> dict[str, np.ndarray]:
        """A sequence of chunks: a list of chunks, an array ``[N, *chunk shape]`` (single-input models) or
        ``{name: [N, *chunk shape]}``. Validated once, then run in one compiled call when the model compiles.
        Outputs are stacked on a new leading axis."""
        if isinstance(chunks, np.ndarray):
            chunks = {self.input_names[0]: chunks} if len(self.input_names) == 1 else chunks
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
        xs = np.concatenate([feeds[name].reshape(n, -1).astype(np.int32) for name in self.program.inputs], axis=1)
        ys = self.program.run_many(xs)
        self.pushed += n
        out, p = {}, 0
        for name, size, shape, dt in zip(self.program.outputs, self.program.out_sizes, self.program.out_shapes,
                                         self.program.out_dtypes):
            out[name] = ys[:, p:p + size].astype(dt).reshape((n,) + tuple(shape))
            p += size
        return out

    def reset(self) -> None:
        self.plan.reset()
        if self.program is not None:
            self.program.reset()
        self.pushed = 0

    @property
    def state_bytes(self) -> int:
        return self.plan.state_bytes
