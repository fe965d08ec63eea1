"""Streaming coverage and speed across models the converter was not tuned to.

    python tools/stream_report.py [--seeds N] [--quick] [--target esp32p4] [--no-corpus]
                                  [--json docs/stream-coverage.json] [--md docs/stream-coverage.md]

Models (see tests/randgraph.py and tests/corpus.py):

* ``onnx-S``: ``random_onnx_model(S)`` quantized by ``chunkwise.quantize(model, random_calib(...))``;
* ``ir-S``: ``random_ir_graph(S)``, already quantized;
* ``corpus:NAME``: each model of tests/fixtures/corpus quantized by us from its ONNX and calibration data,
  and ``ppq-TARGET:NAME``: ESP-PPQ's offline export of it (when there is one).

For each model and each chunk size tried (the smallest candidates, multiples of the cumulative stride):
``chunkwise.convert.stream(model, chunk)`` (its own seeded check included), then an independent
``verify_streaming`` on the model's test input (or other seeded input), every chunk compared; whether
``model.session()`` runs the compiled program (``why_not_compiled`` otherwise); the median time of one
``Session.push`` (bare array of the exact dtype/shape, and the ``{name: array}`` form) over many pushes; and
onnxruntime (1 thread) running the float model on the whole offline window, for the ratio
``push / onnxruntime``. IR graphs and ESP-PPQ exports get their float twin from ``devtools.float_onnx``.

Writes a JSON record of every model and a markdown summary (counts, refusal reasons grouped with counts,
per-feature coverage, per-model table).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import re
import statistics
import subprocess
import sys
import time
import traceback
import warnings
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests/ and devtools/ of this checkout

import chunkwise  # noqa: E402
from chunkwise.convert import stream  # noqa: E402
from chunkwise.convert.streaming import random_input  # noqa: E402
from chunkwise.emu.streamcheck import verify_streaming  # noqa: E402
from chunkwise.model import Model  # noqa: E402
from tests.randgraph import random_calib, random_ir_graph, random_onnx_model  # noqa: E402

warnings.simplefilter("ignore")


def first_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0] if msg else ''}"[:300]


def reason_key(msg: str | None) -> str:
    """A refusal with node names, value names and numbers taken out, to group alike refusals."""
    if not msg:
        return ""
    s = re.sub(r"'[^']*'", "'…'", msg)
    s = re.sub(r'"[^"]*"', '"…"', s)
    s = re.sub(r"\[[-\d, ]*\]", "[…]", s)
    s = re.sub(r"(?<![A-Za-z])-?\d+(\.\d+)?", "N", s)
    s = re.sub(r"\(valid chunk sizes: [^)]*\)", "(valid chunk sizes: …)", s)
    return s[:200]


# ---- timing ----------------------------------------------------------------------------------------

def median_us(fn, n: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        fn()
        ts.append(time.perf_counter_ns() - t0)
    return statistics.median(ts) / 1000.0


def ort_us(model_proto, feeds: dict[str, np.ndarray], n: int) -> float:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(model_proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    feeds = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in feeds.items()}
    return median_us(lambda: sess.run(None, feeds), n)


def float_twin(model: Model):
    """(float ONNX model, feeds) for an ESP-DL graph: its float twin in ESP-DL layout."""
    from devtools.float_onnx import to_float_onnx

    proto = to_float_onnx(model.graph)
    x = random_input(model, 3)
    feeds = {k: model.dequantize(k, v) for k, v in x.items()}
    return proto, feeds


# ---- one model ----------------------------------------------------------------------------------------

def espdl_frame_axis(onnx_shape, q_shape, fa_onnx: int) -> int:
    """The frame axis in the quantized model's input layout (ESP-DL moves channels last for conv models)."""
    r = len(onnx_shape)
    perms = [list(range(r))]
    if r >= 3:
        perms.insert(0, [0] + list(range(2, r)) + [1])
    for p in perms:
        if [onnx_shape[i] for i in p] == list(q_shape):
            return p.index(fa_onnx)
    return 1


