"""``chunkwise emu run``: --input (.npy / .npz, integer or float), --output (raw and dequantized), --dump, --json.

The model is ESP-DL's own Gemm test model (``tests/fixtures``), whose embedded outputs were computed by
ESP-PPQ: the checks below compare with those, not with values this project computed.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import chunkwise
from chunkwise.cli import app

pytestmark = pytest.mark.filterwarnings("ignore::chunkwise.model.TargetGuessWarning")

GEMM = Path(__file__).resolve().parent / "fixtures" / "gemm_esp32p4_1_16_kshap_16_16_relu_s8.espdl"


def _cli(*args):
    r = CliRunner().invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r


@pytest.fixture(scope="module")
def gemm():
    m = chunkwise.load(GEMM)
    (x_name,) = m.test_feeds()
    (y_name, y) = next(iter(m.graph.test_outputs.items()))
    return m, x_name, m.test_feeds()[x_name], y_name, y.data


def _dump_index(folder: Path) -> dict[str, Path]:
    lines = (folder / "index.txt").read_text().splitlines()[1:]
    return {line.split("\t")[1]: folder / line.split("\t")[0] for line in lines}


def test_output_npz_holds_raw_and_dequantized_golden_values(gemm, tmp_path):
    m, _, _, y_name, golden = gemm
    out = tmp_path / "out.npz"
    _cli("emu", "run", GEMM, "--output", out)  # no --input: the embedded test input
    with np.load(out) as z:
        raw, flt = z[y_name], z[f"{y_name}.float"]
    np.testing.assert_array_equal(raw, golden.reshape(raw.shape))
    e = m.graph.info(y_name).exponent
    assert flt.dtype == np.float32
    np.testing.assert_array_equal(flt, (raw.astype(np.float64) * 2.0 ** e).astype(np.float32))


@pytest.mark.parametrize("form", ["npy", "npz"])
def test_integer_input_files_are_used_as_they_are(gemm, tmp_path, form):
    _, x_name, x, y_name, golden = gemm
    path = tmp_path / f"x.{form}"
    np.save(path, x) if form == "npy" else np.savez(path, **{x_name: x})
    out = tmp_path / "out.npz"
    _cli("emu", "run", GEMM, "--input", path, "--output", out)
    with np.load(out) as z:
        np.testing.assert_array_equal(z[y_name], golden.reshape(z[y_name].shape))


@pytest.mark.parametrize("target,want", [("esp32p4", [2, -2]), ("esp32s3", [3, -1])])
def test_float_input_is_quantized_with_the_targets_rounding(gemm, tmp_path, target, want):
    """x * 2**-e exactly on a tie: esp32p4 rounds half to even, esp32s3 half up (floor(v + 0.5))."""
    m, x_name, x, _, _ = gemm
    e = m.graph.info(x_name).exponent
    xf = (x.astype(np.float64) * 2.0 ** e).astype(np.float32)  # exact: dequantized test input
    xf.flat[0], xf.flat[1] = 2.5 * 2.0 ** e, -1.5 * 2.0 ** e
    np.save(tmp_path / "x.npy", xf)
    dump = tmp_path / "dump"
    _cli("emu", "run", GEMM, "--input", tmp_path / "x.npy", "--dump", dump, "--target", target)
    q = np.load(_dump_index(dump)[x_name])
    assert q.dtype == np.int8
    assert q.flat[:2].tolist() == want
    np.testing.assert_array_equal(q.ravel()[2:], x.ravel()[2:])  # the rest round-trips exactly


def test_dump_writes_every_value_as_the_model_computes_it(gemm, tmp_path):
    m, x_name, x, y_name, golden = gemm
    dump = tmp_path / "dump"
    _cli("emu", "run", GEMM, "--dump", dump)
    index = _dump_index(dump)
    want = m.run(m.test_feeds(), intermediates=True)
    assert set(index) == set(want) and {x_name, y_name} <= set(index)
    for name, f in index.items():
        np.testing.assert_array_equal(np.load(f), want[name], err_msg=name)
    np.testing.assert_array_equal(np.load(index[y_name]), golden.reshape(want[y_name].shape))


def test_json_describes_each_output(gemm):
    _, _, _, y_name, golden = gemm
    doc = json.loads(_cli("emu", "run", GEMM, "--json").stdout)
    out = doc["outputs"][y_name]
    assert doc["target"] == "esp32p4"
    assert out["dtype"] == "int8" and out["min"] == golden.min() and out["max"] == golden.max()


def _copy_without_target_hints(src: Path, dst: Path, *, keep_metadata: bool) -> Path:
    m = chunkwise.load(src)
    if not keep_metadata:
        m.graph.metadata.pop("target", None)
    m.save(dst)
    return dst


@pytest.mark.parametrize("src,keep,name,want", [
    ("golden/esp32s3_s8/Gemm", True, "m.espdl", ("esp32s3", "metadata")),
    ("golden/esp32s3_s8/Gemm", False, "m_esp32s3.espdl", ("esp32s3", "file name")),
    ("golden/c_s8/Gemm", False, "m.espdl", ("c", "unpacked weight layouts")),
    ("golden/esp32s3_s8/Gemm", False, "m.espdl", ("esp32p4", "default")),
])
def test_target_inference_and_override(tmp_path, src, keep, name, want):
    """The target comes from the metadata, else the file name, else the weight layouts (c keeps them
    unpacked), else esp32p4; every guess warns; --target / target= override it."""
    folder = Path(__file__).resolve().parent / "fixtures" / src
    path = _copy_without_target_hints(sorted(folder.glob("*.espdl"))[0], tmp_path / name, keep_metadata=keep)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        m = chunkwise.load(path)
    assert (m.target, m.target_source) == want
    guessed = [w for w in record if issubclass(w.category, chunkwise.TargetGuessWarning)]
    assert len(guessed) == (0 if want[1] == "metadata" else 1)
    assert chunkwise.load(path, target="esp32s31").target_source == "given"
    doc = json.loads(_cli("emu", "test", path, "--json", "--target", "c").stdout)
    assert (doc["target"], doc["target_source"]) == ("c", "given")


def test_unknown_operator_is_named_with_the_supported_list(tmp_path):
    from chunkwise.errors import UnsupportedError

    m = chunkwise.load(GEMM)
    m.graph.nodes[0].op_type = "NoSuchOp"
    path = tmp_path / "unknown.espdl"
    m.save(path)
    with pytest.raises(UnsupportedError) as e:
        chunkwise.load(path).run(m.test_feeds())
    text = str(e.value)
    assert "NoSuchOp" in text and m.graph.nodes[0].name in text and "Gemm" in text and "StreamingCache" in text
    r = CliRunner().invoke(app, ["emu", "test", str(path)])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "NoSuchOp" in r.stderr and "Supported" in r.stderr
