"""``chunkwise stream``: convert an offline .espdl into a verified streaming .espdl."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer


def stream(
    model: Annotated[Path, typer.Argument(help="The offline quantized .espdl (ours or ESP-PPQ's).",
                                          show_default=False)],
    out: Annotated[Path, typer.Option("--output", "-o", help="Where to write the streaming .espdl.")],
    chunk: Annotated[int, typer.Option("--chunk", "-c", min=1, help="Frames per chunk (input rate).")],
    frame_axis: Annotated[int, typer.Option("--frame-axis", help="Frame (time) axis in ESP-DL layout "
                                            "(NWC / NHWC: 1).")] = 1,
    table: Annotated[Optional[Path], typer.Option("--table", help="JSON list of manual caches "
                                                  "{var_name, window_size, op_name?, frame_axis?}.")] = None,
    allow_lookahead: Annotated[bool, typer.Option("--allow-lookahead", help="Accept ops that need future "
                                                  "frames: the output is delayed by a declared number of "
                                                  "frames.")] = False,
    no_verify: Annotated[bool, typer.Option("--no-verify", help="Skip the bit-exact streaming-vs-offline "
                                            "check (not recommended).")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the verification input.")] = 0,
    key: Annotated[Optional[str], typer.Option("--key", help="AES-128 key of the input model.",
                                               envvar="CHUNKWISE_KEY")] = None,
    out_key: Annotated[Optional[str], typer.Option("--out-key", help="Encrypt the output with this key.")] = None,
    target: Annotated[Optional[str], typer.Option("--target", "-t", help="esp32p4, esp32s3, esp32s31 or c.")]
    = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as one JSON document.")] = False,
) -> None:
    """Insert StreamingCache nodes so the model takes its input chunk by chunk, verify it, write it."""
    import chunkwise
    from ..convert import load_table
    from ..convert import stream as convert

    m = chunkwise.load(model, key=key, target=target)
    entries = load_table(table) if table is not None else None
    smodel, report = convert(m, chunk, frame_axis=frame_axis, table=entries, allow_lookahead=allow_lookahead,
                             verify=not no_verify, seed=seed)
    smodel.save(out, key=out_key)
    missing = smodel.session().not_compiled  # nodes a session runs on the per-node path, between compiled rows
    if as_json:
        typer.echo(json.dumps({"model": str(model), "output": str(out), "target": m.target, **report.as_dict(),
                               "not_compiled": [{"name": n.name, "op": n.op_type, "reason": r} for n, r in missing]},
                              indent=2))
    else:
        typer.echo(report.render())
        typer.echo("compiled: every node" if not missing else
                   f"compiled: all but {len(missing)} node(s), run per node: "
                   + "; ".join(f"{n.name} ({n.op_type}: {r})" for n, r in missing))
        typer.echo(f"wrote {out}")


def register(app: typer.Typer) -> None:
    app.command("stream")(stream)
