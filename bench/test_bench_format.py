"""Load-time benchmark of the .espdl reader (pytest-benchmark). Run: ``pytest bench/``.

Loading yolo11n_320_s8_p4.espdl (3 MB, ~300 nodes) should take well under a second; unit tests
assert nothing about time, this file measures it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
YOLO = SHARED / "zoo" / "yolo11n_320_s8_p4.espdl"


@pytest.fixture(scope="module")
def yolo() -> Path:
    if not YOLO.is_file():
        pytest.skip(f"{YOLO} is absent")
    return YOLO


def test_load_yolo11n(benchmark, yolo):
    import chunkwise

    model = benchmark(chunkwise.load, yolo, target="esp32p4")
    assert len(model.graph.nodes) > 100
    assert benchmark.stats.stats.mean < 1.0


def test_read_and_write_yolo11n(benchmark, yolo):
    from chunkwise.espdl.reader import read_model_bytes
    from chunkwise.espdl.writer import to_bytes

    graph, _ = read_model_bytes(yolo.read_bytes())
    data = benchmark(to_bytes, graph)
    assert data[:4] == b"EDL2"


def test_inspect_yolo11n(benchmark, yolo):
    import chunkwise
    from chunkwise.espdl.inspect import summarize

    model = chunkwise.load(yolo, target="esp32p4")
    summary = benchmark(summarize, model)
    assert summary["node_count"] == len(model.graph.nodes)
