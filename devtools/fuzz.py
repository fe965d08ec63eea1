"""A deterministic mutation fuzzer for the .espdl reader and the emulator.

A development tool of the source checkout (not part of the installed package): run it from the
repository root as ``python -m devtools.fuzz [SEEDS ...] -n 50000 --seed 1 --out fuzz-out`` (``--help``
for the options; exit code 0 iff no input crashed or hung). ``tests/test_fuzz.py`` runs the CI
campaign through :func:`run_campaign`.

Every mutated input is made from a seed file by a seeded :class:`random.Random`, so a campaign
(``seeds``, ``n``, ``seed``) always produces the same inputs in the same order.

Mutations
---------
* **bytes**: bit flips, random bytes, truncations, insertions, deletions, and 32-/16-bit field
  overwrites with boundary values (0, 1, 0x7fffffff, 0xffffffff, the buffer size +- k, ...) at the
  positions the reader actually follows (FlatBuffer offsets, vector lengths, vtable entries, found by
  tracing one clean read) and in the container header. PDL3 packages get their SHA-256 recomputed
  half of the time, so mutations also reach the models inside.
* **structured**: the seed is read into the IR, changed (attribute values such as kernel_shape,
  strides, pads, perm, axis set to weird values or deleted; dims, exponents and dtypes of values and
  initializers; deleted initializers and nodes; swapped op types; broken test values; ...) and written
  again with chunkwise's own writer, optionally AES-encrypted. These inputs pass the reader and
  exercise the emulator's validation.

Targets and outcomes
--------------------
* ``read``: :func:`chunkwise.espdl.reader.read_model_bytes` plus :class:`chunkwise.Model`, in this
  process, under a ``SIGALRM`` time limit (main thread only).
* ``run``: the command line, ``chunkwise --debug emu test FILE`` (``emu run`` with a generated input
  when the model has no test values; ``--chunks 1`` as well for streaming models), in worker
  processes, so a segfault or a hang is recorded instead of ending the campaign.
* ``inspect``: ``chunkwise --debug inspect FILE --json`` in the workers (long campaigns).

An input ends ``ok`` (it ran), ``error`` (a clean :class:`~chunkwise.errors.ChunkwiseError`: the CLI
prints ``error: ...``), ``crash`` (any other exception, i.e. a traceback, or a dead worker) or
``hang`` (over the time limit). Crashing and hanging inputs are written to the output folder with a
``.txt`` that says how to reproduce them.
"""

from __future__ import annotations

import copy
import hashlib
import json
import multiprocessing
import os
import random
import shutil
import signal
import struct
import tempfile
import threading
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from chunkwise.errors import ChunkwiseError

FUZZ_KEY = bytes(range(1, 17))  # the AES key of the encrypted inputs the fuzzer makes
OUTCOMES = ("ok", "error", "crash", "hang")
TARGETS = ("read", "run", "inspect")
WORKER_TARGETS = ("run", "inspect")

U32_BOUNDARY = (0, 1, 2, 3, 4, 7, 8, 0x7F, 0x80, 0xFF, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE,
                0xFFFFFFFF)
INT_WEIRD = (0, 1, -1, 2, 3, -2, 7, 16, 255, 256, 65535, 2**31 - 1, -(2**31), 2**32, 2**62, -(2**62))
FLOAT_WEIRD = (0.0, -0.0, 1.0, -1.0, 1e-30, 1e30, -1e30, float("nan"), float("inf"), float("-inf"), 3.4e38)
ATTR_NAMES = ("kernel_shape", "strides", "pads", "dilations", "group", "perm", "axis", "axes", "keepdims",
              "window_size", "frame_axis", "blocksize", "split", "num_outputs", "ceil_mode", "count_include_pad",
              "alpha", "beta", "epsilon", "transA", "transB", "mode", "activation", "lut", "p", "batch_axis",
              "time_axis", "output_padding", "auto_pad", "hidden_size", "direction", "coordinate_transformation_mode",
              "reduction", "allowzero", "quant_type", "storage_order", "fmod", "noop_with_empty_axes")
STRINGS_WEIRD = (b"", b"garbage", b"linear", b"nearest", b"cubic", b"Relu", b"Linear", b"S8", b"S16", b"edge",
                 b"reflect", b"constant", b"SAME_UPPER", b"VALID", b"DCR", b"CRD", b"half_pixel", b"asymmetric",
                 b"\xff\xfe", b"x" * 300)
DTYPES = ("int8", "int16", "int32", "int64", "uint8", "float32", "float64", "bool", "float16", "undefined")


# ---- cases and results ------------------------------------------------------------------------


@dataclass
class Case:
    """One mutated input: the file bytes, the key to load it with, and how it was made."""

    index: int
    seed_name: str
    desc: str
    data: bytes
    key: bytes | None = None
    model: int | None = None  # package entry to select


@dataclass
class Outcome:
    index: int
    target: str
    kind: str  # ok / error / crash / hang
    message: str = ""
    error_type: str = ""
    detail: str = ""  # traceback of a crash
    seconds: float = 0.0


