"""``chunkwise fuzz``: a seeded, deterministic mutation campaign over the reader and the emulator."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer


def fuzz(
    seeds: Annotated[Optional[list[Path]], typer.Argument(
        help="Seed .espdl files or folders (default: tests/fixtures and ../shared/zoo of this checkout).",
        show_default=False)] = None,
    n: Annotated[int, typer.Option("--n", "-n", min=0, help="Number of mutated inputs.")] = 2000,
    seed: Annotated[int, typer.Option("--seed", "-s", help="Random seed: the same seed gives the same inputs.")]
    = 0,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Folder for crashing/hanging inputs and "
                                                "report.json.", file_okay=False)] = None,
    targets: Annotated[str, typer.Option("--targets", help="Comma-separated: read, run, inspect.")] = "read,run",
    timeout: Annotated[float, typer.Option("--timeout", min=0.1, help="Seconds one input may take before it "
                                           "counts as a hang.")] = 10.0,
    workers: Annotated[int, typer.Option("--workers", "-j", min=1, help="Worker processes for run/inspect.")]
    = 2,
    max_bytes: Annotated[int, typer.Option("--max-seed-bytes", min=1, help="Skip seed files larger than this "
                                           "when searching folders.")] = 256 * 1024,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as one JSON document.")] = False,
) -> None:
    """Mutate seed models (bytes and IR) and run each through the reader and `emu test` / `emu run`.

    Exit code 0 iff no input crashed (a traceback or a dead worker) or hung; crashing inputs are saved
    in --out with a note on how to reproduce them.
    """
    from ..errors import ChunkwiseError
    from ..fuzz import default_seed_files, expand_seed_paths, run_campaign

    if seeds:
        files = [p for p in expand_seed_paths(seeds) if not p.is_dir()]
        files = [p for p in files if p.stat().st_size <= max_bytes or p in seeds]
    else:
        repo = Path(__file__).resolve().parents[3]
        files = default_seed_files(repo / "tests" / "fixtures", repo.parent / "shared", max_bytes)
        if not files:
            raise ChunkwiseError("no default seeds found (tests/fixtures of a source checkout): pass seed files")
    report = run_campaign(files, n, seed, [t.strip() for t in targets.split(",") if t.strip()], out_dir=out,
                          timeout=timeout, workers=workers)
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=2))
    else:
        typer.echo(report.render())
    if not report.ok:
        raise typer.Exit(3)


def register(app: typer.Typer) -> None:
    app.command("fuzz")(fuzz)
