"""Streaming sessions: push chunks through a model whose StreamingCache nodes keep state."""

from __future__ import annotations

from typing import Iterable

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

    def _feeds(self, chunk) -> dict[str, np.ndarray]:
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
        out = self.plan.run(feeds, keep=intermediates)
        return {k: v.copy() for k, v in out.items()}

    def push_many(self, chunks: Iterable) -> dict[str, np.ndarray]:
        """A sequence of chunks; with a compiled program, in one compiled call. Outputs stacked on axis 0."""
        chunks = list(chunks)
        if self.program is None or not chunks:
            outs: dict[str, list[np.ndarray]] = {}
            for c in chunks:
                for k, v in self.push(c).items():
                    outs.setdefault(k, []).append(v)
            return {k: np.stack(v) for k, v in outs.items()}
        feeds = [self._feeds(c) for c in chunks]
        xs = np.stack([np.concatenate([f[n].reshape(-1) for n in self.program.inputs]) for f in feeds])
        ys = self.program.run_many(xs.astype(np.int32))
        self.pushed += len(chunks)
        out, p = {}, 0
        for name, n, shape, dt in zip(self.program.outputs, self.program.out_sizes, self.program.out_shapes,
                                      self.program.out_dtypes):
            out[name] = ys[:, p:p + n].astype(dt).reshape((len(chunks),) + tuple(shape))
            p += n
        return out

    def reset(self) -> None:
        self.plan.reset()
        if self.program is not None:
            self.program.reset()
        self.pushed = 0

    @property
    def state_bytes(self) -> int:
        return self.plan.state_bytes
