"""Data-movement operators: Concat, Split, Slice, Gather, Pad, DepthToSpace, SpaceToDepth,
ReverseSequence, ScatterND and InsertZeros.

None of these touches an integer's value on ESP-DL: every module copies the input's elements as
they are (``tool::copy_memory`` / element assignment) and never looks at exponents, so an output
whose exponent differs from its input's receives the same integers (ScatterND's ``add``/``mul``
reductions saturate, nothing else does arithmetic). The emulator does the same.

Facts (``esp-dl/dl/module/include/dl_module_<op>.hpp``, ``dl/base/dl_base_pad.cpp``,
``dl/base/dl_base_shape.cpp``, ``dl/tensor/src/dl_tensor_base.cpp``):

* Slice reads starts/ends/axes/steps from int32/int64 initializers (int64 saturated to int32).
  A negative step is run as ``start' = -start - 1``, ``end' = -end - 1``, a forward slice
  ``[start':end':-step]`` and finally a flip of that axis of the output (``_flip``). For full flips
  (``starts=-1, ends=-inf``), the only form ESP-PPQ exports, that is ONNX's result; otherwise it is
  ESP-DL's, which we emulate.
* Pad: modes constant / edge / reflect (wrap is rejected by the module). The constant is the first
  element of input 2, read in the activation's integer type (already quantized by the exporter).
  Rank 1-4 any mode; rank 5 edge/reflect only as ESP-DL's merged 4-D pad; rank >= 5 constant.
* DepthToSpace (NHWC): CRD is exact; ESP-DL's DCR indexing equals ONNX DCR only when the output
  has ``blocksize`` channels, other DCR shapes are refused.
* SpaceToDepth (NHWC): output channel ``c * bs*bs + (h % bs) * bs + (w % bs)``.
* Split without a split input uses ``num_outputs`` as ESP-DL does: as a chunk *size*.
* Gather / ScatterND / ReverseSequence: indices must be in range; ESP-DL does not wrap negatives.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..registry import Prepared, arm, kernel, lowering, no_lowering, row_layout
from ..rounding import qrange
from .shape import out_dtype

_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1


def _norm_axis(ctx, axis: int, rank: int, what: str = "axis") -> int:
    ctx.require(-rank <= axis < rank, f"{what} {axis} out of range for rank {rank}")
    return axis + rank if axis < 0 else axis


def _const_ints(ctx, spec, what, dtypes=("int64",)) -> np.ndarray:
    ctx.require(spec.is_const, f"{what} must be a constant initializer (ESP-DL reads it once when loading)")
    ctx.require(str(spec.const.dtype) in dtypes, f"{what} has dtype {spec.const.dtype}", supported=list(dtypes))
    return np.asarray(spec.const).astype(np.int64).ravel()


def _has(ins, i) -> bool:
    return len(ins) > i and ins[i].name != ""


# ---- Concat ------------------------------------------------------------------------------------
@kernel("Concat")
def prepare_concat(node, ctx, ins, outs):
    ctx.require(len(ins) >= 1 and all(s.name for s in ins), "Concat inputs must all be present")
    x0 = ins[0]
    r = len(x0.shape)
    ctx.require(r >= 1, "Concat of scalars")
    axis = _norm_axis(ctx, int(node.attr("axis", 0)), r)
    for s in ins[1:]:
        ctx.require(s.dtype == x0.dtype, f"input {s.name!r} has dtype {s.dtype}, first input {x0.dtype}")
        ctx.require(len(s.shape) == r, f"input {s.name!r} has rank {len(s.shape)}, first input {r}")
        for d in range(r):
            ctx.require(d == axis or s.shape[d] == x0.shape[d],
                        f"input shapes {[list(t.shape) for t in ins]} differ outside axis {axis}")
    dt = out_dtype(ctx, x0, outs[0])
    shape = list(x0.shape)
    shape[axis] = sum(int(s.shape[axis]) for s in ins)
    shape = tuple(shape)

    out = ctx.output_buffer(shape, x0.dtype)  # out_dtype() made sure the output has the inputs' dtype

    def run(*arrays):
        return (np.concatenate(arrays, axis=axis, out=out, casting="unsafe"),)

    return Prepared([shape], run, dtypes=dt, info={"axis": axis})


# ---- Split -------------------------------------------------------------------------------------
@kernel("Split")
def prepare_split(node, ctx, ins, outs):
    x = ins[0]
    r = len(x.shape)
    ctx.require(r >= 1, "Split of a scalar")
    axis = _norm_axis(ctx, int(node.attr("axis", 0)), r)
    dim = int(x.shape[axis])
    ctx.require(node.attr("split") is None, "split sizes given as an attribute (opset < 13): ESP-DL reads only "
                                            "the split input", supported=["split as a constant input"])
    if _has(ins, 1):
        sizes = [int(v) for v in _const_ints(ctx, ins[1], "split", ("int64",))]
        ctx.require(all(v >= 0 for v in sizes) and sum(sizes) == dim,
                    f"split sizes {sizes} do not add up to axis {axis} of size {dim}")
    else:
        chunk = node.attr("num_outputs")
        ctx.require(chunk is not None and int(chunk) > 0, "Split needs a split input or num_outputs")
        chunk = int(chunk)
        n = (dim + chunk - 1) // chunk  # ESP-DL reads num_outputs as the size of each piece
        sizes = [chunk] * (n - 1) + [dim - (n - 1) * chunk]
        ctx.require(len(sizes) == len(node.outputs),
                    f"ESP-DL splits axis {axis} of size {dim} into pieces of num_outputs={chunk} "
                    f"({len(sizes)} pieces) but the node has {len(node.outputs)} outputs")
    ctx.require(len(sizes) == len(node.outputs), f"{len(sizes)} split sizes for {len(node.outputs)} outputs")
    dts = [x.dtype] * len(outs) if any(out_dtype(ctx, x, o) for o in outs) else None
    shapes = []
    for s in sizes:
        sh = list(x.shape)
        sh[axis] = s
        shapes.append(tuple(sh))
    bounds = np.cumsum([0] + sizes)
    pieces = [(slice(None),) * axis + (slice(int(bounds[i]), int(bounds[i + 1])),) for i in range(len(sizes))]

    bufs = [ctx.output_buffer(sh, x.dtype) for sh in shapes]

    def run(xa, *_):
        for buf, p in zip(bufs, pieces):
            buf[...] = xa[p]
        return tuple(bufs)

    return Prepared(shapes, run, dtypes=dts, info={"pieces": pieces})


# ---- Slice -------------------------------------------------------------------------------------
def slice_plan(ctx, shape, starts, ends, axes, steps):
    """ESP-DL's slice: per-axis (start, end, step) forward ranges and the axes to flip afterwards."""
    r = len(shape)
    n = len(starts)
    ctx.require(len(ends) == n, f"{n} starts but {len(ends)} ends")
    for what, v in (("axes", axes), ("steps", steps)):
        ctx.require(v is None or len(v) == n, f"{n} starts but {0 if v is None else len(v)} {what}")
    ranges = [(0, int(s), 1) for s in shape]
    flipped = []
    seen = set()
    for i in range(n):
        axis = i if axes is None else int(axes[i])
        axis = _norm_axis(ctx, axis, r, "slice axis")
        ctx.require(axis not in seen, f"axis {axis} is sliced twice")
        seen.add(axis)
        dim = int(shape[axis])
        start = int(np.clip(starts[i], _INT32_MIN, _INT32_MAX))
        end = int(np.clip(ends[i], _INT32_MIN, _INT32_MAX))
        step = 1 if steps is None else int(steps[i])
        ctx.require(step != 0, "slice step 0")
        if step < 0:
            flipped.append(axis)
            start, end, step = -start - 1, -end - 1, -step
        if end > dim:
            end = dim
        elif end < 0:
            end += dim
        if start > dim:
            start = dim
        elif start < 0:
            start += dim
        ctx.require(0 <= start < end <= dim,
                    f"slice of axis {axis} (size {dim}) from {starts[i]} to {ends[i]} step "
                    f"{1 if steps is None else steps[i]} is empty or out of range on ESP-DL")
        ranges[axis] = (start, end, step)
    out_shape = tuple(len(range(a, b, s)) for a, b, s in ranges)
    return ranges, flipped, out_shape


