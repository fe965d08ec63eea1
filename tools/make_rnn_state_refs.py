"""ESP-PPQ references for corpus RNN models it cannot export as they are.

ESP-PPQ 1.3.12 fails on a GRU / LSTM whose initial state is not a graph input (IndexError in refine.py's RNN
alignment), which is what PyTorch exports for ``batch_first`` models called without a state (crnn_gru,
crnn_lstm, crnn_gru_bidir, gru_seqfirst of tests/fixtures/corpus). The form it does accept: the same graph with
each zero initial state replaced by a graph input (``<node>_h0`` / ``<node>_c0``, calibrated and tested with
zeros), so the function is unchanged. This writes that variant and ESP-PPQ's export of it:

    tests/fixtures/quant_refs/state_<model>/{model.onnx, calib.npz, heldout.npz, meta.json, ppq_<job>.espdl}

tests/test_quant_rnn.py quantizes the ORIGINAL corpus model and checks it bit-exactly against these exports
(the state inputs fed with zeros). Dev-only (esp-ppq, torch):

    . /work/devvenv/bin/activate && python tools/make_rnn_state_refs.py
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from make_corpus_ppq import first_line, load_data, ppq_export  # noqa: E402

CORPUS = ROOT / "tests" / "fixtures" / "corpus"
OUT = ROOT / "tests" / "fixtures" / "quant_refs"
MODELS = ("crnn_gru", "crnn_lstm", "crnn_gru_bidir", "gru_seqfirst")
JOBS = (("esp32p4", 8), ("esp32s3", 8), ("c", 8), ("esp32p4", 16), ("esp32s3", 16), ("c", 16))


def _drop_dead(g: onnx.GraphProto) -> None:
    outs = {o.name for o in g.output}
    changed = True
    while changed:
        used = {i for n in g.node for i in n.input} | outs
        dead = [n for n in g.node if not any(o in used for o in n.output if o)]
        changed = bool(dead)
        for n in dead:
            g.node.remove(n)
    used = {i for n in g.node for i in n.input}
    for t in [t for t in g.initializer if t.name not in used]:
        g.initializer.remove(t)


def state_inputs(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, list[int]]]:
    """Every GRU/LSTM initial state that is not a graph input becomes one (zeros when fed zeros)."""
    g = model.graph
    graph_inputs = {i.name for i in g.input}
    added: dict[str, list[int]] = {}
    for n in g.node:
        if n.op_type not in ("GRU", "LSTM"):
            continue
        hidden = next(a.i for a in n.attribute if a.name == "hidden_size")
        dirs = 2 if any(a.name == "direction" and a.s == b"bidirectional" for a in n.attribute) else 1
        slots = (5, 6) if n.op_type == "LSTM" else (5,)
        while len(n.input) < slots[-1] + 1:
            n.input.append("")
        for slot, kind in zip(slots, ("h0", "c0")):
            if n.input[slot] in graph_inputs:
                continue
            name = f"{n.name}_{kind}".lstrip("/").replace("/", "_")
            n.input[slot] = name
            added[name] = [dirs, 1, hidden]
            g.input.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [dirs, 1, hidden]))
    _drop_dead(g)
    return model, added


def main() -> int:
    status_path = OUT / "status.json"
    status = json.loads(status_path.read_text()) if status_path.exists() else {}
    for name in MODELS:
        src = CORPUS / name
        meta = json.loads((src / "meta.json").read_text())
        names = [i["name"] for i in meta["inputs"]]
        model, added = state_inputs(onnx.load(str(src / "model.onnx")))
        d = OUT / f"state_{name}"
        d.mkdir(parents=True, exist_ok=True)
        onnx.save(model, str(d / "model.onnx"))
        calib, held = load_data(src, "calib", names), load_data(src, "heldout", names)
        n = len(calib[names[0]])
        for k, s in added.items():
            calib[k] = np.zeros([n] + s, np.float32)  # [dirs, 1, hidden]: first dim is not a batch of 1
            held[k] = np.zeros([1] + s, np.float32)
        np.savez(d / "calib.npz", **calib)
        np.savez(d / "heldout.npz", **held)
        inputs = meta["inputs"] + [{"name": k, "shape": s} for k, s in added.items()]
        new_meta = {"inputs": inputs, "source": f"tests/fixtures/corpus/{name}", "state_inputs": sorted(added)}
        (d / "meta.json").write_text(json.dumps(new_meta, indent=1) + "\n")
        rec = {}
        for target, bits in JOBS:
            key = f"{target}_s{bits}"
            dest = d / f"ppq_{key}.espdl"
            dest.unlink(missing_ok=True)
            try:
                ppq_export(d, new_meta, target, bits, dest)
                rec[key] = "ok"
            except Exception as e:  # ESP-PPQ's failure is the data point
                dest.unlink(missing_ok=True)
                tb = traceback.extract_tb(e.__traceback__)
                where = next((f"{Path(f.filename).name}:{f.lineno}" for f in reversed(tb) if "esp_ppq" in f.filename), "")
                rec[key] = f"{first_line(e)} ({where})"
            print(f"state_{name:15s} {key:11s} {rec[key][:100]}", flush=True)
        status[f"state_{name}"] = rec
        status_path.write_text(json.dumps(dict(sorted(status.items())), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
