"""Element-wise arithmetic and activations: Add, Sub, Mul, Div, Mod, Pow, Max, Min, Neg, Relu,
LeakyRelu, PRelu, Clip.

Facts (ESP-DL ``dl/base/dl_base_<op>.cpp``, ``dl/module/include/dl_module_<op>.hpp``):

* Broadcasting is numpy's, but ESP-DL first merges neighbouring axes that broadcast the same way
  (``dl_base_elemwise.cpp: get_elemwise_operation_args``) and supports at most 4 merged axes; more
  is an error here. The merged last axis (``output_d0``) and each input's (``input*_d0``) choose the
  kernel: SIMD assembly when ``output_d0 >= 16 / sizeof(T)`` on esp32p4/esp32s31/esp32s3, the C
  code otherwise, and the ``n_1`` / ``1_n`` variants when an input's ``d0`` is 1.
* Add, Sub, Max, Min, Neg work on the raw integers and ignore exponents (saturating); ESP-PPQ
  normally inserts RequantizeLinear so that they agree, but not always (see ``info``).
* Mul: ``y = round(a * b * 2**(e_a + e_b - e_y))``. SIMD: exact product, shifted with the target's
  rounding. C: the product goes through float32 first (``float out = temp * scale``), which loses
  bits for int16 products above 2**24.
* Div, Mod, Pow, LeakyRelu compute in float32 and round with ``tool::round``; emulated operation
  by operation in float32 (numpy float32 arithmetic is IEEE single, as the chips' FPUs).
* int8 Relu / LeakyRelu / PRelu / Clip with a ``lut`` attribute are run by ESP-DL's LUT module:
  ``y = table[x + 128]``. int16 ignores the attribute.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..registry import Prepared, arm, kernel, lowering, no_lowering, row_layout
from ..rounding import clamp, qrange, requant, round_f32_sat, round_saturate, shift_round
from ._fmath import float_kernel
from ._lut import lut_module, lut_table

INT_TYPES = ("int8", "int16")
QUANT_TYPES = {"S8": "int8", "S16": "int16", "F32": "float32"}
#: targets whose ESP-DL build has PIE SIMD kernels (CONFIG_PIE_V1_BOOST / CONFIG_PIE_V2_BOOST)
SIMD_TARGETS = ("esp32p4", "esp32s31", "esp32s3")

OP_ADD, OP_SUB, OP_MAX, OP_MIN, OP_MUL, OP_MULF, OP_EQ, OP_GT, OP_GE, OP_LT, OP_LE = range(11)


@njit(cache=True)
def _apply(op, x, y, shift, scale, mode, lo, hi):
    """``saturate(x OP y)`` of two integers. OP_MUL: ``shift_round(x * y, shift)`` (exact product, target
    rounding, the SIMD kernels); OP_MULF: ``round(float32(x * y) * scale)`` (ESP-DL's C kernels);
    comparisons give 0 / 1."""
    if op == OP_ADD:
        v = x + y
    elif op == OP_SUB:
        v = x - y
    elif op == OP_MAX:
        v = x if x > y else y
    elif op == OP_MIN:
        v = x if x < y else y
    elif op == OP_MUL:
        v = shift_round(x * y, shift, mode)
    elif op == OP_MULF:
        return round_f32_sat(np.float32(np.float32(x * y) * scale), mode, lo, hi)
    elif op == OP_EQ:
        return np.int64(x == y)
    elif op == OP_GT:
        return np.int64(x > y)
    elif op == OP_GE:
        return np.int64(x >= y)
    elif op == OP_LT:
        return np.int64(x < y)
    else:
        return np.int64(x <= y)
    if v < lo:
        return np.int64(lo)
    if v > hi:
        return np.int64(hi)
    return v


@njit(cache=True)
def binary_flat(a, b, out, dims, op, shift, scale, mode, lo, hi):
    """``out = a OP b`` on flat buffers with ESP-DL's merged broadcast: ``dims`` = the merged 4-D shapes of
    a, b and out (12 ints, :meth:`Broadcast.dims`); an axis of length 1 in an input broadcasts."""
    a0, a1, a2, a3, b0, b1, b2, b3, o0, o1, o2, o3 = (dims[0], dims[1], dims[2], dims[3], dims[4], dims[5], dims[6],
                                                      dims[7], dims[8], dims[9], dims[10], dims[11])
    n = o0 * o1 * o2 * o3
    if a.size == n and b.size == n:  # no broadcast: flat loops, one per common op (they vectorize)
        if op == OP_ADD:
            for i in range(n):
                out[i] = clamp(np.int64(a[i]) + np.int64(b[i]), lo, hi)
        elif op == OP_SUB:
            for i in range(n):
                out[i] = clamp(np.int64(a[i]) - np.int64(b[i]), lo, hi)
        elif op == OP_MUL:
            for i in range(n):
                out[i] = requant(np.int64(a[i]) * np.int64(b[i]), shift, mode, False, lo, hi)
        else:
            for i in range(n):
                out[i] = _apply(op, np.int64(a[i]), np.int64(b[i]), shift, scale, mode, lo, hi)
        return out
    sa, sb = (1 if a3 > 1 else 0), (1 if b3 > 1 else 0)  # innermost axis: walk or broadcast
    k = 0
    for i in range(o0):
        ia = (i if a0 > 1 else 0) * a1
        ib = (i if b0 > 1 else 0) * b1
        for j in range(o1):
            ja = (ia + (j if a1 > 1 else 0)) * a2
            jb = (ib + (j if b1 > 1 else 0)) * b2
            for q in range(o2):
                qa = (ja + (q if a2 > 1 else 0)) * a3
                qb = (jb + (q if b2 > 1 else 0)) * b3
                o = out[k:k + o3]
                for m in range(o3):
                    o[m] = _apply(op, np.int64(a[qa + m * sa]), np.int64(b[qb + m * sb]), shift, scale, mode, lo, hi)
                k += o3
    return out


@njit(cache=True)
def requant_flat(x, out, shift, mode, lo, hi):
    """``out = saturate(shift_round(x, shift))`` (flat; ESP-DL's requantize)."""
    for i in range(x.size):
        out[i] = requant(np.int64(x[i]), shift, mode, False, lo, hi)
    return out


@njit(cache=True)
def relu_requant(x, out, shift, mode, lo, hi):
    """Relu from the input to the output exponent: ``saturate(shift_round(max(x, 0), shift))``."""
    for i in range(x.size):
        out[i] = requant(np.int64(x[i]), shift, mode, True, lo, hi)
    return out


@njit(cache=True)
def neg_sat(x, out, lo, hi):
    """``saturate(-x)`` (INT_MIN -> INT_MAX)."""
    for i in range(x.size):
        v = -np.int64(x[i])
        out[i] = lo if v < lo else (hi if v > hi else v)
    return out


@njit(cache=True)
def leaky_relu_q(x, out, scale, alpha, mode, lo, hi):
    """ESP-DL's float LeakyRelu: ``t = float32(x) * 2**(e_in - e_out)``, ``t * alpha`` below 0, rounded."""
    for i in range(x.size):
        t = np.float32(np.float32(x[i]) * scale)
        if x[i] < 0:
            t = np.float32(t * alpha)
        out[i] = round_f32_sat(t, mode, lo, hi)
    return out


@njit(cache=True)
def clip_requant(x, out, mn, mx, shift, mode, lo, hi):
    """``round(clip(x, mn, mx) * 2**-shift)`` on raw integers (DL_CLIP tests the minimum first)."""
    for i in range(x.size):
        v = np.int64(x[i])
        v = mn if v < mn else (mx if v > mx else v)
        out[i] = requant(v, shift, mode, False, lo, hi)
    return out


@float_kernel
def div_q(a, b, out, dims, variant, lut, rescale, mode, lo, hi):
    """ESP-DL's integer Div (float32 per element, see prepare_div), on flat buffers with the merged broadcast
    ``dims`` of :func:`binary_flat`. ``variant`` 0: n_n, 1: n_1, 2: 1_n."""
    a0, a1, a2, a3, b0, b1, b2, b3, o0, o1, o2, o3 = (dims[0], dims[1], dims[2], dims[3], dims[4], dims[5], dims[6],
                                                      dims[7], dims[8], dims[9], dims[10], dims[11])
    k = 0
    for i in range(o0):
        ia = (i if a0 > 1 else 0) * a1
        ib = (i if b0 > 1 else 0) * b1
        for j in range(o1):
            ja = (ia + (j if a1 > 1 else 0)) * a2
            jb = (ib + (j if b1 > 1 else 0)) * b2
            for q in range(o2):
                qa = (ja + (q if a2 > 1 else 0)) * a3
                qb = (jb + (q if b2 > 1 else 0)) * b3
                for m in range(o3):
                    x = np.int64(a[qa + (m if a3 > 1 else 0)])
                    y = np.int64(b[qb + (m if b3 > 1 else 0)])
                    sat = hi if x > 0 else lo
                    if y == 0:
                        r = sat if (x != 0 or (lut and variant == 2)) else 0
                    elif x == 0:
                        r = 0
                    else:
                        xf, yf = np.float32(x), np.float32(y)
                        if variant == 1:
                            v = np.float32(xf * np.float32(rescale / yf))
                        else:
                            v = np.float32(np.float32(xf * rescale) / yf)
                        r = round_f32_sat(v, mode, lo, hi)
                    out[k] = r
                    k += 1
    return out


def requant_fast(x: np.ndarray, shift: int, dtype: str, mode: int, out: np.ndarray | None = None) -> np.ndarray:
    """``saturate(shift_round(x, shift))`` (ESP-DL requantize), compiled; into ``out`` (``x.size`` elements of
    ``dtype``) when given."""
    lo, hi = qrange(dtype)
    flat = np.ascontiguousarray(x).reshape(-1)
    out = np.empty(flat.shape, dtype=dtype) if out is None else out.reshape(flat.shape)
    requant_flat(flat, out, shift, mode, lo, hi)
    return out.reshape(np.shape(x))


@njit(cache=True)
def prelu_rows(x, alpha, out, simd, act_shift, pos_shift, mode, lo, hi):
    """x, out [rows, C]; alpha [C] (int64)."""
    rows, c = x.shape
    for r in range(rows):
        for ch in range(c):
            v = np.int64(x[r, ch])
            if v < 0:
                p = v * alpha[ch]
                if simd:
                    v = shift_round(p, act_shift, mode)
                elif act_shift > 0:
                    v = p >> act_shift
                else:
                    v = p << (-act_shift)
            elif simd:
                v = shift_round(v, pos_shift, mode)
            if v < lo:
                v = lo
            elif v > hi:
                v = hi
            out[r, ch] = v
    return out


# ---- shared validation ----------------------------------------------------------------------------
def compute_dtype(ctx, spec, allowed=INT_TYPES + ("float32",)) -> str:
    """The dtype an op computes in: the input's, checked against ``quant_type`` when present."""
    dt = spec.dtype
    ctx.require(dt in allowed, f"input dtype {dt}", supported=list(allowed))
    q = ctx.attr("quant_type")
    if q:
        q = q.decode() if isinstance(q, bytes) else str(q)
        ctx.require(q in QUANT_TYPES, f"quant_type {q!r}", supported=sorted(QUANT_TYPES))
        ctx.require(QUANT_TYPES[q] == dt, f"quant_type {q} does not match input dtype {dt}")
    return dt


def one_exp(ctx, spec, what: str) -> int:
    ctx.require(len(spec.exps) == 1, f"{what} {spec.name!r} needs one (per-tensor) exponent, "
                                     f"has {len(spec.exps)}")
    return int(spec.exps[0])


def out_exp(ctx, outs, dtype: str) -> int:
    """Output exponent (0 for float outputs, which carry none or a dummy)."""
    if dtype == "float32":
        return 0
    return one_exp(ctx, outs[0], "output")


def check_out_dtype(ctx, outs, dtype: str) -> None:
    od = outs[0].dtype
    ctx.require(od in ("undefined", dtype), f"output dtype {od} differs from the computed {dtype}")


def esp_merge(s0, s1, so):
    """ESP-DL's axis merging (``get_elemwise_operation_args``): returns the merged shapes."""
    dims = len(so)
    a = [1] * (dims - len(s0)) + [int(v) for v in s0]
    b = [1] * (dims - len(s1)) + [int(v) for v in s1]
    o = [int(v) for v in so]
    merged = dims
    for i in range(dims):
        j = i + 1
        while j < dims:
            if a[i] == b[i] and a[j] == b[j]:
                a[i] *= a[j]
                b[i] *= b[j]
                o[i] *= o[j]
                a[j] = b[j] = o[j] = 1
            elif a[i] == 1 and a[j] == 1:
                b[i] *= b[j]
                o[i] *= o[j]
                b[j] = o[j] = 1
            elif b[i] == 1 and b[j] == 1:
                a[i] *= a[j]
                o[i] *= o[j]
                a[j] = o[j] = 1
            else:
                break
            j += 1
        if j == dims:
            merged = i + 1
            break
    return a[:merged], b[:merged], o[:merged]


class Broadcast:
    """Validated broadcast of two inputs, with the facts ESP-DL's kernel choice depends on."""

    def __init__(self, ctx, s0, s1):
        s0, s1 = tuple(int(v) for v in s0), tuple(int(v) for v in s1)
        rank = max(len(s0), len(s1))
        p0 = (1,) * (rank - len(s0)) + s0
        p1 = (1,) * (rank - len(s1)) + s1
        out = []
        for k, (x, y) in enumerate(zip(p0, p1)):
            ctx.require(x == y or x == 1 or y == 1,
                        f"input shapes {list(s0)} and {list(s1)} do not broadcast (axis {k}: {x} vs {y})")
            out.append(max(x, y))
        self.shape = tuple(out)
        ctx.require(rank >= 1, "both inputs are scalars (0-D); ESP-DL's element-wise loops need >= 1 axis",
                    supported=["inputs of rank >= 1"])
        m0, m1, mo = esp_merge(p0, p1, self.shape)
        ctx.require(len(mo) <= 4,
                    f"input shapes {list(s0)} and {list(s1)} merge to {len(mo)} broadcast axes "
                    f"({mo}); ESP-DL's element-wise kernels support at most 4",
                    supported=["broadcasts that merge to <= 4 axes"])
        self.merged = (m0, m1, mo)
        self.d0, self.in0_d0, self.in1_d0 = mo[-1], m0[-1], m1[-1]
        self.size0 = int(np.prod(s0, dtype=np.int64))
        self.size1 = int(np.prod(s1, dtype=np.int64))

    @property
    def dims(self) -> np.ndarray:
        """The merged shapes of both inputs and the output, each padded to 4-D (what :func:`binary_flat`
        takes)."""
        pad = [(1,) * (4 - len(m)) + tuple(m) for m in self.merged]
        return np.array(pad[0] + pad[1] + pad[2], dtype=np.int64)

    def simd(self, ctx, dtype: str) -> bool:
        """True when ESP-DL runs the PIE assembly kernel (``output_d0 >= 16 / sizeof(T)``)."""
        return ctx.target in SIMD_TARGETS and self.d0 >= 16 // np.dtype(dtype).itemsize


def binary_inputs(ctx, ins, n=2):
    ctx.require(len(ins) == n and all(s.name for s in ins),
                f"takes exactly {n} inputs, got {len([s for s in ins if s.name])}",
                supported=[f"{n} inputs"])
    for s in ins:
        ctx.require(s.shape is not None, f"input {s.name!r} has no known shape")
    return ins[0], ins[1]


def binary_prologue(ctx, ins, outs):
    """(a, b, dtype, broadcast) of a two-input element-wise op: both inputs and the output of one dtype."""
    a, b = binary_inputs(ctx, ins)
    dtype = compute_dtype(ctx, a)
    ctx.require(b.dtype == dtype, f"inputs have dtypes {a.dtype} and {b.dtype}")
    check_out_dtype(ctx, outs, dtype)
    return a, b, dtype, Broadcast(ctx, a.shape, b.shape)


def _exps_note(ctx, ins, outs, dtype):
    """ESP-DL ignores exponents in Add/Sub/Max/Min/Neg: record when they disagree."""
    if dtype == "float32":
        return {}
    e = [tuple(s.exps) for s in ins] + [tuple(outs[0].exps)]
    if len(set(e)) > 1:
        return {"note": f"exponents {e} differ; ESP-DL computes on the raw integers regardless"}
    return {}


# ---- Add / Sub / Max / Min --------------------------------------------------------------------------
_RAW_BINARY = {  # float32 versions
    "Add": np.add,
    "Sub": np.subtract,
    "Max": np.maximum,
    "Min": np.minimum,
}


@kernel("Add", "Sub", "Max", "Min")
def prepare_raw_binary(node, ctx, ins, outs):
    a, b, dtype, bc = binary_prologue(ctx, ins, outs)
    if dtype != "float32":
        one_exp(ctx, a, "input")
        one_exp(ctx, b, "input")
        out_exp(ctx, outs, dtype)
    fn = _RAW_BINARY[node.op_type]
    shape = bc.shape

    if dtype == "float32":
        def run(x, y):
            return (np.ascontiguousarray(np.broadcast_to(fn(x, y), shape), dtype=np.float32),)
    else:
        lo, hi = qrange(dtype)
        op = {"Add": OP_ADD, "Sub": OP_SUB, "Max": OP_MAX, "Min": OP_MIN}[node.op_type]
        out = ctx.output_buffer((int(np.prod(shape, dtype=np.int64)),), dtype)
        dims = bc.dims

        def run(x, y):
            binary_flat(np.ascontiguousarray(x).reshape(-1), np.ascontiguousarray(y).reshape(-1), out, dims, op,
                        0, np.float32(1.0), 0, lo, hi)
            return (out.reshape(shape),)

        return Prepared([shape], run, info={**_exps_note(ctx, ins, outs, dtype),
                                            "binary": (op, dims, 0, np.float32(1.0), lo, hi)})

    return Prepared([shape], run, info=_exps_note(ctx, ins, outs, dtype))


# ---- Mul ----------------------------------------------------------------------------------------------
def _pow2_f32(e: int) -> np.float32:
    return np.float32(2.0 ** e)


@kernel("Mul")
def prepare_mul(node, ctx, ins, outs):
    a, b, dtype, bc = binary_prologue(ctx, ins, outs)
    shape = bc.shape
    if dtype == "float32":
        def run(x, y):
            return (np.ascontiguousarray(np.broadcast_to(np.multiply(x, y, dtype=np.float32), shape)),)
        return Prepared([shape], run)
    shift = out_exp(ctx, outs, dtype) - one_exp(ctx, a, "input") - one_exp(ctx, b, "input")
    via_float = not bc.simd(ctx, dtype)  # C code: int product -> float32 -> * 2**-shift -> round
    ctx.require(abs(shift) < 100, f"exponents give a shift of {shift}")
    scale = _pow2_f32(-shift)
    mode = ctx.mode
    lo, hi = qrange(dtype)
    out = ctx.output_buffer((int(np.prod(shape, dtype=np.int64)),), dtype)
    dims = bc.dims
    # simd: esp.vmulas.*.qacc (exact) + esp.srcmb.*.qacc (target rounding, saturation);
    # c_impl_mul_*: float out = temp * scale; truncate(tool::round(out))
    op = OP_MULF if via_float else OP_MUL

    def run(x, y):
        binary_flat(np.ascontiguousarray(x).reshape(-1), np.ascontiguousarray(y).reshape(-1), out, dims, op, shift,
                    scale, mode, lo, hi)
        return (out.reshape(shape),)

    return Prepared([shape], run, macs=int(np.prod(shape, dtype=np.int64)),
                    info={"path": "c-float32" if via_float else "simd", "binary": (op, dims, shift, scale, lo, hi)})


# ---- Div ----------------------------------------------------------------------------------------------

@kernel("Div")
def prepare_div(node, ctx, ins, outs):
    a, b, dtype, bc = binary_prologue(ctx, ins, outs)
    shape = bc.shape
    if dtype == "float32":
        # dl_base_div.cpp float: n_1 multiplies by (float)(1.0 / b) (a double division), 1_n and
        # n_n divide in float.
        n_1 = bc.in1_d0 == 1

        def run(x, y):
            x = x.astype(np.float32)
            y = y.astype(np.float32)
            with np.errstate(all="ignore"):
                r = x * (1.0 / y.astype(np.float64)).astype(np.float32) if n_1 else x / y
            return (np.ascontiguousarray(np.broadcast_to(r, shape), dtype=np.float32),)
        return Prepared([shape], run)

    ea, eb = one_exp(ctx, a, "input"), one_exp(ctx, b, "input")
    eo = out_exp(ctx, outs, dtype)
    ctx.require(abs(ea - eb - eo) < 100, f"exponents {ea}, {eb}, {eo} are out of float32 range")
    rescale = _pow2_f32(ea - eb - eo)  # output_rescale * input0_scale / input1_scale (all powers of 2)
    # Kernel choice, elemwise_div(): int8 tests input0_d0 first, int16 input1_d0 first.
    if dtype == "int8":
        variant = "1_n" if bc.in0_d0 == 1 else ("n_1" if bc.in1_d0 == 1 else "n_n")
        lut = bc.size0 == 1 or bc.size1 == 1  # get_elemwise_div_args builds a table (int8 only)
    else:
        variant = "n_1" if bc.in1_d0 == 1 else ("1_n" if bc.in0_d0 == 1 else "n_n")
        lut = False
    lo, hi = qrange(dtype)
    mode = ctx.mode
    # n_1: input0 * (rescale / input1) (rescale = output_rescale / input1[0]); 1_n and n_n: (input0 * rescale)
    # / input1, left to right. create_div_lut (int8, input0 scalar, 1_n): the entry for input1 == 0 is 127
    # if input0 > 0 else -128, and the table is used for every element, so input0 == 0 gives 0 except there.
    var_code = {"n_n": 0, "n_1": 1, "1_n": 2}[variant]
    dims = bc.dims
    out = ctx.output_buffer((int(np.prod(shape, dtype=np.int64)),), dtype)

    def run(x, y):
        div_q(np.ascontiguousarray(x).reshape(-1), np.ascontiguousarray(y).reshape(-1), out, dims, var_code, lut,
              rescale, mode, lo, hi)
        return (out.reshape(shape),)

    return Prepared([shape], run, info={"variant": variant, "lut": lut,
                                        "div": (var_code, lut, rescale, dims, lo, hi)})


# ---- Mod / Pow (float32 math on dequantized values) ----------------------------------------------------
@kernel("Mod", "Pow")
def prepare_mod_pow(node, ctx, ins, outs):
    a, b, dtype, bc = binary_prologue(ctx, ins, outs)
    if node.op_type == "Mod":
        fmod = int(ctx.attr("fmod", 0) or 0)
        # ESP-DL reads the attribute but always computes fmodf (C semantics, sign of the dividend).
        ctx.require(fmod == 1 or dtype != "float32",
                    "fmod=0 on float32 (ESP-DL computes fmodf regardless)", supported=["fmod=1"])
    shape = bc.shape
    is_mod = node.op_type == "Mod"

    def f32op(x, y):
        with np.errstate(all="ignore"):
            if is_mod:
                return np.where(y != 0, np.fmod(x, np.where(y != 0, y, np.float32(1))), np.float32(0))
            return np.power(x, y, dtype=np.float32)

    if dtype == "float32":
        def run(x, y):
            xb, yb = np.broadcast_arrays(x.astype(np.float32), y.astype(np.float32))
            return (np.ascontiguousarray(f32op(xb, yb), dtype=np.float32),)
        return Prepared([shape], run)

    sa, sb = _pow2_f32(one_exp(ctx, a, "input")), _pow2_f32(one_exp(ctx, b, "input"))
    rescale = _pow2_f32(-out_exp(ctx, outs, dtype))
    mode = ctx.mode

    def run(x, y):
        xb, yb = np.broadcast_arrays(x, y)
        r = f32op(xb.astype(np.float32) * sa, yb.astype(np.float32) * sb).astype(np.float32)
        with np.errstate(all="ignore"):
            r = r * rescale
        return (np.ascontiguousarray(round_saturate(r, dtype, mode)),)

    return Prepared([shape], run)


# ---- unary ops -------------------------------------------------------------------------------------------
def unary_input(ctx, ins):
    ctx.require(len(ins) >= 1 and ins[0].name, "missing input")
    ctx.require(ins[0].shape is not None, "input has no known shape")
    return ins[0]


def lut_or_none(ctx, x, outs, dtype):
    """ESP-DL's deserializers build a LUT module for int8 ops that carry a ``lut`` table."""
    if dtype != "int8" or not ctx.attr("lut"):
        return None
    got = lut_table(ctx, "int8", outs[0].exps)
    if got is None:
        return None
    table, step = got
    return lut_module(ctx, tuple(x.shape), table, step, info={"lut": True})


def unary_prologue(ctx, ins, outs):
    """(input spec, dtype, LUT module or None) of an activation that ESP-DL replaces by its LUT module
    when the int8 node carries a table: the caller returns the LUT module when there is one."""
    x = unary_input(ctx, ins)
    dtype = compute_dtype(ctx, x)
    check_out_dtype(ctx, outs, dtype)
    return x, dtype, lut_or_none(ctx, x, outs, dtype)


@kernel("Neg")
def prepare_neg(node, ctx, ins, outs):
    x = unary_input(ctx, ins)
    dtype = compute_dtype(ctx, x)
    check_out_dtype(ctx, outs, dtype)
    shape = tuple(x.shape)
    if dtype == "float32":
        return Prepared([shape], lambda xa: (np.negative(xa).astype(np.float32),))
    one_exp(ctx, x, "input")
    out_exp(ctx, outs, dtype)
    lo, hi = qrange(dtype)

    def run(xa):  # INT_MIN -> INT_MAX; the lut attribute is ignored (dl_module_neg.hpp)
        flat = np.ascontiguousarray(xa).reshape(-1)
        return (neg_sat(flat, np.empty(flat.shape, dtype=dtype), lo, hi).reshape(shape),)

    return Prepared([shape], run, info={**_exps_note(ctx, ins[:1], outs, dtype), "range": (lo, hi)})


@kernel("Relu")
def prepare_relu(node, ctx, ins, outs):
    x, dtype, lut = unary_prologue(ctx, ins, outs)
    if lut is not None:
        return lut
    shape = tuple(x.shape)
    if dtype == "float32":
        return Prepared([shape], lambda xa: (np.where(xa >= 0, xa, np.float32(0)).astype(np.float32),))
    shift = out_exp(ctx, outs, dtype) - one_exp(ctx, x, "input")
    mode = ctx.mode
    lo, hi = qrange(dtype)

    def run(xa):  # exact in float32: round(x * 2**-shift) for x >= 0, else 0
        flat = np.ascontiguousarray(xa).reshape(-1)
        return (relu_requant(flat, np.empty(flat.shape, dtype=dtype), shift, mode, lo, hi).reshape(shape),)

    return Prepared([shape], run, info={"requant": (shift, lo, hi)})


@kernel("LeakyRelu")
def prepare_leaky_relu(node, ctx, ins, outs):
    x, dtype, lut = unary_prologue(ctx, ins, outs)
    if lut is not None:
        return lut
    alpha = np.float32(ctx.attr("alpha", 0.01))
    ctx.require(np.isfinite(alpha), f"alpha={alpha}")
    shape = tuple(x.shape)
    if dtype == "float32":
        return Prepared([shape], lambda xa: (np.where(xa >= 0, xa, xa * alpha).astype(np.float32),))
    scale = _pow2_f32(one_exp(ctx, x, "input") - out_exp(ctx, outs, dtype))
    mode = ctx.mode
    lo, hi = qrange(dtype)

    def run(xa):  # t = temp * output_scale (exact), times alpha below 0, rounded
        flat = np.ascontiguousarray(xa).reshape(-1)
        return (leaky_relu_q(flat, np.empty(flat.shape, dtype=dtype), scale, alpha, mode, lo, hi).reshape(shape),)

    return Prepared([shape], run, info={"leaky": (scale, alpha, lo, hi)})


@kernel("PRelu")
def prepare_prelu(node, ctx, ins, outs):
    x, dtype, lut = unary_prologue(ctx, ins, outs)
    if lut is not None:
        return lut
    ctx.require(len(ins) >= 2 and ins[1].name, "missing slope input")
    s = ins[1]
    ctx.require(s.is_const, "slope must be a constant initializer")
    ctx.require(s.dtype == dtype, f"slope dtype {s.dtype} differs from input {dtype}")
    shape = tuple(x.shape)
    ctx.require(len(shape) == 4, f"input rank {len(shape)}; ESP-DL's PRelu takes NHWC (4-D) input",
                supported=["4-D NHWC input"])
    c = shape[-1]
    alpha = np.asarray(s.const).ravel()
    ctx.require(alpha.size in (1, c), f"slope has {alpha.size} values for {c} channels",
                supported=["one slope", "one slope per channel"])
    if dtype == "float32":
        al = np.broadcast_to(alpha.astype(np.float32), (c,))
        return Prepared([shape], lambda xa, *_: (np.where(xa >= 0, xa, xa * al).astype(np.float32),))
    e_in, e_out = one_exp(ctx, x, "input"), out_exp(ctx, outs, dtype)
    e_alpha = one_exp(ctx, s, "slope")
    act_shift = e_out - e_in - e_alpha
    al = np.ascontiguousarray(np.broadcast_to(alpha.astype(np.int64), (c,)))
    mode = ctx.mode
    lo, hi = qrange(dtype)
    # int8 on esp32p4/esp32s31/esp32s3: SIMD kernels round both parts with the target's rule and
    # rescale positives to the output exponent. int16 (no esp32p4 kernel; EE.VPRELU.S16 on esp32s3)
    # and the C target: prelu_11c, positives copied unchanged, negatives (x * alpha) >> shift (floor).
    simd = dtype == "int8" and ctx.target in SIMD_TARGETS
    c_ = int(c)
    out = ctx.output_buffer((int(np.prod(shape, dtype=np.int64)) // c_, c_), dtype)

    def run(xa, *_):
        x2 = np.ascontiguousarray(xa).reshape(-1, c_)
        prelu_rows(x2, al, out, simd, act_shift, e_out - e_in, mode, lo, hi)
        return (out.reshape(shape),)

    return Prepared([shape], run, info={"path": "simd" if simd else "c",
                                        "prelu": (al, simd, act_shift, e_out - e_in, lo, hi)})


@kernel("Clip")
def prepare_clip(node, ctx, ins, outs):
    x, dtype, lut = unary_prologue(ctx, ins, outs)
    if lut is not None:
        return lut
    shape = tuple(x.shape)
    bounds = []
    for k in (1, 2):
        if len(ins) > k and ins[k].name:
            b = ins[k]
            ctx.require(b.dtype == dtype, f"{'min' if k == 1 else 'max'} dtype {b.dtype} differs from {dtype}")
            ctx.require(b.shape is not None and int(np.prod(b.shape, dtype=np.int64)) >= 1,
                        f"{'min' if k == 1 else 'max'} is empty")
            bounds.append(k)
    if dtype == "float32":
        def run(xa, *args):
            mn = args[0] if 1 in bounds else None
            mx = args[1] if 2 in bounds and len(args) > 1 else None
            r = xa
            if mn is not None:
                r = np.maximum(r, np.float32(np.asarray(mn).ravel()[0]))
            if mx is not None:
                r = np.minimum(r, np.float32(np.asarray(mx).ravel()[0]))
            return (np.asarray(r, dtype=np.float32),)
        return Prepared([shape], run)
    shift = out_exp(ctx, outs, dtype) - one_exp(ctx, x, "input")
    lo, hi = qrange(dtype)
    mode = ctx.mode

    def run(xa, *args):
        # min/max are read as raw integers of the input type (get_element<T>(0)), then
        # round(clip(x) * 2**(e_in - e_out)).
        mn = int(np.asarray(args[0]).ravel()[0]) if 1 in bounds else lo
        mx = int(np.asarray(args[1]).ravel()[0]) if 2 in bounds else hi
        flat = np.ascontiguousarray(xa).reshape(-1)
        return (clip_requant(flat, np.empty(flat.shape, dtype=dtype), mn, mx, shift, mode, lo, hi).reshape(shape),)

    return Prepared([shape], run, info={"clip": (bounds, shift, lo, hi)})


# ---- compiled lowering (emu/program.py) -------------------------------------------------------------
BINARY = row_layout("BINARY", "a b out dims op shift scale lo hi")  # dims: 12 words of c64 (see binary_flat)
RELU = row_layout("RELU", "x out n shift lo hi")
REQUANT = row_layout("REQUANT", "x out n shift lo hi")
NEG = row_layout("NEG", "x out n lo hi")
LEAKY = row_layout("LEAKY", "x out n scales lo hi")  # scales: cf[scale, alpha]
PRELU = row_layout("PRELU", "x out rows c alpha simd act_shift pos_shift lo hi")
CLIP = row_layout("CLIP", "x out n mn mx shift lo hi")
DIV = row_layout("DIV", "a b out dims variant lut rescale lo hi")


@arm(BINARY)
@njit(cache=True, inline="always")
def binary_arm(row, act, actf, c16, c32, c64, cf, mode):
    L = BINARY
    d = c64[row[L.dims]:row[L.dims] + 12]
    na, nb, no = d[0] * d[1] * d[2] * d[3], d[4] * d[5] * d[6] * d[7], d[8] * d[9] * d[10] * d[11]
    binary_flat(act[row[L.a]:row[L.a] + na], act[row[L.b]:row[L.b] + nb], act[row[L.out]:row[L.out] + no], d,
                row[L.op], row[L.shift], cf[row[L.scale]], mode, row[L.lo], row[L.hi])


@arm(RELU)
@njit(cache=True, inline="always")
def relu_arm(row, act, actf, c16, c32, c64, cf, mode):
    L = RELU
    n = row[L.n]
    relu_requant(act[row[L.x]:row[L.x] + n], act[row[L.out]:row[L.out] + n], row[L.shift], mode, row[L.lo],
                 row[L.hi])


@arm(REQUANT)
@njit(cache=True, inline="always")
def requant_arm(row, act, actf, c16, c32, c64, cf, mode):
    L = REQUANT
    n = row[L.n]
    requant_flat(act[row[L.x]:row[L.x] + n], act[row[L.out]:row[L.out] + n], row[L.shift], mode, row[L.lo],
                 row[L.hi])


@arm(NEG)
@njit(cache=True, inline="always")
def neg_arm(row, act, actf, c16, c32, c64, cf, mode):
    L = NEG
    n = row[L.n]
    neg_sat(act[row[L.x]:row[L.x] + n], act[row[L.out]:row[L.out] + n], row[L.lo], row[L.hi])


@arm(LEAKY)
@njit(cache=True, inline="always")
def leaky_arm(row, act, actf, c16, c32, c64, cf, mode):
    L = LEAKY
    n, s = row[L.n], row[L.scales]
    leaky_relu_q(act[row[L.x]:row[L.x] + n], act[row[L.out]:row[L.out] + n], cf[s], cf[s + 1], mode, row[L.lo],
                 row[L.hi])


@arm(PRELU)
@njit(cache=True, inline="always")
def prelu_arm(row, act, actf, c16, c32, c64, cf, mode):
    L = PRELU
    rows, c = row[L.rows], row[L.c]
    prelu_rows(act[row[L.x]:row[L.x] + rows * c].reshape((rows, c)), c64[row[L.alpha]:row[L.alpha] + c],
               act[row[L.out]:row[L.out] + rows * c].reshape((rows, c)), row[L.simd] != 0, row[L.act_shift],
               row[L.pos_shift], mode, row[L.lo], row[L.hi])


@arm(CLIP)
@njit(cache=True, inline="always")
def clip_arm(row, act, actf, c16, c32, c64, cf, mode):
    L = CLIP
    n = row[L.n]
    clip_requant(act[row[L.x]:row[L.x] + n], act[row[L.out]:row[L.out] + n], row[L.mn], row[L.mx], row[L.shift],
                 mode, row[L.lo], row[L.hi])


@arm(DIV)
@njit(cache=True, inline="always")
def div_arm(row, act, actf, c16, c32, c64, cf, mode):
    L = DIV
    d = c64[row[L.dims]:row[L.dims] + 12]
    na, nb, no = d[0] * d[1] * d[2] * d[3], d[4] * d[5] * d[6] * d[7], d[8] * d[9] * d[10] * d[11]
    div_q(act[row[L.a]:row[L.a] + na], act[row[L.b]:row[L.b] + nb], act[row[L.out]:row[L.out] + no], d,
          row[L.variant], row[L.lut] != 0, cf[row[L.rescale]], mode, row[L.lo], row[L.hi])


def _emit_lut(b, step) -> bool:
    from .activation import emit_lut

    return emit_lut(b, step)


def _xo(b, step):
    x, out = b.ins(step)[0], b.outs(step)[0]
    return b.slot(x.name), b.slot(out.name), int(np.prod(x.shape, dtype=np.int64))


@lowering("Add", "Sub", "Max", "Min", "Mul")
def lower_binary(b, step):
    found = step.prepared.info.get("binary")
    if found is None:
        raise b.refuse("float32 arithmetic")
    op, dims, shift, scale, lo, hi = found
    x, y = b.ins(step)[:2]
    b.emit(BINARY, a=b.slot(x.name), b=b.slot(y.name), out=b.slot(step.outputs[0]), dims=b.c64(dims), op=op,
           shift=shift, scale=b.cf([scale]), lo=lo, hi=hi)


@lowering("Relu")
def lower_relu(b, step):
    if _emit_lut(b, step):
        return
    found = step.prepared.info.get("requant")
    if found is None:
        raise b.refuse("float32 arithmetic")
    shift, lo, hi = found
    x, out, n = _xo(b, step)
    b.emit(RELU, x=x, out=out, n=n, shift=shift, lo=lo, hi=hi)


@lowering("Neg")
def lower_neg(b, step):
    found = step.prepared.info.get("range")
    if found is None:
        raise b.refuse("float32 arithmetic")
    x, out, n = _xo(b, step)
    b.emit(NEG, x=x, out=out, n=n, lo=found[0], hi=found[1])


@lowering("LeakyRelu")
def lower_leaky_relu(b, step):
    if _emit_lut(b, step):
        return
    found = step.prepared.info.get("leaky")
    if found is None:
        raise b.refuse("float32 arithmetic")
    scale, alpha, lo, hi = found
    x, out, n = _xo(b, step)
    b.emit(LEAKY, x=x, out=out, n=n, scales=b.cf([scale, alpha]), lo=lo, hi=hi)


@lowering("PRelu")
def lower_prelu(b, step):
    if _emit_lut(b, step):
        return
    found = step.prepared.info.get("prelu")
    if found is None:
        raise b.refuse("float32 arithmetic")
    alpha, simd, act_shift, pos_shift, lo, hi = found
    x, out, n = _xo(b, step)
    c = alpha.size
    b.emit(PRELU, x=x, out=out, rows=n // c, c=c, alpha=b.c64(alpha), simd=simd, act_shift=act_shift,
           pos_shift=pos_shift, lo=lo, hi=hi)


@lowering("Clip")
def lower_clip(b, step):
    if _emit_lut(b, step):
        return
    found = step.prepared.info.get("clip")
    if found is None:
        raise b.refuse("float32 arithmetic")
    bounds, shift, lo, hi = found
    ins = b.ins(step)
    lim = {}
    for k, default in ((1, lo), (2, hi)):  # read once, as the kernel reads them on every run
        if k in bounds:
            if ins[k].const is None:
                raise b.refuse("min / max computed by the graph")
            lim[k] = int(np.asarray(ins[k].const).ravel()[0])
        else:
            lim[k] = default
    x, out, n = _xo(b, step)
    b.emit(CLIP, x=x, out=out, n=n, mn=lim[1], mx=lim[2], shift=shift, lo=lo, hi=hi)


@lowering("Div")
def lower_div(b, step):
    found = step.prepared.info.get("div")
    if found is None:
        raise b.refuse("float32 arithmetic")
    variant, lut, rescale, dims, lo, hi = found
    x, y = b.ins(step)[:2]
    b.emit(DIV, a=b.slot(x.name), b=b.slot(y.name), out=b.slot(step.outputs[0]), dims=b.c64(dims),
           variant=variant, lut=lut, rescale=b.cf([rescale]), lo=lo, hi=hi)


no_lowering("Mod", "Pow", reason="float32 fmodf / powf from the C library; runs on the per-node path")
