"""The shared golden corpus (``../shared/golden``: ESP-PPQ's per-operator models with test values) as
pytest parameters, for the ``test_ops_*`` modules. Absent corpus: no parameters (the tests are skipped)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
GOLDEN = SHARED / "golden"
SUITES = ("esp32p4_s8", "esp32p4_s16")


def golden_files(ops) -> list[Path]:
    """Every golden model of these operator folders, suite by suite."""
    if not GOLDEN.is_dir():
        return []
    return [f for suite in SUITES for op in ops for f in sorted((GOLDEN / suite / op).glob("*.espdl"))]


def golden_id(path: Path) -> str:
    return f"{path.parent.parent.name}/{path.parent.name}/{path.stem}"


def golden_params(ops, xfail: dict[str, str] | None = None) -> list:
    """``pytest.param`` per golden model; files named in ``xfail`` (file name -> reason) are strict xfails."""
    out = []
    for p in golden_files(ops):
        marks = [pytest.mark.xfail(strict=True, reason=xfail[p.name])] if xfail and p.name in xfail else []
        out.append(pytest.param(p, marks=marks, id=golden_id(p)))
    return out


def load_quiet(path: Path):
    """``chunkwise.load`` without the target-guess warning (the corpus is esp32p4 by its folder names)."""
    import chunkwise

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return chunkwise.load(path)
