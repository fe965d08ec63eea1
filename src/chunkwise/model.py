"""The public Model object: load / save / run / session."""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import numpy as np

from .emu.rounding import TARGETS
from .errors import ShapeError, UnsupportedError
from .espdl import container
from .espdl.reader import read_file
from .espdl.writer import write_file
from .ir.graph import Graph

if TYPE_CHECKING:
    from .emu.session import Session

_NAME_HINTS = (
    (re.compile(r"esp32p4|_p4(?=[_.]|$)", re.I), "esp32p4"),
    (re.compile(r"esp32s31", re.I), "esp32s31"),
    (re.compile(r"esp32s3|_s3(?=[_.]|$)", re.I), "esp32s3"),
    (re.compile(r"(^|_)c(?=_)", re.I), "c"),
)


class TargetGuessWarning(UserWarning):
    """The file does not say which chip it is for; the target was guessed."""


def infer_target(graph: Graph, path: str | None) -> tuple[str, str]:
    """(target, how): from metadata ``target``, else the file name, else the weight layouts, else esp32p4.

    ESP-PPQ >= 1.3 writes ``target`` into ``metadata_props``. Older files don't; their esp32p4 and
    esp32s3 versions differ only in rounding, so the guess matters: pass ``target=`` to be sure.
    """
    t = graph.metadata.get("target")
    if t:
        if t not in TARGETS:
            raise UnsupportedError(f"metadata target {t!r} is unknown", supported=sorted(TARGETS))
        return t, "metadata"
    if path:
        stem = Path(path).name
        for rx, target in _NAME_HINTS:
            if rx.search(stem):
                return target, "file name"
    layouts = {t.layout for t in graph.initializers.values() if t.layout}
    if layouts & {"NHWC", "NWC", "HWCN", "WCN"} and not any(l and l.startswith("(N/") for l in layouts):
        return "c", "unpacked weight layouts"
    return "esp32p4", "default"


