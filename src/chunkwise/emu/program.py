"""Compiled programs: a prepared plan lowered to one instruction table run by one njit interpreter.

The per-node path (:class:`chunkwise.emu.engine.Plan`) calls a Python closure per node: fine for offline
models, far too slow for a streaming step of a few microseconds. A :class:`Program` lowers each step of a
plan to rows of integers over one block of memory (``mem``, one uint8 array, so that a call passes a
single array):

* ``act`` (int32): every value of the graph (float32 values share its words, viewed as ``actf``), every
  StreamingCache state and the work buffers; preallocated once;
* ``c16`` / ``c32`` / ``c64`` / ``cf``: packed weights, tables, biases and shifts, float scales;
* the rows: int64, one per instruction, column 0 the opcode and the others named by the opcode's
  ``row_layout``.

**One place per op.** Each op's lowering is registered with ``@lowering`` beside its kernel (in
``emu/ops/<family>.py``) and only *encodes* what the kernel's ``prepare`` decided and left in
``Prepared.info``; the row's layout (``row_layout``) and the arm that decodes it (``@arm``) live there too,
and the arm calls the same njit helper as the per-node kernel. This module only owns the memory, the host
steps and the dispatch: :func:`dispatcher` generates (and numba caches) an interpreter for the set of
opcodes a program uses, so a model compiles only the arms it needs.

**No cliff.** A node without a lowering (or one its lowering refuses, e.g. a float32 path) becomes a
``HOST`` row: the interpreter returns, the node runs alone on the per-node path reading and writing the
same arena, and the interpreter resumes after it. :attr:`Program.not_compiled` names those nodes.

Reshape-like ops cost nothing (their output aliases their input). ``push_many`` runs a whole sequence of
chunks in one call when the program has no host step.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
from numba import njit

from ..errors import UnsupportedError
from .engine import Plan, Step
from .ops._simd import section
from .registry import ARMS, LOWERINGS, NOT_LOWERED, supported_ops
from .rounding import qrange, round_f

ROW = 32  # columns of an instruction row
OP_HOST = 1  # return to Python: run one node on the per-node path

HDR_WORDS = 16  # int64 header words at the start of mem
H_MODE, H_CODE, H_CODE_END, H_ACT, H_ACT_END, H_C16, H_C16_END, H_C32, H_C32_END, H_C64, H_C64_END, H_CF, \
    H_CF_END = range(13)


def opcodes() -> dict[str, int]:
    """Row layout name -> opcode (column 0 of its rows): every registered arm, numbered from 2 in name order.
    The numbers are baked into each generated dispatcher, whose file name depends on them (see
    :func:`dispatcher`)."""
    supported_ops()
    return {name: i + 2 for i, name in enumerate(sorted(ARMS))}


# ---- memory views and I/O (shared by every dispatcher) ------------------------------------------------


@njit(cache=True, inline="always")
def _views(mem):
    """The sections of ``mem``: rows (flat int64), act, act as float32, c16, c32, c64, cf, rounding mode."""
    hdr = section(mem, 0, HDR_WORDS * 8, np.int64)
    code = section(mem, hdr[H_CODE], hdr[H_CODE_END], np.int64)
    act = section(mem, hdr[H_ACT], hdr[H_ACT_END], np.int32)
    actf = section(mem, hdr[H_ACT], hdr[H_ACT_END], np.float32)
    c16 = section(mem, hdr[H_C16], hdr[H_C16_END], np.int16)
    c32 = section(mem, hdr[H_C32], hdr[H_C32_END], np.int32)
    c64 = section(mem, hdr[H_C64], hdr[H_C64_END], np.int64)
    cf = section(mem, hdr[H_CF], hdr[H_CF_END], np.float32)
    return code, act, actf, c16, c32, c64, cf, hdr[H_MODE]


@njit(cache=True)
def _put(mem, off, x, is_float):
    """An input chunk (any shape; float32 values when ``is_float``, else integers) into the arena."""
    code, act, actf, c16, c32, c64, cf, mode = _views(mem)
    i = off
    if is_float:
        for v in x.flat:
            actf[i] = v
            i += 1
    else:
        for v in x.flat:
            act[i] = v
            i += 1


@njit(cache=True)
def _put_quantized(mem, off, x, scale, lo, hi):
    """A float chunk quantized into the arena as ``model.prepare_inputs`` does (float64 ``x * 2**-e``, the
    target's rounding, saturation); returns False (and writes nothing) on a NaN."""
    code, act, actf, c16, c32, c64, cf, mode = _views(mem)
    for v in x.flat:
        if v != v:
            return False
    i = off
    for v in x.flat:
        r = round_f(np.float64(v) * scale, mode)
        act[i] = np.int32(min(max(r, lo), hi))
        i += 1
    return True


@njit(cache=True)
def _get(mem, off, y, is_float):
    """A value out of the arena into ``y`` (a fresh C-contiguous array; float32 values when ``is_float``)."""
    code, act, actf, c16, c32, c64, cf, mode = _views(mem)
    flat = y.reshape(-1)
    if is_float:
        for i in range(flat.size):
            flat[i] = actf[off + i]
    else:
        for i in range(flat.size):
            flat[i] = act[off + i]


# ---- dispatchers ---------------------------------------------------------------------------------------
# The interpreter is generated for the set of opcodes a program uses, so a model compiles (once, then from
# numba's cache) only the arms it needs, and each dispatch stays small. The source goes to a file named by
# a hash of itself and of the emulator's sources (numba caches functions by file; a changed kernel gives a
# new file, never a stale cache).

_TEMPLATE = '''"""Generated by chunkwise.emu.program (opcodes {names}); do not edit."""
import numpy as np
from numba import njit

from chunkwise.emu.program import ROW, _views
{imports}


@njit(cache=True)
def run_rows(mem, pc, x, in_off, y, out_off, io):
    """Run rows from ``pc`` to the end (returns the row count) or to a HOST row (returns its index).

    ``io`` bits: 1: first write the chunk ``x`` at ``in_off`` (an exact-dtype input); 2: at the end read the
    value at ``out_off`` into ``y``; 4: that value is float32. The one compiled entry of a program (every
    caller passes arrays of the same types, dummies when ``io`` says they are unused), so a model compiles its
    arms once."""
    code, act, actf, c16, c32, c64, cf, mode = _views(mem)
    if io & 1:
        i = in_off
        for v in x.flat:
            act[i] = v
            i += 1
    n = code.size // ROW
    while pc < n:
        row = code[pc * ROW:(pc + 1) * ROW]
        op = row[0]
        if op == {host}:
            return pc
{arms}
        pc += 1
    if io & 2:
        flat = y.reshape(-1)
        if io & 4:
            for i in range(flat.size):
                flat[i] = actf[out_off + i]
        else:
            for i in range(flat.size):
                flat[i] = act[out_off + i]
    return pc
'''

_fingerprint: str | None = None
_loaded: dict[str, object] = {}
_load_lock = threading.Lock()


def _sources_fingerprint() -> str:
    """A hash of the emulator's sources (every arm and helper a dispatcher links in) and numba's version."""
    global _fingerprint
    if _fingerprint is None:
        import numba

        h = hashlib.sha1(numba.__version__.encode())
        root = Path(__file__).resolve().parent
        for f in sorted(list(root.glob("*.py")) + list((root / "ops").glob("*.py"))):
            h.update(f.name.encode())
            h.update(f.read_bytes())
        _fingerprint = h.hexdigest()
    return _fingerprint


def _cache_dir() -> Path:
    """Where generated dispatchers are written: $CHUNKWISE_CACHE_DIR, else the user's cache directory, else a
    temporary directory."""
    candidates = [os.environ.get("CHUNKWISE_CACHE_DIR"),
                  os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "chunkwise"),
                  os.path.join(tempfile.gettempdir(), f"chunkwise-{os.getuid() if hasattr(os, 'getuid') else 0}")]
    for c in candidates:
        if not c:
            continue
        try:
            os.makedirs(c, exist_ok=True)
            if os.access(c, os.W_OK):
                return Path(c)
        except OSError:
            continue
    raise UnsupportedError("no writable directory for compiled dispatchers (set CHUNKWISE_CACHE_DIR)")


