"""Generate per-operator golden .espdl models with ESP-PPQ (the reference) and copy a compact subset
into ``tests/fixtures/golden``.

The golden models come from ESP-DL's own operator test generator
(``tools/ops_test/gen_test_cases.py`` with ``config/op_cfg.toml`` in an esp-dl checkout). This script
only *drives* that generator, one operator per process (as ESP-DL's CI does), and then picks the
smallest cases of each operator as committed fixtures. Every generated model embeds a test input and
the expected outputs (``export_test_values=True``), i.e. what ``model->test()`` checks on a chip.

ESP-PPQ and torch are NOT dependencies of chunkwise: they live in a separate dev venv.

Reproduce exactly (versions used for the committed fixtures)::

    python3.11 -m venv /work/ppqvenv
    /work/ppqvenv/bin/pip install torch==2.13.0          # CPU wheel (+cpu); install torch FIRST
    /work/ppqvenv/bin/pip install esp-ppq==1.3.12 onnx onnxruntime numpy
    /work/ppqvenv/bin/pip install -e .                    # chunkwise, only for --check
    # esp-ppq 1.3.12 pulled: onnx 1.19.1, onnxruntime 1.31.1, onnxsim 0.7.3, onnxscript 0.7.2, numpy 2.4.6

    /work/ppqvenv/bin/python tools/make_golden.py --esp-dl /path/to/esp-dl \\
        --targets esp32s3,c --bits 8,16 --out /work/golden-out \\
        --fixtures tests/fixtures/golden --jobs 2

For the committed int16 suites most operators used ``--max-cases 3`` (int16 export is slow):
``... --targets esp32s3,c --bits 16 --max-cases 3 --skip-existing``. The esp32p4 fixtures were
picked with ``--no-generate --out ../shared/golden --targets esp32p4`` from ESP-DL's esp32p4 set
(same generator, ESP-PPQ 1.3.12); ``--targets esp32p4`` regenerates them.

``--esp-dl`` is the root of an esp-dl checkout (the folder holding ``tools/ops_test``). Output:
``OUT/<target>_s<bits>/<Op>/<case>_s<bits>.espdl`` (+ ESP-PPQ's .info/.json/.onnx), logs in
``OUT/logs/``, a summary in ``OUT/summary.json``. ESP-DL's generator seeds torch with 42 at import,
so one op per process gives a reproducible random stream per operator.

Only the fixture step (no ESP-PPQ needed, any Python >= 3.11)::

    python tools/make_golden.py --no-generate --out /work/golden-out --fixtures tests/fixtures/golden

Then check with the emulator: ``python tools/golden_report.py tests/fixtures/golden``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

DEFAULT_TARGETS = "esp32s3,c"
DEFAULT_BITS = "8,16"
MAX_FIXTURE_BYTES = 4 * 1024 * 1024


def ops_test_dir(esp_dl: Path) -> Path:
    for cand in (esp_dl / "tools" / "ops_test", esp_dl / "esp-dl" / "tools" / "ops_test", esp_dl):
        if (cand / "gen_test_cases.py").is_file() and (cand / "config" / "op_cfg.toml").is_file():
            return cand
    raise SystemExit(f"no tools/ops_test/gen_test_cases.py under {esp_dl}")


def config_ops(ops_dir: Path) -> dict:
    with open(ops_dir / "config" / "op_cfg.toml", "rb") as f:
        return tomllib.load(f)["ops_test"]


def case_size(case: dict) -> int:
    shapes = case.get("input_shape", [])
    if shapes and not isinstance(shapes[0], list):
        shapes = [shapes]
    return sum(int(math.prod(sh)) for sh in shapes)


def subset_config(ops_dir: Path, out: Path, suite: str, op: str, max_cases: int) -> tuple[str, list | None]:
    """With --max-cases K, a copy of op_cfg.toml (data only) holding K of this operator's cases,
    spread by input size over its smaller half, written to OUT/cfg/.
    Returns (config path, case names or None)."""
    if max_cases <= 0:
        return "config/op_cfg.toml", None
    import toml  # ships with esp-ppq

    with open(ops_dir / "config" / "op_cfg.toml") as f:
        full = toml.load(f)
    entry = full["ops_test"][op]
    if len(entry["cfg"]) <= max_cases:
        return "config/op_cfg.toml", None
    # spread over the smaller half by input size: ranks 0 .. n/2 evenly (tiny and mid-size cases)
    order = sorted(range(len(entry["cfg"])), key=lambda i: (case_size(entry["cfg"][i]), i))
    half = (len(order) - 1) // 2
    ranks = sorted({round(j * half / max(1, max_cases - 1)) for j in range(max_cases)})
    keep = [order[r] for r in ranks]
    cases = [entry["cfg"][i] for i in sorted(keep)]
    one = {"meta": full["meta"], "ops_test": {op: {**{k: v for k, v in entry.items() if k != "cfg"},
                                                   "cfg": cases}}}
    (out / "cfg").mkdir(parents=True, exist_ok=True)
    path = out / "cfg" / f"{suite}_{op}_smallest{max_cases}.toml"
    path.write_text(toml.dumps(one))
    return str(path), [c["export_name_prefix"] for c in cases]


def run_one(python: str, ops_dir: Path, out: Path, target: str, bits: int, op: str, timeout: float,
            skip_existing: bool, split: bool = True, max_cases: int = 0) -> dict:
    suite = f"{target}_s{bits}"
    dest = out / suite
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{suite}_{op}.log"
    existing = sorted((dest / op).glob("*.espdl")) if (dest / op).is_dir() else []
    if skip_existing and ((existing and (logs / f"{suite}_{op}.ok").exists())
                          or (logs / f"{suite}_{op}.done").exists()):
        return {"suite": suite, "op": op, "rc": 0, "files": len(existing), "seconds": 0.0, "skipped": True}
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cfg_path, names = subset_config(ops_dir, out, suite, op, max_cases)
    cmd = [python, "gen_test_cases.py", "-c", cfg_path, "-o", str(dest),
           "-t", target, "-b", str(bits), "--ops", op]
    t0 = time.time()
    with open(log, "w") as fh:
        fh.write(" ".join(cmd) + "\n")
        fh.flush()
        try:
            rc = subprocess.run(cmd, cwd=ops_dir, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    files = sorted((dest / op).glob("*.espdl")) if (dest / op).is_dir() else []
    if rc == 0:
        (logs / f"{suite}_{op}.ok").write_text("")
    res = {"suite": suite, "op": op, "rc": rc, "files": len(files), "seconds": round(time.time() - t0, 1)}
    if names is not None:
        res["subset"] = names
    if rc != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        res["error"] = " | ".join(tail)[-400:]
    print(f"[{suite}] {op}: rc={rc} files={len(files)} {res['seconds']}s", flush=True)
    # a native crash (negative rc: a signal) kills the remaining cases; a Python error is per case
    # deterministic, the same at every try
    if rc != 0 and rc != "timeout" and rc < 0 and split:
        res.update(retry_cases(python, ops_dir, out, target, bits, op, timeout, names))
    (logs / f"{suite}_{op}.done").write_text(json.dumps(res))
    return res


def retry_cases(python: str, ops_dir: Path, out: Path, target: str, bits: int, op: str, timeout: float,
                names: list | None = None) -> dict:
    """After a crashed operator run (ESP-PPQ 1.3.12 aborts natively on some MatMul cases), run each
    missing case alone: a one-case copy of op_cfg.toml (data only) is written to OUT/cfg/."""
    import toml  # ships with esp-ppq

    with open(ops_dir / "config" / "op_cfg.toml") as f:
        full = toml.load(f)
    suite = f"{target}_s{bits}"
    entry = full["ops_test"][op]
    cfg_dir = out / "cfg"
    cfg_dir.mkdir(parents=True, exist_ok=True)
    failed = []
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for case in entry["cfg"]:
        name = case["export_name_prefix"]
        if names is not None and name not in names:
            continue
        if (out / suite / op / f"{name}_s{bits}.espdl").exists():
            continue
        one = {"meta": full["meta"], "ops_test": {op: {**{k: v for k, v in entry.items() if k != "cfg"},
                                                       "cfg": [case]}}}
        cfg_file = cfg_dir / f"{suite}_{op}_{name}.toml"
        cfg_file.write_text(toml.dumps(one))
        cmd = [python, "gen_test_cases.py", "-c", str(cfg_file), "-o", str(out / suite),
               "-t", target, "-b", str(bits), "--ops", op]
        with open(out / "logs" / f"{suite}_{op}_{name}.log", "w") as fh:
            try:
                rc = subprocess.run(cmd, cwd=ops_dir, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                    timeout=timeout).returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
        if rc != 0 or not (out / suite / op / f"{name}_s{bits}.espdl").exists():
            failed.append(f"{name} (rc={rc})")
    files = len(list((out / suite / op).glob("*.espdl"))) if (out / suite / op).is_dir() else 0
    print(f"[{suite}] {op}: retried case by case: {files} files, {len(failed)} cases failed", flush=True)
    return {"files": files, "failed_cases": failed}


def generate(args, ops_dir: Path, out: Path) -> list[dict]:
    cfg = config_ops(ops_dir)
    ops = [o for o in args.ops.split(",") if o] if args.ops else list(cfg)
    if args.reverse:
        ops = ops[::-1]
    unknown = [o for o in ops if o not in cfg]
    if unknown:
        raise SystemExit(f"ops not in op_cfg.toml: {unknown}")
    jobs = []
    for bits in (int(b) for b in args.bits.split(",")):  # all int8 suites first
        for target in args.targets.split(","):
            for op in ops:
                if f"int{bits}" not in cfg[op].get("quant_bits", []):
                    continue
                jobs.append((target, bits, op))
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as ex:
        results = list(ex.map(lambda j: run_one(args.python, ops_dir, out, *j, args.timeout,
                                                args.skip_existing, not args.no_split, args.max_cases), jobs))
    summary = out / "summary.json"
    old = json.loads(summary.read_text()) if summary.exists() else []
    keep = {(r["suite"], r["op"]): r for r in old}
    keep.update({(r["suite"], r["op"]): r for r in results})
    summary.write_text(json.dumps(sorted(keep.values(), key=lambda r: (r["suite"], r["op"])), indent=1))
    return results


def pick_fixtures(out: Path, fixtures: Path, suites: list[str], per_op: int, op_budget: int,
                  max_file: int) -> None:
    """Copy, per suite and op, the smallest case (if <= max_file bytes), then up to per_op - 1 more:
    the largest ones that keep the op's total within op_budget bytes (a tiny case and a more
    substantial one). Only the .espdl is copied."""
    for suite in suites:
        src = out / suite
        if not src.is_dir():
            print(f"no {src}, skipped")
            continue
        dst_suite = fixtures / suite
        if dst_suite.exists():
            shutil.rmtree(dst_suite)
        for op_dir in sorted(p for p in src.iterdir() if p.is_dir()):
            cands = sorted(op_dir.glob("*.espdl"), key=lambda p: (p.stat().st_size, p.name))
            if not cands or cands[0].stat().st_size > max_file:
                continue
            chosen, used = [cands[0]], cands[0].stat().st_size
            for p in reversed(cands[1:]):
                if len(chosen) >= per_op:
                    break
                if used + p.stat().st_size <= op_budget:
                    chosen.append(p)
                    used += p.stat().st_size
            (dst_suite / op_dir.name).mkdir(parents=True, exist_ok=True)
            for p in chosen:
                shutil.copy2(p, dst_suite / op_dir.name / p.name)
    size = sum(p.stat().st_size for p in fixtures.rglob("*") if p.is_file())
    print(f"fixtures: {size / 1024:.0f} KiB under {fixtures}")
    if size > MAX_FIXTURE_BYTES:
        print(f"WARNING: fixtures exceed {MAX_FIXTURE_BYTES // 1024} KiB; lower --per-op/--op-budget")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--esp-dl", type=Path, help="esp-dl checkout (holding tools/ops_test)")
    ap.add_argument("--targets", default=DEFAULT_TARGETS, help="comma list: esp32p4,esp32s3,c")
    ap.add_argument("--bits", default=DEFAULT_BITS, help="comma list: 8,16")
    ap.add_argument("--ops", default="", help="comma list of op_cfg.toml operators (default: all)")
    ap.add_argument("--out", type=Path, required=True, help="scratch output folder")
    ap.add_argument("--fixtures", type=Path, help="copy a compact subset here (tests/fixtures/golden)")
    ap.add_argument("--python", default=sys.executable, help="interpreter that has esp-ppq and torch")
    ap.add_argument("--jobs", type=int, default=1, help="operators generated in parallel")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per operator")
    ap.add_argument("--skip-existing", action="store_true", help="skip ops already generated OK")
    ap.add_argument("--no-generate", action="store_true", help="only pick fixtures from --out")
    ap.add_argument("--max-cases", type=int, default=0,
                    help="only K cases per operator, spread over the smaller half by input size (0: all)")
    ap.add_argument("--reverse", action="store_true",
                    help="operators in reverse order (a second run on the same suite meets the first)")
    ap.add_argument("--no-split", action="store_true",
                    help="do not retry a crashed operator case by case")
    ap.add_argument("--per-op", type=int, default=2, help="max fixture cases per suite/op")
    ap.add_argument("--op-budget", type=int, default=16000, help="bytes per suite/op for all its cases (the smallest one is always taken)")
    ap.add_argument("--max-file", type=int, default=64000, help="largest single fixture file (bytes)")
    args = ap.parse_args()

    out = args.out.resolve()
    if not args.no_generate:
        if args.esp_dl is None:
            ap.error("--esp-dl is required unless --no-generate")
        ops_dir = ops_test_dir(args.esp_dl.resolve())
        results = generate(args, ops_dir, out)
        bad = [r for r in results if r["rc"] != 0]
        print(f"generated {sum(r['files'] for r in results)} models; {len(bad)} operator runs failed")
        for r in bad:
            print(f"  FAILED {r['suite']}/{r['op']}: rc={r['rc']} ({r['files']} files) {r.get('error', '')}")
            if r.get("failed_cases"):
                print(f"    cases still failing alone: {', '.join(r['failed_cases'])}")
    if args.fixtures:
        suites = [f"{t}_s{b}" for t in args.targets.split(",") for b in args.bits.split(",")]
        pick_fixtures(out, args.fixtures.resolve(), suites, args.per_op, args.op_budget, args.max_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
