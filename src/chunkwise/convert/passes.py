"""Graph passes: each is named, returns ``PassResult(graph, modified, reason)``, and the checker runs after it.

Rules every pass follows: it works on the graph it is given (callers copy first), never renames a
graph input or output, never changes an initializer that another node still reads (it adds a new one
instead), and keeps node order topological.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..errors import ChunkwiseError
from ..ir.graph import Graph


@dataclass
class PassResult:
    graph: Graph
    modified: bool
    reason: str = ""  # why the pass did nothing (or a summary of what it did)
    notes: list[str] = field(default_factory=list)


class GraphCheckError(ChunkwiseError):
    """A pass produced an inconsistent graph (a bug in the pass)."""


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


def run_passes(graph: Graph, passes: list[tuple[str, Callable[[Graph], PassResult]]],
               log: list[str] | None = None) -> Graph:
    """Run named passes in order, checking the graph after each one."""
    for name, fn in passes:
        res = fn(graph)
        try:
            check_graph(res.graph)
        except GraphCheckError as e:
            raise GraphCheckError(f"after pass {name}: {e}") from None
        if log is not None:
            log.append(f"{name}: {'modified' if res.modified else 'no change'}"
                       + (f" ({res.reason})" if res.reason else ""))
        graph = res.graph
    return graph


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