def dispatcher(names):
    """The generated module (its ``run_rows``) that runs rows of the given layouts."""
    codes = opcodes()
    names = sorted(set(names))
    imports, arms = [], []
    for name in names:
        fn = ARMS[name]
        imports.append(f"from {fn.py_func.__module__} import {fn.__name__} as arm_{name}")
        arms.append(f"        elif op == {codes[name]}:\n"
                    f"            arm_{name}(row, act, actf, c16, c32, c64, cf, mode)")
    text = _TEMPLATE.format(names=", ".join(names) or "none", imports="\n".join(imports), host=OP_HOST,
                            arms="\n".join(arms))
    key = hashlib.sha1((text + _sources_fingerprint()).encode()).hexdigest()[:20]
    modname = f"chunkwise_rows_{key}"
    with _load_lock:
        mod = _loaded.get(modname)
        if mod is not None:
            return mod
        path = _cache_dir() / f"{modname}.py"
        if not path.exists() or path.read_text() != text:
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(text)
            os.replace(tmp, path)
        spec = importlib.util.spec_from_file_location(modname, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[modname] = mod
        spec.loader.exec_module(mod)
        _loaded[modname] = mod
        return mod


# ---- lowering -----------------------------------------------------------------------------------------

#: dtypes a value may have to live in the arena (one int32 / float32 word per element)
ARENA_DTYPES = ("int8", "int16", "int32", "uint8", "uint16", "bool", "float32")


class NotLowered(Exception):
    """A lowering refuses one node (the node runs on the per-node path instead)."""


class Builder:
    """What a lowering writes to: arena slots for values, constant sections, rows.

    A lowering gets ``(b, step)``: ``step.node``, ``step.prepared`` (its ``info`` holds what ``prepare``
    decided), and ``b.ins(step)`` / ``b.outs(step)`` (the values' :class:`~.registry.Spec`).
    """

    def __init__(self, plan: Plan):
        self.plan = plan
        self.rows: list[np.ndarray] = []
        self.slots: dict[str, int] = {}
        self.size = 0
        self.init: list[tuple[int, np.ndarray]] = []  # arena words set when the program is built
        self.state: list[tuple[int, int]] = []  # arena words zeroed by reset()
        self.sections = {"c16": [], "c32": [], "c64": [], "cf": []}
        self.counts = {"c16": 0, "c32": 0, "c64": 0, "cf": 0}
        self.codes = opcodes()
        self.first: list[np.ndarray] = []  # rows that run at the start of every chunk (emit_first)
        #: StreamingCache output -> its input, for caches whose input is written straight into the output
        #: buffer (its slot is the buffer's tail): set by Program before any lowering runs
        self.in_place_caches: dict[str, str] = {}

    # values
    def spec(self, name: str):
        return self.plan.specs[name]

    def ins(self, step: Step):
        return [self.plan.specs[i] if i else None for i in step.inputs]

    def outs(self, step: Step):
        return [self.plan.specs[o] for o in step.outputs]

    def alloc(self, n: int) -> int:
        off = self.size
        self.size += max(int(n), 0)
        return off

    def slot(self, name: str) -> int:
        """The arena offset of value ``name`` (a constant is written there once)."""
        if name not in self.slots:
            spec = self.plan.specs[name]
            if spec.dtype not in ARENA_DTYPES:
                raise self.refuse(f"value {name!r} is {spec.dtype}, which the arena does not hold")
            n = _size(spec.shape)
            off = self.alloc(n)
            self.slots[name] = off
            if spec.const is not None:
                c = np.asarray(spec.const).reshape(-1)
                self.init.append((off, c.astype(np.float32).view(np.int32) if spec.dtype == "float32"
                                  else c.astype(np.int32)))
        return self.slots[name]

    def alias(self, out: str, src: str) -> None:
        """``out`` is ``src``'s words (a reshape); a copy when ``out`` already has its own place (the tail of
        an in-place cache buffer)."""
        if out in self.slots:
            from .ops.movement import COPY

            self.emit(COPY, x=self.slot(src), out=self.slots[out], n=_size(self.plan.specs[out].shape))
            return
        self.slots[out] = self.slot(src)

    def scratch(self, n: int) -> int:
        return self.alloc(n)

    def state_words(self, n: int) -> int:
        off = self.alloc(n)
        self.state.append((off, int(n)))
        return off

    # constants
    def _const(self, section: str, a, dtype) -> int:
        a = np.ascontiguousarray(np.asarray(a).reshape(-1), dtype=dtype)
        off = self.counts[section]
        self.sections[section].append(a)
        self.counts[section] += a.size
        return off

    def c16(self, a) -> int:
        return self._const("c16", a, np.int16)

    def c32(self, a) -> int:
        return self._const("c32", a, np.int32)

    def c64(self, a) -> int:
        return self._const("c64", a, np.int64)

    def cf(self, a) -> int:
        return self._const("cf", a, np.float32)

    def c64_scratch(self, n: int) -> int:
        return self.c64(np.zeros(max(int(n), 1), dtype=np.int64))

    # rows
    def emit_first(self, layout, **fields) -> None:
        """A row that runs at the start of every chunk, before the others."""
        self.emit(layout, **fields)
        self.first.append(self.rows.pop())

    def emit(self, layout, **fields) -> None:
        """One row of ``layout`` (a ``registry.row_layout``): every field by name, nothing else."""
        name = type(layout).__name__
        want = set(layout._fields)
        if set(fields) != want:
            raise AssertionError(f"{name} row: missing {sorted(want - set(fields))}, "
                                 f"unknown {sorted(set(fields) - want)}")
        row = np.zeros(ROW, dtype=np.int64)
        row[0] = self.codes[name]
        for k, v in fields.items():
            row[getattr(layout, k)] = int(v)
        self.rows.append(row)

    def refuse(self, reason: str) -> NotLowered:
        return NotLowered(reason)


def _size(shape) -> int:
    return int(math.prod(int(s) for s in shape)) if shape is not None else 0


def _align(n: int) -> int:
    return (n + 63) // 64 * 64


class Program:
    """A plan lowered to instruction rows (see the module docstring)."""

    def __init__(self, plan: Plan, carry=()):
        """``carry``: ``(output, input)`` pairs of recurrent state (a streaming model's ``streaming_state``):
        after each chunk the program copies the output's words into the input's, so the caller feeds only the
        other inputs (feeding a carried input anyway overrides the state)."""
        supported_ops()  # registers every kernel and lowering
        self.plan = plan
        graph = plan.graph
        b = Builder(plan)
        self.inputs = [v.name for v in graph.inputs if v.name not in graph.initializers]
        self.outputs = [v.name for v in graph.outputs]
        for name in self.inputs:
            if plan.specs[name].dtype not in ARENA_DTYPES:
                raise UnsupportedError(f"input {name!r} is {plan.specs[name].dtype}; the compiled program holds "
                                       f"{', '.join(ARENA_DTYPES)}")
            b.slot(name)
        self.not_compiled: list[tuple] = []  # (node, reason)
        host_steps: list[int] = []  # index into plan.steps of each HOST row
        self._host_only: set[str] = set()  # values a host step made that the arena cannot hold
        row_steps: list[int] = []  # the plan step each row belongs to (-1: the program's own rows)
        self._place_caches(b)
        first_steps: list[int] = []
        for k, step in enumerate(plan.steps):
            row_steps += [k - 1] * (len(b.rows) - len(row_steps))
            node = step.node
            lower = LOWERINGS.get(node.op_type)
            reason = None
            if lower is None:
                reason = NOT_LOWERED.get(node.op_type, "no compiled lowering")
            elif any(i and i in self._host_only for i in step.inputs):
                reason = "an input is a value the arena does not hold"
            else:
                mark = (len(b.rows), dict(b.slots), b.size, len(b.init), len(b.state), len(b.first))
                try:
                    lower(b, step)
                    first_steps += [k] * (len(b.first) - mark[5])
                except (NotLowered, UnsupportedError) as e:
                    reason = str(e)
                    n_rows, slots, size, n_init, n_state, n_first = mark
                    del b.rows[n_rows:], b.init[n_init:], b.state[n_state:], b.first[n_first:]
                    b.slots, b.size = slots, size
            if reason is not None:
                self.not_compiled.append((node, reason))
                host_steps.append(k)
                row = np.zeros(ROW, dtype=np.int64)
                row[0] = OP_HOST
                b.rows.append(row)
                for o in step.outputs:
                    if plan.specs[o].dtype in ARENA_DTYPES:
                        b.slot(o)
                    else:
                        self._host_only.add(o)
        row_steps += [len(plan.steps) - 1] * (len(b.rows) - len(row_steps))
        for name in self.outputs:
            if name not in self._host_only:
                b.slot(name)
        self.carried = []
        for out, inp in carry:
            n = _size(plan.specs[inp].shape)
            if out in self._host_only or _size(plan.specs[out].shape) != n or inp not in self.inputs:
                raise UnsupportedError(f"state {out!r} -> {inp!r} cannot be carried in the arena")
            from .ops.movement import COPY

            b.emit(COPY, x=b.slot(out), out=b.slot(inp), n=n)
            b.state.append((b.slot(inp), n))
            self.carried.append(inp)
        self.fed = [n for n in self.inputs if n not in self.carried]
        self.code = np.array(b.first + b.rows, dtype=np.int64).reshape(-1, ROW)
        #: for each row, the index of the plan step it runs (-1: the program's own state copies)
        self.row_steps = np.array(first_steps + row_steps + [-1] * (len(b.rows) - len(row_steps)), dtype=np.int64)
        names = {v: k for k, v in b.codes.items()}
        self.runner = dispatcher(names[int(op)] for op in set(self.code[:, 0].tolist()) if op != OP_HOST)
        self.slots = dict(b.slots)
        self.state = list(b.state)
        self._build_mem(b)
        # host steps run kernels prepared for this program alone when any keeps state
        if any(plan.steps[k].prepared.reset is not None for k in host_steps):
            shapes = {n: plan.specs[n].shape for n in self.inputs}
            own = Plan(graph, plan.target, shapes)
            self._host_plan = own
        else:
            self._host_plan = plan
        self.host = {pc: self._host_plan.steps[k] for pc, k in
                     zip([i for i, r in enumerate(self.code) if r[0] == OP_HOST], host_steps)}
        self._host_values: dict[str, np.ndarray] = {}
        self.out_shapes = [plan.specs[n].shape for n in self.outputs]
        self.out_dtypes = [np.dtype(plan.specs[n].dtype) for n in self.outputs]
        self.out_sizes = np.array([_size(s) for s in self.out_shapes], dtype=np.int64)
        self.in_offs = np.array([self.slots[n] for n in self.inputs], dtype=np.int64)
        self.in_sizes = np.array([_size(plan.specs[n].shape) for n in self.inputs], dtype=np.int64)
        self.in_dtypes = [plan.specs[n].dtype for n in self.inputs]
        self.out_offs = np.array([self.slots.get(n, -1) for n in self.outputs], dtype=np.int64)
        self._fast = self._fast_path()
        # run_rows' argument types are fixed per program (one compile): the fast path's chunk and output
        # types, or dummies of those types when a call does not use them
        x_in = self.plan.specs[self._fast[0]] if self._fast else None
        self._x0 = np.empty((0,) * len(x_in.shape) if x_in else (0,), dtype=x_in.dtype if x_in else np.int8)
        o0 = self.outputs[0] if self.outputs else None
        self._y0 = np.empty((0,) * len(self.out_shapes[0]) if o0 else (0,),
                            dtype=self.out_dtypes[0] if o0 else np.int8)
        self._rows = self._first_rows  # compiled on first use (building a program compiles nothing)
        self._gets: dict[str, object] = {}

    def _first_rows(self, *args):
        return self._compiled_rows()(*args)

    def _compiled_rows(self):
        """The compiled entry of this program's interpreter (compiled, or loaded from numba's cache, once)."""
        if self._rows == self._first_rows:
            self._rows = _entry_point(self.runner.run_rows, (self.mem, 0, self._x0, 0, self._y0, 0, 0))
        return self._rows

    def _place_caches(self, b: Builder) -> None:
        """Put a StreamingCache's input in the tail of its output buffer when nothing else fixes the input's
        place (a graph input, a constant, another cache's buffer): its producer then writes the frames where
        the cache keeps them, and the cache itself only moves its kept frames (see ops/streaming.py)."""
        plan = self.plan
        if "StreamingCache" not in LOWERINGS:
            return
        produced = {o for st in plan.steps for o in st.outputs}
        for st in plan.steps:
            if st.node.op_type != "StreamingCache" or not st.inputs or not st.inputs[0]:
                continue
            x, out = st.inputs[0], st.outputs[0]
            sx, so = plan.specs[x], plan.specs[out]
            if (x not in produced or x in b.slots or sx.const is not None
                    or sx.dtype not in ARENA_DTYPES or so.dtype != sx.dtype):
                continue
            nx, n_out = _size(sx.shape), _size(so.shape)
            b.slots[x] = b.slot(out) + (n_out - nx)
            b.in_place_caches[out] = x

    # ---- memory -------------------------------------------------------------------------------------
    def _build_mem(self, b: Builder) -> None:
        parts = [("code", self.code.reshape(-1).view(np.uint8)),
                 ("act", np.zeros(max(b.size, 1), dtype=np.int32).view(np.uint8))]
        for sec, dt in (("c16", np.int16), ("c32", np.int32), ("c64", np.int64), ("cf", np.float32)):
            arrs = b.sections[sec]
            a = np.concatenate(arrs) if arrs else np.zeros(1, dtype=dt)
            parts.append((sec, a.view(np.uint8)))
        offs, pos = {}, _align(HDR_WORDS * 8)
        for name, a in parts:
            offs[name] = (pos, pos + a.size)
            pos = _align(pos + a.size)
        mem = np.zeros(pos, dtype=np.uint8)
        for name, a in parts:
            s, e = offs[name]
            mem[s:e] = a
        hdr = mem[:HDR_WORDS * 8].view(np.int64)
        hdr[H_MODE] = self.plan.mode
        for name, (lo_k, hi_k) in (("code", (H_CODE, H_CODE_END)), ("act", (H_ACT, H_ACT_END)),
                                   ("c16", (H_C16, H_C16_END)), ("c32", (H_C32, H_C32_END)),
                                   ("c64", (H_C64, H_C64_END)), ("cf", (H_CF, H_CF_END))):
            hdr[lo_k], hdr[hi_k] = offs[name]
        self.mem = mem
        s, e = offs["act"]
        self.act = mem[s:e].view(np.int32)
        self.actf = mem[s:e].view(np.float32)
        for off, words in b.init:
            self.act[off:off + words.size] = words
        self._init = list(b.init)

    @property
    def dummies(self) -> tuple[np.ndarray, np.ndarray]:
        """The chunk and output arrays ``runner.run_rows`` takes when a call reads / writes neither (its
        argument types are fixed per program)."""
        return self._x0, self._y0

    def reset(self) -> None:
        for off, n in self.state:
            self.act[off:off + n] = 0
        if self._host_plan is not self.plan:  # host steps that keep state: kernels of this program alone
            self._host_plan.reset()

    @property
    def state_bytes(self) -> int:
        return sum(n for _, n in self.state) * 4

    # ---- running ------------------------------------------------------------------------------------
    def _fast_path(self):
        """(input name, its slot, dtype, shape, output name, slot, dtype, shape, float output, quantization,
        other outputs) when one chunk runs as one compiled call: one fed input, arena outputs, no host step."""
        if self.host or len(self.fed) != 1 or not self.outputs or (self.out_offs < 0).any():
            return None
        i, o = self.fed[0], self.outputs[0]
        si, so = self.plan.specs[i], self.plan.specs[o]
        if si.dtype not in ("int8", "int16", "int32", "uint8", "uint16"):
            return None
        quant = None  # float chunks: 2**-exponent and the saturation range (model.prepare_inputs' rule)
        if si.dtype in ("int8", "int16") and len(si.exps) == 1:
            lo, hi = qrange(si.dtype)
            quant = (2.0 ** (-int(si.exps[0])), float(lo), float(hi))
        more = [(n, int(off), tuple(shape), dt, dt == np.float32) for n, off, shape, dt in
                zip(self.outputs[1:], self.out_offs[1:], self.out_shapes[1:], self.out_dtypes[1:])]
        io = 1 | 2 | (4 if so.dtype == "float32" else 0)  # run_rows' io bits
        strides = {k: np.empty(si.shape, dtype=f"i{k}").strides for k in (1, 2, 4, 8)}  # C order, by item size
        return (i, int(self.slots[i]), np.dtype(si.dtype), tuple(si.shape), o, int(self.slots[o]),
                np.dtype(so.dtype), tuple(so.shape), io, quant, more, strides)

    def push(self, chunk):
        """The fast path of ``Session.push``: ``chunk`` an array or ``{name: array}`` of exactly the input's
        integer dtype and shape (no other check is needed), or of float32/float64 in that shape (quantized
        here, in compiled code, with the target's rounding). Returns ``{output: array}``, or None when the
        chunk needs the general path (other dtypes, shapes, several inputs, host steps, a NaN)."""
        fast = self._fast
        if fast is None:
            return None
        if type(chunk) is dict:
            if len(chunk) != 1:
                return None
            x = chunk.get(fast[0])
            if x is None:
                return None
        else:
            x = chunk
        # the compiled entry's argument types: C-contiguous (its strides), aligned (a multi-byte dtype could be a
        # view into a byte buffer); a read-only chunk is fine (never written)
        if type(x) is not np.ndarray or x.shape != fast[3] or x.strides != fast[11].get(x.itemsize):
            return None
        if fast[2].itemsize > 1 and not x.flags.aligned:
            return None
        y = np.empty(fast[7], dtype=fast[6])
        if x.dtype == fast[2]:
            self._rows(self.mem, 0, x, fast[1], y, fast[5], fast[8])
        elif x.dtype.kind == "f" and x.dtype.itemsize in (4, 8) and fast[9] is not None:
            scale, lo, hi = fast[9]
            if not _put_quantized(self.mem, fast[1], x, scale, lo, hi):
                return None
            self._rows(self.mem, 0, self._x0, 0, y, fast[5], fast[8] & ~1)
        else:
            return None
        out = {fast[4]: y}
        for name, off, shape, dt, is_float in fast[10]:
            z = np.empty(shape, dtype=dt)
            get = self._gets.get(name)
            if get is None:  # the compiled reader for this output's array type, without type dispatch
                get = self._gets[name] = _entry_point(_get, (self.mem, off, z, is_float))
            get(self.mem, off, z, is_float)
            out[name] = z
        return out

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One chunk of validated feeds (``{input: array}`` in the inputs' dtypes) -> fresh output arrays."""
        mem = self.mem
        for name, off, dt in zip(self.inputs, self.in_offs, self.in_dtypes):
            if name in feeds:  # a carried input may be left out: the program holds it
                _put(mem, int(off), feeds[name], dt == "float32")
        self._run_rows()
        return self._collect()

    def _run_rows(self) -> None:
        pc, n = 0, self.code.shape[0]
        while True:
            pc = self._rows(self.mem, pc, self._x0, 0, self._y0, 0, 0)
            if pc >= n:
                return
            self._run_host(self.host[pc])
            pc += 1

    def _read(self, name: str):
        if not name:
            return None
        spec = self.plan.specs[name]
        if spec.const is not None:
            return spec.const
        if name in self._host_only:
            return self._host_values[name]
        off, n = self.slots[name], _size(spec.shape)
        if spec.dtype == "float32":
            return self.actf[off:off + n].copy().reshape(spec.shape)
        return self.act[off:off + n].astype(spec.dtype).reshape(spec.shape)

    def _run_host(self, step: Step) -> None:
        args = [self._read(i) for i in step.inputs]
        with self._host_plan._lock:  # the plan's kernels share work and output buffers
            outs = step.prepared.run(*args)
            for name, arr in zip(step.outputs, outs):
                if name in self._host_only:
                    self._host_values[name] = np.array(arr)
                    continue
                off = self.slots[name]
                flat = np.asarray(arr).reshape(-1)
                if self.plan.specs[name].dtype == "float32":
                    self.actf[off:off + flat.size] = flat
                else:
                    self.act[off:off + flat.size] = flat

    def _collect(self) -> dict[str, np.ndarray]:
        out = {}
        for name, off, shape, dt in zip(self.outputs, self.out_offs, self.out_shapes, self.out_dtypes):
            if name in self._host_only:
                out[name] = np.array(self._host_values[name])
                continue
            y = np.empty(shape, dtype=dt)
            _get(self.mem, int(off), y, dt == np.float32)
            out[name] = y
        return out

    def run_batch(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A sequence of chunks: validated ``{input: [T, *shape]}`` -> ``{output: [T, *shape]}``, one compiled
        call per chunk on the fast path's types (the chunks and outputs are views of the stacked arrays)."""
        n = len(next(iter(feeds.values())))
        fast = self._fast
        x = feeds.get(fast[0]) if fast is not None and len(feeds) == 1 else None
        if x is not None and x.dtype == fast[2] and x.flags.c_contiguous and x.flags.aligned:
            ys = [np.empty((n,) + fast[7], dtype=fast[6])] + [np.empty((n,) + m[2], dtype=m[3]) for m in fast[10]]
            rows, mem, y0 = self._compiled_rows(), self.mem, ys[0]
            for t in range(n):
                rows(mem, 0, x[t], fast[1], y0[t], fast[5], fast[8])
                for (name, off, shape, dt, is_float), y in zip(fast[10], ys[1:]):
                    _get(mem, off, y[t], is_float)
            return dict(zip([fast[4]] + [m[0] for m in fast[10]], ys))
        outs = [self.run({k: v[t] for k, v in feeds.items()}) for t in range(n)]
        return {k: np.stack([o[k] for o in outs]) for k in self.outputs}


def _entry_point(dispatcher, example):
    """The compiled function for the argument types of ``example``, called without numba's per-call type
    dispatch (half the cost of a call). Every caller passes exactly these types (the program checks a
    chunk's dtype, shape, contiguity and alignment before its fast path); falls back to the dispatcher."""
    from numba import typeof

    try:
        sig = tuple(typeof(a) for a in example)
        dispatcher.compile(sig)
        return dispatcher.overloads[sig].entry_point
    except Exception:  # another numba version: the dispatcher itself
        return dispatcher


def compile_plan(plan: Plan, carry=()) -> tuple[Program | None, str]:
    """(program, "") or (None, why not). A program may run some nodes on the per-node path between its
    compiled rows (``program.not_compiled``); None only when no node compiles or the inputs cannot be
    held. ``carry``: see :class:`Program`."""
    try:
        prog = Program(plan, carry)
    except UnsupportedError as e:
        return None, str(e)
    if plan.steps and len(prog.not_compiled) == len(plan.steps):
        node, why = prog.not_compiled[0]
        return None, f"no node compiles (first: node {node.name!r} ({node.op_type}): {why})"
    return prog, ""


def lowering_check() -> list[str]:
    """Every op with a kernel has a lowering or a declared reason (``registry.no_lowering``); every row
    layout a lowering may emit has an opcode here. Returns the problems (empty when consistent)."""
    from .registry import KERNELS

    supported_ops()
    problems = [f"{op}: a kernel without a lowering or a declared refusal" for op in sorted(KERNELS)
                if op not in LOWERINGS and op not in NOT_LOWERED]
    codes = opcodes()
    if len(set(codes.values())) != len(codes) or OP_HOST in codes.values():
        problems.append("opcode numbers repeat")
    return problems


__all__ = ["Builder", "NotLowered", "Program", "compile_plan", "dispatcher", "lowering_check", "opcodes"]
