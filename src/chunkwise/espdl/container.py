"""The byte containers around an ESP-DL FlatBuffer: EDL1/EDL2 headers, AES-128-CTR, PDL1/2/3 packages.

Facts (from ESP-DL's fbs_loader and pack_espdl_models.py):

* ``EDL1``: magic, u32 mode (0 plain, 1 AES-128-CTR), u32 FlatBuffer size; FlatBuffer at 12.
* ``EDL2``: the same plus 4 bytes of padding; FlatBuffer at 16 (16-byte aligned data).
* AES-128-CTR with the fixed initial counter block ``10 11 .. 1f``.
* ``PDL1``/``PDL2``: magic, u32 model count, then per model u32 data offset, name offset, name length.
* ``PDL3``: magic, char[16] version, u32 package size, sha256[32] (computed with the field zeroed),
  u32 model count at 56, entries from 60.
"""

from __future__ import annotations

import hashlib
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import FormatError, KeyRequiredError, ModelSelectError

AES_NONCE = bytes(range(0x10, 0x20))
MODEL_MAGICS = (b"EDL1", b"EDL2")
PACKAGE_MAGICS = (b"PDL1", b"PDL2", b"PDL3")
PDL3_HEADER = 60
PDL3_SHA_OFFSET = 24


@dataclass
class Entry:
    """One model inside a file: its name (package entries) and its bytes (header included)."""

    name: str
    offset: int
    data: memoryview


def aes_ctr(data: bytes | memoryview, key: bytes) -> bytes:
    """AES-128-CTR as ESP-DL applies it (encryption and decryption are the same operation)."""
    try:
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    except ImportError as e:  # pragma: no cover - cryptography is a declared dependency
        raise KeyRequiredError("AES support needs the 'cryptography' package") from e
    c = Cipher(algorithms.AES(bytes(key)), modes.CTR(AES_NONCE)).encryptor()
    return c.update(bytes(data)) + c.finalize()


def parse_key(key: str | bytes | None) -> bytes | None:
    """A 16-byte key from bytes, a 32-digit hex string, or ESP-PPQ's ``0x01, 0x02, ...`` listing."""
    if key is None:
        return None
    if isinstance(key, (bytes, bytearray)):
        raw = bytes(key)
    else:
        text = key.strip().replace(",", " ").replace("0x", " ").replace("0X", " ")
        parts = text.split()
        try:
            if len(parts) == 16:
                raw = bytes(int(p, 16) for p in parts)
            else:
                raw = bytes.fromhex("".join(parts))
        except ValueError:
            raise KeyRequiredError(
                "the AES key must be 32 hex digits (or 16 bytes written as 0x.., 0x.., ...)"
            ) from None
    if len(raw) != 16:
        raise KeyRequiredError(f"the AES key must be 16 bytes (AES-128), got {len(raw)}")
    return raw


def list_entries(blob: memoryview, path: str | None = None) -> tuple[str, list[Entry]]:
    """The container format and the models it holds (one for EDL files)."""
    if len(blob) < 4:
        raise FormatError(f"file is {len(blob)} bytes, too short for a header", field="magic", path=path)
    magic = bytes(blob[:4])
    if magic in MODEL_MAGICS:
        return magic.decode(), [Entry(Path(path).name if path else "model", 0, blob)]
    if magic not in PACKAGE_MAGICS:
        raise FormatError(
            f"unknown magic {magic!r}; expected one of EDL1, EDL2, PDL1, PDL2, PDL3",
            field="magic", path=path,
        )
    fmt = magic.decode()

    def u32(pos: int, field: str) -> int:
        if pos + 4 > len(blob):
            raise FormatError(f"truncated at byte {pos} (file is {len(blob)} bytes)", field=field, path=path)
        return struct.unpack_from("<I", blob, pos)[0]

    if fmt == "PDL3":
        if len(blob) < PDL3_HEADER:
            raise FormatError("truncated PDL3 header", field="header", path=path)
        size = u32(20, "package_size")
        if size != len(blob):
            raise FormatError(f"package_size says {size} bytes but the file has {len(blob)}",
                              field="package_size", path=path)
        stored = bytes(blob[PDL3_SHA_OFFSET:PDL3_SHA_OFFSET + 32])
        zeroed = bytearray(blob)
        zeroed[PDL3_SHA_OFFSET:PDL3_SHA_OFFSET + 32] = bytes(32)
        if hashlib.sha256(zeroed).digest() != stored:
            raise FormatError("SHA-256 does not match the package contents (corrupt or modified file)",
                              field="package_sha256", path=path)
        count, first = u32(56, "model_num"), PDL3_HEADER
    else:
        count, first = u32(4, "model_num"), 8
    if count * 12 + first > len(blob):
        raise FormatError(f"model_num {count} does not fit in the file", field="model_num", path=path)
    entries = []
    for i in range(count):
        base = first + 12 * i
        data_off = u32(base, f"model[{i}].data_offset")
        name_off = u32(base + 4, f"model[{i}].name_offset")
        name_len = u32(base + 8, f"model[{i}].name_length")
        if name_off + name_len > len(blob):
            raise FormatError("name is outside the file", field=f"model[{i}].name", path=path)
        if data_off + 12 > len(blob):
            raise FormatError("data offset is outside the file", field=f"model[{i}].data_offset", path=path)
        name = bytes(blob[name_off:name_off + name_len]).decode("utf-8", errors="replace")
        entries.append(Entry(name, data_off, blob[data_off:]))
    return fmt, entries