@kernel("Slice")
def prepare_slice(node, ctx, ins, outs):
    x = ins[0]
    ctx.require(_has(ins, 1) and _has(ins, 2), "Slice needs starts and ends inputs")
    ctx.require(len(x.shape) >= 1, "Slice of a scalar")
    dts = ("int32", "int64")
    starts = _const_ints(ctx, ins[1], "starts", dts)
    ends = _const_ints(ctx, ins[2], "ends", dts)
    ctx.require(str(ins[1].const.dtype) == str(ins[2].const.dtype), "starts and ends have different dtypes")
    axes = _const_ints(ctx, ins[3], "axes", dts) if _has(ins, 3) else None
    steps = _const_ints(ctx, ins[4], "steps", dts) if _has(ins, 4) else None
    ranges, flipped, shape = slice_plan(ctx, x.shape, starts, ends, axes, steps)
    index = tuple(slice(a, b, s) for a, b, s in ranges)
    flip = tuple(flipped)
    dt = out_dtype(ctx, x, outs[0])

    def move(xa):
        y = xa[index]
        return np.flip(y, axis=flip) if flip else y

    def run(xa, *_):
        return (np.ascontiguousarray(move(xa)),)

    return Prepared([shape], run, dtypes=dt, info={"move": move})


# ---- Gather ------------------------------------------------------------------------------------
@kernel("Gather")
def prepare_gather(node, ctx, ins, outs):
    x = ins[0]
    ctx.require(_has(ins, 1), "Gather needs indices")
    r = len(x.shape)
    ctx.require(r >= 1, "Gather from a scalar")
    axis = _norm_axis(ctx, int(node.attr("axis", 0)), r)
    ctx.require(ins[1].is_const, "indices must be a constant initializer (ESP-DL reads them when loading)")
    ind = np.asarray(ins[1].const)
    ctx.require(str(ind.dtype) in ("int32", "int64"), f"indices dtype {ind.dtype}", supported=["int32", "int64"])
    dim = int(x.shape[axis])
    if ind.size and not (int(ind.min()) >= 0 and int(ind.max()) < dim):
        raise ctx.fail(f"indices must lie in [0, {dim}) (ESP-DL does not wrap negative indices); "
                       f"got [{int(ind.min())}, {int(ind.max())}]")
    idx = ind.astype(np.int64)
    shape = tuple(x.shape[:axis]) + tuple(ind.shape) + tuple(x.shape[axis + 1:])
    dt = out_dtype(ctx, x, outs[0])

    def move(xa):
        return np.take(xa, idx, axis=axis)

    def run(xa, *_):
        return (np.ascontiguousarray(move(xa)),)

    return Prepared([shape], run, dtypes=dt, info={"move": move})


