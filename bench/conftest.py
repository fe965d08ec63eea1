"""Shared fixtures of the benchmarks (see bench/run.py for how they are run and reported).

Every benchmark records what it measured in ``benchmark.extra_info`` so that ``bench/run.py`` can
build the table from pytest-benchmark's JSON alone:

* ``key``: what was measured (``bench/run.py`` pairs keys into table rows: ours vs peer);
* ``label``: what exactly ran;
* ``per``: the timed call covers this many items (chunks): the row shows median / per;
* ``value`` + ``unit``: for figures that are not the timed call itself (memory, bytes, a time measured
  inside a subprocess): the row shows the value instead of the timing.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
ZOO = SHARED / "zoo"
FIXTURES = REPO / "tests" / "fixtures"
TCN_STREAM = "tutorial_tcn_esp32p4_streaming_model.espdl"
TCN_OFFLINE = "tutorial_tcn_esp32p4_model.espdl"
CHUNK_FRAMES = 3
N_CHUNKS = 1000


def zoo_path(name: str) -> Path:
    p = ZOO / name
    if not p.exists():
        pytest.skip(f"{p} is absent (../shared/zoo beside the repository)")
    return p


def load(name: str):
    import chunkwise

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return chunkwise.load(zoo_path(name))


def record(benchmark, key: str, label: str, *, per: int = 1, value=None, unit: str = "s", **more) -> None:
    benchmark.extra_info.update(key=key, label=label, per=per, unit=unit, **more)
    if value is not None:
        benchmark.extra_info["value"] = value


def ort_session(model_proto, threads: int | None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads is not None:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model_proto.SerializeToString(), so, providers=["CPUExecutionProvider"])


def ort_version() -> str:
    import onnxruntime as ort

    return ort.__version__


def receptive_frames(graph, chunk: int) -> int:
    """Frames one output step of a causal 1-D model needs: the chunk plus, along the longest path, the
    history of every time kernel (``(k - 1) * dilation`` of Conv / AveragePool / MaxPool)."""
    need: dict[str, int] = {v.name: 0 for v in graph.inputs}
    for n in graph.nodes:
        h = max((need.get(i, 0) for i in n.inputs if i), default=0)
        if n.op_type in ("Conv", "AveragePool", "MaxPool"):
            ks = n.attr("kernel_shape") or [1]
            d = (n.attr("dilations") or [1])[-1]
            h += (int(ks[-1]) - 1) * int(d)
        for o in n.outputs:
            need[o] = h
    return chunk + max(need.get(v.name, 0) for v in graph.outputs)


@pytest.fixture(scope="session")
def tcn_chunks():
    rng = np.random.default_rng(0)
    return rng.integers(-100, 101, size=(N_CHUNKS, 1, CHUNK_FRAMES, 16)).astype(np.int8)


@pytest.fixture(scope="session")
def python_exe() -> str:
    return sys.executable


@pytest.fixture(scope="session")
def ppq_python():
    exe = os.environ.get("CHUNKWISE_PPQ_PYTHON", "/work/ppqvenv/bin/python")
    if not Path(exe).exists():
        pytest.skip(f"no ESP-PPQ venv ({exe}); set CHUNKWISE_PPQ_PYTHON to a python with esp_ppq and torch")
    return exe
