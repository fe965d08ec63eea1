"""The model-family corpus (``tests/fixtures/corpus``, made by ``tools/make_corpus.py``) for tests to
parametrize over. Pure numpy + json: no torch, no ESP-PPQ.

>>> from corpus import corpus_models, load_inputs
>>> for m in corpus_models(streamable=True):
...     calib = load_inputs(m.calib)      # {input name: float32 [32, *shape[1:]]}
...     x = load_inputs(m.heldout)        # {input name: float32 [1, *shape[1:]]}

``pytest.param(m, id=m.name) for m in corpus_models()`` gives one test case per model. ESP-PPQ's exports of
the same models (``tools/make_corpus_ppq.py``) are ``m.ppq(target, bits)`` (a path, or None when ESP-PPQ
failed on the model: ``m.ppq_status`` says why); ``m.ppq_bit_exact(target, bits)`` only those the emulator
runs bit-exactly (three exports hold what ESP-DL cannot run: see the corpus README).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CORPUS = Path(__file__).resolve().parent / "fixtures" / "corpus"
META_FIELDS = ("family", "input_layout", "frame_axis_onnx", "streamable", "why_not", "ops", "notes")


@dataclass(frozen=True)
class CorpusModel:
    name: str
    dir: Path
    meta: dict
    onnx: Path
    calib: Path          # calib.npy (one input) or calib.npz (one array per input)
    heldout: Path        # heldout.npy / heldout.npz
    ppq_status: dict     # {"esp32p4_s8": {"ppq": "ok" | "<Exception>: <first line>", "emu_test": ...}, ...}

    @property
    def streamable(self) -> bool:
        return bool(self.meta["streamable"])

    @property
    def input_names(self) -> list[str]:
        return [i["name"] for i in self.meta["inputs"]]

    @property
    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        return {i["name"]: tuple(i["shape"]) for i in self.meta["inputs"]}

    def ppq(self, target: str = "esp32p4", bits: int = 8) -> Path | None:
        """ESP-PPQ's offline export of this model (with its embedded test values), if it made one."""
        p = self.dir / f"ppq_{target}_s{bits}.espdl"
        return p if p.exists() else None

    def ppq_exports(self) -> list[Path]:
        return sorted(self.dir.glob("ppq_*.espdl"))

    def ppq_bit_exact(self, target: str = "esp32p4", bits: int = 8) -> Path | None:
        """ESP-PPQ's export if the emulator reproduced its embedded test values bit-exactly when it was made
        (``ppq_status.json``); None when ESP-PPQ failed or the emulator refused the export."""
        rec = self.ppq_status.get(f"{target}_s{bits}", {})
        return self.ppq(target, bits) if rec.get("emu_test") == "bit-exact" else None

    def __repr__(self) -> str:  # short ids in pytest output
        return f"CorpusModel({self.name})"


def load_inputs(path: Path, names: list[str] | None = None) -> dict[str, np.ndarray]:
    """An .npy (the single input, named ``input`` unless ``names`` says otherwise) or .npz as
    ``{input name: array}``."""
    path = Path(path)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    return {(names or ["input"])[0]: np.load(path, allow_pickle=False)}


def _data_file(d: Path, stem: str) -> Path:
    npz = d / f"{stem}.npz"
    return npz if npz.exists() else d / f"{stem}.npy"


def corpus_models(*, streamable: bool | None = None, root: Path = CORPUS) -> list[CorpusModel]:
    """Every corpus model in the order of ``index.json``; ``streamable=True/False`` filters."""
    index = json.loads((root / "index.json").read_text())["models"]
    status_file = root / "ppq_status.json"
    status = json.loads(status_file.read_text())["models"] if status_file.exists() else {}
    out = []
    for name in index:
        d = root / name
        meta = json.loads((d / "meta.json").read_text())
        if streamable is not None and bool(meta["streamable"]) != streamable:
            continue
        out.append(CorpusModel(name, d, meta, d / "model.onnx", _data_file(d, "calib"), _data_file(d, "heldout"),
                               status.get(name, {})))
    return out
