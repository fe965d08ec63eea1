"""Input/output files of ``emu run``: .npy/.npz in, .npz out (raw integers and dequantized floats)."""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import numpy as np

from ..errors import ShapeError
from ..espdl.container import atomic_write


def read_inputs(path: str | Path, input_names: list[str]) -> dict[str, np.ndarray]:
    """``X.npy`` for a single-input model, ``X.npz`` with one array per input name."""
    p = Path(path)
    try:
        if p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
            missing = [n for n in input_names if n not in data]
            if missing:
                if len(input_names) == 1 and len(data) == 1:
                    return {input_names[0]: next(iter(data.values()))}
                raise ShapeError(f"{p}: no array for input(s) {missing}; it holds {sorted(data)}")
            return {n: data[n] for n in input_names}
        arr = np.load(p, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise ShapeError(f"cannot read {p}: {e}") from None
    if len(input_names) != 1:
        raise ShapeError(f"the model has inputs {input_names}: give an .npz with one array per input")
    return {input_names[0]: arr}


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "value"


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def write_outputs(path: str | Path, model, outs: dict[str, np.ndarray]) -> None:
    """Per output ``NAME`` (raw integers) and ``NAME.float`` (dequantized float32), atomically."""
    arrays = {}
    for k, v in outs.items():
        arrays[k] = v
        arrays[f"{k}.float"] = model.dequantize(k, v)
    atomic_write(path, npz_bytes(arrays))


def dump_values(folder: str | Path, model, values: dict[str, np.ndarray]) -> list[Path]:
    """One ``.npy`` per intermediate value (file names sanitized; an index.txt maps them back)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lines, written, used = [], [], set()
    for i, (k, v) in enumerate(values.items()):
        base = _safe(k)
        if base in used:
            base = f"{base}_{i}"
        used.add(base)
        f = folder / f"{base}.npy"
        np.save(f, v)
        vi = model.graph.info(k)
        exps = list(vi.exponents) if vi is not None else []
        lines.append(f"{f.name}\t{k}\t{v.dtype}\t{list(v.shape)}\t{exps}")
        written.append(f)
    (folder / "index.txt").write_text("file\tvalue\tdtype\tshape\texponents\n" + "\n".join(lines) + "\n")
    return written
