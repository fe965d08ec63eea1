"""StreamingCache: the frame history of a streaming (chunk-by-chunk) model.

ESP-DL (``dl_module_streaming_cache.hpp``)::

    output shape = input shape with shape[frame_axis] += window_size - 1
    cache        = window_size - 1 frames, same dtype and exponent as the input, zeros at start
    forward:  output bytes = cache bytes ++ input bytes
              cache bytes  = output bytes [input_bytes : input_bytes + cache_bytes]
    reset():  cache := 0

So the cache always keeps the *last* ``window_size - 1`` frames of the output, whatever the chunk
length (a chunk longer than the cache simply replaces it with its own last frames). The copies are
flat ``memcpy`` s of the whole tensor: that is a concatenation along ``frame_axis`` when every axis
before it has size 1 (batch 1, ``frame_axis`` 1, as ESP-PPQ exports it); for other shapes the
emulator copies flat too, as the chip does. The integers are copied unchanged (no exponent is
consulted). ``window_size`` 1 would make a zero-length cache tensor, which ESP-DL asserts on.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from ..registry import Prepared, arm, kernel, lowering, row_layout
from .shape import out_dtype


@njit(cache=True)
def cache_keep(out, state, nx):
    """``state = out[nx:nx + len(state)]``: the frames kept for the next chunk (a forward copy, so ``state`` may
    be ``out``'s own first words)."""
    for i in range(state.size):
        state[i] = out[nx + i]


@njit(cache=True)
def cache_step(x, state, out):
    """``out = state ++ x`` (flat), then ``state = out[len(x):len(x) + len(state)]`` (ESP-DL's two copies)."""
    ns, nx = state.size, x.size
    for i in range(ns):
        out[i] = state[i]
    for i in range(nx):
        out[ns + i] = x[i]
    cache_keep(out, state, nx)
    return out


@kernel("StreamingCache")
def prepare_streaming_cache(node, ctx, ins, outs):
    x = ins[0]
    r = len(x.shape)
    window = int(node.attr("window_size", 1))
    axis = int(node.attr("frame_axis", 1))
    ctx.require(window >= 2, f"window_size={window}: ESP-DL cannot allocate a cache of {window - 1} frames",
                supported=["window_size >= 2"])
    ctx.require(-r <= axis < r, f"frame_axis {axis} out of range for input rank {r}")
    if axis < 0:
        axis += r
    ctx.require(not x.is_const, "StreamingCache input must be an activation")
    dt = out_dtype(ctx, x, outs[0])
    out_shape = list(int(s) for s in x.shape)
    out_shape[axis] += window - 1
    out_shape = tuple(out_shape)
    cache_shape = list(out_shape)
    cache_shape[axis] = window - 1
    dtype = np.dtype(x.dtype)
    cache = ctx.zeros((math.prod(cache_shape),), dtype, "cache")  # flat, preallocated once
    n_cache = cache.size
    n_in = int(np.prod(x.shape, dtype=np.int64))

    def run(xa, *_):
        out = np.empty(n_cache + n_in, dtype=dtype)
        cache_step(np.ascontiguousarray(xa).reshape(-1), cache, out)
        return (out.reshape(out_shape),)

    def reset():
        cache.fill(0)

    return Prepared([out_shape], run, reset=reset, dtypes=dt, state_bytes=int(cache.nbytes),
                    info={"window_size": window, "frame_axis": axis, "cache_shape": tuple(cache_shape)})


# ---- compiled lowering (emu/program.py) -------------------------------------------------------------
# In place (Builder.in_place_caches): the output buffer [state | x] lives on in the arena, the input's
# producer writes x straight into it, and a KEEP row at the start of each chunk moves the kept frames to the
# front (cache_keep with state = the buffer's first words). Otherwise a CACHE row does ESP-DL's two copies.
CACHE = row_layout("CACHE", "x n out state n_state")
KEEP = row_layout("KEEP", "out n n_state")


@arm(KEEP)
@njit(cache=True, inline="always")
def keep_arm(row, act, actf, c16, c32, c64, cf, mode):
    L = KEEP
    n, ns = row[L.n], row[L.n_state]
    buf = act[row[L.out]:row[L.out] + ns + n]
    cache_keep(buf, buf[:ns], n)


@arm(CACHE)
@njit(cache=True, inline="always")
def cache_arm(row, act, actf, c16, c32, c64, cf, mode):
    L = CACHE
    n, ns = row[L.n], row[L.n_state]
    cache_step(act[row[L.x]:row[L.x] + n], act[row[L.state]:row[L.state] + ns], act[row[L.out]:row[L.out] + ns + n])


@lowering("StreamingCache")
def lower_streaming_cache(b, step):
    """The cache becomes words of the program's arena (zeroed by ``reset``): each program owns its state."""
    x, out = b.ins(step)[0], b.outs(step)[0]
    n = int(np.prod(x.shape, dtype=np.int64))
    ns = int(np.prod(step.prepared.info["cache_shape"], dtype=np.int64))
    if b.in_place_caches.get(out.name) == x.name and b.slot(x.name) == b.slot(out.name) + ns:
        b.state.append((b.slot(out.name), ns + n))  # the whole buffer: zero after reset
        b.emit_first(KEEP, out=b.slot(out.name), n=n, n_state=ns)
        return
    b.emit(CACHE, x=b.slot(x.name), n=n, out=b.slot(out.name), state=b.state_words(ns), n_state=ns)
