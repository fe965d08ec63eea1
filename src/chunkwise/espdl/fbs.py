"""A bounds-checked FlatBuffers table reader.

Every offset is checked against the buffer before it is followed, so a corrupt or hostile file
produces a :class:`FormatError` naming the field, never an IndexError, a hang or a huge allocation.
Vectors of scalars come back as numpy views (no per-element Python loop).
"""

from __future__ import annotations

import struct

import numpy as np

from ..errors import FormatError

_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")
_U16 = struct.Struct("<H")

MAX_DEPTH = 16  # nested tables (graphs inside attributes) deeper than this are refused

# FlatBuffers references point forward only, so there are no cycles, but many references may point
# at the same table or vector: a small hostile file could make a reader visit 8**10 tables (graphs in
# attributes, shared node vectors) or copy one big vector thousands of times. Every table, vector and
# string read is charged to a budget proportional to the buffer size; a well-formed file, which
# stores each table once, uses about one unit per byte.
BUDGET_FACTOR = 8
BUDGET_SLACK = 1 << 20


class Buffer:
    """The FlatBuffer bytes plus the path used in error messages."""

    def __init__(self, data: bytes | memoryview, path: str | None = None):
        self.data = memoryview(data).cast("B") if not isinstance(data, memoryview) else data
        self.size = len(self.data)
        self.path = path
        self.budget = BUDGET_FACTOR * self.size + BUDGET_SLACK

    def spend(self, n: int, field: str) -> None:
        """Charge ``n`` bytes of reading to the budget (see BUDGET_FACTOR)."""
        self.budget -= n
        if self.budget < 0:
            raise self.fail(field, "the same tables or vectors are referenced far more often than a valid "
                                   "model needs (a corrupt or hostile file)")

    def fail(self, field: str, message: str) -> FormatError:
        return FormatError(message, field=field, path=self.path)

    def check(self, pos: int, n: int, field: str) -> None:
        if pos < 0 or n < 0 or pos + n > self.size:
            raise self.fail(field, f"offset {pos}+{n} is outside the {self.size}-byte FlatBuffer")

    def u32(self, pos: int, field: str) -> int:
        self.check(pos, 4, field)
        return _U32.unpack_from(self.data, pos)[0]

    def i32(self, pos: int, field: str) -> int:
        self.check(pos, 4, field)
        return _I32.unpack_from(self.data, pos)[0]

    def u16(self, pos: int, field: str) -> int:
        self.check(pos, 2, field)
        return _U16.unpack_from(self.data, pos)[0]

    def root(self, what: str) -> "Table":
        return Table(self, self.u32(0, f"{what}.root"), what, 0)


class Table:
    """One FlatBuffers table: fields are addressed by slot index (schema order)."""

    __slots__ = ("buf", "pos", "name", "depth", "_vt", "_vt_len")

    def __init__(self, buf: Buffer, pos: int, name: str, depth: int):
        if depth > MAX_DEPTH:
            raise buf.fail(name, f"tables nested deeper than {MAX_DEPTH}")
        self.buf = buf
        self.pos = pos
        self.name = name
        self.depth = depth
        vt = pos - buf.i32(pos, f"{name}.vtable")
        vt_len = buf.u16(vt, f"{name}.vtable")
        if vt_len < 4 or vt_len % 2:
            raise buf.fail(name, f"vtable size {vt_len} is invalid")
        buf.check(vt, vt_len, f"{name}.vtable")
        buf.spend(vt_len + 4, name)
        self._vt = vt
        self._vt_len = vt_len

    def _field(self, slot: int, fname: str) -> int:
        """Absolute position of a field, or 0 when absent."""
        vo = 4 + 2 * slot
        if vo >= self._vt_len:
            return 0
        rel = self.buf.u16(self._vt + vo, f"{self.name}.{fname}")
        return self.pos + rel if rel else 0

    def _deref(self, slot: int, fname: str) -> int:
        p = self._field(slot, fname)
        if not p:
            return 0
        return p + self.buf.u32(p, f"{self.name}.{fname}")

    # ---- scalars -------------------------------------------------------------------------
    def scalar(self, slot: int, fname: str, fmt: str, default=0):
        p = self._field(slot, fname)
        if not p:
            return default
        size = struct.calcsize("<" + fmt)
        self.buf.check(p, size, f"{self.name}.{fname}")
        return struct.unpack_from("<" + fmt, self.buf.data, p)[0]

    # ---- strings, tables -----------------------------------------------------------------
    def string(self, slot: int, fname: str) -> str:
        p = self._deref(slot, fname)
        if not p:
            return ""
        return _read_string(self.buf, p, f"{self.name}.{fname}")

    def table(self, slot: int, fname: str) -> "Table | None":
        p = self._deref(slot, fname)
        if not p:
            return None
        return Table(self.buf, p, f"{self.name}.{fname}", self.depth + 1)

    # ---- vectors -------------------------------------------------------------------------
    def _vector(self, slot: int, fname: str, elem_size: int) -> tuple[int, int]:
        p = self._deref(slot, fname)
        if not p:
            return 0, 0
        label = f"{self.name}.{fname}"
        n = self.buf.u32(p, label)
        if n * elem_size > self.buf.size:
            raise self.buf.fail(label, f"vector length {n} exceeds the buffer")
        self.buf.check(p + 4, n * elem_size, label)
        self.buf.spend(4 + n * elem_size, label)
        return p + 4, n

    def present(self, slot: int, fname: str) -> bool:
        return bool(self._field(slot, fname))

    def array(self, slot: int, fname: str, dtype: str) -> np.ndarray:
        dt = np.dtype(dtype).newbyteorder("<")
        start, n = self._vector(slot, fname, dt.itemsize)
        if n == 0:
            return np.zeros(0, dtype=dt)
        return np.frombuffer(self.buf.data, dtype=dt, count=n, offset=start)

    def raw_blocks(self, slot: int, fname: str, block: int = 16) -> memoryview:
        """A vector of fixed-size structs (AlignedBytes) as one byte view."""
        start, n = self._vector(slot, fname, block)
        return self.buf.data[start:start + n * block]

    def tables(self, slot: int, fname: str) -> list["Table"]:
        start, n = self._vector(slot, fname, 4)
        out = []
        for i in range(n):
            q = start + 4 * i
            out.append(Table(self.buf, q + self.buf.u32(q, f"{self.name}.{fname}[{i}]"),
                             f"{self.name}.{fname}[{i}]", self.depth + 1))
        return out

    def strings(self, slot: int, fname: str) -> list[str]:
        start, n = self._vector(slot, fname, 4)
        out = []
        for i in range(n):
            q = start + 4 * i
            label = f"{self.name}.{fname}[{i}]"
            out.append(_read_string(self.buf, q + self.buf.u32(q, label), label))
        return out

    def byte_strings(self, slot: int, fname: str) -> list[bytes]:
        start, n = self._vector(slot, fname, 4)
        out = []
        for i in range(n):
            q = start + 4 * i
            label = f"{self.name}.{fname}[{i}]"
            p = q + self.buf.u32(q, label)
            length = self.buf.u32(p, label)
            self.buf.check(p + 4, length, label)
            self.buf.spend(4 + length, label)
            out.append(bytes(self.buf.data[p + 4:p + 4 + length]))
        return out


def _read_string(buf: Buffer, p: int, label: str) -> str:
    n = buf.u32(p, label)
    buf.check(p + 4, n, label)
    buf.spend(4 + n, label)
    raw = bytes(buf.data[p + 4:p + 4 + n])
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise buf.fail(label, f"string is not valid UTF-8 ({e.reason} at byte {e.start})") from None