@dataclass
class Report:
    n: int
    seed: int
    seeds: list[str]
    targets: tuple[str, ...]
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    error_types: dict[str, int] = field(default_factory=dict)
    failures: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    out_dir: str | None = None
    slowest: list[dict] = field(default_factory=list)

    @property
    def crashes(self) -> int:
        return sum(c.get("crash", 0) for c in self.counts.values())

    @property
    def hangs(self) -> int:
        return sum(c.get("hang", 0) for c in self.counts.values())

    @property
    def ok(self) -> bool:
        return self.crashes == 0 and self.hangs == 0

    def as_dict(self) -> dict:
        return {"inputs": self.n, "seed": self.seed, "seed_files": self.seeds, "targets": list(self.targets),
                "counts": self.counts, "crashes": self.crashes, "hangs": self.hangs, "passed": self.ok,
                "error_types": self.error_types, "failures": self.failures, "seconds": round(self.seconds, 2),
                "out_dir": self.out_dir, "slowest": self.slowest}

    def render(self) -> str:
        lines = [f"{self.n} mutated inputs from {len(self.seeds)} seed files, seed {self.seed}, "
                 f"{self.seconds:.1f} s"]
        for t in self.targets:
            c = self.counts.get(t, {})
            lines.append(f"  {t:8s} " + ", ".join(f"{k} {c.get(k, 0)}" for k in OUTCOMES))
        if self.error_types:
            lines.append("  clean errors by type: " + ", ".join(f"{k} {v}" for k, v in sorted(self.error_types.items())))
        for f in self.failures[:20]:
            lines.append(f"  {f['kind'].upper()} #{f['index']} [{f['target']}] {f['desc']}: {f['message']}")
            if f.get("file"):
                lines.append(f"      saved {f['file']}")
        if len(self.failures) > 20:
            lines.append(f"  ... {len(self.failures) - 20} more")
        lines.append("PASS: zero crashes, zero hangs" if self.ok else
                     f"FAIL: {self.crashes} crash(es), {self.hangs} hang(s)")
        return "\n".join(lines)


# ---- seeds ------------------------------------------------------------------------------------


@dataclass
class Seed:
    name: str
    data: bytes
    graph: object | None  # the parsed Graph of a plain single model (structured mutations)
    hot32: list[int]  # file positions of 32-bit fields the reader follows
    hot16: list[int]  # file positions of 16-bit fields (vtable entries)
    key: bytes | None = None
    package: bool = False


def _trace_positions(fb, base: int) -> tuple[list[int], list[int]]:
    """Positions (relative to the file, ``base`` = where the FlatBuffer starts) of every field read."""
    from chunkwise.espdl import fbs
    from chunkwise.espdl import reader as R

    hot32: set[int] = set()
    hot16: set[int] = set()

    class Tracing(fbs.Buffer):
        def u32(self, pos, field):
            hot32.add(base + pos)
            return super().u32(pos, field)

        def i32(self, pos, field):
            hot32.add(base + pos)
            return super().i32(pos, field)

        def u16(self, pos, field):
            hot16.add(base + pos)
            return super().u16(pos, field)

    try:
        buf = Tracing(fb)
        g = buf.root("Model").table(R.M_GRAPH, "graph")
        if g is not None:
            R.read_graph(g)
    except ChunkwiseError:
        pass
    return sorted(hot32), sorted(hot16)


def load_seed(name: str, data: bytes, key: bytes | None = None) -> Seed:
    from chunkwise.espdl import container
    from chunkwise.espdl.reader import read_model_bytes

    view = memoryview(data)
    hot32: set[int] = set(range(0, min(len(data), 64), 4))  # container headers
    hot16: list[int] = []
    graph = None
    package = False
    try:
        fmt, entries = container.list_entries(view, name)
        package = fmt.startswith("PDL")
        for e in entries:
            _, mode, fb = container.unwrap(e, key, name)
            base = e.offset + (12 if bytes(e.data[:4]) == b"EDL1" else 16)
            hot32.update(range(e.offset, e.offset + 16, 4))
            if mode == 0:
                h32, h16 = _trace_positions(fb, base)
                hot32.update(h32)
                hot16.extend(h16)
        if not package:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                graph, _ = read_model_bytes(data, key=key, path=name)
    except ChunkwiseError:
        pass
    return Seed(name, data, graph, sorted(hot32), sorted(set(hot16)), key, package)


def default_seed_files(fixtures: Path | None = None, shared: Path | None = None,
                       max_bytes: int = 64 * 1024) -> list[Path]:
    """The repository's test fixtures plus ``shared/zoo`` models up to ``max_bytes``."""
    files: list[Path] = []
    if fixtures is not None and fixtures.is_dir():
        files += sorted(p for p in fixtures.rglob("*.espdl") if p.stat().st_size <= max_bytes)
    if shared is not None and (shared / "zoo").is_dir():
        files += sorted(p for p in (shared / "zoo").glob("*.espdl") if p.stat().st_size <= max_bytes)
    return files


def build_seeds(paths: Iterable[Path], derived: bool = True) -> list[Seed]:
    """Seeds from files; ``derived`` adds an AES-encrypted copy and a PDL3 package of the smallest ones."""
    from chunkwise.espdl import container
    from chunkwise.espdl.writer import to_flatbuffer

    seeds = [load_seed(str(p), Path(p).read_bytes()) for p in paths]
    if derived:
        plain = sorted((s for s in seeds if s.graph is not None and not s.package), key=lambda s: len(s.data))
        if plain:
            try:
                fb = to_flatbuffer(plain[0].graph)
                seeds.append(load_seed(f"aes({Path(plain[0].name).name})", container.wrap_edl2(fb, FUZZ_KEY),
                                       FUZZ_KEY))
            except ChunkwiseError:
                pass
        edl2 = [s for s in plain if s.data[:4] == b"EDL2"][:2]
        if edl2:
            items = [(Path(s.name).name, s.data) for s in edl2]
            seeds.append(load_seed("pdl3(" + ",".join(n for n, _ in items) + ")", container.pack_pdl3(items)))
        seeds += synthetic_seeds()
    return seeds


def synthetic_seeds(graphs: Iterable[int] = (1, 2, 3)) -> list[Seed]:
    """Random causal networks from :mod:`chunkwise.ir.build` (conv, pools, pads, slices, gates, gemm
    heads), offline and converted to streaming models (StreamingCache nodes, compiled programs)."""
    from chunkwise.convert import stream
    from chunkwise.espdl.writer import to_bytes
    from chunkwise.ir.build import random_causal_graph
    from chunkwise.model import Model

    out = []
    for s in graphs:
        g, facts = random_causal_graph(s)
        out.append(load_seed(f"causal{s}.espdl", to_bytes(g)))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sm, _ = stream(Model(g), facts["chunk"], verify=False)
            out.append(load_seed(f"causal{s}_streaming.espdl", to_bytes(sm.graph)))
        except ChunkwiseError:
            pass
    return out