# ---- Pad ---------------------------------------------------------------------------------------
PAD_MODES = ("constant", "edge", "reflect")


@kernel("Pad")
def prepare_pad(node, ctx, ins, outs):
    x = ins[0]
    r = len(x.shape)
    mode = node.attr("mode", "constant") or "constant"
    ctx.require(mode in PAD_MODES, f"mode {mode!r}", supported=list(PAD_MODES))
    ctx.require(_has(ins, 1), "Pad needs its pads input")
    ctx.require(not _has(ins, 3), "the axes input of Pad is not read by ESP-DL", supported=["pads for every axis"])
    pads = [int(v) for v in _const_ints(ctx, ins[1], "pads", ("int64",))]
    ctx.require(r >= 1, "Pad of a scalar")
    ctx.require(len(pads) == 2 * r, f"{len(pads)} pads for rank {r}")
    ctx.require(all(p >= 0 for p in pads), f"negative pads {pads}", supported=["pads >= 0"])
    if mode == "reflect":
        for a in range(r):
            ctx.require(max(pads[a], pads[a + r]) <= x.shape[a] - 1,
                        f"reflect pads {pads[a]},{pads[a + r]} on axis {a} of size {x.shape[a]} "
                        "must be smaller than the axis")
    if mode != "constant":
        ctx.require(r <= 5, f"{mode} padding of rank {r}", supported=["rank 1-5"])
        if r == 5:
            ctx.require(pads[0] == 0 and pads[5] == 0,
                        "rank-5 edge/reflect padding of axis 0", supported=["rank-5 pads with axis 0 unpadded"])
            ctx.require(x.shape[0] == 1 or (pads[1] == 0 and pads[6] == 0),
                        "rank-5 edge/reflect padding of axis 1 with batch > 1 (ESP-DL merges axes 0 and 1)")
    value = 0
    if mode == "constant" and _has(ins, 2):
        c = ins[2]
        ctx.require(c.is_const, "constant_value must be a constant initializer")
        ctx.require(str(c.const.dtype) == x.dtype,
                    f"constant_value has dtype {c.const.dtype}; ESP-DL reads it as the input's {x.dtype}")
        ctx.require(c.const.size >= 1, "constant_value is empty")
        value = c.const.ravel()[0]
    dt = out_dtype(ctx, x, outs[0])
    widths = [(pads[a], pads[a + r]) for a in range(r)]
    shape = tuple(int(x.shape[a]) + pads[a] + pads[a + r] for a in range(r))
    np_mode = {"constant": "constant", "edge": "edge", "reflect": "reflect"}[mode]

    def run(xa, *_):
        if np_mode == "constant":
            return (np.pad(xa, widths, mode="constant", constant_values=value),)
        return (np.pad(xa, widths, mode=np_mode),)

    return Prepared([shape], run, dtypes=dt, info={"widths": widths, "mode": np_mode, "value": int(value)})


