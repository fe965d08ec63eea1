"""Compiled plans: a prepared graph lowered to one instruction table run by one njit call.

The per-node path (:class:`chunkwise.emu.engine.Plan`) calls a Python closure per node: fine for
offline models, far too slow for a streaming step of a few microseconds. A :class:`Program`
lowers every step of a plan to a row of integers (opcode + parameters) over flat arenas:

* ``act`` (int32): every activation value, every StreamingCache state, preallocated once;
* ``c32`` (int32): weights and LUT tables; ``c64`` (int64): biases and per-channel shifts;
  ``cf`` (float32): float scales.

One ``@njit(cache=True)`` interpreter runs the rows; each opcode calls the *same* njit kernel the
per-node path uses (``_conv2d``, ``_avg_pool``, ...), on views of the arenas, so there is one
implementation of the arithmetic. Reshape-like ops cost nothing (their output aliases their input).
``push_many`` runs a whole sequence of chunks in one call. Lowering is all-or-nothing: when a graph
holds an op without a lowering, :func:`compile_plan` returns ``None`` with the reason and the caller
keeps the per-node path.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..errors import UnsupportedError
from .engine import Plan
from .ops.conv import _conv2d, acc_dtype, conv_geometry, out_size
from .ops.pool import _avg_pool, _avg_scale, _max_pool
from .registry import Ctx
from .rounding import qrange, round_f32_sat, shift_round

ROW = 32
OP_CONV, OP_CACHE, OP_COPY, OP_LUT8, OP_RELU, OP_ADD, OP_SUB, OP_MUL, OP_AVG, OP_MAX, OP_PAD = range(1, 12)


# ---- the interpreter ----------------------------------------------------------------------------------


@njit(cache=True)
def _exec(code, act, c32, c64, cf, acc32, acc64, mode):
    for r in range(code.shape[0]):
        row = code[r]
        op = row[0]
        if op == OP_CONV:
            xo, n, h, w, c = row[1], row[2], row[3], row[4], row[5]
            wo, kh, kw, cg, cout = row[6], row[7], row[8], row[9], row[10]
            bo, so, oo, oh, ow = row[11], row[12], row[13], row[14], row[15]
            x = act[xo:xo + n * h * w * c].reshape((n, h, w, c))
            wt = c32[wo:wo + kh * kw * cg * cout].reshape((kh, kw, cg, cout))
            out = act[oo:oo + n * oh * ow * cout].reshape((n, oh, ow, cout))
            if row[27]:
                _conv2d(x, wt, c64[bo:bo + cout], c64[so:so + cout], out, acc64[:cout], row[16], row[17], row[18],
                        row[19], row[20], row[21], row[22], row[23] != 0, row[24], row[25], mode)
            else:
                _conv2d(x, wt, c64[bo:bo + cout], c64[so:so + cout], out, acc32[:cout], row[16], row[17], row[18],
                        row[19], row[20], row[21], row[22], row[23] != 0, row[24], row[25], mode)
        elif op == OP_CACHE:
            xo, xn, oo, st, sn = row[1], row[2], row[3], row[4], row[5]
            out = act[oo:oo + sn + xn]
            state = act[st:st + sn]
            x = act[xo:xo + xn]
            for i in range(sn):
                out[i] = state[i]
            for i in range(xn):
                out[sn + i] = x[i]
            for i in range(sn):
                state[i] = out[xn + i]
        elif op == OP_COPY:
            io, oo = row[1], row[2]
            d0, d1, d2, d3 = row[3], row[4], row[5], row[6]
            s0, s1, s2, s3 = row[7], row[8], row[9], row[10]
            base = io + row[11]
            k = oo
            for i0 in range(d0):
                for i1 in range(d1):
                    for i2 in range(d2):
                        p = base + i0 * s0 + i1 * s1 + i2 * s2
                        for i3 in range(d3):
                            act[k] = act[p + i3 * s3]
                            k += 1
        elif op == OP_LUT8:
            xo, n, to, oo = row[1], row[2], row[3], row[4]
            x, out, table = act[xo:xo + n], act[oo:oo + n], c32[to:to + 256]
            for i in range(n):
                out[i] = table[x[i] + 128]
        elif op == OP_RELU:  # max(x, 0) requantized from the input to the output exponent
            xo, n, oo, shift, lo, hi = row[1], row[2], row[3], row[4], row[5], row[6]
            x, out = act[xo:xo + n], act[oo:oo + n]
            for i in range(n):
                out[i] = min(max(shift_round(np.int64(max(x[i], 0)), shift, mode), lo), hi)
        elif op == OP_ADD or op == OP_SUB:
            ao, bo, n, oo, lo, hi = row[1], row[2], row[3], row[4], row[5], row[6]
            a, b, out = act[ao:ao + n], act[bo:bo + n], act[oo:oo + n]
            sign = 1 if op == OP_ADD else -1
            for i in range(n):
                out[i] = min(max(a[i] + sign * b[i], lo), hi)
        elif op == OP_MUL:
            ao, bo, n, oo, lo, hi, via_float, shift, fi = row[1], row[2], row[3], row[4], row[5], row[6], \
                row[7], row[8], row[9]
            a, b, out = act[ao:ao + n], act[bo:bo + n], act[oo:oo + n]
            scale = cf[fi]
            for i in range(n):
                p = np.int64(a[i]) * np.int64(b[i])
                if via_float:
                    out[i] = round_f32_sat(np.float32(np.float32(p) * scale), mode, lo, hi)
                else:
                    out[i] = min(max(shift_round(p, shift, mode), lo), hi)
        elif op == OP_PAD:  # fill, then scatter the input into the interior
            io, oo, on, value = row[1], row[2], row[3], row[4]
            d0, d1, d2, d3 = row[5], row[6], row[7], row[8]
            s0, s1, s2, s3 = row[9], row[10], row[11], row[12]
            out = act[oo:oo + on]
            for i in range(on):
                out[i] = value
            base = oo + row[13]
            k = io
            for i0 in range(d0):
                for i1 in range(d1):
                    for i2 in range(d2):
                        p = base + i0 * s0 + i1 * s1 + i2 * s2
                        for i3 in range(d3):
                            act[p + i3 * s3] = act[k]
                            k += 1
        elif op == OP_AVG or op == OP_MAX:
            xo, n, h, w, c, oo, oh, ow = row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8]
            x = act[xo:xo + n * h * w * c].reshape((n, h, w, c))
            out = act[oo:oo + n * oh * ow * c].reshape((n, oh, ow, c))
            if op == OP_AVG:
                _avg_pool(x, out, row[9], row[10], row[11], row[12], row[13], row[14], cf[row[15]], row[16],
                          row[17], mode)
            else:
                _max_pool(x, out, row[9], row[10], row[11], row[12], row[13], row[14])


@njit(cache=True)
def _exec_many(code, act, c32, c64, cf, acc32, acc64, mode, xs, in_offs, in_sizes, ys, out_offs, out_sizes):
    for t in range(xs.shape[0]):
        p = 0
        for k in range(in_offs.shape[0]):
            act[in_offs[k]:in_offs[k] + in_sizes[k]] = xs[t, p:p + in_sizes[k]]
            p += in_sizes[k]
        _exec(code, act, c32, c64, cf, acc32, acc64, mode)
        p = 0
        for k in range(out_offs.shape[0]):
            ys[t, p:p + out_sizes[k]] = act[out_offs[k]:out_offs[k] + out_sizes[k]]
            p += out_sizes[k]


# ---- lowering -----------------------------------------------------------------------------------------


class _Builder:
    def __init__(self, plan: Plan):
        self.plan = plan
        self.rows: list[list[int]] = []
        self.slots: dict[str, int] = {}
        self.size = 0
        self.state: list[tuple[int, int]] = []
        self.c32: list[np.ndarray] = []
        self.c64: list[np.ndarray] = []
        self.cf: list[float] = []
        self.n32 = self.n64 = 0
        self.max_acc = 1

    def alloc(self, n: int) -> int:
        off = self.size
        self.size += int(n)
        return off

    def slot(self, name: str) -> int:
        if name not in self.slots:
            self.slots[name] = self.alloc(int(np.prod(self.plan.specs[name].shape, dtype=np.int64)))
        return self.slots[name]

    def const32(self, a: np.ndarray) -> int:
        off = self.n32
        self.c32.append(np.ascontiguousarray(a, dtype=np.int32).ravel())
        self.n32 += self.c32[-1].size
        return off

    def const64(self, a: np.ndarray) -> int:
        off = self.n64
        self.c64.append(np.ascontiguousarray(a, dtype=np.int64).ravel())
        self.n64 += self.c64[-1].size
        return off

    def constf(self, v) -> int:
        self.cf.append(np.float32(v))
        return len(self.cf) - 1

    def emit(self, *vals) -> None:
        row = [int(v) for v in vals]
        if len(row) > ROW:
            raise AssertionError("instruction row too long")
        self.rows.append(row + [0] * (ROW - len(row)))


def _size(shape) -> int:
    return int(np.prod(shape, dtype=np.int64))


def _lower_conv(b: _Builder, node, ins, outs, ctx):
    x, w = ins[0], ins[1]
    if node.op_type == "Gemm":
        wt = w.const.reshape(w.const.shape[-2], w.const.shape[-1])
        k, cout = wt.shape
        rows = _size(x.shape[:-1])
        geo = ((1, rows), (1, 1), (1, 1), (1, 1), (0, 0, 0, 0))
        wt = wt.reshape(1, 1, k, cout)
        n, h, wd, cin, groups = 1, 1, rows, k, 1
    else:
        geo = conv_geometry(ctx, x.shape, w.shape)
        (h, wd), (kh, kw), _, _, _ = geo
        wt = w.const if w.const.ndim == 4 else w.const.reshape(1, *w.const.shape)
        groups = int(node.attr("group", 1) or 1)
        cin = x.shape[-1]
        if groups > 1 and groups == cin and wt.shape[3] == 1 and wt.shape[2] == cin:
            wt = wt.reshape(wt.shape[0], wt.shape[1], 1, cin)
        n = x.shape[0]
    (ih, iw), (kh, kw), (sh, sw), (dh, dw), (pt, pl, pb, pr) = geo
    cout = wt.shape[3]
    oh, ow = out_size(ih, kh, sh, dh, pt, pb), out_size(iw, kw, sw, dw, pl, pr)
    e_w = list(w.exps) * cout if len(w.exps) == 1 else list(w.exps)
    shifts = np.array([outs[0].exp - x.exp - e for e in e_w], dtype=np.int64)
    bias = (ins[2].const.astype(np.int64).ravel() if len(ins) > 2 and ins[2].name
            else np.zeros(cout, dtype=np.int64))
    relu = (node.attr("activation", "Linear") or "Linear") == "Relu"
    lo, hi = qrange(x.dtype)
    wide = acc_dtype(wt, bias, x.dtype) == np.int64
    b.max_acc = max(b.max_acc, cout)
    b.emit(OP_CONV, b.slot(x.name), n, ih, iw, x.shape[-1], b.const32(wt), kh, kw, wt.shape[2], cout,
           b.const64(bias), b.const64(shifts), b.slot(outs[0].name), oh, ow, sh, sw, dh, dw, pt, pl, groups,
           relu, lo, hi, 0, wide)


def _lower_cache(b: _Builder, node, ins, outs, ctx):
    x = ins[0]
    xn = _size(x.shape)
    on = _size(b.plan.specs[outs[0].name].shape)
    sn = on - xn
    st = b.alloc(sn)
    b.state.append((st, sn))
    b.emit(OP_CACHE, b.slot(x.name), xn, b.slot(outs[0].name), st, sn)


def _strides(shape):
    s, acc = [], 1
    for d in reversed(shape):
        s.append(acc)
        acc *= int(d)
    return list(reversed(s))


def _emit_gather(b: _Builder, src: str, dst: str, dims, strides, base: int):
    if len(dims) > 4:
        raise UnsupportedError("gather of rank > 4")
    pad = 4 - len(dims)
    dims = [1] * pad + list(dims)
    strides = [0] * pad + list(strides)
    b.emit(OP_COPY, b.slot(src), b.slot(dst), *dims, *strides, base)


def _lower_transpose(b, node, ins, outs, ctx):
    shape = ins[0].shape
    perm = node.attr("perm") or list(range(len(shape)))[::-1]
    st = _strides(shape)
    _emit_gather(b, ins[0].name, outs[0].name, [shape[p] for p in perm], [st[p] for p in perm], 0)


def _lower_slice(b, node, ins, outs, ctx):
    shape = ins[0].shape
    rank = len(shape)
    starts = ins[1].const.ravel()
    axes = ins[3].const.ravel() if len(ins) > 3 and ins[3].name else np.arange(len(starts))
    steps = ins[4].const.ravel() if len(ins) > 4 and ins[4].name else np.ones(len(starts), dtype=np.int64)
    out_shape = b.plan.specs[outs[0].name].shape
    st = _strides(shape)
    begin = [0] * rank
    step = [1] * rank
    for s0, a, k in zip(starts, axes, steps):
        a = int(a) % rank
        k = int(k)
        if k != 1:
            raise UnsupportedError("strided slice")
        s0 = int(s0)
        s0 = s0 + shape[a] if s0 < 0 else s0
        begin[a] = min(max(s0, 0), shape[a])
    base = sum(bg * s for bg, s in zip(begin, st))
    _emit_gather(b, ins[0].name, outs[0].name, out_shape, [s * k for s, k in zip(st, step)], base)


def _lower_pad(b, node, ins, outs, ctx):
    mode = node.attr("mode", "constant") or "constant"
    if mode != "constant" or len(ins) < 2 or not ins[1].is_const:
        raise UnsupportedError("only constant Pad with constant pads is lowered")
    shape = ins[0].shape
    rank = len(shape)
    if rank > 4:
        raise UnsupportedError("Pad of rank > 4")
    pads = [int(p) for p in ins[1].const.ravel()]
    value = int(ins[2].const.ravel()[0]) if len(ins) > 2 and ins[2].name and ins[2].is_const else 0
    out_shape = b.plan.specs[outs[0].name].shape
    st = _strides(out_shape)
    base = sum(p * s for p, s in zip(pads[:rank], st))
    pad = 4 - rank
    b.emit(OP_PAD, b.slot(ins[0].name), b.slot(outs[0].name), _size(out_shape), value,
           *([1] * pad + list(shape)), *([0] * pad + st), base)


def _lower_lut(b, node, ins, outs, ctx):
    from .ops._lut import lut_table

    found = lut_table(ctx, ins[0].dtype, outs[0].exps)
    if found is None or ins[0].dtype != "int8":
        raise UnsupportedError("only int8 LUT activations are lowered")
    table, _ = found
    b.emit(OP_LUT8, b.slot(ins[0].name), _size(ins[0].shape), b.const32(table), b.slot(outs[0].name))


def _lower_relu(b, node, ins, outs, ctx):
    if node.attr("lut") and ins[0].dtype == "int8":  # ESP-DL uses Relu tables for int8 only
        return _lower_lut(b, node, ins, outs, ctx)
    lo, hi = qrange(ins[0].dtype)
    b.emit(OP_RELU, b.slot(ins[0].name), _size(ins[0].shape), b.slot(outs[0].name), outs[0].exp - ins[0].exp,
           lo, hi)


def _same_shape(ins):
    if ins[0].shape != ins[1].shape or ins[0].is_const or ins[1].is_const:
        raise UnsupportedError("only same-shape element-wise ops on activations are lowered")


def _lower_addsub(b, node, ins, outs, ctx):
    _same_shape(ins)
    lo, hi = qrange(ins[0].dtype)
    b.emit(OP_ADD if node.op_type == "Add" else OP_SUB, b.slot(ins[0].name), b.slot(ins[1].name),
           _size(ins[0].shape), b.slot(outs[0].name), lo, hi)


def _lower_mul(b, node, ins, outs, ctx):
    from .ops.elementwise import Broadcast

    _same_shape(ins)
    dtype = ins[0].dtype
    shift = outs[0].exp - ins[0].exp - ins[1].exp
    via_float = not Broadcast(ctx, ins[0].shape, ins[1].shape).simd(ctx, dtype)
    lo, hi = qrange(dtype)
    b.emit(OP_MUL, b.slot(ins[0].name), b.slot(ins[1].name), _size(ins[0].shape), b.slot(outs[0].name), lo, hi,
           via_float, shift, b.constf(np.float32(2.0 ** -shift)))


def _lower_pool(b, node, ins, outs, ctx):
    from .ops.pool import pool_geometry

    (n, h, w, c), (kh, kw), (sh, sw), (pt, pl, pb, pr), (oh, ow) = pool_geometry(ctx, ins[0].shape)
    lo, hi = qrange(ins[0].dtype)
    if node.op_type == "AveragePool":
        fi = b.constf(_avg_scale(kh * kw, ins[0].exp, outs[0].exp))
        b.emit(OP_AVG, b.slot(ins[0].name), n, h, w, c, b.slot(outs[0].name), oh, ow, kh, kw, sh, sw, pt, pl, fi,
               lo, hi)
    else:
        b.emit(OP_MAX, b.slot(ins[0].name), n, h, w, c, b.slot(outs[0].name), oh, ow, kh, kw, sh, sw, pt, pl)


def _alias(b, node, ins, outs, ctx):
    b.slots[outs[0].name] = b.slot(ins[0].name)


LOWER = {
    "Conv": _lower_conv, "Gemm": _lower_conv, "StreamingCache": _lower_cache, "Transpose": _lower_transpose,
    "Slice": _lower_slice, "Reshape": _alias, "Flatten": _alias, "Squeeze": _alias, "Unsqueeze": _alias,
    "Identity": _alias, "Relu": _lower_relu, "Sigmoid": _lower_lut, "Tanh": _lower_lut, "Swish": _lower_lut,
    "HardSigmoid": _lower_lut, "HardSwish": _lower_lut, "Elu": _lower_lut, "Gelu": _lower_lut,
    "Add": _lower_addsub, "Sub": _lower_addsub, "Mul": _lower_mul, "AveragePool": _lower_pool,
    "MaxPool": _lower_pool, "Pad": _lower_pad,
}


class Program:
    """A plan lowered to one instruction table (see the module docstring)."""

    def __init__(self, plan: Plan):
        self.plan = plan
        b = _Builder(plan)
        graph = plan.graph
        self.inputs = [v.name for v in graph.inputs if v.name not in graph.initializers]
        for name in self.inputs:
            b.slot(name)
        for step in plan.steps:
            node = step.node
            lower = LOWER.get(node.op_type)
            if lower is None:
                raise UnsupportedError(f"no compiled lowering for {node.op_type}", node=node.name, op=node.op_type,
                                       supported=sorted(LOWER))
            ctx = Ctx(plan.target, plan.mode, node, graph)
            ins = [plan.specs[i] if i else None for i in node.inputs]
            outs = [plan.specs[o] for o in node.outputs]
            if any(s is not None and s.dtype not in ("int8", "int16", "int64", "int32") for s in ins + outs):
                raise UnsupportedError("float values are not lowered", node=node.name, op=node.op_type)
            lower(b, node, [s if s is not None else _NONE for s in ins], outs, ctx)
        self.outputs = [v.name for v in graph.outputs]
        self.code = np.array(b.rows, dtype=np.int64).reshape(-1, ROW)
        self.act = np.zeros(max(b.size, 1), dtype=np.int32)
        self.c32 = np.concatenate(b.c32) if b.c32 else np.zeros(1, dtype=np.int32)
        self.c64 = np.concatenate(b.c64) if b.c64 else np.zeros(1, dtype=np.int64)
        self.cf = np.array(b.cf if b.cf else [0.0], dtype=np.float32)
        self.acc32 = np.zeros(b.max_acc, dtype=np.int32)
        self.acc64 = np.zeros(b.max_acc, dtype=np.int64)
        self.state = b.state
        self.mode = np.int64(plan.mode)
        self.in_offs = np.array([b.slots[n] for n in self.inputs], dtype=np.int64)
        self.in_sizes = np.array([_size(plan.specs[n].shape) for n in self.inputs], dtype=np.int64)
        self.out_offs = np.array([b.slots[n] for n in self.outputs], dtype=np.int64)
        self.out_sizes = np.array([_size(plan.specs[n].shape) for n in self.outputs], dtype=np.int64)
        self.out_shapes = [plan.specs[n].shape for n in self.outputs]
        self.out_dtypes = [np.dtype(plan.specs[n].dtype) for n in self.outputs]
        # the same as plain Python ints, for run(): one chunk's bookkeeping costs microseconds
        self._in_slices = [(name, int(o), int(o + n)) for name, o, n in zip(self.inputs, self.in_offs, self.in_sizes)]
        self._out_slices = [(name, int(o), int(o + n), shape, dt) for name, o, n, shape, dt in
                            zip(self.outputs, self.out_offs, self.out_sizes, self.out_shapes, self.out_dtypes)]

    def reset(self) -> None:
        for off, n in self.state:
            self.act[off:off + n] = 0

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        act = self.act
        for name, start, stop in self._in_slices:
            act[start:stop] = feeds[name].reshape(-1)
        _exec(self.code, act, self.c32, self.c64, self.cf, self.acc32, self.acc64, self.mode)
        return {name: act[start:stop].astype(dt).reshape(shape) for name, start, stop, shape, dt in self._out_slices}

    def run_many(self, xs: np.ndarray) -> np.ndarray:
        """``xs`` [T, sum of input sizes] int32 -> [T, sum of output sizes] int32, in one compiled call."""
        ys = np.empty((xs.shape[0], int(self.out_sizes.sum())), dtype=np.int32)
        _exec_many(self.code, self.act, self.c32, self.c64, self.cf, self.acc32, self.acc64, self.mode, xs,
                   self.in_offs, self.in_sizes, ys, self.out_offs, self.out_sizes)
        return ys


class _NoneSpec:
    name = ""
    shape = None
    dtype = "undefined"
    const = None
    exps = ()
    is_const = False


_NONE = _NoneSpec()


def compile_plan(plan: Plan) -> tuple[Program | None, str]:
    """(program, "") or (None, why not)."""
    try:
        return Program(plan), ""
    except UnsupportedError as e:
        return None, str(e)
