"""What is inside an ``.espdl`` model: a JSON-ready summary and a text rendering for humans.

:func:`summarize` returns plain dicts/lists/str/int/float/bool/None only (``json.dumps`` works on it
as is); its schema is documented in ``docs/inspect-json.md``. :func:`render_text` turns it into an
aligned table. No CLI code lives here.

Shapes
------
Value-info shapes in ESP-DL files can be stale (streaming exports) and are absent for some values,
so shapes are taken from the emulator's planner (``model.plan({input: shape})``: every kernel
computes its output shape) whenever the model can be prepared for its declared input shapes. When
it cannot (an unsupported op, a symbolic input dimension, ...), the summary falls back to the
file's value-info shapes and says so (``shapes.source == "value_info"`` and ``shapes.note``).

Peak activation memory (estimate)
---------------------------------
A liveness scan over the nodes in file order (the order ESP-DL runs them):

* the values counted are the graph inputs and every node output (initializers are parameters and
  are counted in ``parameters``, not here);
* a value is live from the step that produces it (graph inputs: from the start) to the last step
  that reads it; graph outputs stay live to the end;
* while node ``i`` runs, its inputs and its outputs are live at the same time;
* each value takes ``prod(shape) * itemsize`` bytes rounded up to 16 (ESP-DL's memory manager
  aligns every tensor to 16 bytes);
* the peak is the largest sum over all steps.

ESP-DL's greedy memory manager (``dl/model/src/dl_memory_manager_greedy.cpp``) also runs some
modules in place (the output reuses an input buffer) and packs tensors into one arena, which this
scan does not model: the real arena can be smaller (in-place reuse) or a little larger
(fragmentation). Values without a known shape are listed in ``memory.unknown`` and not counted.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ChunkwiseError
from ..ir.graph import Attribute, Graph, Tensor

SCHEMA = "chunkwise.inspect/1"
ALIGN = 16


# ---- small helpers -------------------------------------------------------------------------
def _json_float(v: float) -> float | str:
    v = float(v)
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return v


def _text(b: bytes | str) -> str:
    return b.decode("utf-8", errors="replace") if isinstance(b, (bytes, bytearray)) else str(b)


def _itemsize(dtype: str | None) -> int | None:
    if not dtype or dtype in ("undefined", "string"):
        return None
    try:
        return np.dtype(dtype).itemsize
    except TypeError:
        return None


def _shape(shape) -> list | None:
    if shape is None:
        return None
    return [int(d) if isinstance(d, (int, np.integer)) else str(d) for d in shape]


def _concrete(shape) -> bool:
    return shape is not None and all(isinstance(d, int) for d in shape)


def tensor_summary(t: Tensor) -> dict:
    """A tensor attribute (or initializer) as facts, without its data."""
    return {"tensor": t.name, "dtype": t.dtype, "dims": [int(d) for d in t.dims],
            "exponents": [int(e) for e in t.exponents], "layout": t.layout, "bytes": t.nbytes}


def attribute_value(a: Attribute) -> Any:
    """A readable, JSON-ready form of an attribute value: strings decoded, tensors summarized."""
    k, v = a.kind, a.value
    if k == "string":
        return _text(v)
    if k == "int":
        return int(v)
    if k == "float":
        return _json_float(v)
    if k == "ints":
        return [int(x) for x in v]
    if k == "floats":
        return [_json_float(x) for x in v]
    if k == "strings":
        return [_text(x) for x in v]
    if k == "tensor":
        return tensor_summary(v) if v is not None else None
    if k == "tensors":
        return [tensor_summary(t) for t in v]
    if k == "graph":
        return {"graph": v.name, "nodes": len(v.nodes)} if v is not None else None
    if k == "graphs":
        return [{"graph": g.name, "nodes": len(g.nodes)} for g in v]
    return None


def _format_value(v: Any) -> str:
    if isinstance(v, dict) and "tensor" in v:
        dims = "x".join(str(d) for d in v["dims"]) or "scalar"
        exps = v["exponents"]
        exp = f" exp {exps[0]}" if len(exps) == 1 else (f" exp[{len(exps)}]" if exps else "")
        return f"<{v['dtype']} {dims}{exp}>"
    if isinstance(v, dict) and "graph" in v:
        return f"<graph {v['graph']!r}, {v['nodes']} nodes>"
    if isinstance(v, list):
        return "[" + ",".join(_format_value(x) for x in v) + "]"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _container_facts(model) -> dict:
    info = getattr(model, "info", None) or {}
    facts = {
        "format": info.get("container"),
        "model_format": info.get("format"),
        "encrypted": bool(info.get("encrypted", False)),
        "entry": info.get("entry"),
        "entries": list(info.get("models") or []),
        "package_version": None,
        "file_bytes": None,
    }
    path = getattr(model, "path", None)
    if path:
        try:
            p = Path(path)
            facts["file_bytes"] = p.stat().st_size
            if facts["format"] == "PDL3":
                with p.open("rb") as f:
                    head = f.read(20)
                facts["package_version"] = head[4:20].split(b"\0", 1)[0].decode("ascii", errors="replace")
        except OSError:
            pass
    return facts


# ---- shapes --------------------------------------------------------------------------------
def _declared_input_shapes(graph: Graph) -> dict[str, tuple]:
    return {v.name: tuple(v.shape) if v.shape is not None else None
            for v in graph.inputs if v.name not in graph.initializers}


def compiled_nodes(model, plan) -> dict:
    """Which nodes a streaming session runs in its compiled program and which alone on the per-node path,
    with the reason (``emu.program``)."""
    from ..emu.program import compile_plan

    prog, why = compile_plan(plan)
    index = {id(n): i for i, n in enumerate(model.graph.nodes)}
    missing = prog.not_compiled if prog is not None else [(st.node, why) for st in plan.steps]
    return {"nodes": len(plan.steps) - len(missing), "of": len(plan.steps),
            "not_compiled": [{"index": index.get(id(n)), "name": n.name, "op": n.op_type, "reason": r}
                             for n, r in missing]}


def _plan_shapes(model, shapes: dict | None) -> tuple[dict, dict, dict, str | None]:
    """(shape by value, dtype by value, macs by node index, error) from the planner."""
    graph: Graph = model.graph
    feeds = dict(shapes) if shapes else {}
    for name, shp in _declared_input_shapes(graph).items():
        if name in feeds:
            continue
        if not _concrete(shp):
            return {}, {}, {}, f"input {name!r} has no concrete declared shape ({_shape(shp)})"
        feeds[name] = shp
    try:
        plan = model.plan({k: tuple(v) for k, v in feeds.items()})
    except ChunkwiseError as e:
        return {}, {}, {}, str(e)
    except Exception as e:  # a kernel bug must not stop inspect: report it and fall back
        return {}, {}, {}, f"internal error in the planner: {type(e).__name__}: {e}"
    out_shapes = {k: list(s.shape) for k, s in plan.specs.items() if s.shape is not None}
    out_dtypes = {k: s.dtype for k, s in plan.specs.items()}
    macs = {}
    index = {id(n): i for i, n in enumerate(graph.nodes)}
    for step in plan.steps:
        i = index.get(id(step.node))
        if i is not None:
            macs[i] = int(step.prepared.macs)
    macs["compiled"] = compiled_nodes(model, plan)
    return out_shapes, out_dtypes, macs, None


def _value_info_shapes(graph: Graph) -> tuple[dict, dict]:
    shapes, dtypes = {}, {}
    for v in list(graph.value_info.values()) + list(graph.inputs) + list(graph.outputs):
        if v.shape is not None:
            shapes[v.name] = _shape(v.shape)
        if v.dtype != "undefined":
            dtypes[v.name] = v.dtype
    return shapes, dtypes


# ---- memory --------------------------------------------------------------------------------
def _nbytes(shape, dtype) -> int | None:
    size = _itemsize(dtype)
    if size is None or shape is None or not all(isinstance(d, int) for d in shape):
        return None
    n = math.prod(shape) * size
    return (n + ALIGN - 1) // ALIGN * ALIGN


def peak_activation_memory(graph: Graph, shapes: dict, dtypes: dict) -> dict:
    """Liveness scan over node order (see the module docstring for the method)."""
    inits = graph.initializers
    nsteps = len(graph.nodes)
    born: dict[str, int] = {}
    last: dict[str, int] = {}
    for v in graph.inputs:
        if v.name not in inits:
            born[v.name] = 0
            last[v.name] = 0
    for i, n in enumerate(graph.nodes):
        for name in n.inputs:
            if name and name not in inits:
                last[name] = max(last.get(name, i), i)
                born.setdefault(name, 0)
        for name in n.outputs:
            if name:
                born.setdefault(name, i)
                last[name] = max(last.get(name, i), i)
    for v in graph.outputs:
        if v.name in born:
            last[v.name] = max(nsteps - 1, 0)
    sizes, unknown = {}, []
    for name in born:
        b = _nbytes(shapes.get(name), dtypes.get(name))
        if b is None:
            unknown.append(name)
        else:
            sizes[name] = b
    # difference array over steps: O(values + steps)
    delta = [0] * (nsteps + 2)  # a graph without nodes still has its inputs alive at step 0
    for name, b in sizes.items():
        delta[born[name]] += b
        delta[last[name] + 1] -= b
    peak, peak_at, cur = 0, None, 0
    for i in range(max(nsteps, 1)):
        cur += delta[i]
        if cur > peak:
            peak, peak_at = cur, i
    at = None
    if peak_at is not None and nsteps:
        at = {"index": peak_at, "name": graph.nodes[peak_at].name, "op": graph.nodes[peak_at].op_type}
    return {
        "peak_activation_bytes": int(peak),
        "peak_at": at,
        "method": "liveness scan over node order; inputs and outputs of the running node live together; "
                  "each value rounded up to 16 bytes; in-place reuse not modelled; initializers excluded",
        "unknown": sorted(unknown),
    }


# ---- summary -------------------------------------------------------------------------------
def _io(v, shapes: dict | None = None) -> dict:
    shape = shapes.get(v.name) if shapes and v.name in shapes else _shape(v.shape)
    return {"name": v.name, "dtype": v.dtype, "shape": shape, "exponents": [int(e) for e in v.exponents]}


def summarize(model, *, shapes: dict[str, tuple[int, ...]] | None = None) -> dict:
    """Everything ``chunkwise inspect`` shows, as one JSON-ready dict (schema: docs/inspect-json.md).

    ``shapes`` optionally overrides input shapes given to the planner (``{input name: shape}``).
    """
    graph: Graph = model.graph
    inits = graph.initializers
    planned, pdtypes, macs, plan_error = _plan_shapes(model, shapes)
    compiled = macs.pop("compiled", None)
    vi_shapes, vi_dtypes = _value_info_shapes(graph)
    if plan_error is None:
        value_shapes = planned
        value_dtypes = {**vi_dtypes, **{k: v for k, v in pdtypes.items() if v != "undefined"}}
        source = "planner"
    else:
        value_shapes, value_dtypes, source = vi_shapes, vi_dtypes, "value_info"

    nodes = []
    hist: dict[str, int] = {}
    for i, n in enumerate(graph.nodes):
        hist[n.op_type] = hist.get(n.op_type, 0) + 1
        ins = []
        for name in n.inputs:
            if not name:
                ins.append({"name": "", "kind": "omitted", "shape": None, "dtype": None})
            elif name in inits:
                t = inits[name]
                ins.append({"name": name, "kind": "initializer", "shape": [int(d) for d in t.dims],
                            "dtype": t.dtype})
            else:
                ins.append({"name": name, "kind": "activation", "shape": value_shapes.get(name),
                            "dtype": value_dtypes.get(name)})
        outs = []
        for name in n.outputs:
            vi = graph.info(name)
            outs.append({"name": name, "shape": value_shapes.get(name), "dtype": value_dtypes.get(name),
                         "exponents": [int(e) for e in vi.exponents] if vi else []})
        nodes.append({
            "index": i,
            "op": n.op_type,
            "name": n.name,
            "domain": n.domain,
            "attributes": {k: attribute_value(a) for k, a in n.attrs.items()},
            "inputs": ins,
            "outputs": outs,
            "macs": macs.get(i) if plan_error is None else None,
        })

    by_dtype: dict[str, int] = {}
    elements = 0
    for t in inits.values():
        by_dtype[t.dtype] = by_dtype.get(t.dtype, 0) + t.nbytes
        elements += int(t.data.size) if t.data is not None else 0
    param_bytes = sum(by_dtype.values())

    memory = peak_activation_memory(graph, value_shapes, value_dtypes)
    total_macs = sum(v for v in macs.values()) if plan_error is None else None

    return {
        "schema": SCHEMA,
        "file": str(model.path) if getattr(model, "path", None) else None,
        "container": _container_facts(model),
        "target": {"name": model.target, "source": model.target_source,
                   "guessed": model.target_source not in ("metadata", "given")},
        "graph": {
            "name": graph.name,
            "producer_name": graph.producer_name,
            "producer_version": graph.producer_version,
            "ir_version": int(graph.ir_version),
            "opset_import": [[d, int(v)] for d, v in graph.opset_import],
            "metadata": dict(graph.metadata),
            "doc_string": graph.doc_string,
        },
        "inputs": [_io(v, value_shapes if source == "planner" else None)
                   for v in graph.inputs if v.name not in inits],
        "outputs": [_io(v, value_shapes if source == "planner" else None) for v in graph.outputs],
        "shapes": {"source": source, "note": plan_error},
        "node_count": len(graph.nodes),
        "nodes": nodes,
        "op_histogram": dict(sorted(hist.items(), key=lambda kv: (-kv[1], kv[0]))),
        "parameters": {"tensors": len(inits), "elements": elements, "bytes": param_bytes,
                       "bytes_by_dtype": dict(sorted(by_dtype.items()))},
        "macs": total_macs,
        "compiled": compiled,
        "test_values": {"present": bool(graph.test_inputs or graph.test_outputs),
                        "inputs": list(graph.test_inputs), "outputs": list(graph.test_outputs)},
        "memory": memory,
    }


# ---- text ----------------------------------------------------------------------------------
def _short(text: str | None, limit: int = 160) -> str:
    text = text or ""
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _fmt_shape(shape) -> str:
    if shape is None:
        return "?"
    return "[" + ",".join(str(d) for d in shape) + "]"


def _fmt_exps(exps: list[int]) -> str:
    if not exps:
        return "-"
    if len(exps) == 1:
        return str(exps[0])
    return f"per-channel({len(exps)})"


def _table(rows: list[list[str]], header: list[str] | None = None, indent: str = "  ") -> list[str]:
    all_rows = ([header] if header else []) + rows
    if not all_rows:
        return []
    widths = [max(len(r[c]) for r in all_rows) for c in range(len(all_rows[0]))]
    out = []
    for r in all_rows:
        cells = [r[c].ljust(widths[c]) for c in range(len(r) - 1)] + [r[-1]]
        out.append((indent + "  ".join(cells)).rstrip())
    return out


def render_text(s: dict) -> str:
    """A human-readable report of :func:`summarize`'s dict: facts first, then the node table."""
    lines: list[str] = []
    c = s["container"]
    name = Path(s["file"]).name if s.get("file") else (s["graph"]["name"] or "model")
    where = c.get("format") or "?"
    if c.get("format") in ("PDL1", "PDL2", "PDL3"):
        where += f" package, entry {c.get('entry')!r} of {len(c.get('entries') or [])}"
        if c.get("package_version"):
            where += f", version {c['package_version']}"
    if c.get("file_bytes") is not None:
        where += f", {c['file_bytes']:,} bytes"
    where += ", AES-128 encrypted" if c.get("encrypted") else ", not encrypted"
    t = s["target"]
    target = f"{t['name']} (from {t['source']}" + ("; pass --target to be sure)" if t["guessed"] else ")")
    g = s["graph"]
    producer = " ".join(x for x in (g.get("producer_name"), g.get("producer_version")) if x) or "-"
    p = s["parameters"]
    tv = s["test_values"]
    m = s["memory"]
    peak = f"{m['peak_activation_bytes']:,} bytes"
    if m.get("peak_at"):
        peak += f" (at node {m['peak_at']['index']} {m['peak_at']['name']})"
    if m.get("unknown"):
        peak += f"; {len(m['unknown'])} value(s) of unknown size not counted"
    facts = [
        ["model", f"{name}  ({where})"],
        ["target", target],
        ["producer", producer],
    ]
    if c.get("format") in ("PDL1", "PDL2", "PDL3"):
        facts.append(["entries", ", ".join(f"[{i}] {e}" for i, e in enumerate(c.get("entries") or []))])
    if g.get("metadata"):
        facts.append(["metadata", ", ".join(f"{k}={v}" for k, v in g["metadata"].items())])
    md = g.get("metadata") or {}
    if "streaming_chunk" in md:  # written by chunkwise stream
        import json as _json

        st = _json.loads(md.get("streaming_state") or "[]")
        facts.append(["streaming", f"chunk {md['streaming_chunk']} frames on axis {md.get('streaming_frame_axis', 1)}; "
                      f"outputs lag the offline model by {md.get('streaming_delay_frames', 0)} frames"
                      + (f"; state carried: " + ", ".join(f"{p['output']} -> {p['input']}" for p in st) if st else "")])
    facts += [
        ["nodes", f"{s['node_count']}  ({', '.join(f'{k} {v}' for k, v in s['op_histogram'].items())})"],
        ["params", f"{p['bytes']:,} bytes in {p['tensors']} tensors ("
                   + (", ".join(f"{k} {v:,}" for k, v in p["bytes_by_dtype"].items()) or "none") + ")"],
        ["test values", (f"yes ({len(tv['inputs'])} input(s), {len(tv['outputs'])} output(s))"
                         if tv["present"] else "no")],
        ["peak memory", peak + "  [estimate: activations alive at once]"],
    ]
    if s.get("macs") is not None:
        facts.append(["MACs", f"{s['macs']:,}"])
    comp = s.get("compiled")
    if comp is not None:
        text = f"all {comp['of']} nodes" if not comp["not_compiled"] else f"{comp['nodes']} of {comp['of']} nodes"
        if comp["not_compiled"]:
            text += "; per-node: " + "; ".join(f"#{n['index']} {n['op']} {n['name']} ({_short(n['reason'], 80)})"
                                                for n in comp["not_compiled"][:5])
            if len(comp["not_compiled"]) > 5:
                text += f"; ... {len(comp['not_compiled']) - 5} more"
        facts.append(["compiled", text])
    shapes = s["shapes"]
    facts.append(["shapes", "from the emulator's planner" if shapes["source"] == "planner"
                  else f"from the file's value info (planner unavailable: {_short(shapes['note'])})"])
    lines += _table(facts, indent="")
    lines.append("")
    io_rows = [["in", v["name"], v["dtype"], _fmt_shape(v["shape"]), "exp " + _fmt_exps(v["exponents"])]
               for v in s["inputs"]]
    io_rows += [["out", v["name"], v["dtype"], _fmt_shape(v["shape"]), "exp " + _fmt_exps(v["exponents"])]
                for v in s["outputs"]]
    lines += _table(io_rows, indent="")
    lines.append("")
    mark = "" if shapes["source"] == "planner" else "*"
    rows = []
    for n in s["nodes"]:
        acts = [x for x in n["inputs"] if x["kind"] == "activation"]
        nconst = sum(1 for x in n["inputs"] if x["kind"] == "initializer")
        ins = " ".join(_fmt_shape(x["shape"]) for x in acts) or "-"
        if nconst:
            ins += f" +{nconst} const"
        outs = " ".join(_fmt_shape(x["shape"]) for x in n["outputs"]) + mark
        exps = " ".join(_fmt_exps(x["exponents"]) for x in n["outputs"])
        attrs = " ".join(f"{k}={_format_value(v)}" for k, v in n["attributes"].items())
        rows.append([str(n["index"]), n["op"], n["name"], ins, outs, exps, attrs])
    lines += _table(rows, ["#", "op", "name", "inputs", "outputs", "exp", "attributes"], indent="")
    if mark:
        lines.append("")
        lines.append("* shapes from value info (may be stale or missing)")
    return "\n".join(lines) + "\n"
