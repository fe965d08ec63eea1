"""ESP-DL's operator test suite (``tools/ops_test`` of esp-dl: ``op_cfg.toml`` cases) as float ONNX models, with
ESP-PPQ's export of each, for ``tools/ops_test_sqnr.py`` to compare chunkwise against.

Dev-only (torch + esp-ppq), in the dev venv::

    . /work/devvenv/bin/activate
    python tools/make_ops_test.py --esp-dl /work/.mirror/espressif+esp-dl/repo --out /tmp/ops_test
    python tools/make_ops_test.py ... --ops Softmax,Relu --target esp32p4 --bits 8

For every case of every operator whose ``quant_bits`` lists the bit width, the generator's own model
builders (``torch_ops_test.py`` / ``onnx_ops_test.py``, read from the esp-dl checkout at run time, never
copied here) give the float model; torch modules are exported with ``torch.onnx.export`` (opset of the
config's ``[meta]``, 13; the classic exporter, as ESP-PPQ's ``espdl_quantize_torch`` does). Like the
generator, calibration is ONE random-normal sample of the input shape (repeated for ESP-PPQ's minimum of 8
steps); a second random-normal sample is the held-out input. Each case directory gets ``model.onnx``,
``calib.npz``, ``heldout.npz`` (one array per input, full input shape) and, when ESP-PPQ succeeds,
``ppq_<target>_s<bits>.espdl`` (made from a copy: ESP-PPQ overwrites its input). ``index.json`` lists
every case with ESP-PPQ's outcome (``ok`` or the exception's first line).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np


def checkout_files(esp_dl: Path, dest: Path) -> Path:
    """The ops_test generator's model builders and config, from the esp-dl git checkout (bare or not)."""
    src = dest / "ops_test"
    src.mkdir(parents=True, exist_ok=True)
    for rel in ("torch_ops_test.py", "onnx_ops_test.py", "config/op_cfg.toml"):
        out = src / Path(rel).name
        r = subprocess.run(["git", "-C", str(esp_dl), "show", f"HEAD:tools/ops_test/{rel}"], capture_output=True)
        if r.returncode != 0:
            raise SystemExit(f"cannot read tools/ops_test/{rel} from {esp_dl}: {r.stderr.decode().strip()}")
        out.write_bytes(r.stdout)
    return src


def first_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0][:160] if msg else ''}".rstrip(": ")


def input_shapes(cfg: dict) -> list[list[int]]:
    s = cfg["input_shape"]
    return [list(x) for x in s] if isinstance(s[0], list) else [list(s)]


def float_model(pkg, func: str, cfg: dict, opset: int, path: Path) -> list[str]:
    """Write the case's float ONNX to ``path``; returns its input names."""
    import onnx
    import torch

    m = getattr(pkg, func)(cfg)
    if isinstance(m, onnx.ModelProto):
        onnx.save(m, str(path))
    else:
        m.eval()
        shapes = input_shapes(cfg)
        args = tuple(torch.randn(s) for s in shapes)
        names = [f"input_{i}" for i in range(len(shapes))] if len(shapes) > 1 else ["input"]
        with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
            torch.onnx.export(m, args if len(args) > 1 else args[0], str(path), opset_version=opset,
                              input_names=names, dynamo=False)
    model = onnx.load(str(path))
    inits = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits]


def ppq_export(case: Path, names: list[str], shapes: list[list[int]], target: str, bits: int, dest: Path) -> None:
    import torch
    from esp_ppq.api import espdl_quantize_onnx

    with np.load(case / "calib.npz") as z:
        calib = [torch.from_numpy(z[n]) for n in names]
    with np.load(case / "heldout.npz") as z:
        held = [torch.from_numpy(z[n]) for n in names]
    sample = calib if len(calib) > 1 else calib[0]
    steps = 8  # ESP-PPQ asserts at least 8 calibration steps: the one sample, repeated
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "model.onnx"
        shutil.copy(case / "model.onnx", src)
        out = Path(tmp) / "model.espdl"
        with contextlib.redirect_stdout(io.StringIO()):
            espdl_quantize_onnx(
                onnx_import_file=str(src), espdl_export_file=str(out), calib_dataloader=[sample] * steps,
                calib_steps=steps, input_shape=shapes if len(shapes) > 1 else shapes[0], inputs=held,
                target=target, num_of_bits=bits, device="cpu", error_report=False, skip_export=False,
                export_config=False, export_test_values=True, verbose=0, metadata_props={"target": target})
        if not out.exists():
            raise RuntimeError("ESP-PPQ returned without writing the .espdl")
        shutil.copy(out, dest)


