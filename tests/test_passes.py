"""The pass framework: named passes, requires/ensures, the failing pass named."""

from __future__ import annotations

import pytest

from chunkwise.ir.build import GraphBuilder
from chunkwise.ir.passes import FunctionPass, GraphCheckError, Pass, PassResult, Sequential, run_passes


def _graph():
    b = GraphBuilder(seed=1)
    x = b.input((1, 8, 4))
    y = b.conv(x, 4, k=3)
    b.output(y)
    return b.g


class _DropFirstNode(Pass):
    name = "drop_first_node"

    def apply(self, graph):
        graph.nodes.pop(0)
        return PassResult(graph, True, "dropped one node")


def test_sequential_logs_each_pass_and_its_reason():
    log: list[str] = []
    g = Sequential([FunctionPass("nothing", lambda g: PassResult(g, False, "nothing to do"))])(_graph(), log)
    assert log == ["nothing: no change (nothing to do)"] and g.nodes


def test_checker_names_the_pass_that_broke_the_graph():
    with pytest.raises(GraphCheckError, match="after pass drop_first_node: graph output"):
        Sequential([_DropFirstNode()])(_graph())


def test_requires_and_ensures_are_checked():
    needs_two = FunctionPass("p", lambda g: PassResult(g, False), requires=[
        lambda g: None if len(g.nodes) >= 2 else f"needs 2 nodes, has {len(g.nodes)}"])
    with pytest.raises(GraphCheckError, match="pass p cannot run: needs 2 nodes, has 1"):
        needs_two(_graph())
    promise = FunctionPass("q", lambda g: PassResult(g, False), ensures=[lambda g: "broken promise"])
    with pytest.raises(GraphCheckError, match="after pass q: broken promise"):
        promise(_graph())


def test_run_passes_takes_named_functions():
    log: list[str] = []
    run_passes(_graph(), [("a", lambda g: PassResult(g, True, "did a"))], log)
    assert log == ["a: modified (did a)"]
