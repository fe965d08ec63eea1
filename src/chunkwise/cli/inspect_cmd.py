"""``chunkwise inspect``: what is inside an .espdl file (text table or one JSON document)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import ChunkwiseError, ModelSelectError


def inspect(
    model: Annotated[Path, typer.Argument(help="The .espdl file (EDL1/EDL2 model or PDL1/2/3 package).",
                                          show_default=False)],
    name: Annotated[Optional[str], typer.Option("--model", "-m", help="Package entry to inspect, by name.")] = None,
    index: Annotated[Optional[int], typer.Option("--index", "-i", help="Package entry to inspect, by index.")] = None,
    key: Annotated[Optional[str], typer.Option("--key", help="AES-128 key of an encrypted model (32 hex digits).",
                                               envvar="CHUNKWISE_KEY", show_envvar=True)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document (schema: docs/inspect-json.md).")]
    = False,
    onnx_out: Annotated[Optional[Path], typer.Option("--onnx", help="Also write the graph as ONNX (for Netron).",
                                                     dir_okay=False)] = None,
    target: Annotated[Optional[str], typer.Option("--target", "-t",
                                                  help="Chip the model is for (esp32p4, esp32s3, esp32s31, c); "
                                                       "default: from the file.")] = None,
) -> None:
    """Show a model's inputs, outputs, nodes with shapes and attributes, parameters and memory estimate."""
    import chunkwise
    from ..espdl.inspect import render_text, summarize

    if name is not None and index is not None:
        raise ModelSelectError("give --model NAME or --index I, not both")
    selector = name if name is not None else index
    try:
        m = chunkwise.load(model, key=key, model=selector, target=target)
    except ModelSelectError as e:
        if selector is not None:
            raise
        raise ModelSelectError(f"{e} (use --model NAME or --index I)") from None
    summary = summarize(m)
    if onnx_out is not None:
        from ..espdl.container import atomic_write
        from ..espdl.onnx_export import to_onnx

        shapes = None
        if summary["shapes"]["source"] == "planner":
            shapes = {o["name"]: o["shape"] for n in summary["nodes"] for o in n["outputs"] if o["shape"]}
            shapes.update({v["name"]: v["shape"] for v in summary["inputs"] if v["shape"]})
        proto = to_onnx(m.graph, shapes=shapes)
        try:
            atomic_write(onnx_out, proto.SerializeToString())
        except OSError as e:
            raise ChunkwiseError(f"cannot write {onnx_out}: {e.strerror or e}") from None
        summary["onnx"] = str(onnx_out)
    if as_json:
        typer.echo(json.dumps(summary, indent=2, allow_nan=False))
    else:
        typer.echo(render_text(summary), nl=False)
        if onnx_out is not None:
            typer.echo(f"\nwrote {onnx_out}")


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect)