class Model:
    """A quantized ESP-DL model: its graph, target and container facts."""

    def __init__(self, graph: Graph, *, target: str | None = None, path: str | None = None,
                 info: dict | None = None):
        self.graph = graph
        self.path = path
        self.info = info or {}
        if target is not None:
            if target not in TARGETS:
                raise UnsupportedError(f"target {target!r} is unknown", supported=sorted(TARGETS))
            self.target, self.target_source = target, "given"
        else:
            # inside a package, the entry's own name (e.g. "tcn_esp32s3.espdl") is the hint, not the package's
            packaged = str(self.info.get("container", "")).startswith("PDL") and self.info.get("entry")
            self.target, self.target_source = infer_target(graph, self.info["entry"] if packaged else path)
            if self.target_source not in ("metadata",):
                warnings.warn(
                    f"{path or 'model'} does not record its target; guessed {self.target} from the "
                    f"{self.target_source}. Pass target=... (CLI: --target) to be sure.",
                    TargetGuessWarning, stacklevel=4,
                )
        self._plans: dict = {}

    # ---- construction / persistence ------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path, *, key=None, model=None, target: str | None = None) -> "Model":
        graph, info = read_file(path, key=container.parse_key(key), model=model)
        return cls(graph, target=target, path=str(path), info=info)

    def save(self, path: str | Path, *, key=None) -> None:
        write_file(self.graph, path, container.parse_key(key))

    # ---- facts ---------------------------------------------------------------------------
    @property
    def inputs(self):
        return list(self.graph.inputs)

    @property
    def outputs(self):
        return list(self.graph.outputs)

    @property
    def target_guessed(self) -> bool:
        return self.target_source not in ("metadata", "given")

    def __repr__(self) -> str:
        return (f"Model({Path(self.path).name if self.path else self.graph.name!r}, target={self.target}, "
                f"nodes={len(self.graph.nodes)})")

    # ---- running -------------------------------------------------------------------------
    def plan(self, shapes: dict[str, tuple[int, ...]]):
        from .emu.engine import Plan

        key = tuple(sorted((k, tuple(v)) for k, v in shapes.items()))
        plan = self._plans.get(key)
        if plan is None:
            plan = Plan(self.graph, self.target, shapes)
            self._plans[key] = plan
        return plan

    def _input_names(self, feeds) -> list[str]:
        names = [v.name for v in self.graph.inputs if v.name not in self.graph.initializers]
        unknown = set(feeds) - set(names)
        if unknown:
            raise ShapeError(f"unknown input(s) {sorted(unknown)}; the model's inputs are {names}")
        missing = [n for n in names if n not in feeds]
        if missing:
            raise ShapeError(f"missing input(s) {missing}; the model's inputs are {names}")
        return names

    def _coerce(self, v, a: np.ndarray) -> np.ndarray:
        """dtype of one input: float is quantized with its exponent, integers range-checked."""
        from .emu.engine import check_exponents
        from .emu.rounding import qrange, quantize, rounding_mode

        if v.dtype in ("int8", "int16"):
            if len(v.exponents) != 1:
                raise ShapeError(f"input {v.name!r} has {len(v.exponents)} exponents in the model; "
                                 "a quantized input needs exactly one")
            check_exponents(v.name, v.exponents)
            if a.dtype.kind == "f":
                a = quantize(a, v.exponent, v.dtype, rounding_mode(self.target))
            elif a.dtype.kind in "iub":
                lo, hi = qrange(v.dtype)
                if a.size and (a.min() < lo or a.max() > hi):
                    raise ShapeError(f"input {v.name!r} has values outside {v.dtype} [{lo}, {hi}]")
                a = a.astype(v.dtype, copy=False)
            else:
                raise ShapeError(f"input {v.name!r} has dtype {a.dtype}; give {v.dtype} integers or floats")
        elif v.dtype == "float32":
            a = a.astype(np.float32, copy=False)
        return np.ascontiguousarray(a)

    def prepare_inputs(self, feeds: dict[str, np.ndarray], *, fixed_shape: bool = True,
                       batch: bool = False) -> dict[str, np.ndarray]:
        """Validate names, shapes and dtypes; float input is quantized with the input exponent.

        ``batch=True``: every array has one extra leading axis (a sequence of chunks), validated at once.
        """
        self._input_names(feeds)
        out = {}
        for v in self.graph.inputs:
            if v.name not in feeds:
                continue
            a = np.asarray(feeds[v.name])
            shape = a.shape[1:] if batch else a.shape
            declared = tuple(v.shape or ())
            if fixed_shape and declared and all(isinstance(d, int) for d in declared) and shape != declared:
                what = "each chunk" if batch else f"input {v.name!r}"
                raise ShapeError(f"{what} has shape {shape}, the model expects {declared}")
            if len(declared) and len(shape) != len(declared):
                raise ShapeError(f"input {v.name!r} has {len(shape)} dims, the model expects {len(declared)}")
            out[v.name] = self._coerce(v, a)
        return out

    def run(self, feeds: dict[str, np.ndarray], *, intermediates: bool = False) -> dict[str, np.ndarray]:
        """Run once from a fresh state. Arrays in the model's own layout (NHWC / NWC).

        Runs the model's cached plan (:meth:`plan`), which no :class:`Session` runs: sessions keep
        their state, whatever runs in between."""
        x = self.prepare_inputs(feeds)
        plan = self.plan({k: v.shape for k, v in x.items()})
        plan.reset()
        return plan.run(x, keep=intermediates)

    def test_feeds(self) -> dict[str, np.ndarray]:
        return {k: t.data for k, t in self.graph.test_inputs.items()}

    def session(self, compiled: bool = True) -> "Session":
        """A new streaming session with its own zeroed caches (see :class:`chunkwise.emu.session.Session`)."""
        from .emu.session import Session

        return Session(self, compiled=compiled)

    def dequantize(self, name: str, value: np.ndarray) -> np.ndarray:
        from .emu.rounding import dequantize

        v = self.graph.info(name)
        if value.dtype.kind == "f" or v is None or len(v.exponents) != 1:
            return np.asarray(value, dtype=np.float32)
        return dequantize(value, v.exponent)


def load(path: str | Path, *, key=None, model=None, target: str | None = None) -> Model:
    """Load an ``.espdl`` file (EDL1/EDL2, PDL1/2/3 packages with ``model=NAME|INDEX``, AES with ``key=``)."""
    return Model.load(path, key=key, model=model, target=target)


def iter_models(path: str | Path, *, key=None, target=None) -> Iterable[Model]:
    from .espdl.container import list_entries

    blob = Path(path).read_bytes()
    _, entries = list_entries(memoryview(blob), str(path))
    for i in range(len(entries)):
        yield load(path, key=key, model=i, target=target)
