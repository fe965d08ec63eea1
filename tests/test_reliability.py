"""Reliability guarantees: resource caps, atomic writes, determinism, integrity errors at the CLI."""

from __future__ import annotations

import hashlib
import os
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import chunkwise
from chunkwise import limits
from chunkwise.cli import app
from chunkwise.convert import stream
from chunkwise.emu.session import Session
from chunkwise.emu.streamcheck import split_chunks
from chunkwise.errors import ChunkwiseError, ResourceLimitError
from chunkwise.espdl import container
from chunkwise.espdl.writer import to_bytes, to_flatbuffer
from chunkwise.ir.build import GraphBuilder, random_causal_graph
from chunkwise.model import Model

FIXTURES = Path(__file__).resolve().parent / "fixtures"
GEMM = FIXTURES / "gemm_esp32p4_1_16_kshap_16_16_relu_s8.espdl"
TCN = FIXTURES / "tutorial_tcn_esp32p4_model.espdl"
CONV16 = FIXTURES / "conv2d_ishap_1_16_3_3_kshap_16_16_3_3_s16.espdl"
REFS = FIXTURES / "ppq_refs"
KEY = "000102030405060708090a0b0c0d0e0f"

runner = CliRunner()
warnings.simplefilter("ignore", chunkwise.TargetGuessWarning)


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_clean_error(r, *words: str, code: int = 2):
    out = r.output
    assert r.exit_code == code, out
    assert "Traceback" not in out and "internal error" not in out, out
    assert r.stderr.startswith("error: "), r.stderr
    for w in words:
        assert w.lower() in r.stderr.lower(), r.stderr


@pytest.fixture
def cap():
    """Restores the tensor cap after a test that changes it."""
    yield limits.set_max_tensor_bytes
    limits.set_max_tensor_bytes(None)


def _pad_model(pad: int) -> Model:
    b = GraphBuilder(seed=1)
    x = b.input((1, 8, 4))
    y = b.pad_time(x, pad)
    b.output(y)
    return Model(b.g)


# ---- resource limits ----------------------------------------------------------------------------------
def test_declared_huge_intermediate_is_refused_before_allocation():
    """2**40 padded frames would need a terabyte: refused by the planner under the default cap (an
    attempt to allocate would raise MemoryError or be killed, not ResourceLimitError)."""
    m = _pad_model(2**40)
    with pytest.raises(ResourceLimitError, match="limit"):
        m.run({"input": np.zeros((1, 8, 4), np.int8)})


def test_cap_from_set_max_tensor_bytes(cap):
    m = chunkwise.load(GEMM)
    m.run(m.test_feeds())
    m2 = Model(m.graph, target=m.target)  # a fresh plan cache
    cap(8)  # the 16-element int8 output alone is 16 bytes
    with pytest.raises(ResourceLimitError, match="CHUNKWISE_MAX_TENSOR_BYTES"):
        m2.run(m2.test_feeds())


def test_cap_applies_to_initializers_when_reading(cap):
    cap(64)  # the Gemm weight is 256 bytes
    with pytest.raises(ResourceLimitError):
        chunkwise.load(GEMM)


def test_cap_from_environment_at_the_cli(monkeypatch):
    monkeypatch.setenv("CHUNKWISE_MAX_TENSOR_BYTES", "8")
    r = cli("emu", "test", GEMM)
    assert_clean_error(r, "limit")
    monkeypatch.setenv("CHUNKWISE_MAX_TENSOR_BYTES", "lots")
    assert_clean_error(cli("emu", "test", GEMM), "CHUNKWISE_MAX_TENSOR_BYTES")


def test_huge_streaming_cache_window_is_refused(cap):
    g = chunkwise.load(REFS / "tcn_rand0" / "esp32p4_s8_streaming_bound.espdl").graph
    node = next(n for n in g.nodes if n.op_type == "StreamingCache")
    node.set_attr("window_size", 2**40)
    m = Model(g, target="esp32p4")
    shape = m.graph.inputs[0].shape
    with pytest.raises(ResourceLimitError):
        m.run({m.graph.inputs[0].name: np.zeros(shape, np.int8)})