# ---- DepthToSpace / SpaceToDepth ---------------------------------------------------------------
@kernel("DepthToSpace")
def prepare_depth_to_space(node, ctx, ins, outs):
    x = ins[0]
    ctx.require(len(x.shape) == 4, f"input rank {len(x.shape)}", supported=["4-D NHWC"])
    bs = int(node.attr("blocksize", 0) or 0)
    ctx.require(bs >= 1, f"blocksize {bs}")
    mode = node.attr("mode", "DCR") or "DCR"
    ctx.require(mode in ("DCR", "CRD"), f"mode {mode!r}", supported=["DCR", "CRD"])
    n, h, w, c = (int(v) for v in x.shape)
    ctx.require(c % (bs * bs) == 0, f"{c} channels are not a multiple of blocksize^2 = {bs * bs}")
    co = c // (bs * bs)
    if mode == "DCR":
        ctx.require(co == bs, f"DCR with {co} output channels and blocksize {bs}: ESP-DL's DCR indexing "
                              "(dl_module_depth_to_space.hpp) is only right when they are equal",
                    supported=["CRD", f"DCR with {bs} output channels"])
    dt = out_dtype(ctx, x, outs[0])
    shape = (n, h * bs, w * bs, co)

    def move(xa):
        if mode == "CRD":  # channel = oc * bs^2 + i * bs + j
            return xa.reshape(n, h, w, co, bs, bs).transpose(0, 1, 4, 2, 5, 3)
        return xa.reshape(n, h, w, bs, bs, co).transpose(0, 1, 3, 2, 4, 5)  # channel = (i * bs + j) * co + oc

    def run(xa, *_):
        return (np.ascontiguousarray(move(xa)).reshape(shape),)

    return Prepared([shape], run, dtypes=dt, info={"move": move})