def try_chunks(rec: dict, offline: Model, chunks: list[int], frame_axis: int, n_push: int,
               check_feeds: dict | None) -> None:
    rec["frame_axis"] = frame_axis
    rec["chunks"] = {}
    for c in chunks:
        r: dict = {"stream_error": None, "bit_exact": None, "compiled": None, "why_not_compiled": None,
                   "push_us": None, "push_dict_us": None}
        rec["chunks"][str(c)] = r
        t0 = time.perf_counter()
        try:
            try:
                smodel, report = stream(offline, c, frame_axis=frame_axis)
            except Exception as e:  # a model that looks ahead: stream it with a delay, and say so
                if "--allow-lookahead" not in str(e):
                    raise
                r["lookahead_refusal"] = first_line(e)
                smodel, report = stream(offline, c, frame_axis=frame_axis, allow_lookahead=True)
                r["lookahead_frames"] = int(report.delay_frames)
        except Exception as e:  # the refusal is the measurement
            r["stream_error"] = first_line(e)
            if type(e).__name__ == "VerificationError":
                r["bit_exact"] = False
            r["stream_s"] = round(time.perf_counter() - t0, 3)
            continue
        r["stream_s"] = round(time.perf_counter() - t0, 3)
        r["caches"] = len(report.caches)
        r["delay_frames"] = int(report.delay_frames)
        r["state_bytes"] = int(report.state_bytes)
        try:
            x = check_feeds if check_feeds is not None else random_input(offline, 1)
            chk = verify_streaming(smodel, offline, x, frame_axis=frame_axis, delay=report.delay_frames, locate=False)
            r["bit_exact"] = bool(chk.bit_exact)
            r["chunks_checked"] = chk.chunks
            if not chk.bit_exact:
                r["stream_error"] = f"verify_streaming: first mismatch in chunk {chk.first_bad_chunk}"
        except Exception as e:
            r["bit_exact"] = False
            r["stream_error"] = "verify_streaming: " + first_line(e)
        try:
            sess = smodel.session()
            r["compiled"] = sess.program is not None
            r["why_not_compiled"] = None if r["compiled"] else str(sess.why_not_compiled)[:300]
            # the data inputs only: a session carries recurrent state itself (state inputs are for overriding it)
            carried = {p["input"] for p in sess.state_pairs}
            feeds = {k: np.ascontiguousarray(v) for k, v in smodel.test_feeds().items() if k not in carried}
            if len(feeds) == 1:
                arr = next(iter(feeds.values()))
                r["push_us"] = round(median_us(lambda: sess.push(arr), n_push), 2)
            r["push_dict_us"] = round(median_us(lambda: sess.push(feeds), n_push), 2)
            if r["push_us"] is None:
                r["push_us"] = r["push_dict_us"]
        except Exception as e:
            r["session_error"] = first_line(e)


def finish(rec: dict) -> dict:
    ch = rec.get("chunks") or {}
    oks = [r for r in ch.values() if r["stream_error"] is None]
    rec["streamed"] = bool(ch) and len(oks) == len(ch)
    rec["streamed_any"] = bool(oks)
    rec["stream_error"] = next((r["stream_error"] for r in ch.values() if r["stream_error"]), None)
    rec["bit_exact"] = bool(ch) and all(r["bit_exact"] for r in ch.values())
    rec["compiled"] = bool(oks) and all(r["compiled"] for r in oks)
    rec["lookahead"] = any("lookahead_frames" in r or r.get("delay_frames") for r in oks)
    rec["why_not_compiled"] = next((r["why_not_compiled"] for r in oks if r["why_not_compiled"]), None)
    pushes = [r["push_us"] for r in oks if r.get("push_us") is not None]
    rec["push_us"] = pushes[0] if pushes else None  # the smallest chunk tried
    rec["ratio"] = round(rec["push_us"] / rec["ort_us"], 3) if rec["push_us"] and rec.get("ort_us") else None
    return rec