# ---- byte mutations ---------------------------------------------------------------------------


def _rehash_pdl3(b: bytearray) -> None:
    from chunkwise.espdl.container import PDL3_HEADER, PDL3_SHA_OFFSET

    if len(b) >= PDL3_HEADER and bytes(b[:4]) == b"PDL3":
        b[PDL3_SHA_OFFSET:PDL3_SHA_OFFSET + 32] = bytes(32)
        b[PDL3_SHA_OFFSET:PDL3_SHA_OFFSET + 32] = hashlib.sha256(bytes(b)).digest()


def mutate_bytes(rng: random.Random, seed: Seed, data: bytes | None = None) -> tuple[bytes, str]:
    """1-4 byte-level mutations of ``data`` (default: the seed's bytes)."""
    b = bytearray(seed.data if data is None else data)
    descs = []
    for _ in range(rng.choice((1, 1, 1, 2, 3, 4))):
        n = len(b)
        if n == 0:
            b += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 16)))
            descs.append("regrow")
            continue
        kind = rng.choice(("flip", "byte", "u32", "u32", "u32", "u16", "u16", "trunc", "insert", "delete",
                           "header", "copy"))
        if kind == "flip":
            p = rng.randrange(n)
            b[p] ^= 1 << rng.randrange(8)
            descs.append(f"flip@{p}")
        elif kind == "byte":
            p = rng.randrange(n)
            b[p] = rng.randrange(256)
            descs.append(f"byte@{p}")
        elif kind in ("u32", "header"):
            hot = seed.hot32 if kind == "u32" and seed.hot32 else list(range(0, min(n, 64), 4))
            p = rng.choice(hot)
            if p + 4 > n:
                continue
            old = struct.unpack_from("<I", b, p)[0]
            k = rng.randrange(-8, 9)
            v = rng.choice(U32_BOUNDARY + ((n + k) & 0xFFFFFFFF, (old + k) & 0xFFFFFFFF, (p + k) & 0xFFFFFFFF,
                                           (n - p + k) & 0xFFFFFFFF, rng.randrange(2**32)))
            struct.pack_into("<I", b, p, v)
            descs.append(f"{kind}@{p}={v:#x}")
        elif kind == "u16":
            hot = seed.hot16 or list(range(0, n - 1, 2))
            p = rng.choice(hot)
            if p + 2 > n:
                continue
            old = struct.unpack_from("<H", b, p)[0]
            v = rng.choice((0, 1, 2, 3, 4, 6, 0x7FFF, 0xFFFF, (old + rng.randrange(-8, 9)) & 0xFFFF, rng.randrange(65536)))
            struct.pack_into("<H", b, p, v)
            descs.append(f"u16@{p}={v:#x}")
        elif kind == "trunc":
            p = rng.choice(seed.hot32) if seed.hot32 and rng.random() < 0.5 else rng.randrange(n)
            p = min(p + rng.randrange(-2, 3), n - 1) if p < n else rng.randrange(n)
            del b[max(p, 0):]
            descs.append(f"trunc@{max(p, 0)}")
        elif kind == "insert":
            p = rng.randrange(n + 1)
            k = rng.choice((1, 2, 4, 8, 16, rng.randrange(1, 64)))
            b[p:p] = bytes(rng.randrange(256) for _ in range(k))
            descs.append(f"insert@{p}+{k}")
        elif kind == "delete":
            p = rng.randrange(n)
            k = rng.choice((1, 2, 4, 8, 16, rng.randrange(1, 64)))
            del b[p:p + k]
            descs.append(f"delete@{p}+{k}")
        elif kind == "copy":
            p, q = rng.randrange(n), rng.randrange(n)
            k = rng.randrange(1, 32)
            b[q:q + k] = b[p:p + k]
            descs.append(f"copy@{p}->{q}+{k}")
    if bytes(b[:4]) == b"PDL3" and rng.random() < 0.5:
        _rehash_pdl3(b)
        descs.append("rehash")
    return bytes(b), "bytes:" + ",".join(descs)


# ---- structured mutations ---------------------------------------------------------------------


def _weird_int(rng: random.Random, old: int | None = None) -> int:
    opts = list(INT_WEIRD)
    if old is not None:
        opts += [old + 1, old - 1, -old, old * 2]
    return int(rng.choice(opts))


def _weird_ints(rng: random.Random, old: list | None) -> list[int]:
    old = list(old or [])
    r = rng.random()
    if r < 0.15:
        return []
    if r < 0.3:
        return old + [_weird_int(rng) for _ in range(rng.randrange(1, 4))]
    if r < 0.4 and old:
        return old[:rng.randrange(len(old))]
    if r < 0.5 and old:
        return list(reversed(old))
    new = list(old) or [1]
    i = rng.randrange(len(new))
    new[i] = _weird_int(rng, new[i])
    return new


def _weird_attr(rng: random.Random, name: str, a):
    """A new value for attribute ``a`` (None: make one of a random kind)."""
    from chunkwise.ir.graph import Attribute

    kind = a.kind if a is not None and rng.random() < 0.8 else rng.choice(("int", "ints", "float", "floats",
                                                                               "string", "strings"))
    old = a.value if a is not None and a.kind == kind else None
    if kind == "int":
        v = _weird_int(rng, old if isinstance(old, int) else None)
    elif kind == "ints":
        v = _weird_ints(rng, old)
    elif kind == "float":
        v = float(np.float32(rng.choice(FLOAT_WEIRD)))
    elif kind == "floats":
        base = list(old or [1.0])
        v = [float(np.float32(rng.choice(FLOAT_WEIRD))) for _ in range(rng.choice((0, 1, len(base), len(base) + 1)))]
    elif kind == "string":
        v = rng.choice(STRINGS_WEIRD)
    elif kind == "strings":
        v = [rng.choice(STRINGS_WEIRD) for _ in range(rng.randrange(0, 4))]
    else:  # tensors/graphs: drop the value
        return Attribute(kind, None)
    return Attribute(kind, v)