@kernel("SpaceToDepth")
def prepare_space_to_depth(node, ctx, ins, outs):
    x = ins[0]
    ctx.require(len(x.shape) == 4, f"input rank {len(x.shape)}", supported=["4-D NHWC"])
    bs = int(node.attr("blocksize", 0) or 0)
    ctx.require(bs >= 1, f"blocksize {bs}")
    n, h, w, c = (int(v) for v in x.shape)
    ctx.require(h % bs == 0 and w % bs == 0, f"height {h} and width {w} must be multiples of blocksize {bs}")
    dt = out_dtype(ctx, x, outs[0])
    shape = (n, h // bs, w // bs, c * bs * bs)

    def move(xa):  # out channel = c * bs^2 + (h % bs) * bs + (w % bs)
        return xa.reshape(n, h // bs, bs, w // bs, bs, c).transpose(0, 1, 3, 5, 2, 4)

    def run(xa, *_):
        return (np.ascontiguousarray(move(xa)).reshape(shape),)

    return Prepared([shape], run, dtypes=dt, info={"move": move})


# ---- ReverseSequence ---------------------------------------------------------------------------
@kernel("ReverseSequence")
def prepare_reverse_sequence(node, ctx, ins, outs):
    x = ins[0]
    ctx.require(_has(ins, 1), "ReverseSequence needs sequence_lens")
    r = len(x.shape)
    ctx.require(r >= 2, f"input rank {r}")
    batch_axis = int(node.attr("batch_axis", 1))
    time_axis = int(node.attr("time_axis", 0))
    ctx.require({batch_axis, time_axis} == {0, 1},
                f"batch_axis={batch_axis}, time_axis={time_axis}: ESP-DL assumes they are axes 0 and 1",
                supported=["batch_axis/time_axis in {0, 1}"])
    sl = ins[1]
    ctx.require(sl.dtype == "int64", f"sequence_lens dtype {sl.dtype} (ESP-DL reads int64)", supported=["int64"])
    nb, nt = int(x.shape[batch_axis]), int(x.shape[time_axis])
    if sl.is_const:
        lens = np.asarray(sl.const).ravel()
        ctx.require(lens.size >= nb, f"{lens.size} sequence lengths for batch {nb}")
        ctx.require(bool(np.all(lens[:nb] <= nt)), f"sequence lengths {lens.tolist()} exceed time axis {nt}")
    dt = out_dtype(ctx, x, outs[0])
    shape = tuple(x.shape)

    def run(xa, la):
        lens_ = np.asarray(la).ravel()
        if lens_.size < nb or np.any(lens_[:nb] > nt):
            raise ctx.fail(f"sequence_lens {lens_.tolist()} do not fit batch {nb} x time {nt}")
        y = xa.copy()
        yt = np.moveaxis(y, (batch_axis, time_axis), (0, 1))  # a view: writes go to y
        xt = np.moveaxis(xa, (batch_axis, time_axis), (0, 1))
        for b in range(nb):
            ln = int(lens_[b])
            if ln > 1:
                yt[b, :ln] = xt[b, ln - 1::-1]
        return (y,)

    return Prepared([shape], run, dtypes=dt)


# ---- ScatterND ---------------------------------------------------------------------------------
_REDUCTIONS = {"none": 0, "add": 1, "mul": 2, "max": 3, "min": 4}


@njit(cache=True)
def _scatter_nd(out, idx, upd, strides, slice_size, red, lo, hi):
    """out: flat data copy; idx [n_slices, k] int64; upd flat [n_slices * slice_size]."""
    n_slices, k = idx.shape
    for s in range(n_slices):
        flat = np.int64(0)
        for i in range(k):
            flat += idx[s, i] * strides[i]
        base = s * slice_size
        for j in range(slice_size):
            cur = np.int64(out[flat + j])
            u = np.int64(upd[base + j])
            if red == 0:
                v = u
            elif red == 1:
                v = cur + u
            elif red == 2:
                v = cur * u
            elif red == 3:
                v = cur if cur > u else u
            else:
                v = cur if cur < u else u
            if v < lo:
                v = lo
            elif v > hi:
                v = hi
            out[flat + j] = v
    return out


@kernel("ScatterND")
def prepare_scatter_nd(node, ctx, ins, outs):
    data, ind, upd = ins[0], ins[1], ins[2]
    ctx.require(all(_has(ins, i) for i in range(3)), "ScatterND needs data, indices and updates")
    ctx.require(data.dtype in ("int8", "int16"), f"data dtype {data.dtype}", supported=["int8", "int16"])
    ctx.require(upd.dtype == data.dtype, f"updates dtype {upd.dtype} differs from data dtype {data.dtype}")
    ctx.require(ind.dtype == "int64", f"indices dtype {ind.dtype} (ESP-DL reads int64)", supported=["int64"])
    red = node.attr("reduction", "none") or "none"
    ctx.require(red in _REDUCTIONS, f"reduction {red!r}", supported=list(_REDUCTIONS))
    dshape, ishape, ushape = tuple(data.shape), tuple(ind.shape), tuple(upd.shape)
    ctx.require(len(ishape) >= 1, "indices must have rank >= 1")
    k = int(ishape[-1])
    ctx.require(1 <= k <= len(dshape), f"indices last dimension {k} for data rank {len(dshape)}")
    want = ishape[:-1] + dshape[k:]
    ctx.require(int(np.prod(ushape, dtype=np.int64)) == int(np.prod(want, dtype=np.int64)),
                f"updates shape {list(ushape)} does not match indices/data (expected {list(want)})")
    strides = np.array([int(np.prod(dshape[i + 1:], dtype=np.int64)) for i in range(k)], dtype=np.int64)
    slice_size = int(np.prod(dshape[k:], dtype=np.int64))
    n_slices = int(np.prod(ishape[:-1], dtype=np.int64))
    bounds = np.array(dshape[:k], dtype=np.int64)

    def check(ia):
        ia = np.asarray(ia, dtype=np.int64).reshape(n_slices, k)
        if ia.size and (np.any(ia < 0) or np.any(ia >= bounds)):
            raise ctx.fail(f"ScatterND indices out of range [0, {dshape[:k]}) (ESP-DL does not wrap negatives)")
        return ia

    const_idx = check(ind.const) if ind.is_const else None
    lo, hi = qrange(data.dtype)
    r = _REDUCTIONS[red]
    dt = out_dtype(ctx, data, outs[0])

    def run(da, ia, ua):
        idx = const_idx if const_idx is not None else check(ia)
        out = np.ascontiguousarray(da).copy().reshape(-1)
        _scatter_nd(out, idx, np.ascontiguousarray(ua).reshape(-1), strides, slice_size, r, lo, hi)
        return (out.reshape(dshape),)

    return Prepared([dshape], run, dtypes=dt)


# ---- InsertZeros -------------------------------------------------------------------------------
@kernel("InsertZeros")
def prepare_insert_zeros(node, ctx, ins, outs):
    """Zeros between input pixels (ESP-PPQ's ConvTranspose lowering): out[n, h*sh, w*sw, :] = x[n, h, w, :]."""
    x = ins[0]
    r = len(x.shape)
    ctx.require(r in (3, 4), f"input rank {r}", supported=["3 (NWC)", "4 (NHWC)"])
    nsp = r - 2
    stride = [int(v) for v in (node.attr("stride") or [1])]
    opad = [int(v) for v in (node.attr("output_padding") or [0])]
    if len(stride) == 1:
        stride = stride * nsp
    if len(opad) == 1:
        opad = opad * nsp
    ctx.require(len(stride) == nsp and len(opad) == nsp,
                f"stride {stride} / output_padding {opad} for {nsp} spatial axes")
    ctx.require(all(s >= 1 for s in stride) and all(p >= 0 for p in opad), f"stride {stride}, output_padding {opad}")
    dt = out_dtype(ctx, x, outs[0])
    shape = [int(s) for s in x.shape]
    for i in range(nsp):
        d = shape[1 + i]
        shape[1 + i] = d + (stride[i] - 1) * (d - 1) + opad[i]
    shape = tuple(shape)
    index = (slice(None),) + tuple(slice(0, int(x.shape[1 + i]) * stride[i], stride[i]) for i in range(nsp))
    y = ctx.output_buffer(shape, x.dtype)  # zero where no input lands, on every run: only `index` is written

    def run(xa, *_):
        y[index] = xa
        return (y,)

    return Prepared([shape], run, dtypes=dt, info={"index": index})


# ---- compiled lowering (emu/program.py) -------------------------------------------------------------
# Every op here copies integers unchanged: its lowering turns the geometry its prepare() decided into an
# index map (which input element lands where), run by one of these arms.
GATHER = row_layout("GATHER", "x out n map")  # out[i] = x[map[i]]
SCATTER = row_layout("SCATTER", "x out n map")  # out[map[i]] = x[i]
COPY = row_layout("COPY", "x out n")  # out[i] = x[i]
FILL = row_layout("FILL", "out n value")  # out[i] = value


@arm(GATHER)
@njit(cache=True, inline="always")
def gather_arm(row, act, actf, c16, c32, c64, cf, mode):
    L = GATHER
    n, x = row[L.n], row[L.x]
    out = act[row[L.out]:row[L.out] + n]
    idx = c32[row[L.map]:row[L.map] + n]
    for i in range(n):
        out[i] = act[x + idx[i]]


@arm(SCATTER)
@njit(cache=True, inline="always")
def scatter_arm(row, act, actf, c16, c32, c64, cf, mode):
    L = SCATTER
    n, o = row[L.n], row[L.out]
    x = act[row[L.x]:row[L.x] + n]
    idx = c32[row[L.map]:row[L.map] + n]
    for i in range(n):
        act[o + idx[i]] = x[i]


@arm(COPY)
@njit(cache=True, inline="always")
def copy_arm(row, act, actf, c16, c32, c64, cf, mode):
    L = COPY
    n = row[L.n]
    x = act[row[L.x]:row[L.x] + n]
    out = act[row[L.out]:row[L.out] + n]
    for i in range(n):
        out[i] = x[i]


@arm(FILL)
@njit(cache=True, inline="always")
def fill_arm(row, act, actf, c16, c32, c64, cf, mode):
    L = FILL
    out = act[row[L.out]:row[L.out] + row[L.n]]
    v = row[L.value]
    for i in range(out.size):
        out[i] = v


def emit_map(b, src: str, dst: str, index: np.ndarray) -> None:
    """``dst`` (flat) = ``src`` (flat) at ``index``: a plain copy when the index runs contiguously."""
    index = np.asarray(index, dtype=np.int64).reshape(-1)
    if index.size and np.all(np.diff(index) == 1):
        b.emit(COPY, x=b.slot(src) + int(index[0]), out=b.slot(dst), n=index.size)
    else:
        b.emit(GATHER, x=b.slot(src), out=b.slot(dst), n=index.size, map=b.c32(index))


def emit_scatter(b, src: str, dst: str, offset_map: np.ndarray) -> None:
    """``dst`` (flat) at ``offset_map`` = ``src`` (flat), a plain copy when contiguous."""
    m = np.asarray(offset_map, dtype=np.int64).reshape(-1)
    if m.size and np.all(np.diff(m) == 1):
        b.emit(COPY, x=b.slot(src), out=b.slot(dst) + int(m[0]), n=m.size)
    else:
        b.emit(SCATTER, x=b.slot(src), out=b.slot(dst), n=m.size, map=b.c32(m))


def positions(shape) -> np.ndarray:
    """Each element's flat index, in ``shape`` (what a movement applied to it turns into an index map)."""
    return np.arange(int(np.prod(shape, dtype=np.int64)), dtype=np.int64).reshape(shape)


@lowering("Slice", "Gather", "DepthToSpace", "SpaceToDepth")
def lower_move(b, step):
    """The kernel's own ``info["move"]`` applied to element positions gives the index map."""
    x, out = b.ins(step)[0], b.outs(step)[0]
    emit_map(b, x.name, out.name, step.prepared.info["move"](positions(x.shape)))


@lowering("Concat")
def lower_concat(b, step):
    axis = step.prepared.info["axis"]
    out = b.outs(step)[0]
    where = positions(out.shape)
    start = 0
    for x in b.ins(step):
        k = int(x.shape[axis])
        sl = (slice(None),) * axis + (slice(start, start + k),)
        emit_scatter(b, x.name, out.name, where[sl])
        start += k


@lowering("Split")
def lower_split(b, step):
    x = b.ins(step)[0]
    where = positions(x.shape)
    for out, piece in zip(b.outs(step), step.prepared.info["pieces"]):
        emit_map(b, x.name, out.name, where[piece])


@lowering("Pad")
def lower_pad(b, step):
    info = step.prepared.info
    x, out = b.ins(step)[0], b.outs(step)[0]
    if info["mode"] == "constant":
        inner = tuple(slice(lo, lo + int(d)) for (lo, _), d in zip(info["widths"], x.shape))
        b.emit(FILL, out=b.slot(out.name), n=int(np.prod(out.shape, dtype=np.int64)), value=info["value"])
        emit_scatter(b, x.name, out.name, positions(out.shape)[inner])
    else:
        emit_map(b, x.name, out.name, np.pad(positions(x.shape), info["widths"], mode=info["mode"]))


@lowering("InsertZeros")
def lower_insert_zeros(b, step):
    x, out = b.ins(step)[0], b.outs(step)[0]
    b.emit(FILL, out=b.slot(out.name), n=int(np.prod(out.shape, dtype=np.int64)), value=0)
    emit_scatter(b, x.name, out.name, positions(out.shape)[step.prepared.info["index"]])


no_lowering("ReverseSequence", "ScatterND",
            reason="reads its sequence lengths / indices on every run; runs on the per-node path")
