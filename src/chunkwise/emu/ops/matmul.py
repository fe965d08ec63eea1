"""MatMul (int8 / int16), constant or dynamic B, with ESP-DL's batch broadcasting.

ESP-DL (``dl/module/include/dl_module_matmul.hpp``) runs every [M, K] x [K, N] product as a 1x1 conv
with B as the filter, no bias, the module's fused activation::

    y = saturate(act(shift_round(sum_k a[m, k] * b[k, n], e_out - e_a - e_b[n])))

Shapes as ``MatMul::get_output_shape``: 1-D x 1-D -> [1]; 2-D x 2-D; 1-D x 2-D -> [N]; 2-D x 1-D ->
[M]; 1-D x (>2-D) -> B's batch dims + [N]; (>2-D) x 1-D -> A's batch dims + [M]; otherwise up to
rank 4, batch dims broadcast (each 1 or equal).

B's memory layout is the node attribute ``input1_layout``:

* ``packed`` (or absent: exports made before the attribute existed): B is read in the conv weight
  memory order. A constant B is stored packed and the reader hands us the logical array. A dynamic
  B is packed *by the graph*: ESP-PPQ inserts Reshape/Transpose(/Slice/Concat) nodes before the
  MatMul (``InsertPreNodeOfMatMulPattern``) so that the row-major memory of each [K, N] matrix is
  ``(N/a)HWCa[_UNALIGNED]`` (``a`` = 16 for int8, 8 for int16) or ``[N][K]`` on the ``c`` target.
  We read that memory the way the chip does.
* ``native_kn`` (newer ESP-PPQ, dynamic B only): B is the plain row-major [..., K, N] array.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ...ir.layout import layout_order
from ..registry import Prepared, arm, kernel, lowering, row_layout
from ..rounding import qrange, requant
from .conv import GEMM_MIN_MACS, dot_bound, exact_float_dtype, gemm_epilogue, requant_gemm

ACTIVATIONS = ("Linear", "Relu")
LAYOUTS = ("packed", "native_kn")


@njit(cache=True)
def _matmul(a, b, ia, ib, out, shifts, relu, lo, hi, mode):
    """a [Ba, M, K]; b [Bb, K, N]; batch t uses a[ia[t]], b[ib[t]] -> out [T, M, N]."""
    t_, m_, n_ = out.shape
    k_ = a.shape[2]
    for t in range(t_):
        aa = ia[t]
        bb = ib[t]
        for m in range(m_):
            for n in range(n_):
                acc = np.int64(0)
                for k in range(k_):
                    acc += np.int64(a[aa, m, k]) * np.int64(b[bb, k, n])
                out[t, m, n] = requant(acc, shifts[n], mode, relu, lo, hi)
    return out


def _dynamic_order(target: str, dtype: str, k: int, n: int) -> np.ndarray | None:
    """For each memory position of one packed [K, N] matrix, its flat row-major logical index."""
    if n == 1:
        return None  # every layout is plain for one output channel
    if target == "c":
        layout = "NHWC"
    else:
        a = 16 if dtype == "int8" else 8
        layout = f"(N/{a})HWC{a}" + ("_UNALIGNED" if n % a else "")
    return layout_order(layout, "conv", 1, k, n)


def _broadcast_plan(ctx, sa, sb):
    """(a3 shape, b3 shape, ia, ib, out shape) following MatMul::get_output_shape/forward_template."""
    ra, rb = len(sa), len(sb)
    ctx.require(ra >= 1 and rb >= 1, "MatMul of a scalar")
    if ra == 1 and rb == 1:
        ctx.require(sa[0] == sb[0], f"inner dimensions differ: {list(sa)} x {list(sb)}")
        return (1, 1, sa[0]), (1, sb[0], 1), [0], [0], (1,)
    k_a = sa[-1]
    k_b = sb[0] if rb == 1 else sb[-2]
    ctx.require(k_a == k_b, f"inner dimensions differ: {list(sa)} x {list(sb)}")
    if rb == 1:
        m = sa[-2]
        batch = int(np.prod(sa[:-2], dtype=np.int64)) if ra > 2 else 1
        return ((batch, m, k_a), (1, k_b, 1), list(range(batch)), [0] * batch, tuple(sa[:-1]))
    n = sb[-1]
    if ra == 1:
        batch = int(np.prod(sb[:-2], dtype=np.int64)) if rb > 2 else 1
        return ((1, 1, k_a), (batch, k_b, n), [0] * batch, list(range(batch)), tuple(sb[:-2]) + (n,))
    rank = max(ra, rb)
    ctx.require(rank <= 4, f"MatMul of rank {rank} operands {list(sa)} x {list(sb)}",
                supported=["up to 4-D (ESP-DL)"])
    m = sa[-2]
    ba = [1] * (rank - ra) + list(sa[:-2])
    bb = [1] * (rank - rb) + list(sb[:-2])
    out_b = []
    for x, y in zip(ba, bb):
        ctx.require(x == y or x == 1 or y == 1, f"batch dimensions {list(sa[:-2])} and {list(sb[:-2])} "
                                                "do not broadcast")
        out_b.append(max(x, y))
    idx = np.indices(out_b).reshape(len(out_b), -1).T if out_b else np.zeros((1, 0), dtype=np.int64)
    ia, ib = [], []
    for combo in idx:
        ia.append(int(np.ravel_multi_index([c if d > 1 else 0 for c, d in zip(combo, ba)], ba)) if ba else 0)
        ib.append(int(np.ravel_multi_index([c if d > 1 else 0 for c, d in zip(combo, bb)], bb)) if bb else 0)
    na = int(np.prod(ba, dtype=np.int64)) if ba else 1
    nb = int(np.prod(bb, dtype=np.int64)) if bb else 1
    return (na, m, k_a), (nb, k_b, n), ia, ib, tuple(out_b) + (m, n)


@kernel("MatMul")
def prepare_matmul(node, ctx, ins, outs):
    ctx.require(len(ins) == 2, f"{len(ins)} inputs, MatMul takes two")
    a, b, out = ins[0], ins[1], outs[0]
    ctx.require(a.dtype in ("int8", "int16"), f"input dtype {a.dtype}", supported=["int8", "int16"])
    ctx.require(b.dtype == a.dtype, f"B dtype {b.dtype} differs from A {a.dtype}")
    ctx.require(out.dtype == a.dtype, f"output dtype {out.dtype} differs from input {a.dtype}")
    act = node.attr("activation", "Linear") or "Linear"
    ctx.require(act in ACTIVATIONS, f"fused activation {act!r}", supported=list(ACTIVATIONS))
    sa, sb = tuple(a.shape), tuple(b.shape)
    a3, b3, ia, ib, out_shape = _broadcast_plan(ctx, sa, sb)
    n = b3[2]
    e_b = list(b.exps)
    ctx.require(len(e_b) in (1, n), f"B has {len(e_b)} exponents for {n} columns")
    if len(e_b) == 1:
        e_b = e_b * n
    shifts = np.array([out.exp - a.exp - e for e in e_b], dtype=np.int64)
    lo, hi = qrange(a.dtype)
    dtype = np.dtype(a.dtype)
    ia_arr = np.array(ia, dtype=np.int64)
    ib_arr = np.array(ib, dtype=np.int64)
    relu = act == "Relu"
    mode = ctx.mode
    t, m = len(ia), a3[1]
    layout = node.attr("input1_layout", "packed") or "packed"
    ctx.require(layout in LAYOUTS, f"input1_layout={layout!r}", supported=list(LAYOUTS))
    native = layout == "native_kn"
    ctx.require(not (native and b.is_const), "input1_layout='native_kn' with a constant B (constants are "
                "stored packed)", supported=["packed constant B"])
    order = None if (b.is_const or native or len(sb) == 1) else _dynamic_order(ctx.target, b.dtype, b3[1], n)
    b_const = None
    if b.is_const:
        b_const = np.ascontiguousarray(np.asarray(b.const).reshape(b3))

    def logical_b(ba):
        if b_const is not None:
            return b_const
        flat = np.ascontiguousarray(ba).reshape(b3[0], b3[1] * b3[2])
        if order is None:
            return flat.reshape(b3)
        logical = np.empty_like(flat)
        logical[:, order] = flat
        return logical.reshape(b3)

    o = ctx.output_buffer((t, m, n), dtype)
    macs = t * m * n * a3[2]
    loops = {"a3": a3, "b3": b3, "ia": ia_arr, "ib": ib_arr, "shifts": shifts, "relu": relu, "range": (lo, hi),
             "b_const": b_const, "order": order}  # what the integer loops take (the compiled lowering)
    # exact float GEMM (see conv.gemm_dtype): the bound comes from B's values when B is constant,
    # else from the dtype's range
    if b_const is not None:
        bound = dot_bound(b_const, a.dtype, axis=1)
    else:
        bound = qrange(a.dtype)[0] ** 2 * a3[2]
    fdt = exact_float_dtype(bound, 0, shifts) if macs >= GEMM_MIN_MACS else None
    if fdt is not None:
        no_bias, scale, lo_f, hi_f = gemm_epilogue(np.zeros(n, dtype=np.int64), shifts, relu, a.dtype)

        def run(aa, ba):
            af = np.ascontiguousarray(aa).reshape(a3).astype(fdt)
            bf = logical_b(ba).astype(fdt)
            sums = np.matmul(af[ia_arr], bf[ib_arr])  # [t, m, n], exact
            requant_gemm(sums.reshape(t * m, n), no_bias, scale, o.reshape(t * m, n), lo_f, hi_f, mode)
            return (o.reshape(out_shape),)

        return Prepared([out_shape], run, macs=macs, info={"strategy": f"gemm {fdt.name}", "loops": loops})

    def run(aa, ba):
        _matmul(np.ascontiguousarray(aa).reshape(a3), logical_b(ba), ia_arr, ib_arr, o, shifts,
                relu, lo, hi, mode)
        return (o.reshape(out_shape),)

    return Prepared([out_shape], run, macs=macs, info={"strategy": "loops int64", "loops": loops})


# ---- compiled lowering (emu/program.py) -------------------------------------------------------------
MATMUL = row_layout("MATMUL", "a b out na m k nb n t ia ib shifts relu lo hi b_const")


@arm(MATMUL)
@njit(cache=True, inline="always")
def matmul_arm(row, act, actf, c16, c32, c64, cf, mode):
    L = MATMUL
    na, m, k, nb, n, t = row[L.na], row[L.m], row[L.k], row[L.nb], row[L.n], row[L.t]
    a = act[row[L.a]:row[L.a] + na * m * k].reshape((na, m, k))
    out = act[row[L.out]:row[L.out] + t * m * n].reshape((t, m, n))
    ia, ib = c64[row[L.ia]:row[L.ia] + t], c64[row[L.ib]:row[L.ib] + t]
    shifts = c64[row[L.shifts]:row[L.shifts] + n]
    if row[L.b_const]:
        b = c32[row[L.b]:row[L.b] + nb * k * n].reshape((nb, k, n))
    else:
        b = act[row[L.b]:row[L.b] + nb * k * n].reshape((nb, k, n))
    _matmul(a, b, ia, ib, out, shifts, row[L.relu] != 0, row[L.lo], row[L.hi], mode)


@lowering("MatMul")
def lower_matmul(b, step):
    from .movement import GATHER

    p = step.prepared.info["loops"]
    (na, m, k), (nb, _, n) = p["a3"], p["b3"]
    x, y = b.ins(step)[:2]
    if p["b_const"] is not None:
        bo, const = b.c32(p["b_const"]), True
    else:
        bo, const = b.slot(y.name), False
        if p["order"] is not None:  # the packed memory the chip reads, back to logical [K, N] per batch
            inv = np.argsort(p["order"])
            per = k * n
            bo = b.scratch(nb * per)
            b.emit(GATHER, x=b.slot(y.name), out=bo, n=nb * per,
                   map=b.c32((np.arange(nb)[:, None] * per + inv[None, :]).ravel()))
    lo, hi = p["range"]
    b.emit(MATMUL, a=b.slot(x.name), b=bo, out=b.slot(step.outputs[0]), na=na, m=m, k=k, nb=nb, n=n,
           t=len(p["ia"]), ia=b.c64(p["ia"]), ib=b.c64(p["ib"]), shifts=b.c64(p["shifts"]), relu=p["relu"], lo=lo,
           hi=hi, b_const=const)