def _ppq_child(case: str, names, shapes, target: str, bits: int, dest: str, status: str) -> None:
    try:
        ppq_export(Path(case), names, shapes, target, bits, Path(dest))
        Path(status).write_text("ok")
    except BaseException as e:  # ESP-PPQ raises many types (and SystemExit on asserts)
        Path(status).write_text(first_line(e))


def ppq_isolated(case: Path, names, shapes, target: str, bits: int, dest: Path) -> str:
    """ESP-PPQ in a child process: a native abort (one MatMul case) is recorded, not fatal."""
    import multiprocessing as mp

    status = case / ".ppq_status"
    status.unlink(missing_ok=True)
    p = mp.get_context("fork").Process(target=_ppq_child,
                                        args=(str(case), names, shapes, target, bits, str(dest), str(status)))
    p.start()
    p.join()
    if status.exists():
        out = status.read_text()
        status.unlink()
        return out
    return f"ESP-PPQ process died (exit code {p.exitcode})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--esp-dl", type=Path, required=True, help="esp-dl git checkout (bare mirrors work)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--target", default="esp32p4")
    ap.add_argument("--bits", type=int, default=8)
    ap.add_argument("--ops", default="", help="comma-separated operator types (default: all)")
    ap.add_argument("--no-ppq", action="store_true", help="float models only")
    ap.add_argument("--resume", action="store_true", help="skip cases index.json already has")
    a = ap.parse_args()

    import toml
    import torch

    a.out.mkdir(parents=True, exist_ok=True)
    src = checkout_files(a.esp_dl, a.out / "_generator")
    sys.path.insert(0, str(src))
    config = toml.load(src / "op_cfg.toml")
    opset = int(config["meta"].get("opset", 13))
    want = {s for s in a.ops.split(",") if s}
    bits_key = {8: "int8", 16: "int16"}[a.bits]
    index_path = a.out / "index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {"cases": {}}
    index.update(target=a.target, bits=a.bits, opset=opset)
    for op_type, spec in config["ops_test"].items():
        if want and op_type not in want:
            continue
        if bits_key not in spec.get("quant_bits", []):
            continue
        pkg = importlib.import_module(spec["package"])
        for cfg in spec["cfg"]:
            cfg = dict(cfg)
            cfg["per_channel_enable"] = a.target in ("esp32p4", "esp32s31") and op_type in ("Conv", "ConvTranspose",
                                                                                          "Gemm")
            name = cfg["export_name_prefix"]
            if a.resume and f"{op_type}/{name}" in index["cases"]:
                continue
            case = a.out / op_type / name
            case.mkdir(parents=True, exist_ok=True)
            seed = zlib.crc32(name.encode())
            torch.manual_seed(seed)
            entry = {"op": op_type, "dir": str(case.relative_to(a.out)), "input_shape": input_shapes(cfg)}
            try:
                names = float_model(pkg, spec["test_func"], cfg, opset, case / "model.onnx")
            except Exception as e:  # an index entry: why there is no float model
                entry["float"] = first_line(e)
                index["cases"][f"{op_type}/{name}"] = entry
                continue
            entry["float"] = "ok"
            shapes = input_shapes(cfg)
            rng = np.random.default_rng(seed)
            calib = {n: rng.standard_normal(s).astype(np.float32) for n, s in zip(names, shapes)}
            held = {n: rng.standard_normal(s).astype(np.float32) for n, s in zip(names, shapes)}
            np.savez(case / "calib.npz", **calib)
            np.savez(case / "heldout.npz", **held)
            if not a.no_ppq:
                dest = case / f"ppq_{a.target}_s{a.bits}.espdl"
                entry["ppq"] = ppq_isolated(case, names, shapes, a.target, a.bits, dest)
            index["cases"][f"{op_type}/{name}"] = entry
            print(f"{op_type}/{name}: float {entry['float']}, ppq {entry.get('ppq', '-')}", file=sys.stderr,
                  flush=True)
            index_path.write_text(json.dumps(index, indent=1))
    index_path.write_text(json.dumps(index, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
