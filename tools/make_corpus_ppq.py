"""ESP-PPQ's offline exports of the model-family corpus (``tests/fixtures/corpus``, see tools/make_corpus.py).

For every corpus model and job (target, bits) this runs ESP-PPQ's ``espdl_quantize_onnx`` on a COPY of
``model.onnx`` (ESP-PPQ 1.3.x overwrites its input with the simplified graph) in a temporary directory,
calibrated on the model's 32 ``calib`` samples (one calibration step each; ESP-PPQ asserts >= 8 steps), with
``export_test_values=True`` on the ``heldout`` input and no auto-streaming. A success is saved as
``<name>/ppq_<target>_s<bits>.espdl``; every outcome (``ok`` or the exception type and the first line of its
message) goes to ``ppq_status.json``.

Each saved export is then checked with ``chunkwise emu test FILE --json`` (the chunkwise of another venv,
``--chunkwise``): whether the emulator reproduces ESP-PPQ's embedded test outputs bit-exactly, recorded in
``ppq_status.json`` too (first differing output and element when not).

Dev-only. In the venv of tools/make_corpus.py::

    . /work/devvenv/bin/activate
    python tools/make_corpus_ppq.py --chunkwise /work/venv/bin/chunkwise
    python tools/make_corpus_ppq.py --models wavenet --jobs esp32p4:8 --chunkwise /work/venv/bin/chunkwise

Re-running a subset keeps the other models' entries in ``ppq_status.json``; ``--check-only`` re-runs only the
emu test check on the existing exports.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
if __name__ == "__main__" and os.environ.get("PYTHONHASHSEED") != "0":
    # ESP-PPQ iterates Python sets of names when it writes the file: fix string hashing so the same inputs
    # give the same bytes
    os.environ["PYTHONHASHSEED"] = "0"
    os.execv(sys.executable, [sys.executable, *sys.argv])

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = ROOT / "tests" / "fixtures" / "corpus"
DEFAULT_JOBS = "esp32p4:8,esp32s3:8"


def load_data(d: Path, stem: str, names: list[str]) -> dict[str, np.ndarray]:
    npz = d / f"{stem}.npz"
    if npz.exists():
        with np.load(npz) as z:
            return {n: z[n] for n in names}
    return {names[0]: np.load(d / f"{stem}.npy")}


def first_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0] if msg else ''}".rstrip(": ")


def ppq_export(d: Path, meta: dict, target: str, bits: int, dest: Path) -> None:
    """ESP-PPQ on a copy of ``d/model.onnx``; writes ``dest`` or raises what ESP-PPQ raised."""
    from esp_ppq.api import espdl_quantize_onnx

    names = [i["name"] for i in meta["inputs"]]
    shapes = [i["shape"] for i in meta["inputs"]]
    calib = load_data(d, "calib", names)
    held = load_data(d, "heldout", names)
    n = len(calib[names[0]])

    def sample(src, i):
        ts = [torch.from_numpy(np.ascontiguousarray(src[k][i:i + 1])).reshape(s) for k, s in zip(names, shapes)]
        return ts if len(ts) > 1 else ts[0]

    loader = [sample(calib, i) for i in range(n)]
    test = sample(held, 0)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "model.onnx"
        shutil.copy(d / "model.onnx", src)
        out = Path(tmp) / "model.espdl"
        log = io.StringIO()
        with contextlib.redirect_stdout(log):
            espdl_quantize_onnx(
                onnx_import_file=str(src), espdl_export_file=str(out), calib_dataloader=loader, calib_steps=n,
                input_shape=shapes if len(shapes) > 1 else shapes[0],
                inputs=test if isinstance(test, list) else [test], target=target, num_of_bits=bits,
                device="cpu", error_report=False, skip_export=False, export_config=False,
                export_test_values=True, verbose=0, metadata_props={"target": target})
        if not out.exists():
            raise RuntimeError("ESP-PPQ returned without writing the .espdl")
        shutil.copy(out, dest)


def emu_test(chunkwise: str | None, path: Path) -> dict:
    """``chunkwise emu test PATH --json`` -> {"emu_test": "bit-exact" | ..., details}."""
    if not chunkwise:
        return {"emu_test": "not checked (no chunkwise executable)"}
    r = subprocess.run([chunkwise, "emu", "test", str(path), "--json"], capture_output=True, text=True)
    try:
        rep = json.loads(r.stdout)
    except json.JSONDecodeError:
        err = (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1]
        err = err.removeprefix("error: ").split(" Supported: ")[0]  # the supported-op list grows over time
        return {"emu_test": f"error: {err}"}
    if rep.get("bit_exact"):
        return {"emu_test": "bit-exact"}
    bad = [o for o in rep["outputs"] if not o["bit_exact"]]
    o = bad[0]
    return {"emu_test": "not bit-exact",
            "first_mismatch": {"output": o["name"], "shape": o["shape"], "dtype": o["dtype"],
                               "mismatches": o["mismatches"], "max_abs_diff": o["max_abs_diff"],
                               "first_index": o["first_mismatch"]},
            "chip_test_pass": rep.get("chip_test_pass")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--models", default="", help="comma-separated subset (default: every model of index.json)")
    ap.add_argument("--jobs", default=DEFAULT_JOBS, help=f"target:bits list (default {DEFAULT_JOBS})")
    ap.add_argument("--chunkwise", default=shutil.which("chunkwise"),
                    help="chunkwise executable used for the emu test check (another venv)")
    ap.add_argument("--no-check", action="store_true", help="skip the emu test check")
    ap.add_argument("--check-only", action="store_true",
                    help="do not run ESP-PPQ: re-run the emu test check on the existing exports of the jobs")
    args = ap.parse_args()
    if args.no_check:
        args.chunkwise = None
    elif not args.chunkwise:
        raise SystemExit("no chunkwise executable: give --chunkwise PATH (e.g. the project's venv) or --no-check")
    torch.set_num_threads(1)
    torch.manual_seed(0)

    index = json.loads((args.corpus / "index.json").read_text())["models"]
    models = [m for m in args.models.split(",") if m] or index
    jobs = [(t, int(b)) for t, b in (j.split(":") for j in args.jobs.split(",") if j)]
    status_path = args.corpus / "ppq_status.json"
    status = json.loads(status_path.read_text()) if status_path.exists() else {"models": {}}
    status["esp_ppq"] = importlib.metadata.version("esp-ppq")
    status["torch"] = torch.__version__.split("+")[0]
    status["how"] = ("espdl_quantize_onnx on a copy of model.onnx, 32 calibration steps of calib, "
                     "export_test_values=True on heldout, no auto_streaming; emu_test: chunkwise emu test")

    for name in models:
        if name not in index:
            raise SystemExit(f"unknown corpus model {name!r}; known: {', '.join(index)}")
        d = args.corpus / name
        meta = json.loads((d / "meta.json").read_text())
        entry = status["models"].setdefault(name, {})
        for target, bits in jobs:
            key = f"{target}_s{bits}"
            dest = d / f"ppq_{key}.espdl"
            if args.check_only:
                if dest.exists():
                    entry[key] = rec = {**entry.get(key, {}), "ppq": "ok", "bytes": dest.stat().st_size}
                    for k in ("emu_test", "first_mismatch", "chip_test_pass"):
                        rec.pop(k, None)
                    rec.update(emu_test(args.chunkwise, dest))
                    print(f"{name:15s} {key:11s} {rec['emu_test']}", flush=True)
                    status_path.write_text(json.dumps(status, indent=1) + "\n")
                continue
            dest.unlink(missing_ok=True)
            try:
                ppq_export(d, meta, target, bits, dest)
                rec = {"ppq": "ok", "bytes": dest.stat().st_size, **emu_test(args.chunkwise, dest)}
            except Exception as e:  # ESP-PPQ's failure is the data point
                dest.unlink(missing_ok=True)
                tb = traceback.extract_tb(e.__traceback__)
                where = next((f"{Path(f.filename).name}:{f.lineno}" for f in reversed(tb)
                              if "esp_ppq" in f.filename), "")
                rec = {"ppq": first_line(e), "where": where}
            entry[key] = rec
            print(f"{name:15s} {key:11s} {rec['ppq'][:100]:30s} {rec.get('emu_test', '')}", flush=True)
            status["models"] = {m: status["models"][m] for m in index if m in status["models"]}
            status_path.write_text(json.dumps(status, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