def select(entries: list[Entry], model: str | int | None, path: str | None = None) -> Entry:
    names = [e.name for e in entries]
    if not entries:
        raise ModelSelectError(f"{path or 'package'} holds no models")
    if model is None:
        if len(entries) > 1:
            raise ModelSelectError(
                f"{path or 'package'} holds {len(entries)} models; choose one with model=NAME or an index: "
                + ", ".join(f"[{i}] {n}" for i, n in enumerate(names))
            )
        return entries[0]
    if isinstance(model, int) or (isinstance(model, str) and model.isdigit() and model not in names):
        idx = int(model)
        if not 0 <= idx < len(entries):
            raise ModelSelectError(f"index {idx} is out of range: the package holds {len(entries)} models")
        return entries[idx]
    for e in entries:
        if e.name == model:
            return e
    raise ModelSelectError(f"no model named {model!r}; the package holds: {', '.join(names)}")


def unwrap(entry: Entry, key: bytes | None, path: str | None = None) -> tuple[str, int, bytes | memoryview]:
    """(format, mode, FlatBuffer bytes) of one model, decrypted when needed."""
    blob = entry.data
    if len(blob) < 12:
        raise FormatError("model header is truncated", field="header", path=path)
    magic = bytes(blob[:4])
    if magic not in MODEL_MAGICS:
        raise FormatError(f"model magic is {magic!r}, expected EDL1 or EDL2", field="magic", path=path)
    mode, size = struct.unpack_from("<II", blob, 4)
    hdr = 12 if magic == b"EDL1" else 16
    if mode not in (0, 1):
        raise FormatError(f"encryption mode {mode} is unknown (0 plain, 1 AES-128-CTR)", field="mode", path=path)
    if hdr + size > len(blob):
        raise FormatError(
            f"header says the FlatBuffer has {size} bytes but only {len(blob) - hdr} follow the header",
            field="size", path=path,
        )
    fb = blob[hdr:hdr + size]
    if mode == 1:  # (a key given for a plain model is ignored: harmless)
        if key is None:
            raise KeyRequiredError(
                f"{path or 'model'} is AES-128 encrypted: pass its key (--key HEX / key=...)"
            )
        fb = aes_ctr(fb, key)
    return magic.decode(), mode, fb


def wrap_edl2(fb: bytes, key: bytes | None = None) -> bytes:
    """An EDL2 file around a FlatBuffer, encrypted when a key is given."""
    body = aes_ctr(fb, key) if key is not None else fb
    header = b"EDL2" + struct.pack("<II", 1 if key is not None else 0, len(body)) + bytes(4)
    out = header + body
    pad = (-len(out)) % 16
    return out + bytes(pad)


def pack_pdl3(models: list[tuple[str, bytes]], version: str = "v1.0") -> bytes:
    """A PDL3 package of EDL2 models (name, file bytes)."""
    if len(version.encode()) > 15:
        raise FormatError("package version must be at most 15 ASCII characters", field="package_version")
    for name, data in models:
        if data[:4] != b"EDL2":
            raise FormatError(f"{name}: PDL3 holds EDL2 models only (got {bytes(data[:4])!r})", field="magic")
    names = [n.encode("utf-8") for n, _ in models]
    bins = [bytes(d) + bytes((-len(d)) % 16) for _, d in models]
    name_off = PDL3_HEADER + 12 * len(models)
    data_off = (name_off + sum(len(n) for n in names) + 15) & ~15
    entries = b""
    cur_name, cur_data = name_off, data_off
    for n, b in zip(names, bins):
        entries += struct.pack("<III", cur_data, cur_name, len(n))
        cur_name += len(n)
        cur_data += len(b)
    size = data_off + sum(len(b) for b in bins)
    header = b"PDL3" + version.encode().ljust(16, b"\0") + struct.pack("<I", size) + bytes(32)
    header += struct.pack("<I", len(models))
    body = bytearray(header + entries + b"".join(names))
    body += bytes(data_off - len(body))
    body += b"".join(bins)
    assert len(body) == size
    body[PDL3_SHA_OFFSET:PDL3_SHA_OFFSET + 32] = hashlib.sha256(bytes(body)).digest()
    return bytes(body)


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write via a temporary file in the same folder and rename: never a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
