"""Shape-only operators: Reshape, Flatten, Squeeze, Unsqueeze, Identity, and Transpose.

ESP-DL (``dl_module_reshape.hpp``, ``_flatten``, ``_squeeze``, ``_unsqueeze``, ``_identity``) runs
the first five in place (``MODULE_INPLACE_UNCHANGED_BUFFER``): the output shares the input's buffer,
so the integers pass through unchanged whatever the output's exponent says. The memory planner
(``dl_memory_manager_greedy.cpp``) declines the in-place link only when the input is itself a graph
output; then ``TensorBase::assign`` requantizes if the exponents differ. That one case is refused
here rather than guessed. Transpose (``TensorBase::transpose``) is a plain permutation of elements.

Axes, perms and shape constants are taken as written in the graph: the exporter already rewrote
them for ESP-DL's NHWC / NWC layout.
"""

from __future__ import annotations

import numpy as np

from ..registry import Prepared, kernel, lowering


def out_dtype(ctx, x, out) -> list[str] | None:
    """Output dtype of an op that moves the input's integers unchanged (must equal the input's)."""
    if out.dtype in ("undefined", "", None):
        return [x.dtype]
    ctx.require(out.dtype == x.dtype, f"output dtype {out.dtype} differs from input dtype {x.dtype}; "
                                      "ESP-DL copies the input's bytes unchanged")
    return None


def check_inplace_exps(ctx, x, out) -> None:
    """In-place pass-through ops: refuse the one case where ESP-DL would requantize (see module doc)."""
    if not x.exps or not out.exps or tuple(x.exps) == tuple(out.exps):
        return
    g = ctx.graph
    is_graph_output = g is not None and x.name in g.output_names
    ctx.require(not is_graph_output and not x.is_const,
                f"input exponent {list(x.exps)} differs from output exponent {list(out.exps)} and the input "
                "cannot be shared in place; ESP-DL would requantize through TensorBase::assign, which the "
                "emulator does not model")


def _ints(ctx, spec, what) -> list[int]:
    ctx.require(spec.is_const, f"{what} must be a constant initializer (ESP-DL reads it once when loading)")
    ctx.require(np.asarray(spec.const).dtype.kind in "iu", f"{what} has dtype {spec.dtype}",
                supported=["integer (int64) tensors"])
    return [int(v) for v in np.asarray(spec.const).ravel()]


def _passthrough(ctx, ins, outs, shape):
    x = ins[0]
    check_inplace_exps(ctx, x, outs[0])
    dt = out_dtype(ctx, x, outs[0])
    shape = tuple(int(s) for s in shape)
    ctx.require(int(np.prod(shape, dtype=np.int64)) == int(np.prod(x.shape, dtype=np.int64)),
                f"output shape {list(shape)} does not hold the {int(np.prod(x.shape))} input elements")

    def run(xa, *_):
        return (xa.reshape(shape),)

    return Prepared([shape], run, dtypes=dt)


@kernel("Reshape")
def prepare_reshape(node, ctx, ins, outs):
    x = ins[0]
    ctx.require(len(ins) >= 2 and ins[1].name != "", "Reshape needs its shape input")
    target = _ints(ctx, ins[1], "shape")
    allowzero = int(node.attr("allowzero", 0) or 0)
    ctx.require(allowzero in (0, 1), f"allowzero={allowzero}", supported=["0", "1"])
    size = int(np.prod(x.shape, dtype=np.int64))
    ctx.require(target.count(-1) <= 1, f"shape {target} has more than one -1")
    out = []
    for i, s in enumerate(target):
        if s == 0 and allowzero == 0:
            ctx.require(i < len(x.shape), f"shape {target}: 0 at axis {i} copies an input axis that does not exist")
            out.append(int(x.shape[i]))
        elif s < -1:
            raise ctx.fail(f"shape {target} has negative entry {s}")
        else:
            out.append(s)
    known = int(np.prod([s for s in out if s != -1], dtype=np.int64))
    if -1 in out:
        ctx.require(known > 0 and size % known == 0,
                    f"cannot infer -1 in shape {target} for {size} input elements (input {list(x.shape)})")
        out[out.index(-1)] = size // known
    ctx.require(int(np.prod(out, dtype=np.int64)) == size,
                f"shape {target} does not hold the {size} elements of input {list(x.shape)}")
    return _passthrough(ctx, ins, outs, out)


