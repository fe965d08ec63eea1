"""``chunkwise inspect`` / ``chunkwise pack`` through typer's CliRunner, plus the inspect summary and
ONNX export they are built on."""

from __future__ import annotations

import json
import math
import struct
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from typer.testing import CliRunner

import chunkwise
from chunkwise.cli import app
from chunkwise.espdl import container
from chunkwise.espdl.inspect import render_text, summarize
from chunkwise.espdl.onnx_export import ESPDL_DOMAIN, to_onnx
from chunkwise.espdl.reader import read_file

FIXTURES = Path(__file__).resolve().parent / "fixtures"
GEMM = FIXTURES / "gemm_esp32p4_1_16_kshap_16_16_relu_s8.espdl"
TCN = FIXTURES / "tutorial_tcn_esp32p4_model.espdl"
CONV16 = FIXTURES / "conv2d_ishap_1_16_3_3_kshap_16_16_3_3_s16.espdl"
FIXTURE_FILES = sorted(FIXTURES.glob("*.espdl"))
KEY_HEX = "2b7e151628aed2a6abf7158809cf4f3c"

runner = CliRunner()
pytestmark = pytest.mark.filterwarnings("ignore::chunkwise.model.TargetGuessWarning")


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def assert_clean_error(result, code: int = 2, match: str | None = None):
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert result.stderr.startswith("error: "), result.stderr
    if match:
        assert match in result.stderr


# ---- inspect: text -------------------------------------------------------------------------
@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: p.name)
def test_inspect_text(path):
    r = run("inspect", path)
    assert r.exit_code == 0, r.output
    g, _ = read_file(path)
    out = r.stdout
    assert path.name in out
    for n in g.nodes:
        assert n.name in out
    for v in g.inputs + g.outputs:
        assert v.name in out
    assert "peak memory" in out and "test values  yes" in out


def test_inspect_text_table_is_aligned():
    s = summarize(chunkwise.load(TCN))
    lines = render_text(s).splitlines()
    header = next(i for i, l in enumerate(lines) if l.startswith("#"))
    rows = lines[header:header + 1 + s["node_count"]]
    col = rows[0].index("name")
    assert all(len(r) > col and r[col - 2:col] == "  " for r in rows[1:])
    assert [r.split()[1] for r in rows[1:]] == [n["op"] for n in s["nodes"]]


def test_inspect_target_option_and_guess():
    r = run("inspect", TCN)
    assert "guessed esp32p4" in r.stderr  # the file does not record its target
    assert "target       esp32p4 (from file name; pass --target to be sure)" in r.stdout
    r = run("inspect", TCN, "--target", "esp32s3", "--json")
    assert r.exit_code == 0
    assert json.loads(r.stdout)["target"] == {"name": "esp32s3", "source": "given", "guessed": False}
    assert_clean_error(run("inspect", TCN, "--target", "esp99"), match="esp99")


