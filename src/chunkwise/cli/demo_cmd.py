"""``chunkwise demo``: float TCN -> quantized -> streaming -> verified, on a built-in model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the .onnx, both .espdl files and plots.")]
    = Path("chunkwise-demo"),
    target: Annotated[str, typer.Option("--target", "-t", help="esp32p4, esp32s3, esp32s31 or c.")] = "esp32p4",
    chunk: Annotated[int, typer.Option("--chunk", "-c", min=1, help="Frames per chunk.")] = 3,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the built-in model and its data.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the summary.")] = False,
) -> None:
    """Build, quantize, stream and verify a small causal TCN; no PyTorch and no data needed."""
    from ..demo import render, run_demo
    from ..errors import VerificationError

    res = run_demo(out, target=target, chunk=chunk, seed=seed,
                   say=(lambda s: None) if (quiet or as_json) else (lambda s: typer.echo(s)))
    if as_json:
        typer.echo(json.dumps(res.as_dict(), indent=2))
    else:
        typer.echo(render(res))
    if not res.bit_exact:
        raise VerificationError("the streaming model is not bit-exact with the offline model")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
