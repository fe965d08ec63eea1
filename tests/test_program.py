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


def _tcn_streaming():
    path = SHARED / "zoo" / "tutorial_tcn_esp32p4_streaming_model.espdl"
    if not path.exists():
        pytest.skip(f"{path} is absent")
    return chunkwise.load(path)


@pytest.mark.parametrize("target", ["esp32p4", "esp32s3", "c"])
def test_push_forms_equal_the_validated_path(target):
    """The fast push path (one compiled call: a bare array or ``{name: array}`` of the exact dtype, or float32 /
    float64 chunks quantized in compiled code with the target's rounding, ties included) gives what the
    validated path (``Model.prepare_inputs`` + the per-node plan) gives; NaN chunks and non-contiguous arrays
    take the general path."""
    from chunkwise.emu.session import Session

    m = _tcn_streaming()
    m = chunkwise.Model(m.graph, target=target)
    name = m.graph.inputs[0].name
    e = m.graph.inputs[0].exponents[0]
    fast, ref = Session(m), Session(m, compiled=False)
    assert fast.program is not None and fast.program.push(np.zeros((1, 3, 16), np.int8)) is not None
    fast.reset()
    rng = np.random.default_rng(3)
    for i in range(24):
        q = rng.integers(-128, 128, size=(1, 3, 16))
        halves = (q + rng.choice([-0.5, 0.5, 0.25, 0.0], size=q.shape)) * 2.0 ** e  # ties of both rules
        chunk = [q.astype(np.int8), {name: q.astype(np.int8)}, {name: halves.astype(np.float32)},
                 halves.astype(np.float64), {name: np.asfortranarray(np.repeat(q, 2, axis=0)[:1].astype(np.int8))},
                 {name: (halves * 1e3).astype(np.float32)}][i % 6]
        got, want = fast.push(chunk), ref.push(chunk)
        assert got.keys() == want.keys()
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])
            assert got[k].dtype == want[k].dtype
    bad = np.full((1, 3, 16), np.nan, dtype=np.float32)
    assert fast.program.push(bad) is None  # NaN: the validated path decides
