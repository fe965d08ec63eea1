"""Run every benchmark in one pytest session and (re)write bench/RESULTS.md from its JSON.

    python bench/run.py                 # all figures (needs ../shared/zoo beside the repository)
    python bench/run.py -k stream       # a subset (extra arguments go to pytest)
    python bench/run.py --report-only   # rewrite RESULTS.md from the last JSON (bench/.results.json)

pytest-benchmark usage notes
----------------------------
* The benchmarks are ordinary pytest tests taking the ``benchmark`` fixture (plugin
  ``pytest-benchmark``, in the ``test`` extra). ``benchmark(fn, *args)`` calibrates rounds and
  iterations itself; ``benchmark.pedantic(fn, rounds=R, iterations=1, warmup_rounds=W)`` fixes them
  (used for slow calls and for subprocess measurements that run once).
* ``--benchmark-json=PATH`` writes every measurement (``stats``: min, max, mean, median, ... in seconds)
  plus each test's ``extra_info``; this script reads only that file, so RESULTS.md is reproducible
  from it. What a test measured is described in ``extra_info`` (see ``bench/conftest.py``:
  ``key``, ``label``, ``per``, ``value``, ``unit``); :data:`ROWS` pairs keys into table rows.
* ``pytest`` from the repository root does not collect ``bench/`` (``testpaths = ["tests"]``);
  run ``pytest bench`` or this script. ``--benchmark-disable`` runs each benchmark once, as a test.
* Timings on a shared 2-core machine are noisy: the table shows medians, with the best (min) round
  in parentheses; ratios use medians. Compare figures of one run, not across runs.

RESULTS.md is generated: never edit it by hand.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
JSON = HERE / ".results.json"
OUT = HERE / "RESULTS.md"

# (figure, ours key, peer key or None, target text)
ROWS = [
    ("Streaming models (corpus + seeded random), `Session.push`, median over models", "models_median",
     "models_ort_median", "<= 5 us"),
    ("Streaming models, worst ratio to onnxruntime (1 thread, float model, offline window)", "models_worst",
     None, "<= 0.2"),
    ("TCN streaming step, 3-frame chunk, `Session.push(int8 array)`", "stream_push", "ort_tcn_1t", "<= 3 us"),
    ("TCN streaming step, `Session.push({name: int8 array})`", "stream_push_dict", "ort_tcn_1t", "<= 3 us"),
    ("TCN streaming step, `Session.push({name: float32 array})`", "stream_push_float", "ort_tcn_1t", ""),
    ("TCN streaming step, `Session.push` vs ORT default threads", "stream_push", "ort_tcn_default", ""),
    ("TCN streaming step, `push_many`, per chunk", "stream_push_many", "ort_tcn_1t", "<= 5 us"),
    ("TCN streaming step, `Program.run_batch`, per chunk", "stream_run_batch", "ort_tcn_1t", ""),
    ("TCN streaming step vs ESP-PPQ", "stream_push", "ppq_tcn_step", ""),
    ("MobileNetV2 224x224 offline, 1 inference, 1 thread each", "mnv2_run_1t", "ort_mnv2_1t", "<= 3x"),
    ("MobileNetV2, default threads each", "mnv2_run", "ort_mnv2_default", "<= 3x"),
    ("YOLO11n-320 offline, 1 inference, 1 thread each", "yolo_run_1t", "ort_yolo_1t", "<= 3x"),
    ("YOLO11n-320, default threads each", "yolo_run", "ort_yolo_default", "<= 3x"),
    ("Cold start: first `chunkwise emu run --compare` (streaming vs offline TCN)", "cold_compare", None, "report"),
    ("Warm start: second `chunkwise emu run --compare`", "cold_compare.warm", None, "< 1 s"),
    ("Cold start: first `chunkwise emu run`, offline tutorial TCN", "cold_offline", None, "report"),
    ("Warm start: second `chunkwise emu run`, offline tutorial TCN", "cold_offline.warm", None, "< 1 s"),
    ("Cold start: first `chunkwise emu run -n 8`, streaming TCN", "cold_streaming", None, "report"),
    ("Warm start: second `chunkwise emu run -n 8`, streaming TCN", "cold_streaming.warm", None, "< 1 s"),
    ("Quantize tutorial TCN, 32 calibration samples", "quantize_first", "ppq_quantize", "< 5 s"),
    ("Quantize tutorial TCN, second call in the same process", "quantize_first.second", None, ""),
    ("Peak RSS, MobileNetV2 load + one run", "rss_mnv2_ours", "rss_mnv2_peer", "report"),
    ("Streaming state of the tutorial TCN", "state_bytes", None, "report"),
]


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


LOAD_AT_START = None


def run_pytest(extra: list[str]) -> int:
    global LOAD_AT_START
    LOAD_AT_START = os.getloadavg()
    cmd = [sys.executable, "-m", "pytest", str(HERE), f"--benchmark-json={JSON}", "-p", "no:cacheprovider",
           "--benchmark-columns=min,median,max,rounds", *extra]
    print("+", " ".join(cmd), flush=True)
    return subprocess.call(cmd, cwd=REPO)


def entries(doc: dict) -> dict:
    """key -> {value (seconds, MiB or bytes), best, unit, label} from the pytest-benchmark JSON."""
    out = {}
    for b in doc.get("benchmarks", []):
        info = b.get("extra_info", {})
        key = info.get("key")
        if not key:
            continue
        per = info.get("per", 1) or 1
        if "value" in info:
            e = {"value": info["value"], "best": None, "unit": info.get("unit", "s"), "label": info["label"]}
        else:
            st = b["stats"]
            e = {"value": st["median"] / per, "best": st["min"] / per, "unit": "s", "label": info["label"],
                 "rounds": st["rounds"]}
        out[key] = e
        for sub in ("warm", "second"):
            if isinstance(info.get(sub), dict):
                out[f"{key}.{sub}"] = {"value": info[sub]["value"], "best": None, "unit": "s",
                                       "label": info[sub]["label"]}
        if "ppq_quantize_s" in info:
            out["ppq_quantize"] = {"value": info["ppq_quantize_s"], "best": None, "unit": "s",
                                   "label": "ESP-PPQ espdl_quantize_onnx, 32 samples, same float TCN "
                                            "(in its venv, after imports)"}
        if "profile" in info:
            out["__profile__"] = info["profile"]
        if "op_profile" in info:
            out.setdefault("__op_profiles__", []).append(info["op_profile"])
        if "model" in info:
            out.setdefault("__models__", []).append(info)
    models = out.get("__models__", [])
    if models:
        import statistics

        worst = max(models, key=lambda m: m["ratio"])
        out["models_median"] = {"value": statistics.median(m["ours_us"] for m in models) * 1e-6, "best": None,
                                "unit": "s", "label": f"median over {len(models)} streaming models of the median "
                                                      "Session.push time (table below)"}
        out["models_ort_median"] = {"value": statistics.median(m["ort_us"] for m in models) * 1e-6, "best": None,
                                    "unit": "s", "label": "median over the same models of onnxruntime's time on "
                                                          "the offline window"}
        out["models_worst"] = {"value": round(worst["ratio"], 3), "best": None, "unit": "",
                               "label": f"largest push / onnxruntime ratio ({worst['model']})"}
    return out


def fmt(e: dict | None) -> str:
    if e is None or e.get("value") is None:
        return "not available"
    v, unit = e["value"], e["unit"]
    if unit == "s":
        s = _t(v)
        if e.get("best") is not None:
            s += f" ({_t(e['best'])})"
        return s
    if unit == "MiB":
        return f"{v:.0f} MiB"
    if unit == "bytes":
        return f"{int(v)} B"
    return f"{v:g} {unit}".strip()


def _t(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:.2f} us"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def _load(avg) -> str:
    return "?" if avg is None else "/".join(f"{x:.1f}" for x in avg)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def write(doc: dict, extra: list[str]) -> str:
    es = entries(doc)
    mach = machine()
    info = doc.get("machine_info", {})
    lines = [
        "# Benchmark results",
        "",
        "Generated by `python bench/run.py` (bench/run.py) from pytest-benchmark's JSON: **do not edit by hand**.",
        "",
        f"- date: {doc.get('datetime', datetime.datetime.now(datetime.timezone.utc).isoformat())}",
        f"- command: `python bench/run.py{(' ' + ' '.join(extra)) if extra else ''}`",
        f"- machine: {mach}; Python {info.get('python_version', platform.python_version())}; "
        f"load average (1/5/15 min) at the start: {_load(LOAD_AT_START)}, at the end: {_load(os.getloadavg())}",
        f"- commit: {(doc.get('commit_info') or {}).get('id', '?')[:12]}"
        f"{' (dirty)' if (doc.get('commit_info') or {}).get('dirty') else ''}",
        "",
        "Times are medians, the best round in parentheses. ratio = ours / peer (> 1: ours is slower or "
        "bigger). Peers run in the same session, one after the other.",
        "",
        "| figure | ours | peer | ratio | target | machine |",
        "|---|---|---|---|---|---|",
    ]
    for fig, ok, pk, target in ROWS:
        o = es.get(ok)
        p = es.get(pk) if pk else None
        ratio = ""
        if o and p and o.get("value") and p.get("value"):
            r = o["value"] / p["value"]
            ratio = f"{r:.2f}" if r >= 0.1 else f"{r:.2g} (1/{1 / r:.0f})"
        ours = fmt(o) if o else "skipped"
        peer = "" if pk is None else (fmt(p) if p else "not measured")
        lines.append(f"| {_cell(fig)} | {_cell(ours)} | {_cell(peer)} | {ratio} | {_cell(target)} | {_cell(mach)} |")
    lines += ["", "Notes: `push_many` validates and quantizes every chunk in Python (`Model.prepare_inputs`) "
              "before one compiled call per chunk; `Program.run_batch` is those calls alone. The onnxruntime "
              "peers run `devtools.float_onnx.to_float_onnx` twins (dequantized weights, NCHW), i.e. "
              "the float computation the int8 model approximates. Cold/warm start times are wall clock of a "
              "subprocess; the CPU seconds are in the list below.",
              "", "## What each measurement ran", ""]
    for key, e in es.items():
        if key.startswith("__") or key.startswith("model:"):
            continue
        lines.append(f"- `{key}`: {e['label']}" + (f" ({e['rounds']} rounds)" if e.get("rounds") else ""))
    prof = es.get("__profile__")
    if prof:
        tot = prof["total"][0]
        lines += ["", "## Where the time goes (streaming TCN, one compiled step)", "",
                  "Rows of the compiled program (`Program.code`, opcode in column 0) grouped by opcode; each "
                  "group run alone in a compiled loop, median of 7 repeats (best in parentheses).", "",
                  f"Whole step: {tot:.2f} us ({prof['total'][1]:.2f} us).", "",
                  "| opcode | rows | us per step | share | MACs | GMAC/s |", "|---|---|---|---|---|---|"]
        for name, rows, med, best, macs in sorted(prof["groups"], key=lambda g: -g[2]):  # MACs / (us * 1e3)
            rate = f"{macs / (med * 1e3):.2f}" if macs else ""
            lines.append(f"| {name} | {rows} | {med:.2f} ({best:.2f}) | {100 * med / tot:.0f}% | "
                         f"{macs or ''} | {rate} |")
        rest = tot - sum(g[2] for g in prof["groups"])
        lines.append(f"| (dispatch, rest) | | {rest:.2f} | {100 * rest / tot:.0f}% | | |")
    for op in es.get("__op_profiles__", []):
        lines += ["", f"## Where the time goes ({op['model']}, `Model.run`, per-node path)", "",
                  f"Each plan step timed alone, mean of 3 runs; sum {op['total_ms']:.1f} ms.", "",
                  "| op | ms | share | M MACs | GMAC/s |", "|---|---|---|---|---|"]
        for name, ms, macs in op["rows"][:8]:
            rate = f"{macs / (ms * 1e6):.2f}" if macs and ms else ""
            lines.append(f"| {name} | {ms:.2f} | {100 * ms / op['total_ms']:.0f}% | "
                         f"{macs / 1e6:.1f} | {rate} |" if macs else
                         f"| {name} | {ms:.2f} | {100 * ms / op['total_ms']:.0f}% | | |")
    models = es.get("__models__", [])
    if models:
        lines += ["", "## Streaming models vs onnxruntime", "",
                  "Each model of the corpus (quantized by `chunkwise.quantize`) and seeded random causal models "
                  "(`tests/randgraph.py`), converted by `chunkwise stream` at their smallest chunk "
                  "(bench/streaming_models.py). ours: median `Session.push({name: chunk})`; onnxruntime: the "
                  "float model on the whole offline window, 1 thread, median of 7 x 200 runs, in the same test.",
                  "", "| model | chunk | ours | onnxruntime | ratio | not compiled |", "|---|---|---|---|---|---|"]
        for m in sorted(models, key=lambda m: -m["ratio"]):
            nc = "; ".join(m.get("not_compiled") or []) or ("" if m.get("compiled") else "per-node session")
            lines.append(f"| {m['model']} | {m.get('chunk_frames', '')} | {m['ours_us']:.2f} us | "
                         f"{m['ort_us']:.2f} us | {m['ratio']:.3f} | {_cell(nc)} |")
    skipped = [ok for _, ok, _, _ in ROWS if ok not in es]
    if skipped:
        lines += ["", f"Skipped or failed: {', '.join(sorted(set(skipped)))} (see the pytest output)."]
    text = "\n".join(lines) + "\n"
    OUT.write_text(text)
    return text


def main(argv: list[str]) -> int:
    report_only = "--report-only" in argv
    extra = [a for a in argv if a != "--report-only"]
    rc = 0
    if not report_only:
        rc = run_pytest(extra)
        if rc not in (0, 1) or not JSON.exists():  # 1: some test failed; still report what ran
            print(f"pytest exited {rc}; {OUT} not written", file=sys.stderr)
            return rc or 1
    doc = json.loads(JSON.read_text())
    print(write(doc, extra))
    print(f"wrote {OUT}")
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
