"""The CI fuzzing campaign (seeded, deterministic) and checks that the fuzzer can see failures.

The campaign mutates the repository's fixtures (plus ``../shared/zoo`` models up to 64 KiB when
present, an AES-encrypted copy, a PDL3 package and generated causal networks, offline and streaming)
2,000 times, runs every input through the reader in this process and every readable one
(plus every 10th unreadable one) through ``chunkwise emu test`` / ``emu run`` in two worker processes,
and requires zero crashes and zero hangs. The long campaign is ``python -m devtools.fuzz -n 50000 --seed 1``
(from the repository root; :mod:`devtools.fuzz` is development code, not part of the installed package).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from devtools import fuzz
from chunkwise.cli import app
from chunkwise.emu import registry

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
SHARED = Path(__file__).resolve().parents[1].parent / "shared"
GEMM = FIXTURES / "gemm_esp32p4_1_16_kshap_16_16_relu_s8.espdl"
CI_INPUTS = 2000
CI_SEED = 20261122


def test_ci_campaign(tmp_path):
    files = fuzz.default_seed_files(FIXTURES, SHARED, max_bytes=64 * 1024)
    assert len(files) >= 50
    t0 = time.monotonic()
    report = fuzz.run_campaign(files, CI_INPUTS, CI_SEED, ("read", "run"), out_dir=tmp_path, timeout=20.0)
    took = time.monotonic() - t0
    print("\n" + report.render() + f"\n(wall time {took:.1f} s)")
    assert report.n == CI_INPUTS
    assert sum(report.counts["read"].values()) == CI_INPUTS
    # the campaign must reach the emulator, not stop at the reader
    assert report.counts["run"]["ok"] >= 200, report.counts
    assert report.counts["run"]["error"] >= 200, report.counts
    assert report.counts["read"]["error"] >= 300, report.counts
    assert report.ok, report.render()
    assert json.loads((tmp_path / "report.json").read_text())["passed"]


def test_generation_is_deterministic():
    seeds = fuzz.build_seeds(sorted((FIXTURES / "golden" / "esp32p4_s8" / "Conv").glob("*.espdl"))[:2] + [GEMM])
    a = list(fuzz.generate(seeds, 60, 5))
    b = list(fuzz.generate(seeds, 60, 5))
    c = list(fuzz.generate(seeds, 60, 6))
    assert [(x.desc, x.data, x.key) for x in a] == [(x.desc, x.data, x.key) for x in b]
    assert [x.data for x in a] != [x.data for x in c]
    kinds = {x.desc.split(":")[0] for x in a}
    assert kinds == {"bytes", "ir"}
    assert any(x.key is not None for x in fuzz.generate(seeds, 300, 5))  # encrypted inputs are made too


# ---- the harness sees crashes, segfaults and hangs -------------------------------------------
def _one_seed():
    return fuzz.build_seeds([GEMM], derived=False)


def _patch_gemm(monkeypatch, behaviour):
    registry._load_all()  # the kernels register on first use
    real = registry.KERNELS["Gemm"]

    def prepare(node, ctx, ins, outs):
        behaviour()
        return real(node, ctx, ins, outs)

    monkeypatch.setitem(registry.KERNELS, "Gemm", prepare)


def _campaign(tmp_path, **kw):
    return fuzz.run_campaign(_one_seed(), 6, 1, ("read", "run"), out_dir=tmp_path, warm=False,
                             run_every_rejected=1, **kw)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="workers inherit the patched kernel through fork")
def test_harness_records_python_crashes(tmp_path, monkeypatch):
    def boom():
        raise IndexError("injected")

    _patch_gemm(monkeypatch, boom)
    report = _campaign(tmp_path)
    assert report.crashes >= 1 and not report.ok
    f = next(f for f in report.failures if f["kind"] == "crash")
    assert "IndexError: injected" in f["message"]
    saved = Path(f["file"])
    assert saved.is_file() and "Traceback" in saved.with_suffix(".txt").read_text()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="workers inherit the patched kernel through fork")
def test_harness_survives_segfaults(tmp_path, monkeypatch):
    _patch_gemm(monkeypatch, lambda: os.kill(os.getpid(), signal.SIGSEGV))
    report = _campaign(tmp_path)
    assert report.crashes >= 1
    assert any("worker died (signal 11)" in f["message"] for f in report.failures)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="workers inherit the patched kernel through fork")
def test_harness_records_hangs(tmp_path, monkeypatch):
    _patch_gemm(monkeypatch, lambda: time.sleep(60))
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    t0 = time.monotonic()
    report = _campaign(tmp_path, timeout=1.0)
    assert report.hangs >= 1 and not report.ok
    assert time.monotonic() - t0 < 50
    # killed workers leave no scratch folders behind (the parent owns and removes them)
    assert not list(scratch.glob("chunkwise-fuzz-*"))


def test_read_target_time_limit():
    seed = _one_seed()[0]
    case = fuzz.Case(0, "gemm", "seed", seed.data)
    assert fuzz.run_read(case, timeout=5).kind == "ok"
    import chunkwise.espdl.reader as R

    real = R.read_flatbuffer

    def slow(*a, **k):
        time.sleep(5)
        return real(*a, **k)

    R.read_flatbuffer = slow
    try:
        assert fuzz.run_read(case, timeout=0.2).kind == "hang"
    finally:
        R.read_flatbuffer = real


def test_fuzz_tool(tmp_path, capsys):
    """``python -m devtools.fuzz``: the campaign from the command line of a source checkout."""
    code = fuzz.main([str(GEMM), "-n", "30", "--seed", "3", "--out", str(tmp_path), "--json"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["inputs"] == 30 and doc["passed"] and doc["crashes"] == 0 and doc["hangs"] == 0
    assert sum(doc["counts"]["read"].values()) == 30
    assert json.loads((tmp_path / "report.json").read_text()) == doc
    assert fuzz.main([str(tmp_path / "missing.espdl"), "-n", "3"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_fuzz_tool_runs_as_a_module():
    r = subprocess.run([sys.executable, "-m", "devtools.fuzz", "--help"], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "--targets" in r.stdout, r.stderr


def test_product_package_does_not_import_dev_code():
    """The installed package holds no test/QA code and never imports devtools (absent from a wheel)."""
    src = REPO / "src" / "chunkwise"
    for name in ("fuzz.py", "espdl/float_onnx.py", "quant/compare.py", "cli/fuzz_cmd.py"):
        assert not (src / name).exists(), name
    users = [p.relative_to(REPO) for p in src.rglob("*.py") if "devtools" in p.read_text(encoding="utf-8")]
    assert not users
    r = CliRunner().invoke(app, ["fuzz", str(GEMM)])
    assert r.exit_code == 2 and "No such command" in r.output