def run_onnx_seed(seed: int, args) -> dict:
    rec: dict = {"source": "onnx", "name": f"onnx-{seed}", "seed": seed}
    m, facts = random_onnx_model(seed)
    rec.update(T=facts["T"], features=facts["features"], ops=facts["ops"], candidates=facts["chunk_candidates"])
    calib = random_calib(m, seed, args.calib)
    try:
        rec["ort_us"] = round(ort_us(m, {"input": calib[:1]}, args.ort_runs), 2)
    except Exception as e:
        rec["ort_error"] = first_line(e)
    t0 = time.perf_counter()
    try:
        q = chunkwise.quantize(m, calib, target=args.target)
        rec["quantized"], rec["quantize_error"] = True, None
    except Exception as e:
        rec["quantized"], rec["quantize_error"] = False, first_line(e)
        rec["quantize_s"] = round(time.perf_counter() - t0, 3)
        return finish(rec)
    rec["quantize_s"] = round(time.perf_counter() - t0, 3)
    q_in = next(v for v in q.graph.inputs if v.name not in q.graph.initializers)
    onnx_shape = [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
    fa = espdl_frame_axis(onnx_shape, q_in.shape, facts["frame_axis_onnx"])
    feeds = q.test_feeds() if q.graph.test_inputs else None
    try_chunks(rec, q, facts["chunk_candidates"][:args.chunks], fa, args.pushes, feeds)
    return finish(rec)


def run_ir_seed(seed: int, args) -> dict:
    rec: dict = {"source": "ir", "name": f"ir-{seed}", "seed": seed, "quantized": True, "quantize_error": None}
    g, facts = random_ir_graph(seed, target=args.target)
    rec.update(T=facts["T"], features=facts["features"], ops=facts["ops"], candidates=facts["chunk_candidates"])
    offline = Model(g, target=args.target)
    try:
        proto, feeds = float_twin(offline)
        rec["ort_us"] = round(ort_us(proto, feeds, args.ort_runs), 2)
    except Exception as e:
        rec["ort_error"] = first_line(e)
    try_chunks(rec, offline, facts["chunk_candidates"][:args.chunks], facts["frame_axis"], args.pushes, None)
    return finish(rec)


def corpus_candidates(meta: dict, T: int, unit: int | None = None) -> list[int]:
    """Chunk sizes for a corpus model: multiples of its frame stride (meta ``frame_stride``, else input frames
    per output frame of a per-frame output) that divide T."""
    if unit is None:
        unit = int(meta.get("frame_stride") or 0)
    if not unit:
        unit = 1
        fa_out = meta.get("output_frame_axis")
        outs = meta.get("outputs") or []
        if fa_out is not None and outs and len(outs[0].get("shape", [])) > int(fa_out):
            t_out = int(outs[0]["shape"][int(fa_out)])
            if t_out and T % t_out == 0:
                unit = T // t_out
    return [c for c in range(unit, T // 2 + 1, unit) if T % c == 0][:4] or [unit]


STRIDE_RE = re.compile(r"multiple of the cumulative stride (\d+)")


def try_corpus_chunks(rec: dict, offline: Model, meta: dict, T: int, n: int, frame_axis: int, args, feeds) -> None:
    """try_chunks at the corpus model's chunk sizes; when the converter says the chunk must be a multiple of
    a larger stride than the metadata gave (a wrong guess of ours, not a refusal), once more at those."""
    cands = corpus_candidates(meta, T)[:n]
    try_chunks(rec, offline, cands, frame_axis, args.pushes, feeds)
    errs = [r["stream_error"] or "" for r in rec["chunks"].values()]
    strides = [int(m.group(1)) for m in (STRIDE_RE.search(e) for e in errs) if m]
    if strides and len(strides) == len(errs):
        unit = math.lcm(*strides, *cands[:1])
        rec["chunk_note"] = f"metadata stride gave chunks {cands}; the converter asked for multiples of {unit}"
        try_chunks(rec, offline, corpus_candidates(meta, T, unit)[:n], frame_axis, args.pushes, feeds)


def run_corpus(args) -> list[dict]:
    try:
        from tests.corpus import corpus_models, load_inputs
    except Exception as e:  # the corpus is being built elsewhere
        print(f"corpus: skipped ({first_line(e)})", file=sys.stderr)
        return []
    import onnx

    try:
        models = corpus_models()
    except Exception as e:
        print(f"corpus: skipped ({first_line(e)})", file=sys.stderr)
        return []
    out = []
    for cm in models:
        meta = cm.meta
        fa_onnx = int(meta.get("frame_axis_onnx", 2))
        shapes = cm.input_shapes
        first = cm.input_names[0]
        T = int(shapes[first][fa_onnx])
        cands = corpus_candidates(meta, T)[:args.chunks]  # recorded; try_corpus_chunks may widen the stride
        base = {"features": [meta.get("family", cm.name)], "ops": meta.get("ops", []), "T": T, "candidates": cands,
                "streamable_by_design": bool(meta.get("streamable")), "why_not_by_design": meta.get("why_not", "")}
        ort_time = None
        try:
            proto = onnx.load(str(cm.onnx))
            held = load_inputs(cm.heldout, cm.input_names)
            ort_time = round(ort_us(proto, {k: v[:1] for k, v in held.items()}, args.ort_runs), 2)
        except Exception as e:
            base["ort_error"] = first_line(e)
        # ours
        rec = {"source": "corpus", "name": f"corpus:{cm.name}", **base, "ort_us": ort_time}
        t0 = time.perf_counter()
        try:
            calib = load_inputs(cm.calib, cm.input_names)
            calib = calib[first] if len(calib) == 1 else calib
            q = chunkwise.quantize(str(cm.onnx), calib, target=args.target)
            rec["quantized"], rec["quantize_error"] = True, None
            rec["quantize_s"] = round(time.perf_counter() - t0, 3)
            q_in = next(v for v in q.graph.inputs if v.name == first)
            fa = espdl_frame_axis(shapes[first], q_in.shape, fa_onnx)
            try_corpus_chunks(rec, q, meta, T, args.chunks, fa, args, q.test_feeds() if q.graph.test_inputs else None)
        except Exception as e:
            rec["quantized"], rec["quantize_error"] = False, first_line(e)
        out.append(finish(rec))
        print(line(rec), flush=True)
        # ESP-PPQ's offline export
        p = cm.ppq(args.target, 8)
        if p is None:
            continue
        rec = {"source": "corpus-ppq", "name": f"ppq-{args.target}:{cm.name}", **base, "ort_us": ort_time,
               "quantized": True, "quantize_error": None}
        try:
            offline = chunkwise.load(p, target=args.target)
            o_in = next(v for v in offline.graph.inputs if v.name not in offline.graph.initializers)
            fa = espdl_frame_axis(shapes.get(o_in.name, shapes[first]), o_in.shape, fa_onnx)
            feeds = offline.test_feeds() if offline.graph.test_inputs else None
            try_corpus_chunks(rec, offline, meta, T, args.chunks, fa, args, feeds)
        except Exception as e:
            rec["quantized"], rec["quantize_error"] = False, "load: " + first_line(e)
        out.append(finish(rec))
        print(line(rec), flush=True)
    return out


def line(rec: dict) -> str:
    if not rec.get("quantized"):
        state = f"quantize: {rec.get('quantize_error')}"
    elif not rec.get("streamed"):
        state = f"stream: {rec.get('stream_error')}"
    else:
        state = (f"bit-exact={rec['bit_exact']} compiled={rec['compiled']} push={rec['push_us']}us "
                 f"ort={rec.get('ort_us')}us ratio={rec.get('ratio')}")
    return f"{rec['name']:<28} {state}"


# ---- summary --------------------------------------------------------------------------------------------

def summarize(records: list[dict]) -> dict:
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        groups[r["source"]].append(r)
    groups["all"] = list(records)
    table = {}
    for src, rs in groups.items():
        streamed = [r for r in rs if r.get("streamed")]
        pushes = [r["push_us"] for r in streamed if r.get("push_us")]
        dict_pushes = [c["push_dict_us"] for r in streamed for c in list((r.get("chunks") or {}).values())[:1]
                       if c.get("push_dict_us")]
        ratios = [r["ratio"] for r in streamed if r.get("ratio")]
        table[src] = {
            "models": len(rs),
            "streamable_by_design": sum(1 for r in rs if r.get("streamable_by_design", True)),
            "quantized": sum(1 for r in rs if r.get("quantized")),
            "streamed": len(streamed),
            "streamed_some_chunk": sum(1 for r in rs if r.get("streamed_any")),
            "bit_exact": sum(1 for r in rs if r.get("streamed") and r.get("bit_exact")),
            "compiled": sum(1 for r in streamed if r.get("compiled")),
            "lookahead": sum(1 for r in streamed if r.get("lookahead")),
            "push_us_median": round(statistics.median(pushes), 2) if pushes else None,
            "push_us_max": round(max(pushes), 2) if pushes else None,
            "push_dict_us_median": round(statistics.median(dict_pushes), 2) if dict_pushes else None,
            "ratio_median": round(statistics.median(ratios), 3) if ratios else None,
            "ratio_max": round(max(ratios), 3) if ratios else None,
        }
    reasons = {"quantize": Counter(), "stream": Counter(), "not_bit_exact": Counter(), "not_compiled": Counter()}
    examples: dict[tuple[str, str], str] = {}
    for r in records:
        if not r.get("quantized"):
            key = ("quantize", reason_key(r.get("quantize_error")))
        elif not r.get("streamed"):
            err = r.get("stream_error") or ""
            key = ("not_bit_exact" if ("VerificationError" in err or "verify_streaming" in err) else "stream",
                   reason_key(err))
        elif not r.get("compiled"):
            key = ("not_compiled", reason_key(r.get("why_not_compiled")))
        else:
            continue
        reasons[key[0]][key[1]] += 1
        examples.setdefault(key, r["name"])
    feature_cov: dict[str, Counter] = defaultdict(Counter)
    for r in records:
        if r["source"] not in ("onnx", "ir"):
            continue
        for f in r.get("features", []):
            c = feature_cov[f"{r['source']}:{f}"]
            c["models"] += 1
            c["quantized"] += bool(r.get("quantized"))
            c["streamed"] += bool(r.get("streamed"))
            c["compiled"] += bool(r.get("streamed") and r.get("compiled"))
    return {"table": table,
            "reasons": {k: [{"reason": reason, "count": n, "example": examples[(k, reason)]}
                            for reason, n in v.most_common()] for k, v in reasons.items()},
            "features": {k: dict(v) for k, v in sorted(feature_cov.items())}}


def markdown(summary: dict, records: list[dict], args, meta: dict) -> str:
    out = ["# Streaming coverage on models the converter was not tuned to", "",
           f"Generated by `python tools/stream_report.py {' '.join(meta['argv'])}` on commit `{meta['commit']}` "
           f"({meta['date']}, {meta['host']}). Target {args.target}; chunk sizes tried per model: the "
           f"{args.chunks} smallest candidates (multiples of the cumulative stride dividing T).", "",
           "Sources: `onnx-S` = `tests/randgraph.py: random_onnx_model(S)` quantized with `chunkwise.quantize`; "
           "`ir-S` = `random_ir_graph(S)` (quantized IR); `corpus:NAME` = tests/fixtures/corpus quantized by us, "
           "`ppq-TARGET:NAME` = ESP-PPQ's offline export of it. *streamed*: `stream` succeeded at every chunk size "
           "tried (*with lookahead*: the streaming output lags the offline one by a "
           "delay, recorded in the model, or was only streamed with `allow_lookahead=True` after a refusal that asked "
           "for it; the checks align by the delay); *bit-exact*: `stream`'s own check and an independent `verify_streaming` (every chunk) passed at "
           "every chunk size; *compiled*: `model.session().program is not None`; *push*: median µs of one "
           "`Session.push` (bare array) at the smallest chunk; *ratio*: push / onnxruntime (1 thread) running "
           "the float model on the whole offline window.", "",
           "| source | models | streamable by design | quantized | streamed (with lookahead) | bit-exact | compiled "
           "| push µs median / max | ratio median / max |",
           "|---|---|---|---|---|---|---|---|---|"]
    for src in ("onnx", "ir", "corpus", "corpus-ppq", "all"):
        t = summary["table"].get(src)
        if not t:
            continue
        out.append(f"| {src} | {t['models']} | {t['streamable_by_design']} | {t['quantized']} | "
                   f"{t['streamed']} ({t['lookahead']}) | "
                   f"{t['bit_exact']} | {t['compiled']} | {t['push_us_median']} / {t['push_us_max']} | "
                   f"{t['ratio_median']} / {t['ratio_max']} |")
    t = summary["table"].get("all")
    if t:
        out += ["", f"Push with `{{name: array}}` instead of the bare array: median {t['push_dict_us_median']} µs "
                f"(bare array {t['push_us_median']} µs). Compiled-path refusals list only the first node per model. "
                "Regenerate: `python tools/stream_report.py --seeds 30` (about 1-2 minutes)."]
    titles = {"quantize": "Quantization refusals (first error)", "stream": "Streaming refusals (first error)",
              "not_bit_exact": "Streamed but not bit-exact", "not_compiled": "Streamed but not compiled (why)"}
    for k, title in titles.items():
        rs = summary["reasons"][k]
        if not rs:
            continue
        out += ["", f"## {title}", "", "| count | reason (names and numbers elided) | example |", "|---|---|---|"]
        for r in rs:
            out.append(f"| {r['count']} | {r['reason'].replace('|', '/')} | {r['example']} |")
    out += ["", "## Coverage by feature (random models)", "",
            "| source:feature | models | quantized | streamed | compiled |", "|---|---|---|---|---|"]
    for f, c in summary["features"].items():
        out.append(f"| {f} | {c.get('models', 0)} | {c.get('quantized', 0)} | {c.get('streamed', 0)} | "
                   f"{c.get('compiled', 0)} |")
    out += ["", "## Every model", "",
            "| model | T | chunks | quantized | streamed | bit-exact | compiled | push µs | ort µs | ratio "
            "| first error |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        err = r.get("quantize_error") or r.get("stream_error") or (
            f"not compiled: {r['why_not_compiled']}" if r.get("streamed") and not r.get("compiled") else "")
        err = (err or "").replace("|", "/")[:140]
        if not r.get("streamable_by_design", True):
            err = f"(not streamable by design: {r.get('why_not_by_design', '')[:60]}) {err}"
        tried = list(r.get("chunks") or {}) or r.get("candidates", [])[:args.chunks]
        out.append(f"| {r['name']} | {r.get('T')} | {','.join(str(c) for c in tried)} | "
                   f"{'yes' if r.get('quantized') else 'no'} | {'yes' if r.get('streamed') else 'no'} | "
                   f"{'yes' if r.get('bit_exact') else 'no'} | {'yes' if r.get('compiled') else 'no'} | "
                   f"{r.get('push_us') or ''} | {r.get('ort_us') or ''} | {r.get('ratio') or ''} | {err} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=20, help="seeds of each random generator (default 20)")
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="fewer pushes/runs, one chunk size, small calibration")
    ap.add_argument("--target", default="esp32p4")
    ap.add_argument("--chunks", type=int, default=None, help="chunk sizes tried per model (default 2; quick 1)")
    ap.add_argument("--no-corpus", action="store_true")
    ap.add_argument("--only", choices=["onnx", "ir", "corpus"], default=None)
    ap.add_argument("--json", default=str(REPO / "docs" / "stream-coverage.json"))
    ap.add_argument("--md", default=str(REPO / "docs" / "stream-coverage.md"))
    ap.add_argument("--commit", default=None, help="label for the code measured (default: git HEAD of the checkout)")
    args = ap.parse_args(argv)
    args.chunks = args.chunks or (1 if args.quick else 2)
    args.pushes = 50 if args.quick else 300
    args.ort_runs = 20 if args.quick else 100
    args.calib = 8 if args.quick else 16
    records: list[dict] = []
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    runners = []
    if args.only in (None, "onnx"):
        runners.append(run_onnx_seed)
    if args.only in (None, "ir"):
        runners.append(run_ir_seed)
    for run in runners:
        for s in seeds:
            try:
                rec = run(s, args)
            except Exception as e:  # a generator or harness failure is reported, not hidden
                rec = finish({"source": run.__name__.split("_")[1], "name": f"{run.__name__.split('_')[1]}-{s}",
                              "seed": s, "quantized": False,
                              "quantize_error": "harness: " + first_line(e), "trace": traceback.format_exc()[-2000:]})
            records.append(rec)
            print(line(rec), flush=True)
    if args.only in (None, "corpus") and not args.no_corpus:
        records += run_corpus(args)
    commit = args.commit
    if commit is None:
        try:
            commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                    text=True, check=False).stdout.strip() or "?"
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                                   capture_output=True, text=True, check=False).stdout.strip()
            commit += " + uncommitted changes" if dirty else ""
        except OSError:
            commit = "?"
    meta = {"argv": list(sys.argv[1:] if argv is None else argv), "commit": commit,
            "date": datetime.date.today().isoformat(),
            "host": f"{platform.machine()}, Python {platform.python_version()}",
            "target": args.target}
    summary = summarize(records)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"meta": meta, "summary": summary, "models": records}, indent=1,
                                          default=str) + "\n")
    Path(args.md).write_text(markdown(summary, records, args, meta))
    for src, t in summary["table"].items():
        print(f"{src:<11} {t}")
    print(f"wrote {args.json} and {args.md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