@kernel("Flatten")
def prepare_flatten(node, ctx, ins, outs):
    x = ins[0]
    axis = int(node.attr("axis", 1))
    r = len(x.shape)
    ctx.require(-r <= axis <= r, f"axis {axis} out of range for rank {r}")
    if axis < 0:
        axis += r
    a = int(np.prod(x.shape[:axis], dtype=np.int64))
    b = int(np.prod(x.shape[axis:], dtype=np.int64))
    return _passthrough(ctx, ins, outs, (a, b))


@kernel("Squeeze")
def prepare_squeeze(node, ctx, ins, outs):
    x = ins[0]
    r = len(x.shape)
    ctx.require(node.attr("axes") is None, "axes given as an attribute (opset < 13): ESP-DL reads only the "
                                           "axes input and would squeeze every axis of size 1",
                supported=["axes as a constant input"])
    axes = _ints(ctx, ins[1], "axes") if len(ins) >= 2 and ins[1].name else None
    if axes is None:
        out = [s for s in x.shape if s != 1]
    else:
        norm = []
        for a in axes:
            ctx.require(-r <= a < r, f"axis {a} out of range for rank {r}")
            norm.append(a + r if a < 0 else a)
        # ESP-DL drops the listed axes of size 1 and keeps every other axis (a listed axis whose size
        # is not 1 is kept, not an error)
        out = [s for i, s in enumerate(x.shape) if not (s == 1 and i in norm)]
    return _passthrough(ctx, ins, outs, out)


@kernel("Unsqueeze")
def prepare_unsqueeze(node, ctx, ins, outs):
    x = ins[0]
    ctx.require(len(ins) >= 2 and ins[1].name != "", "Unsqueeze needs its axes input (ESP-DL does not read an "
                                                     "axes attribute)", supported=["axes as a constant input"])
    axes = _ints(ctx, ins[1], "axes")
    r = len(x.shape) + len(axes)
    norm = []
    for a in axes:
        ctx.require(-r <= a < r, f"axis {a} out of range for output rank {r}")
        norm.append(a + r if a < 0 else a)
    ctx.require(len(set(norm)) == len(norm), f"repeated axes {axes}")
    out, k = [], 0
    for i in range(r):
        if i in norm:
            out.append(1)
        else:
            out.append(int(x.shape[k]))
            k += 1
    return _passthrough(ctx, ins, outs, out)


@kernel("Identity")
def prepare_identity(node, ctx, ins, outs):
    return _passthrough(ctx, ins, outs, ins[0].shape)


@kernel("Transpose")
def prepare_transpose(node, ctx, ins, outs):
    x = ins[0]
    r = len(x.shape)
    perm = node.attr("perm")
    perm = list(range(r - 1, -1, -1)) if not perm else [int(p) for p in perm]
    ctx.require(len(perm) == r, f"perm {perm} does not match input rank {r}")
    perm = [p + r if p < 0 else p for p in perm]
    ctx.require(sorted(perm) == list(range(r)), f"perm {perm} is not a permutation of 0..{r - 1}")
    dt = out_dtype(ctx, x, outs[0])
    shape = tuple(int(x.shape[p]) for p in perm)
    perm_t = tuple(perm)

    def run(xa, *_):
        return (np.ascontiguousarray(xa.transpose(perm_t)),)

    return Prepared([shape], run, dtypes=dt, info={"perm": perm_t})


# ---- compiled lowering (emu/program.py) -------------------------------------------------------------
@lowering("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity")
def lower_passthrough(b, step):
    """In place, as on the chip: the output is the input's words."""
    b.alias(step.outputs[0], step.inputs[0])


@lowering("Transpose")
def lower_transpose(b, step):
    from .movement import emit_map, positions

    x, out = b.ins(step)[0], b.outs(step)[0]
    emit_map(b, x.name, out.name, positions(x.shape).transpose(step.prepared.info["perm"]))