def _random_array(rng: random.Random, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    nrng = np.random.default_rng(rng.randrange(2**32))
    dt = np.dtype(dtype)
    size = int(np.prod(shape, dtype=object)) if shape else 1
    if dt.kind == "f":
        with np.errstate(all="ignore"):
            a = nrng.standard_normal(size).astype(dt) * dt.type(rng.choice((1.0, 100.0, 1e6)))
    elif dt.kind == "b":
        a = nrng.integers(0, 2, size).astype(dt)
    else:
        info = np.iinfo(dt)
        a = nrng.integers(max(info.min, -(2**40)), min(info.max, 2**40), size, endpoint=True).astype(dt)
    return a.reshape(shape)


def _weird_shape(rng: random.Random, shape) -> tuple[int, ...]:
    shape = [int(d) if isinstance(d, (int, np.integer)) else 1 for d in (shape or ())]
    r = rng.random()
    if r < 0.2:
        return tuple(shape[:-1]) if shape else (1,)
    if r < 0.35:
        return tuple(shape) + (rng.choice((1, 2, 3)),)
    if not shape:
        return (rng.choice((0, 1, 2)),)
    i = rng.randrange(len(shape))
    shape[i] = rng.choice((0, 1, 2, 3, shape[i] + 1, max(shape[i] - 1, 0), shape[i] * 2, 17, 4096))
    return tuple(shape)


_STRUCT_KINDS = ("attr", "attr", "attr", "attr_del", "attr_add", "exp", "exp_init", "dtype_value", "dtype_init",
                 "init_del", "init_reshape", "init_values", "input_shape", "node_del", "node_swap", "node_inputs",
                 "op_type", "test_input", "outputs", "metadata", "node_outputs")


def mutate_graph(rng: random.Random, graph) -> str:
    """One structural change of ``graph`` in place; returns its description."""
    from chunkwise.emu.registry import supported_ops
    from chunkwise.ir.graph import Tensor

    kind = rng.choice(_STRUCT_KINDS)
    g = graph
    nodes = g.nodes
    if kind.startswith("attr") and nodes:
        n = rng.choice(nodes)
        if kind == "attr_del" and n.attrs:
            k = rng.choice(sorted(n.attrs))
            del n.attrs[k]
            return f"del {n.name}.{k}"
        if kind == "attr_add" or not n.attrs:
            k = rng.choice(ATTR_NAMES)
            n.attrs[k] = _weird_attr(rng, k, n.attrs.get(k))
            return f"set {n.name}.{k}={n.attrs[k].value!r:.60}"
        k = rng.choice(sorted(n.attrs))
        n.attrs[k] = _weird_attr(rng, k, n.attrs[k])
        return f"set {n.name}.{k}={n.attrs[k].value!r:.60}"
    if kind == "exp":
        vals = list(g.inputs) + list(g.outputs) + list(g.value_info.values())
        if vals:
            v = rng.choice(vals)
            r = rng.random()
            v.exponents = () if r < 0.2 else (tuple(v.exponents) * 2 if r < 0.35 else
                                                (_weird_int(rng, v.exponents[0] if v.exponents else None),))
            return f"exponents {v.name}={v.exponents!r:.40}"
    if kind == "exp_init" and g.initializers:
        t = g.initializers[rng.choice(sorted(g.initializers))]
        r = rng.random()
        t.exponents = () if r < 0.2 else (tuple(t.exponents) + (0,) if r < 0.35 else
                                            tuple(_weird_int(rng, e) if rng.random() < 0.5 else e
                                                  for e in (t.exponents or (0,))))
        return f"exponents init {t.name}={t.exponents!r:.40}"
    if kind == "dtype_value":
        vals = list(g.inputs) + list(g.outputs) + list(g.value_info.values())
        if vals:
            v = rng.choice(vals)
            v.dtype = rng.choice(DTYPES)
            return f"dtype {v.name}={v.dtype}"
    if kind == "dtype_init" and g.initializers:
        t = g.initializers[rng.choice(sorted(g.initializers))]
        dt = rng.choice(DTYPES[:-1])
        if t.data is not None:
            with np.errstate(all="ignore"):
                t.data = np.asarray(t.data).astype(dt)
        t.dtype = dt
        return f"dtype init {t.name}={dt}"
    if kind == "init_del" and g.initializers:
        k = rng.choice(sorted(g.initializers))
        del g.initializers[k]
        return f"del init {k}"
    if kind == "init_reshape" and g.initializers:
        t = g.initializers[rng.choice(sorted(g.initializers))]
        if t.data is not None and t.dtype not in ("undefined", "string"):
            shape = _weird_shape(rng, t.dims)
            if int(np.prod(shape, dtype=object)) <= 1 << 16:
                t.data = _random_array(rng, t.dtype, shape)
                t.dims = tuple(shape)
                t.layout = None if rng.random() < 0.5 else t.layout
                return f"reshape init {t.name}={shape}"
    if kind == "init_values" and g.initializers:
        t = g.initializers[rng.choice(sorted(g.initializers))]
        if t.data is not None and t.dtype not in ("undefined", "string"):
            t.data = _random_array(rng, t.dtype, tuple(t.dims))
            return f"values init {t.name}"
    if kind == "input_shape" and g.inputs:
        v = rng.choice(g.inputs)
        v.shape = _weird_shape(rng, v.shape) if rng.random() < 0.9 else None
        return f"shape {v.name}={v.shape}"
    if kind == "node_del" and nodes:
        i = rng.randrange(len(nodes))
        n = nodes.pop(i)
        return f"del node {n.name}"
    if kind == "node_swap" and len(nodes) > 1:
        i, j = rng.randrange(len(nodes)), rng.randrange(len(nodes))
        nodes[i], nodes[j] = nodes[j], nodes[i]
        return f"swap nodes {i},{j}"
    if kind == "node_inputs" and nodes:
        n = rng.choice(nodes)
        r = rng.random()
        names = [v.name for v in g.inputs] + [o for m in nodes for o in m.outputs] + list(g.initializers)
        if r < 0.3 and n.inputs:
            n.inputs.pop(rng.randrange(len(n.inputs)))
        elif r < 0.5:
            n.inputs.append(rng.choice(names + [""]) if names else "")
        elif n.inputs:
            n.inputs[rng.randrange(len(n.inputs))] = rng.choice(names + ["", "nonexistent"])
        return f"inputs {n.name}={n.inputs!r:.80}"
    if kind == "node_outputs" and nodes:
        n = rng.choice(nodes)
        if n.outputs and rng.random() < 0.5:
            n.outputs.pop()
        else:
            n.outputs.append(f"extra_{rng.randrange(100)}")
        return f"outputs {n.name}={n.outputs!r:.80}"
    if kind == "op_type" and nodes:
        n = rng.choice(nodes)
        n.op_type = rng.choice(supported_ops() + ["Bogus"])
        return f"op {n.name}={n.op_type}"
    if kind == "test_input" and g.test_inputs:
        k = rng.choice(sorted(g.test_inputs))
        t = g.test_inputs[k]
        r = rng.random()
        if r < 0.3:
            del g.test_inputs[k]
            return f"del test input {k}"
        shape = _weird_shape(rng, t.dims) if r < 0.7 else tuple(t.dims)
        dt = rng.choice(DTYPES[:-1]) if r >= 0.7 else t.dtype
        if int(np.prod(shape, dtype=object)) <= 1 << 16 and dt not in ("undefined", "string"):
            g.test_inputs[k] = Tensor(t.name, dt, tuple(shape), _random_array(rng, dt, shape), t.exponents,
                                      storage="raw")
            return f"test input {k}={dt}{shape}"
    if kind == "outputs" and g.outputs:
        v = g.outputs[rng.randrange(len(g.outputs))]
        if rng.random() < 0.5:
            v.name = "nonexistent"
        else:
            g.outputs.remove(v)
        return f"output {v.name}"
    if kind == "metadata":
        g.metadata["target"] = rng.choice(("esp32p4", "esp32s3", "c", "esp32s31", "bogus", ""))
        return f"target={g.metadata['target']}"
    return "noop"


def mutate_structured(rng: random.Random, seed: Seed) -> tuple[bytes, str, bytes | None]:
    """Change the seed's IR, write it with chunkwise's writer; returns (bytes, description, key)."""
    from chunkwise.espdl import container
    from chunkwise.espdl.writer import to_flatbuffer

    descs = []
    for _attempt in range(4):
        g = copy.deepcopy(seed.graph)
        descs = [mutate_graph(rng, g) for _ in range(rng.choice((1, 1, 2, 3)))]
        try:
            fb = to_flatbuffer(g)
        except Exception:  # the writer refuses graphs it cannot pack (weights vs layout): try again
            continue
        key = None
        r = rng.random()
        if r < 0.08:
            data, key = container.wrap_edl2(fb, FUZZ_KEY), FUZZ_KEY
        elif r < 0.1:
            data, key = container.wrap_edl2(fb, FUZZ_KEY), bytes(16)  # wrong key
            descs.append("wrong key")
        elif r < 0.12:
            data = container.wrap_edl2(fb, FUZZ_KEY)  # no key
            descs.append("no key")
        else:
            data = container.wrap_edl2(fb)
        text = "ir:" + "; ".join(descs)
        if rng.random() < 0.1:
            data, bdesc = mutate_bytes(rng, seed, data)
            text += " + " + bdesc
        return data, text, key
    data, bdesc = mutate_bytes(rng, seed)
    return data, bdesc, seed.key


def generate(seeds: list[Seed], n: int, seed: int) -> Iterable[Case]:
    """``n`` mutated inputs, deterministically: seeds in turn, mutations from ``random.Random(seed)``."""
    rng = random.Random(seed)
    if not seeds:
        return
    for i in range(n):
        s = seeds[i % len(seeds)]
        model = 0 if s.package else None
        if s.graph is not None and rng.random() < 0.55:
            data, desc, key = mutate_structured(rng, s)
        else:
            data, desc = mutate_bytes(rng, s)
            key = s.key
        yield Case(i, Path(s.name).name, desc, data, key, model)


# ---- targets ----------------------------------------------------------------------------------


class _Hang(BaseException):
    """Raised by the alarm handler (a BaseException so no ``except Exception`` swallows it)."""


def _classify(index: int, target: str, exc: BaseException | None, t0: float) -> Outcome:
    dt = time.monotonic() - t0
    if exc is None:
        return Outcome(index, target, "ok", seconds=dt)
    if isinstance(exc, _Hang):
        return Outcome(index, target, "hang", "time limit exceeded", seconds=dt)
    if isinstance(exc, ChunkwiseError):
        return Outcome(index, target, "error", str(exc)[:300], type(exc).__name__, seconds=dt)
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return Outcome(index, target, "crash", f"{type(exc).__name__}: {str(exc)[:300]}", type(exc).__name__, tb, dt)


def run_read(case: Case, timeout: float | None = None) -> Outcome:
    """The reader and Model construction, in this process (alarm-limited in the main thread)."""
    from chunkwise.espdl.reader import read_model_bytes
    from chunkwise.model import Model

    use_alarm = bool(timeout) and threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")
    old = None
    t0 = time.monotonic()
    exc = None
    if use_alarm:
        def _on_alarm(signum, frame):
            raise _Hang()
        old = signal.signal(signal.SIGALRM, _on_alarm)
        signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph, _ = read_model_bytes(case.data, key=case.key, model=case.model, path=f"case{case.index}.espdl")
            Model(graph, path=f"case{case.index}.espdl")
    except BaseException as e:  # noqa: BLE001 - classified below
        if isinstance(e, KeyboardInterrupt):
            raise
        exc = e
    finally:
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
    return _classify(case.index, "read", exc, t0)


def _cli_runner():
    """typer's test runner (for its stream isolation) and the CLI as a click command, built once:
    ``CliRunner.invoke`` would rebuild the command on every call, which costs more than a small run."""
    import typer.main
    from typer.testing import CliRunner

    from chunkwise.cli import app

    return CliRunner(), typer.main.get_command(app)


def _cli(runner, cmd, args: list[str]) -> BaseException | None:
    """Run the CLI with ``--debug`` (exceptions propagate); None when it ended with exit code 0 or 3
    (3: a check failed, a normal outcome); a :class:`ChunkwiseError` for a clean error."""
    with runner.isolation() as streams:
        try:
            cmd.main(args=["--debug"] + args, prog_name="chunkwise")
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except Exception as e:  # noqa: BLE001 - ChunkwiseError = clean error, anything else = crash
            return e
        output = b"".join(s.getvalue() for s in streams[1:]).decode("utf-8", "replace")
    if code in (0, 3):
        return None
    if code == 2:  # a usage error of our own arguments would be a fuzzer bug: keep the text
        return ChunkwiseError(f"exit code 2: {output.strip()[-200:]}")
    return RuntimeError(f"exit code {code}: {output.strip()[-300:]}")


def _synth_inputs(model, index: int, folder: Path) -> Path | None:
    """An .npz of random integers for every input with a concrete, modest declared shape."""
    arrays = {}
    nrng = np.random.default_rng(abs(index))
    for v in model.graph.inputs:
        if v.name in model.graph.initializers:
            continue
        shape = v.shape
        if not shape or not all(isinstance(d, int) and d >= 0 for d in shape):
            return None
        if int(np.prod(shape, dtype=object)) > 1 << 20:
            return None
        if v.dtype in ("int8", "int16"):
            info = np.iinfo(v.dtype)
            arrays[v.name] = nrng.integers(info.min, info.max, size=shape, endpoint=True).astype(v.dtype)
        else:
            arrays[v.name] = nrng.standard_normal(shape).astype(np.float32)
    if not arrays:
        return None
    p = folder / "input.npz"
    np.savez(p, **arrays)
    return p


def _weird_inputs(model, index: int, folder: Path) -> Path | None:
    """An input file that is wrong in one way (shape, rank, dtype, range, NaN, missing name)."""
    nrng = np.random.default_rng(abs(index))
    names = [v for v in model.graph.inputs if v.name not in model.graph.initializers]
    if not names:
        return None
    arrays = {}
    kind = index % 7
    for v in names:
        shape = [d if isinstance(d, int) and 0 <= d <= 4096 else 1 for d in (v.shape or (1,))]
        if kind == 0:
            shape = shape + [1]
        elif kind == 1 and shape:
            shape[-1] += 1
        elif kind == 2:
            shape = shape[:1]
        if int(np.prod(shape, dtype=object)) > 1 << 20:
            return None
        if kind == 3:
            a = np.full(shape, np.nan, np.float32)
            a.flat[::2] = np.inf
        elif kind == 4:
            a = nrng.integers(-(2**40), 2**40, size=shape)
        elif kind == 5:
            a = nrng.integers(0, 2, size=shape).astype(bool)
        else:
            a = nrng.standard_normal(shape).astype(np.float64) * 1e6
        arrays[v.name if kind != 6 else v.name + "_renamed"] = a
    p = folder / "weird.npz"
    np.savez(p, **arrays)
    return p


def run_worker_target(case: Case, target: str, runner, app, folder: Path) -> Outcome:
    """``run`` / ``inspect`` through the command line (called inside a worker process)."""
    import chunkwise

    t0 = time.monotonic()
    path = folder / f"case{case.index}.espdl"
    path.write_bytes(case.data)
    base = [str(path)]
    if case.key is not None:
        base += ["--key", case.key.hex()]
    if case.model is not None:
        base += ["--model", str(case.model)]
    if target == "inspect":
        return _classify(case.index, target, _cli(runner, app, ["inspect"] + base + ["--json"]), t0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = chunkwise.load(path, key=case.key, model=case.model)
    except ChunkwiseError:
        m = None
    except Exception as e:  # the reader crashed: the CLI would too; report it as the CLI does
        return _classify(case.index, target, e, t0)
    if m is None or (m.graph.test_inputs and m.graph.test_outputs):
        exc = _cli(runner, app, ["emu", "test"] + base)
        if exc is None and m is not None and case.index % 5 == 0:  # and a wrong input file
            weird = _weird_inputs(m, case.index // 5, folder)
            if weird is not None:
                exc = _cli(runner, app, ["emu", "run"] + base + ["--input", str(weird)])
                exc = None if isinstance(exc, ChunkwiseError) else exc
        return _classify(case.index, target, exc, t0)
    inp = _synth_inputs(m, case.index, folder)
    args = ["emu", "run"] + base + (["--input", str(inp)] if inp is not None else [])
    exc = _cli(runner, app, args)
    if exc is None and any(n.op_type == "StreamingCache" for n in m.graph.nodes):
        exc = _cli(runner, app, args + ["--chunks", "1"])
    return _classify(case.index, target, exc, t0)


def _worker_main(conn, folder: str, max_tensor_bytes: int | None, mem_limit: int | None) -> None:
    os.environ.pop("CHUNKWISE_KEY", None)
    try:  # a crash is reported by the parent; no fault dump inherited from pytest on stderr
        import faulthandler

        faulthandler.disable()
    except ImportError:
        pass
    if mem_limit:
        try:
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (mem_limit, mem_limit))
        except (ImportError, ValueError, OSError):
            pass
    from chunkwise import limits

    runner, app = _cli_runner()

    if max_tensor_bytes is not None:
        limits.set_max_tensor_bytes(max_tensor_bytes)
    warnings.simplefilter("ignore")
    while True:  # ``folder`` belongs to the parent, which removes it even when it kills this process
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        case, target = job
        try:
            out = run_worker_target(case, target, runner, app, Path(folder))
        except BaseException as e:  # noqa: BLE001 - anything escaping is a crash of the target
            out = _classify(case.index, target, e, time.monotonic())
        conn.send(out)


class _Worker:
    def __init__(self, ctx, max_tensor_bytes, mem_limit):
        self.conn, child = ctx.Pipe()
        self.folder = tempfile.mkdtemp(prefix="chunkwise-fuzz-")  # the worker's scratch files
        self.proc = ctx.Process(target=_worker_main, args=(child, self.folder, max_tensor_bytes, mem_limit),
                                daemon=True)
        self.proc.start()
        child.close()
        self.tasks = 0
        self.job = None
        self.started = 0.0

    def submit(self, job) -> None:
        self.job = job
        self.started = time.monotonic()
        self.conn.send(job)

    def stop(self, kill: bool = False) -> None:
        try:
            if kill:
                self.proc.kill()
            else:
                self.conn.send(None)
        except (OSError, ValueError):
            pass
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()
        shutil.rmtree(self.folder, ignore_errors=True)


def run_in_workers(jobs: list[tuple[Case, str]], *, workers: int = 2, timeout: float = 10.0,
                   max_tasks: int = 200, max_tensor_bytes: int | None = 256 << 20,
                   mem_limit: int | None = 8 << 30) -> list[Outcome]:
    """Run (case, target) jobs in worker processes; a dead worker is a crash, a late one a hang."""
    from multiprocessing.connection import wait

    if not jobs:
        return []
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    ctx = multiprocessing.get_context(method)
    pool = [_Worker(ctx, max_tensor_bytes, mem_limit) for _ in range(max(1, workers))]
    queue = list(reversed(jobs))
    results: list[Outcome] = []
    try:
        while queue or any(w.job is not None for w in pool):
            for i, w in enumerate(pool):
                if w.job is None and queue:
                    if w.tasks >= max_tasks or not w.proc.is_alive():
                        w.stop(kill=not w.proc.is_alive())
                        w = pool[i] = _Worker(ctx, max_tensor_bytes, mem_limit)
                    w.submit(queue.pop())
            busy = [w for w in pool if w.job is not None]
            now = time.monotonic()
            wait_for = max(0.01, min(w.started + timeout - now for w in busy))
            ready = wait([w.conn for w in busy] + [w.proc.sentinel for w in busy], timeout=wait_for)
            now = time.monotonic()
            for i, w in enumerate(pool):
                if w.job is None:
                    continue
                case, target = w.job
                if w.conn in ready:
                    try:
                        results.append(w.conn.recv())
                        w.job = None
                        w.tasks += 1
                        continue
                    except (EOFError, OSError):
                        pass
                if w.conn in ready or w.proc.sentinel in ready:
                    w.proc.join(1)
                    code = w.proc.exitcode
                    why = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                    results.append(Outcome(case.index, target, "crash", f"worker died ({why})", "WorkerDied",
                                           seconds=now - w.started))
                    w.job = None
                    w.stop(kill=True)
                    pool[i] = _Worker(ctx, max_tensor_bytes, mem_limit)
                elif now - w.started > timeout:
                    results.append(Outcome(case.index, target, "hang", f"no answer within {timeout:g} s",
                                           seconds=now - w.started))
                    w.job = None
                    w.stop(kill=True)
                    pool[i] = _Worker(ctx, max_tensor_bytes, mem_limit)
    finally:
        for w in pool:
            w.stop(kill=w.job is not None)
    return results


# ---- the campaign -----------------------------------------------------------------------------


def warm_up(seeds: list[Seed]) -> None:
    """Run every seed once in this process, so forked workers inherit compiled kernels."""
    runner, app = _cli_runner()
    with tempfile.TemporaryDirectory(prefix="chunkwise-fuzz-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, s in enumerate(seeds):
            case = Case(-1 - i, s.name, "seed", s.data, s.key, 0 if s.package else None)
            try:  # the outcome does not matter here: seeds are only run to compile their kernels
                run_worker_target(case, "run", runner, app, Path(tmp))
            except Exception:  # noqa: BLE001
                pass


def run_campaign(seeds: list[Path] | list[Seed], n: int, seed: int = 0, targets: Iterable[str] = ("read", "run"), *,
                 out_dir: Path | None = None, timeout: float = 10.0, workers: int = 2, run_every_rejected: int = 10,
                 max_tensor_bytes: int | None = 256 << 20, warm: bool = True, progress=None) -> Report:
    """Fuzz ``n`` mutated inputs made from ``seeds`` (files or :class:`Seed`) with ``random.Random(seed)``.

    The ``run`` / ``inspect`` targets see every input the reader accepts and every
    ``run_every_rejected``-th input it refuses (to check the CLI reports those cleanly too).
    Crashing/hanging inputs are saved in ``out_dir``.
    """
    targets = tuple(targets)
    for t in targets:
        if t not in TARGETS:
            raise ChunkwiseError(f"unknown fuzz target {t!r}; choose from {', '.join(TARGETS)}")
    if n < 0:
        raise ChunkwiseError("the number of inputs must be >= 0")
    seed_objs = [s if isinstance(s, Seed) else None for s in seeds]
    if any(s is None for s in seed_objs):
        paths = [Path(s) for s in seeds if not isinstance(s, Seed)]
        for p in paths:
            if not p.is_file():
                raise ChunkwiseError(f"seed file {p} does not exist")
        seed_objs = [s for s in seeds if isinstance(s, Seed)] + build_seeds(paths)
    if not seed_objs:
        raise ChunkwiseError("no seed files: give .espdl files (or folders holding them)")
    t_start = time.monotonic()
    from chunkwise import limits

    old_cap = limits.max_tensor_bytes_override()
    if max_tensor_bytes is not None:
        limits.set_max_tensor_bytes(max_tensor_bytes)
    try:
        if warm and any(t in WORKER_TARGETS for t in targets):
            warm_up(seed_objs)
        cases = list(generate(seed_objs, n, seed))
        outcomes: list[Outcome] = []
        read_res: dict[int, Outcome] = {}
        for c in cases:
            o = run_read(c, timeout)
            read_res[c.index] = o
            if "read" in targets:
                outcomes.append(o)
            if progress:
                progress("read", c.index)
        jobs = []
        for c in cases:
            r = read_res[c.index]
            if r.kind == "ok" or (run_every_rejected and c.index % run_every_rejected == 0):
                jobs += [(c, t) for t in targets if t in WORKER_TARGETS]
        outcomes += run_in_workers(jobs, workers=workers, timeout=timeout, max_tensor_bytes=max_tensor_bytes)
    finally:
        limits.set_max_tensor_bytes(old_cap)
    report = Report(n=len(cases), seed=seed, seeds=[s.name for s in seed_objs], targets=targets,
                    out_dir=str(out_dir) if out_dir else None)
    by_index = {c.index: c for c in cases}
    for t in targets:
        report.counts[t] = {k: 0 for k in OUTCOMES}
    outcomes.sort(key=lambda o: (o.index, TARGETS.index(o.target)))
    for o in outcomes:
        report.counts[o.target][o.kind] += 1
        if o.kind == "error":
            report.error_types[o.error_type] = report.error_types.get(o.error_type, 0) + 1
        if o.kind in ("crash", "hang"):
            c = by_index[o.index]
            f = {"index": o.index, "target": o.target, "kind": o.kind, "seed": c.seed_name, "desc": c.desc,
                 "message": o.message, "key": c.key.hex() if c.key else None, "model": c.model}
            if out_dir is not None:
                f["file"] = str(_save_failure(Path(out_dir), c, o))
            report.failures.append(f)
    report.slowest = [{"index": o.index, "target": o.target, "seconds": round(o.seconds, 3)}
                      for o in sorted(outcomes, key=lambda o: -o.seconds)[:5]]
    report.seconds = time.monotonic() - t_start
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "report.json").write_text(json.dumps(report.as_dict(), indent=2))
    return report


def _save_failure(out_dir: Path, case: Case, o: Outcome) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{o.kind}_{case.index:06d}_{o.target}"
    p = out_dir / f"{stem}.espdl"
    p.write_bytes(case.data)
    cmd = {"read": "chunkwise --debug inspect", "run": "chunkwise --debug emu test",
           "inspect": "chunkwise --debug inspect"}[o.target]
    extra = (f" --key {case.key.hex()}" if case.key else "") + (f" --model {case.model}" if case.model is not None
                                                                 else "")
    (out_dir / f"{stem}.txt").write_text(
        f"seed file: {case.seed_name}\nmutation: {case.desc}\noutcome: {o.kind}: {o.message}\n"
        f"reproduce: {cmd} {p}{extra}\n\n{o.detail}")
    return p


def expand_seed_paths(items: Iterable[Path]) -> list[Path]:
    """Files as given; folders searched for ``*.espdl``."""
    out: list[Path] = []
    for p in items:
        p = Path(p)
        if p.is_dir():
            out += sorted(p.rglob("*.espdl"))
        elif p.is_file():
            out.append(p)
        else:
            raise ChunkwiseError(f"seed {p} does not exist")
    return out


REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    """The campaign from the command line (``python -m devtools.fuzz --help``); returns the exit code."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m devtools.fuzz", description=(
        "Mutate seed models (bytes and IR) and run each through the reader and `chunkwise emu test` / "
        "`emu run`. Exit code 0 iff no input crashed (a traceback or a dead worker) or hung; 2 on bad "
        "arguments; 3 when an input crashed or hung (saved in --out with how to reproduce it)."))
    ap.add_argument("seeds", nargs="*", type=Path, help="seed .espdl files or folders (default: tests/fixtures "
                    "of this checkout and ../shared/zoo)")
    ap.add_argument("-n", "--n", type=int, default=2000, help="number of mutated inputs (default 2000)")
    ap.add_argument("-s", "--seed", type=int, default=0, help="random seed: the same seed gives the same inputs")
    ap.add_argument("-o", "--out", type=Path, help="folder for crashing/hanging inputs and report.json")
    ap.add_argument("--targets", default="read,run", help="comma-separated: read, run, inspect (default read,run)")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds one input may take before it counts "
                    "as a hang (default 10)")
    ap.add_argument("-j", "--workers", type=int, default=2, help="worker processes for run/inspect (default 2)")
    ap.add_argument("--max-seed-bytes", type=int, default=256 * 1024, help="skip seed files larger than this "
                    "when searching folders (default 256 KiB)")
    ap.add_argument("--json", action="store_true", help="print the report as one JSON document")
    args = ap.parse_args(argv)
    if args.n < 0 or args.workers < 1 or args.timeout < 0.1 or args.max_seed_bytes < 1:
        ap.error("-n must be >= 0, --workers >= 1, --timeout >= 0.1 and --max-seed-bytes >= 1")
    try:
        if args.seeds:
            files = [p for p in expand_seed_paths(args.seeds) if not p.is_dir()]
            files = [p for p in files if p.stat().st_size <= args.max_seed_bytes or p in args.seeds]
        else:
            files = default_seed_files(REPO / "tests" / "fixtures", REPO.parent / "shared", args.max_seed_bytes)
            if not files:
                raise ChunkwiseError(f"no seed files under {REPO / 'tests' / 'fixtures'}: pass seed files")
        report = run_campaign(files, args.n, args.seed, [t.strip() for t in args.targets.split(",") if t.strip()],
                              out_dir=args.out, timeout=args.timeout, workers=args.workers)
    except ChunkwiseError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    print(json.dumps(report.as_dict(), indent=2) if args.json else report.render())
    return 0 if report.ok else 3


if __name__ == "__main__":
    raise SystemExit(main())
