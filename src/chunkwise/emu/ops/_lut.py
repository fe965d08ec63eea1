"""Lookup-table helpers shared by every op that ESP-DL may run as a ``LUT`` module.

ESP-DL (``dl_module_lut.hpp`` / ``dl_base_lut.cpp``):

* int8: a 256-entry table at the *output* exponent; ``y = table[x + 128]``.
* int16: a table of ``65536 / step + 1`` entries, ``step`` a power of two; the index is
  ``round((x + 32768) / step)`` with the target's rounding (half-even on esp32p4/esp32s31,
  half-up elsewhere); ``step == 1`` indexes ``table[x + 32768]`` directly.

An op node names its table by the ``lut`` attribute (an initializer); ``lut_table`` fetches and
checks it, ``apply_lut`` runs it, ``lut_module`` makes it a prepared kernel.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..registry import Prepared
from ..rounding import HALF_EVEN


def lut_table(ctx, dtype: str, out_exps=(), attr: str = "lut") -> tuple[np.ndarray, int] | None:
    """``(table, step)`` of the node's ``lut`` attribute, or None when it has none.

    Validates the table's dtype, size and (when both are known) that its exponent equals the
    output's (ESP-DL asserts this in ``LUT::forward``).
    """
    name = ctx.attr(attr)
    if name is None or name == "":
        return None
    if isinstance(name, bytes):
        name = name.decode()
    t = ctx.initializer(str(name))
    table = np.asarray(t.data).ravel()
    ctx.require(t.dtype == dtype, f"lut table {name!r} is {t.dtype}, the op computes {dtype}", supported=[dtype])
    if dtype == "int8":
        ctx.require(table.size == 256, f"int8 lut table {name!r} has {table.size} entries, expected 256")
        step = 1
    elif dtype == "int16":
        # LUT::LUT: step = 65536 / (size - 1) in integer division (a 65536-entry table is step 1)
        n = table.size - 1
        step = 65536 // n if n >= 1 else 0
        ok = step >= 1 and step & (step - 1) == 0
        if ok:  # the largest index, round(65535 / step), must lie inside the table
            ok = (65535 + step // 2) // step <= n
        ctx.require(ok, f"int16 lut table {name!r} has {table.size} entries; expected 65536/step + 1 "
                    "with step a power of two (or 65536 entries)")
    else:
        raise ctx.fail(f"lut tables are int8 or int16, not {dtype}", supported=["int8", "int16"])
    if t.exponents and out_exps and len(t.exponents) == 1 and len(out_exps) == 1:
        ctx.require(int(t.exponents[0]) == int(out_exps[0]),
                    f"lut table exponent {t.exponents[0]} differs from output exponent {out_exps[0]}")
    return np.ascontiguousarray(table.astype(dtype)), step


@njit(cache=True)
def lut_s8(x, table, out):
    """``out[i] = table[x[i] + 128]`` (x int8 values, flat)."""
    for i in range(x.size):
        out[i] = table[(np.int64(x[i]) + 128) & 255]  # the mask only tells the compiler the index is in range
    return out


@njit(cache=True)
def lut_s16(x, table, out, shift, mode):
    """``out[i] = table[round((x[i] + 32768) / 2**shift)]`` (x int16 values, flat; target rounding)."""
    for i in range(x.size):
        v = np.int64(x[i]) + 32768
        if shift == 0:
            out[i] = table[v]
            continue
        idx = v >> shift
        r = v - (idx << shift)
        half = np.int64(1) << (shift - 1)
        if mode == HALF_EVEN:
            if r > half or (r == half and (idx & 1) != 0):
                idx += 1
        elif r >= half:
            idx += 1
        out[i] = table[idx]
    return out


def apply_lut(x: np.ndarray, table: np.ndarray, step: int, mode: int, out: np.ndarray) -> np.ndarray:
    """Look every element of ``x`` up in ``table`` (ESP-DL ``lut_s8`` / ``lut_s16_nearest_neighbor``), into
    ``out`` (``x.size`` elements of the table's dtype), returned in ``x``'s shape."""
    flat = np.ascontiguousarray(x).ravel()
    out = out.reshape(flat.shape)
    if table.dtype == np.int8:
        lut_s8(flat, table, out)
    else:
        lut_s16(flat, table, out, int(step).bit_length() - 1, mode)
    return out.reshape(x.shape)


def lut_module(ctx, shape: tuple[int, ...], table: np.ndarray, step: int, **prepared) -> Prepared:
    """ESP-DL's LUT module as a prepared kernel: every element of the input looked up in ``table``, into an
    output buffer of the plan. ``prepared`` goes to :class:`Prepared` (``dtypes``, ``info``)."""
    mode = ctx.mode
    out = ctx.output_buffer(shape, table.dtype)

    def run(xa, *_):
        return (apply_lut(xa, table, step, mode, out),)

    info = dict(prepared.pop("info", None) or {})
    info["table"] = (table, step)  # what a compiled lowering encodes (activation.emit_lut)
    return Prepared([shape], run, info=info, **prepared)
