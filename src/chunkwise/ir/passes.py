"""Graph passes: named objects with what they require and what they ensure, run in sequence.

Modelled on onnx-ir's ``PassBase`` / ``Sequential``: a pass returns ``PassResult(graph, modified,
reason)`` (``reason`` says why it did nothing, or summarises what it did); the runner checks the
pass's preconditions before it runs and, after it, the graph checker plus the pass's own invariants,
and names the failing pass in the error. Rules every pass follows: it works on the graph it is given
(callers copy first), never renames a graph input or output, never changes an initializer that
another node still reads (it adds a new one instead), and keeps node order topological.

The streaming converter (:mod:`chunkwise.convert`) and the quantizer (:mod:`chunkwise.quant`) both
run their steps through :class:`Sequential`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Generic, TypeVar

from ..errors import ChunkwiseError
from .graph import Graph

G = TypeVar("G")


@dataclass
class PassResult(Generic[G]):
    graph: G
    modified: bool
    reason: str = ""  # why the pass did nothing (or a summary of what it did)
    notes: list[str] = field(default_factory=list)


class GraphCheckError(ChunkwiseError):
    """A pass produced an inconsistent graph, or ran on a graph it does not accept (a bug in a pass)."""


def check_graph(graph: Graph) -> None:
    """Every node input is produced earlier; names are unique; outputs exist."""
    known = set(graph.initializers) | {v.name for v in graph.inputs}
    produced: set[str] = set()
    names: set[str] = set()
    for n in graph.nodes:
        if n.name in names:
            raise GraphCheckError(f"duplicate node name {n.name!r}")
        names.add(n.name)
        for i in n.inputs:
            if i and i not in known:
                raise GraphCheckError(f"node {n.name!r} reads {i!r} before it is produced")
        for o in n.outputs:
            if o in produced or o in graph.initializers:
                raise GraphCheckError(f"value {o!r} is produced twice")
            produced.add(o)
            known.add(o)
    for v in graph.outputs:
        if v.name not in known:
            raise GraphCheckError(f"graph output {v.name!r} is produced by no node")


Condition = Callable[[object], "str | None"]  # returns None when it holds, else what is wrong


class Pass:
    """A named graph transformation. Subclasses set ``name`` and implement :meth:`apply`; ``requires``
    and ``ensures`` are conditions (graph -> None or a message) checked before and after it runs."""

    name: str = ""
    requires: tuple[Condition, ...] = ()
    ensures: tuple[Condition, ...] = ()

    def apply(self, graph):  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, graph, check: Callable[[object], None] = check_graph) -> PassResult:
        for cond in self.requires:
            msg = cond(graph)
            if msg:
                raise GraphCheckError(f"pass {self.name} cannot run: {msg}")
        res = self.apply(graph)
        try:
            check(res.graph)
        except GraphCheckError as e:
            raise GraphCheckError(f"after pass {self.name}: {e}") from None
        for cond in self.ensures:
            msg = cond(res.graph)
            if msg:
                raise GraphCheckError(f"after pass {self.name}: {msg}")
        return res


class FunctionPass(Pass):
    """A pass made of a function ``graph -> PassResult`` and a name."""

    def __init__(self, name: str, fn: Callable[[object], PassResult], *, requires=(), ensures=()):
        self.name = name
        self.fn = fn
        self.requires = tuple(requires)
        self.ensures = tuple(ensures)

    def apply(self, graph):
        return self.fn(graph)


class Sequential:
    """Run passes in order; ``log`` collects one line per pass (what it did, or why not)."""

    def __init__(self, passes: list[Pass], check: Callable[[object], None] = check_graph):
        self.passes = list(passes)
        self.check = check

    def __call__(self, graph, log: list[str] | None = None):
        for p in self.passes:
            res = p(graph, self.check)
            if log is not None:
                log.append(f"{p.name}: {'modified' if res.modified else 'no change'}"
                           + (f" ({res.reason})" if res.reason else ""))
            graph = res.graph
        return graph


def run_passes(graph: Graph, passes: list[tuple[str, Callable[[Graph], PassResult]]],
               log: list[str] | None = None) -> Graph:
    """Run ``(name, function)`` passes in order with the IR graph checker after each one."""
    return Sequential([FunctionPass(name, fn) for name, fn in passes])(graph, log)


def fresh_name(graph: Graph, base: str) -> str:
    """A value/node name not used anywhere in the graph."""
    used = set(graph.initializers) | {v.name for v in graph.inputs} | set(graph.value_info)
    used |= {n.name for n in graph.nodes} | {o for n in graph.nodes for o in n.outputs}
    if base not in used:
        return base
    i = 1
    while f"{base}_{i}" in used:
        i += 1
    return f"{base}_{i}"
