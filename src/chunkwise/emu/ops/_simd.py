"""Explicit vector code for the integer dot products of Conv / Gemm (numba intrinsics, generic LLVM IR).

numba's loops over a few dozen output channels spend most of their time in loop set-up and alias checks
(the accumulators live in memory). :func:`mac_lanes` keeps a block of ``LANES`` accumulators in one LLVM
vector register for the whole reduction: per input element one broadcast, one vector load of the
weights, one multiply, one add. The IR is target-independent (``<16 x i32>``): LLVM lowers it to AVX-512,
two AVX2 registers or NEON as the host allows.

Integer addition wraps in both orders, so the sums equal the scalar loops' exactly whenever the caller's
accumulator type holds every partial sum (``conv.acc_dtype``'s bound).
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.imputils import impl_ret_borrowed
from numba.extending import intrinsic
from numba.np.arrayobj import make_array, populate_array

#: accumulators per vector block (weights are packed in blocks of this many output channels)
LANES = 16


def _data(context, builder, ty, val):
    return cgutils.create_struct_proxy(ty)(context, builder, value=val).data


def _resize(builder, v, ty):
    """Sign-extend or truncate an integer (or integer vector) ``v`` to ``ty``."""
    have = v.type.element.width if isinstance(v.type, ir.VectorType) else v.type.width
    want = ty.element.width if isinstance(ty, ir.VectorType) else ty.width
    if have < want:
        return builder.sext(v, ty)
    if have > want:
        return builder.trunc(v, ty)
    return v


def _mac_codegen(blocks):
    def codegen(context, builder, signature, args):
        acc_a, ao_v, x_a, xo_v, w_a, wo_v, ws_v, n_v = args
        ta, tao, tx, txo, tw, two, tws, tn = signature.args
        i64 = ir.IntType(64)
        ao_v = context.cast(builder, ao_v, tao, types.int64)
        xo_v = context.cast(builder, xo_v, txo, types.int64)
        wo_v = context.cast(builder, wo_v, two, types.int64)
        ws_v = context.cast(builder, ws_v, tws, types.int64)
        n_v = context.cast(builder, n_v, tn, types.int64)
        elem = ir.IntType(ta.dtype.bitwidth)
        vec = ir.VectorType(elem, LANES)
        wvec = ir.VectorType(ir.IntType(tw.dtype.bitwidth), LANES)
        accp = _data(context, builder, ta, acc_a)
        xp = _data(context, builder, tx, x_a)
        wp = _data(context, builder, tw, w_a)
        align = ta.dtype.bitwidth // 8
        pas, slots = [], []
        for k in range(blocks):
            off = builder.add(ao_v, ir.Constant(i64, k * LANES))
            pa = builder.bitcast(builder.gep(accp, [off]), vec.as_pointer())
            slot = cgutils.alloca_once(builder, vec)  # promoted to a register by LLVM (SROA)
            builder.store(builder.load(pa, align=align), slot)
            pas.append(pa)
            slots.append(slot)
        zeros = ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES)
        with cgutils.for_range(builder, n_v) as loop:
            i = loop.index
            xv = _resize(builder, builder.load(builder.gep(xp, [builder.add(xo_v, i)])), elem)
            splat = builder.insert_element(ir.Constant(vec, ir.Undefined), xv, ir.Constant(ir.IntType(32), 0))
            splat = builder.shuffle_vector(splat, ir.Constant(vec, ir.Undefined), zeros)
            woff = builder.add(wo_v, builder.mul(i, ir.Constant(i64, LANES)))
            for k in range(blocks):
                wk = builder.add(woff, builder.mul(ws_v, ir.Constant(i64, k)))
                wv = builder.load(builder.bitcast(builder.gep(wp, [wk]), wvec.as_pointer()),
                                  align=tw.dtype.bitwidth // 8)
                wv = _resize(builder, wv, vec)
                builder.store(builder.add(builder.load(slots[k]), builder.mul(splat, wv)), slots[k])
        for pa, slot in zip(pas, slots):
            builder.store(builder.load(slot), pa, align=align)
        return context.get_dummy_value()

    return codegen


def _mac_typer(acc, ao, x, xo, w, wo, ws, n):
    for t in (acc, x, w):
        if not (isinstance(t, types.Array) and isinstance(t.dtype, types.Integer) and t.dtype.signed):
            return None
    return types.void(acc, ao, x, xo, w, wo, ws, n)


@intrinsic
def mac_lanes(typingctx, acc, ao, x, xo, w, wo, ws, n):
    """``acc[ao + j] += sum_i x[xo + i] * w[wo + LANES * i + j]`` for ``j < LANES``, ``i < n``.

    ``acc`` int32 or int64 (the products and sums are formed in its width, wrapping); ``x`` and ``w`` any
    signed integer arrays (1-D, contiguous); ``ws`` unused (see :func:`mac_lanes2`). The caller keeps every
    index in bounds.
    """
    sig = _mac_typer(acc, ao, x, xo, w, wo, ws, n)
    return (sig, _mac_codegen(1)) if sig is not None else None


@intrinsic
def mac_lanes2(typingctx, acc, ao, x, xo, w, wo, ws, n):
    """:func:`mac_lanes` for two blocks at once (one load of each input element): the second block's
    accumulators at ``acc[ao + LANES:]``, its weights ``ws`` elements after the first's."""
    sig = _mac_typer(acc, ao, x, xo, w, wo, ws, n)
    return (sig, _mac_codegen(2)) if sig is not None else None


@intrinsic
def section(typingctx, mem, start, stop, dtype):
    """``mem[start:stop]`` (a 1-D uint8 array, byte offsets) seen as a 1-D array of ``dtype`` (a numpy scalar
    type such as ``np.int32``): what ``mem[start:stop].view(dtype)`` gives, without its checks (the caller
    aligns ``start`` and makes ``stop - start`` a multiple of the item size)."""
    if not isinstance(dtype, types.NumberClass):
        return None
    elem = dtype.instance_type
    retty = types.Array(elem, 1, "C")
    sig = retty(mem, start, stop, dtype)

    def codegen(context, builder, signature, args):
        src = make_array(signature.args[0])(context, builder, args[0])
        begin = context.cast(builder, args[1], signature.args[1], types.intp)
        end = context.cast(builder, args[2], signature.args[2], types.intp)
        ll_elem = context.get_data_type(elem)
        itemsize = context.get_constant(types.intp, context.get_abi_sizeof(ll_elem))
        data = builder.bitcast(builder.gep(src.data, [begin]), ll_elem.as_pointer())
        n = builder.sdiv(builder.sub(end, begin), itemsize)
        out = make_array(retty)(context, builder)
        populate_array(out, data=data, shape=[n], strides=[itemsize], itemsize=itemsize, meminfo=src.meminfo,
                       parent=src.parent)
        return impl_ret_borrowed(context, builder, retty, out._getvalue())

    return sig, codegen

