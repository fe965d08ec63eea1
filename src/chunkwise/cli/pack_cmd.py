"""``chunkwise pack``: several EDL2 models -> one PDL3 package (what ESP-DL's pack_espdl_models.py makes)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated

import typer

from ..errors import ChunkwiseError, FormatError, KeyRequiredError


def pack(
    models: Annotated[list[Path], typer.Argument(help="EDL2 model files, in package order.", show_default=False)],
    out: Annotated[Path, typer.Option("--output", "-o", help="The package file to write.", dir_okay=False,
                                      show_default=False)],
    version: Annotated[str, typer.Option("--version", "-V", help="Package version string (max 15 ASCII chars).")]
    = "v1.0",
) -> None:
    """Pack EDL2 models into one PDL3 package (entries are named by file name; the bytes are kept as is)."""
    from ..espdl.container import atomic_write, list_entries, pack_pdl3
    from ..espdl.reader import read_model_bytes

    if not version.isascii():
        raise FormatError("package version must be ASCII", field="package_version")
    items: list[tuple[str, bytes]] = []
    seen: set[str] = set()
    for p in models:
        try:
            blob = p.read_bytes()
        except FileNotFoundError:
            raise FormatError("no such file", path=str(p)) from None
        except OSError as e:
            raise FormatError(f"cannot read: {e.strerror or e}", path=str(p)) from None
        fmt, _ = list_entries(memoryview(blob), str(p))
        if fmt != "EDL2":
            raise FormatError(f"is a {fmt} file; PDL3 packages hold EDL2 models only", field="magic", path=str(p))
        try:
            read_model_bytes(blob, path=str(p))  # refuse corrupt models now, not on the chip
        except KeyRequiredError:
            pass  # encrypted: packed as is, checked when loaded with its key
        if p.name in seen:
            raise ChunkwiseError(f"two models are named {p.name!r}; entries are selected by name, rename one")
        seen.add(p.name)
        items.append((p.name, blob))
    data = pack_pdl3(items, version)
    try:
        atomic_write(out, data)
    except OSError as e:
        raise ChunkwiseError(f"cannot write {out}: {e.strerror or e}") from None
    typer.echo(f"wrote {out}: PDL3 {version}, {len(items)} model(s), {len(data):,} bytes, "
               f"sha256 {hashlib.sha256(data[:24] + bytes(32) + data[56:]).hexdigest()}")
    for i, (n, b) in enumerate(items):
        typer.echo(f"  [{i}] {n}  ({len(b):,} bytes)")


def register(app: typer.Typer) -> None:
    app.command("pack")(pack)