# ---- atomic writes ------------------------------------------------------------------------------------
def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.parametrize("fail_at", ["write", "fsync", "replace", "interrupt"])
def test_failed_save_keeps_the_existing_file_and_leaves_no_temp(tmp_path, monkeypatch, fail_at):
    m = chunkwise.load(GEMM)
    out = tmp_path / "model.espdl"
    out.write_bytes(b"previous contents")

    class Boom(Exception):
        pass

    if fail_at == "write":
        real_fdopen = os.fdopen

        class Half:
            def __init__(self, f):
                self.f = f

            def __enter__(self):
                return self

            def __exit__(self, *a):
                self.f.close()

            def write(self, data):
                self.f.write(data[: len(data) // 2])  # half of it reaches the disk, then the failure
                raise Boom("disk full")

        monkeypatch.setattr(container.os, "fdopen", lambda fd, mode: Half(real_fdopen(fd, mode)))
    elif fail_at == "fsync":
        monkeypatch.setattr(container.os, "fsync", lambda fd: (_ for _ in ()).throw(Boom("I/O error")))
    elif fail_at == "replace":
        monkeypatch.setattr(container.os, "replace", lambda a, b: (_ for _ in ()).throw(Boom("rename failed")))
    else:
        monkeypatch.setattr(container.os, "fsync", lambda fd: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises((Boom, KeyboardInterrupt)):
        m.save(out)
    assert out.read_bytes() == b"previous contents"
    assert _leftovers(tmp_path) == []


def test_failed_serialization_never_touches_the_output(tmp_path, monkeypatch):
    m = chunkwise.load(GEMM)
    out = tmp_path / "model.espdl"
    out.write_bytes(b"previous contents")
    m.graph.initializers[next(iter(m.graph.initializers))].dtype = "no-such-dtype"
    with pytest.raises(Exception):
        m.save(out)
    assert out.read_bytes() == b"previous contents"
    assert _leftovers(tmp_path) == []


def test_save_replaces_only_with_a_complete_file(tmp_path):
    m = chunkwise.load(GEMM)
    out = tmp_path / "model.espdl"
    out.write_bytes(b"previous contents")
    m.save(out)
    assert chunkwise.load(out).graph == m.graph
    assert _leftovers(tmp_path) == []


def test_failed_stream_conversion_writes_nothing(tmp_path):
    out = tmp_path / "s.espdl"
    out.write_bytes(b"old")
    r = cli("stream", REFS / "tcn_rand0" / "esp32p4_s8.espdl", "-o", out, "--chunk", "3", "--frame-axis", "7")
    assert r.exit_code == 2, r.output
    assert out.read_bytes() == b"old"
    assert _leftovers(tmp_path) == []


def test_emu_run_output_is_atomic(tmp_path, monkeypatch):
    out = tmp_path / "out.npz"
    out.write_bytes(b"old")
    monkeypatch.setattr(container.os, "replace", lambda a, b: (_ for _ in ()).throw(OSError(28, "No space")))
    r = cli("--debug", "emu", "run", GEMM, "-o", out)
    assert r.exit_code != 0
    assert out.read_bytes() == b"old"
    assert _leftovers(tmp_path) == []


# ---- determinism --------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", [GEMM, TCN, CONV16], ids=lambda p: p.name)
def test_same_model_and_input_give_identical_bytes(path):
    a = chunkwise.load(path)
    b = chunkwise.load(path)
    feeds = a.test_feeds()
    r1 = a.run(feeds, intermediates=True)
    r2 = a.run(feeds, intermediates=True)  # the same plan again (state reset)
    r3 = b.run(b.test_feeds(), intermediates=True)  # a fresh load and plan
    assert r1.keys() == r2.keys() == r3.keys()
    for k in r1:
        assert r1[k].dtype == r2[k].dtype == r3[k].dtype
        assert r1[k].tobytes() == r2[k].tobytes() == r3[k].tobytes(), k


@pytest.mark.parametrize("path", [GEMM, TCN, CONV16, REFS / "tcn_rand0" / "esp32p4_s8_streaming_bound.espdl"],
                         ids=lambda p: p.name)
def test_save_is_byte_identical(tmp_path, path):
    m = chunkwise.load(path)
    m.save(tmp_path / "a.espdl")
    m.save(tmp_path / "b.espdl")
    a = (tmp_path / "a.espdl").read_bytes()
    assert a == (tmp_path / "b.espdl").read_bytes()
    chunkwise.load(tmp_path / "a.espdl").save(tmp_path / "c.espdl")  # save -> load -> save: a fixed point
    assert a == (tmp_path / "c.espdl").read_bytes()
    g, _ = random_causal_graph(3)
    assert to_bytes(g) == to_bytes(g.copy())
    assert to_bytes(g, bytes(16)) == to_bytes(g, bytes(16))


def _push_paths(model: Model, x: np.ndarray, chunk: int) -> list[dict]:
    name = model.graph.inputs[0].name
    chunks = split_chunks(x, chunk, 1)
    compiled = Session(model, compiled=True)
    by_push = [compiled.push({name: c}) for c in chunks]
    compiled.reset()
    many = compiled.push_many([{name: c} for c in chunks])
    compiled.reset()
    again = compiled.push_many([{name: c} for c in chunks])
    plain = Session(model, compiled=False)
    by_plain = [plain.push({name: c}) for c in chunks]
    return [by_push, many, again, by_plain, compiled.program is not None]


@pytest.mark.parametrize("seed", [0, 1, 5, 11])
def test_push_push_many_and_uncompiled_sessions_agree(seed):
    graph, facts = random_causal_graph(seed)
    offline = Model(graph)
    streaming, _ = stream(offline, facts["chunk"])
    from chunkwise.convert.streaming import random_input

    x = random_input(offline, seed)
    name = next(iter(x))
    by_push, many, again, by_plain, compiled = _push_paths(streaming, x[name], facts["chunk"])
    for o in many:
        stacked_push = np.stack([p[o] for p in by_push])
        stacked_plain = np.stack([p[o] for p in by_plain])
        assert many[o].tobytes() == stacked_push.tobytes() == stacked_plain.tobytes() == again[o].tobytes()
    # and the offline model on the whole input agrees frame by frame (per-frame heads)
    full = offline.run(x)
    for o, want in full.items():
        got = np.concatenate([p[o] for p in by_plain], axis=1)
        if got.shape == want.shape:
            assert got.tobytes() == want.tobytes()


def test_ppq_streaming_model_paths_agree():
    m = chunkwise.load(REFS / "tcn_rand0" / "esp32p4_s8_streaming_bound.espdl")
    shape = m.graph.inputs[0].shape
    x = np.random.default_rng(0).integers(-128, 128, size=(shape[0], shape[1] * 6) + tuple(shape[2:]),
                                          dtype=np.int8)
    by_push, many, again, by_plain, compiled = _push_paths(m, x, shape[1])
    for o in many:
        assert many[o].tobytes() == np.stack([p[o] for p in by_push]).tobytes()
        assert many[o].tobytes() == np.stack([p[o] for p in by_plain]).tobytes()
        assert many[o].tobytes() == again[o].tobytes()


# ---- integrity at the command line --------------------------------------------------------------------
@pytest.fixture(scope="module")
def encrypted(tmp_path_factory) -> Path:
    g = chunkwise.load(GEMM).graph
    p = tmp_path_factory.mktemp("enc") / "enc.espdl"
    p.write_bytes(container.wrap_edl2(to_flatbuffer(g), bytes.fromhex(KEY)))
    return p


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("pkg") / "pkg.espdl"
    p.write_bytes(container.pack_pdl3([("conv", CONV16.read_bytes()), ("gemm", GEMM.read_bytes())]))
    return p


@pytest.mark.parametrize("cmd", [("emu", "test"), ("emu", "run"), ("inspect",)])
def test_encrypted_model_key_errors(encrypted, cmd):
    assert cli(*cmd, encrypted, "--key", KEY).exit_code == 0
    assert_clean_error(cli(*cmd, encrypted), "encrypted", "key")
    assert_clean_error(cli(*cmd, encrypted, "--key", "ff" * 16), "key is wrong")
    assert_clean_error(cli(*cmd, encrypted, "--key", "abc"), "key")


@pytest.mark.parametrize("cmd", [("emu", "test"), ("inspect",)])
def test_pdl3_hash_mismatch_and_truncation(tmp_path, package, cmd):
    assert cli(*cmd, package, "--model", "gemm").exit_code == 0
    data = bytearray(package.read_bytes())
    data[-200] ^= 0x10  # one bit inside the second model
    bad = tmp_path / "bad.espdl"
    bad.write_bytes(bytes(data))
    assert_clean_error(cli(*cmd, bad, "--model", "gemm"), "SHA-256")
    short = tmp_path / "short.espdl"
    short.write_bytes(package.read_bytes()[:-100])
    assert_clean_error(cli(*cmd, short, "--model", "gemm"), "package_size")
    # size and hash made consistent again: the truncation is found inside the model
    cut = bytearray(package.read_bytes()[:-100])
    struct.pack_into("<I", cut, 20, len(cut))
    cut[24:56] = bytes(32)
    cut[24:56] = hashlib.sha256(bytes(cut)).digest()
    short.write_bytes(bytes(cut))
    assert_clean_error(cli(*cmd, short, "--model", "gemm"), "FlatBuffer")


@pytest.mark.parametrize("cut", [0, 3, 11, 15, 40, 500, -1])
def test_truncated_model_is_a_clean_error(tmp_path, cut):
    data = TCN.read_bytes()
    p = tmp_path / "t.espdl"
    p.write_bytes(data[:cut] if cut >= 0 else data[:-1 - len(data) // 3])
    for cmd in (("emu", "test"), ("emu", "run"), ("inspect",)):
        assert_clean_error(cli(*cmd, p))


def test_corrupt_header_fields_are_named(tmp_path):
    data = bytearray(GEMM.read_bytes())
    p = tmp_path / "m.espdl"
    struct.pack_into("<I", data, 4, 7)  # encryption mode 7
    p.write_bytes(bytes(data))
    assert_clean_error(cli("emu", "test", p), "encryption mode")
    data = bytearray(GEMM.read_bytes())
    struct.pack_into("<I", data, 8, 0xFFFFFFF0)  # FlatBuffer size beyond the file
    p.write_bytes(bytes(data))
    assert_clean_error(cli("emu", "test", p), "size")
    p.write_bytes(b"ONNX" + bytes(100))
    assert_clean_error(cli("emu", "test", p), "magic")


# ---- validation before compiled code --------------------------------------------------------------------
def _gemm_graph():
    return chunkwise.load(GEMM).graph


@pytest.mark.parametrize("change,words", [
    (lambda g: g.nodes[0].outputs.clear(), "no outputs"),
    (lambda g: g.nodes[0].inputs.__setitem__(slice(1, None), []), "input 1 is missing"),
    (lambda g: g.nodes[0].inputs.__setitem__(0, ""), "input 0 is empty"),
    (lambda g: setattr(g.nodes[0], "op_type", "Neg"), "3 input(s) is not a valid input count"),
    (lambda g: g.nodes[0].set_attr("transB", [0, 1]), "attribute 'transB' is of kind ints"),
    (lambda g: g.nodes[0].set_attr("activation", 3), "attribute 'activation' is of kind int"),
    (lambda g: setattr(g.outputs[0], "exponents", (2**40,)), "outside [-64, 64]"),
    (lambda g: setattr(g.initializers[g.nodes[0].inputs[1]], "exponents", (-65,)), "outside [-64, 64]"),
    # fuzzing: an initializer whose raw data was lost reached ReverseSequence's run() as a missing value
    (lambda g: setattr(g.initializers[g.nodes[0].inputs[1]], "data", None), "carries no data"),
])
def test_invalid_nodes_are_refused_with_the_node_named(change, words):
    g = _gemm_graph()
    change(g)
    m = Model(g, target="esp32p4")
    with pytest.raises(ChunkwiseError) as e:
        m.run(m.test_feeds())
    assert words in str(e.value)
    if "missing" in words or "kind" in words or "outputs" in words or "no data" in words:
        assert g.nodes[0].name in str(e.value)


def test_every_attribute_a_kernel_reads_has_a_checked_kind():
    """The engine checks an attribute's kind (int, string, ints ...) before a kernel reads it, but only for
    names the operator definitions declare: a name missing there reaches the kernel unchecked (fuzzing
    found ``gate_exponent=[-1e30]`` crashing GRU with a TypeError). Every name a kernel reads must be declared."""
    import re

    from chunkwise.ir.ops import attr_kinds

    ATTR_KIND = attr_kinds()

    src = Path(chunkwise.__file__).parent / "emu"
    read = set()
    for f in src.rglob("*.py"):
        read |= set(re.findall(r'(?:node|ctx)\.attr\("([A-Za-z0-9_]+)"', f.read_text()))
    assert len(read) > 40
    assert sorted(read - set(ATTR_KIND)) == []


def test_gru_with_a_float_list_gate_exponent_is_refused():
    g = chunkwise.load(FIXTURES / "golden" / "esp32p4_s16" / "GRU" / "gru_3_7_5_1_1_s16.espdl").graph
    (node,) = [n for n in g.nodes if n.op_type == "GRU"]
    node.set_attr("gate_exponent", [-1e30])
    m = Model(g, target="esp32p4")
    with pytest.raises(ChunkwiseError, match="attribute 'gate_exponent' is of kind"):
        m.run(m.test_feeds())


def test_kernel_bugs_are_not_hidden(monkeypatch):
    """An exception that is not a ChunkwiseError from a kernel's prepare() propagates (it is a bug):
    the CLI reports it as an internal error, it is not dressed up as a model problem."""
    from chunkwise.emu import registry

    def broken(node, ctx, ins, outs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setitem(registry.KERNELS, "Gemm", broken)
    m = chunkwise.load(GEMM)
    with pytest.raises(ZeroDivisionError):
        m.run(m.test_feeds())
    r = cli("emu", "test", GEMM)
    assert r.exit_code == 1 and "internal error" in r.stderr


def test_float_input_with_a_huge_exponent_is_refused():
    """Fuzzing: quantizing a float input at exponent -2**62 overflowed (OverflowError) before the
    engine's exponent check ran."""
    g = _gemm_graph()
    g.inputs[0].exponents = (-(2**62),)
    m = Model(g, target="esp32p4")
    x = np.zeros(g.inputs[0].shape, dtype=np.float32)
    with pytest.raises(ChunkwiseError, match=r"outside \[-64, 64\]"):
        m.run({g.inputs[0].name: x})


def _zoo_files():
    from conftest import SHARED

    return sorted((SHARED / "zoo").glob("*.espdl")) if (SHARED / "zoo").is_dir() else []


@pytest.mark.parametrize("path", _zoo_files(), ids=lambda p: p.name)
def test_every_zoo_model_runs_end_to_end_deterministically(path):
    """Issue #3's "every model in ../shared/zoo runs end to end deterministically": two runs of a fresh
    plan and a second model object give identical outputs; files with ESP-PPQ test values match them."""
    from chunkwise.emu.check import check_test_values

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a, b = chunkwise.load(path), chunkwise.load(path)
    if a.graph.test_inputs:
        feeds = a.test_feeds()
        assert all(c.bit_exact for c in check_test_values(a))
    else:
        rng = np.random.default_rng(0)
        feeds = {v.name: rng.integers(-100, 101, size=v.shape).astype(v.dtype)
                 for v in a.graph.inputs if v.name not in a.graph.initializers}
    first, second, other = a.run(feeds), a.run(feeds), b.run(feeds)
    assert first.keys() == {v.name for v in a.graph.outputs}
    for k in first:
        np.testing.assert_array_equal(first[k], second[k])
        np.testing.assert_array_equal(first[k], other[k])