# ---- inspect: JSON -------------------------------------------------------------------------
@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: p.name)
def test_inspect_json_is_one_document_matching_the_model(path):
    r = run("inspect", path, "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)  # exactly one JSON document on stdout
    m = chunkwise.load(path)
    g = m.graph
    assert doc["schema"] == "chunkwise.inspect/1"
    assert doc["file"] == str(path)
    assert doc["container"]["format"] == "EDL2" and doc["container"]["encrypted"] is False
    assert doc["container"]["file_bytes"] == path.stat().st_size
    assert doc["node_count"] == len(g.nodes) == len(doc["nodes"])
    assert [n["op"] for n in doc["nodes"]] == [n.op_type for n in g.nodes]
    assert [n["name"] for n in doc["nodes"]] == [n.name for n in g.nodes]
    assert [v["name"] for v in doc["inputs"]] == [v.name for v in g.inputs]
    assert [v["exponents"] for v in doc["outputs"]] == [list(v.exponents) for v in g.outputs]
    assert sum(doc["op_histogram"].values()) == len(g.nodes)
    assert doc["parameters"]["bytes"] == sum(t.data.nbytes for t in g.initializers.values())
    assert doc["parameters"]["tensors"] == len(g.initializers)
    assert doc["test_values"]["present"] is True
    assert doc["test_values"]["inputs"] == list(g.test_inputs)
    assert doc["shapes"]["source"] in ("planner", "value_info")
    for jn, n in zip(doc["nodes"], g.nodes):
        for k, a in n.attrs.items():
            if a.kind == "string":
                assert jn["attributes"][k] == a.value.decode()
            elif a.kind in ("int", "ints"):
                assert jn["attributes"][k] == a.value
        for ji, name in zip(jn["inputs"], n.inputs):
            assert ji["name"] == name
            if name in g.initializers:
                assert ji["kind"] == "initializer" and ji["shape"] == list(g.initializers[name].dims)


def test_inspect_json_shapes_come_from_the_planner_when_it_can_run():
    doc = json.loads(run("inspect", GEMM, "--json").stdout)
    assert doc["shapes"] == {"source": "planner", "note": None}
    assert doc["nodes"][0]["outputs"][0]["shape"] == [1, 16]
    assert doc["macs"] == 16 * 16


def test_inspect_falls_back_to_value_info_and_says_why(monkeypatch):
    from chunkwise.errors import UnsupportedError

    def refuse(self, shapes):
        raise UnsupportedError("operator is not supported by the emulator", node="n", op="Foo")

    monkeypatch.setattr(chunkwise.Model, "plan", refuse)
    s = summarize(chunkwise.load(TCN))
    assert s["shapes"]["source"] == "value_info" and "not supported" in s["shapes"]["note"]
    g, _ = read_file(TCN)
    for jn, n in zip(s["nodes"], g.nodes):
        for o, name in zip(jn["outputs"], n.outputs):
            vi = g.info(name)
            assert o["shape"] == (list(vi.shape) if vi and vi.shape is not None else None)
    assert "* shapes from value info" in render_text(s)


def _naive_peak(g, shapes, dtypes) -> int:
    """Peak of summed live bytes, step by step, written the slow obvious way."""
    names = [v.name for v in g.inputs if v.name not in g.initializers]
    names += [o for n in g.nodes for o in n.outputs if o]
    outs = {v.name for v in g.outputs}
    peak = 0
    for i in range(len(g.nodes)):
        live = 0
        for name in names:
            produced = next((j for j, n in enumerate(g.nodes) if name in n.outputs), 0)
            uses = [j for j, n in enumerate(g.nodes) if name in n.inputs]
            end = len(g.nodes) - 1 if name in outs else max(uses + [produced])
            if produced <= i <= end:
                nbytes = math.prod(shapes[name]) * np.dtype(dtypes[name]).itemsize
                live += -(-nbytes // 16) * 16
        peak = max(peak, live)
    return peak


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: p.name)
def test_peak_memory_matches_a_naive_scan(path):
    s = summarize(chunkwise.load(path))
    g, _ = read_file(path)
    shapes, dtypes = {}, {}
    for n in s["nodes"]:
        for x in n["inputs"] + n["outputs"]:
            if x["name"] and x["shape"] is not None:
                shapes[x["name"]], dtypes[x["name"]] = x["shape"], x["dtype"]
    assert s["memory"]["unknown"] == []
    assert s["memory"]["peak_activation_bytes"] == _naive_peak(g, shapes, dtypes) > 0


def test_inspect_package_selection(tmp_path):
    pkg = tmp_path / "pkg.espdl"
    pkg.write_bytes(container.pack_pdl3([(p.name, p.read_bytes()) for p in (GEMM, TCN)], "v7"))
    r = run("inspect", pkg, "--index", "1", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["container"]["format"] == "PDL3" and doc["container"]["package_version"] == "v7"
    assert doc["container"]["entry"] == TCN.name and doc["container"]["entries"] == [GEMM.name, TCN.name]
    r = run("inspect", pkg, "--model", GEMM.name)
    assert r.exit_code == 0 and "/ops/ops.0/Gemm" in r.stdout and "PDL3 package" in r.stdout
    assert_clean_error(run("inspect", pkg), match="holds 2 models")
    assert_clean_error(run("inspect", pkg, "--index", "5"), match="out of range")
    assert_clean_error(run("inspect", pkg, "--model", "x", "--index", "0"), match="not both")


def test_inspect_encrypted(tmp_path):
    enc = tmp_path / "enc.espdl"
    chunkwise.load(GEMM).save(enc, key=KEY_HEX)
    assert_clean_error(run("inspect", enc), match="encrypted")
    assert_clean_error(run("inspect", enc, "--key", "00" * 16), match="key is wrong")
    r = run("inspect", enc, "--key", KEY_HEX, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["container"]["encrypted"] is True


# ---- inspect --onnx / to_onnx --------------------------------------------------------------
@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: p.name)
def test_onnx_export(path, tmp_path):
    out = tmp_path / "m.onnx"
    r = run("inspect", path, "--onnx", out)
    assert r.exit_code == 0, r.output
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto)
    g, _ = read_file(path)
    assert [n.name for n in proto.graph.node] == [n.name for n in g.nodes]
    assert [n.op_type for n in proto.graph.node] == [n.op_type for n in g.nodes]
    for pn, n in zip(proto.graph.node, g.nodes):
        assert list(pn.input) == n.inputs and list(pn.output) == n.outputs
        # every ESP-DL attribute is kept: as an attribute, or (for a standard op) as node metadata
        kept = {a.name for a in pn.attribute} | {p.key for p in pn.metadata_props}
        assert kept == set(n.attrs)
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    assert list(inits) == list(g.initializers)
    for name, t in g.initializers.items():
        np.testing.assert_array_equal(inits[name], t.data)  # logical data, own dtype
        assert inits[name].dtype == t.data.dtype
    assert [v.name for v in proto.graph.input] == [v.name for v in g.inputs]
    shape = [d.dim_value for d in proto.graph.output[0].type.tensor_type.shape.dim]
    assert shape == list(g.outputs[0].shape)


def test_onnx_export_domains_and_dequantize():
    g, _ = read_file(TCN)
    g.nodes[3].op_type = "StreamingCache"  # an op ONNX does not know
    proto = to_onnx(g)
    onnx.checker.check_model(proto)
    doms = {n.name: n.domain for n in proto.graph.node}
    assert doms[g.nodes[3].name] == ESPDL_DOMAIN
    assert doms[g.nodes[0].name] == ""  # Conv stays a standard op; activation moved to metadata
    conv = proto.graph.node[0]
    assert {p.key: p.value for p in conv.metadata_props}["activation"] == "Linear"
    assert ESPDL_DOMAIN in {o.domain for o in proto.opset_import}
    fproto = to_onnx(g, dequantize=True)
    w = g.initializers["prev_conv.weight"]
    arr = numpy_helper.to_array(next(t for t in fproto.graph.initializer if t.name == w.name))
    assert arr.dtype == np.float32
    np.testing.assert_array_equal(arr, w.data.astype(np.float64) * 2.0 ** w.exponents[0])


def test_onnx_export_of_every_shared_model(tmp_path):
    shared = Path(__file__).resolve().parents[1].parent / "shared" / "zoo"
    files = sorted(shared.glob("*.espdl"))
    if not files:
        pytest.skip(f"{shared} is absent")
    for f in files:
        g, _ = read_file(f)
        onnx.checker.check_model(to_onnx(g))


# ---- errors at the CLI ---------------------------------------------------------------------
def _corruptions(tmp_path: Path) -> list[Path]:
    blob = TCN.read_bytes()
    fb = blob[16:16 + struct.unpack_from("<I", blob, 8)[0]]
    cases = {
        "truncated": blob[:len(blob) // 2],
        "cut_header": blob[:10],
        "wrong_magic": b"XDL2" + blob[4:],
        "size_lies": blob[:8] + struct.pack("<I", 10**8) + blob[12:],
        "fb_truncated": b"EDL2" + struct.pack("<II", 0, 100) + bytes(4) + fb[:100],
        "root_offset": b"EDL2" + struct.pack("<II", 0, len(fb)) + bytes(4) + struct.pack("<I", 2**31) + fb[4:],
        "empty": b"",
    }
    out = []
    for name, data in cases.items():
        p = tmp_path / f"{name}.espdl"
        p.write_bytes(data)
        out.append(p)
    return out


def test_malformed_files_exit_2_without_traceback(tmp_path):
    for p in _corruptions(tmp_path):
        for extra in ([], ["--json"]):
            r = run("inspect", p, *extra)
            assert_clean_error(r)
            assert r.stdout == ""
    assert_clean_error(run("inspect", tmp_path / "absent.espdl"), match="no such file")


def test_debug_shows_the_exception(tmp_path):
    bad = _corruptions(tmp_path)[0]
    r = runner.invoke(app, ["--debug", "inspect", str(bad)])
    assert r.exit_code != 0 and isinstance(r.exception, chunkwise.FormatError)


def test_unexpected_errors_are_reported_as_internal(monkeypatch):
    import chunkwise.espdl.inspect as insp

    def broken(model, **kw):
        raise RuntimeError("boom")

    monkeypatch.setattr(insp, "summarize", broken)
    r = run("inspect", GEMM)
    assert r.exit_code == 1
    assert "internal error: RuntimeError: boom" in r.stderr and "--debug" in r.stderr
    assert "Traceback" not in r.output


def test_main_entry_point(monkeypatch, capsys, tmp_path):
    from chunkwise.cli import main

    bad = _corruptions(tmp_path)[2]
    monkeypatch.setattr(sys, "argv", ["chunkwise", "inspect", str(bad)])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "magic" in err and "Traceback" not in err
    monkeypatch.setattr(sys, "argv", ["chunkwise", "--version"])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code in (0, None)
    assert capsys.readouterr().out.strip() == f"chunkwise {chunkwise.__version__}"


def test_version_and_help():
    r = run("--version")
    assert r.exit_code == 0 and r.stdout.strip() == f"chunkwise {chunkwise.__version__}"
    r = run("--help")
    assert r.exit_code == 0 and "inspect" in r.stdout and "pack" in r.stdout


# ---- pack ----------------------------------------------------------------------------------
def test_pack(tmp_path):
    out = tmp_path / "sub" / "pkg.espdl"
    r = run("pack", GEMM, TCN, CONV16, "-o", out, "--version", "v3.1")
    assert r.exit_code == 0, r.output
    data = out.read_bytes()
    assert data[:4] == b"PDL3" and data[4:20].rstrip(b"\0") == b"v3.1"
    for i, p in enumerate((GEMM, TCN, CONV16)):
        m = chunkwise.load(out, model=p.name)
        assert m.graph.diff(read_file(p)[0]) == []
        assert chunkwise.load(out, model=i).info["entry"] == p.name
    doc = json.loads(run("inspect", out, "--index", "2", "--json").stdout)
    assert doc["container"]["package_version"] == "v3.1" and doc["container"]["entry"] == CONV16.name


def test_pack_keeps_encrypted_models(tmp_path):
    enc = tmp_path / "enc.espdl"
    chunkwise.load(GEMM).save(enc, key=KEY_HEX)
    out = tmp_path / "pkg.espdl"
    assert run("pack", enc, TCN, "-o", out).exit_code == 0
    assert chunkwise.load(out, model="enc.espdl", key=KEY_HEX).info["encrypted"] is True


def test_pack_refuses_bad_inputs(tmp_path):
    out = tmp_path / "pkg.espdl"
    edl1 = tmp_path / "old.espdl"
    blob = GEMM.read_bytes()
    edl1.write_bytes(b"EDL1" + blob[4:12] + blob[16:])
    assert_clean_error(run("pack", edl1, "-o", out), match="EDL2")
    assert_clean_error(run("pack", tmp_path / "absent.espdl", "-o", out), match="no such file")
    broken = tmp_path / "broken.espdl"
    broken.write_bytes(blob[:200])
    assert_clean_error(run("pack", GEMM, broken, "-o", out))
    twin = tmp_path / GEMM.name
    twin.write_bytes(blob)
    assert_clean_error(run("pack", GEMM, twin, "-o", out), match="two models")
    assert_clean_error(run("pack", GEMM, "-o", out, "--version", "x" * 16), match="15")
    r = run("pack", GEMM, "-o", tmp_path)  # a folder: typer's own usage error
    assert r.exit_code == 2 and "Traceback" not in r.output
    a_file = tmp_path / "plain.txt"
    a_file.write_text("x")
    assert_clean_error(run("pack", GEMM, "-o", a_file / "pkg.espdl"), match="cannot write")
    assert not out.exists()
    r = run("pack", "-o", out)
    assert r.exit_code == 2 and "Traceback" not in r.output  # usage error from typer
