"""``chunkwise quantize``: float ONNX -> .espdl for esp32p4, esp32s3 or c."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer


def quantize(
    model: Annotated[Path, typer.Argument(help="The float ONNX model.", show_default=False)],
    out: Annotated[Path, typer.Option("--output", "-o", help="Where to write the .espdl.")],
    target: Annotated[str, typer.Option("--target", "-t", help="esp32p4, esp32s3, esp32s31 or c.")] = "esp32p4",
    bits: Annotated[int, typer.Option("--bits", help="8 or 16.")] = 8,
    calib: Annotated[Optional[Path], typer.Option("--calib", help="Calibration data: .npy [N, ...input shape], "
                                                  ".npz (one array per input) or a folder of .npy files.")] = None,
    calib_method: Annotated[str, typer.Option("--calib-method", help="kl, minmax, percentile or mse.")] = "kl",
    int16: Annotated[Optional[str], typer.Option("--int16", help="Comma-separated ONNX node names kept in int16 "
                                                 "(mixed precision).")] = None,
    test_input: Annotated[Optional[Path], typer.Option("--test-input", help="Input embedded as the test value: "
                                                       ".npy, or .npz with one array per input (default: the "
                                                       "first calibration sample).")] = None,
    report: Annotated[Optional[Path], typer.Option("--report", help="Write the per-layer report as JSON.")] = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Draw per-layer error as a PNG.")] = None,
    key: Annotated[Optional[str], typer.Option("--key", help="Encrypt the output with this AES-128 key.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as one JSON document.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    min_sqnr: Annotated[Optional[float], typer.Option("--min-sqnr", help="Fail (exit 3, nothing written) when "
                                                      "the output SQNR vs float is below this many dB.")] = None,
) -> None:
    """Calibrate with onnxruntime, quantize with ESP-PPQ's conventions, embed test values, write .espdl.

    Nothing is written when the model cannot be quantized (exit 2) or, with --min-sqnr, when its output
    SQNR is below the bound (exit 3); the input .onnx is never modified. An output SQNR below 10 dB is
    reported on stderr with the worst layer.
    """
    import chunkwise
    from ..errors import ShapeError, VerificationError
    from ..espdl.container import atomic_write
    from ..quant import plot_report
    from ..quant.report import WARN_SQNR_DB, sqnr_problem

    if calib is None:
        raise ShapeError("--calib is required: calibration data (.npy, .npz or a folder of .npy files)")
    x = None
    if test_input is not None:
        if not test_input.is_file():
            raise ShapeError(f"--test-input {test_input} not found")
        if test_input.suffix not in (".npy", ".npz"):
            raise ShapeError(f"--test-input {test_input}: give an .npy or an .npz (one array per input)")
        x = test_input  # loaded like --calib (.npz: one array per input)
    nodes = [n for n in (int16 or "").split(",") if n]
    m = chunkwise.quantize(model, calib, target=target, bits=bits, calib_method=calib_method, int16_nodes=nodes,
                           test_input=x, progress=not (quiet or as_json), warn=False)
    rep = getattr(m, "quant_report", {}) or {}
    if min_sqnr is not None:
        problem = sqnr_problem(rep, min_sqnr)
        if problem:
            raise VerificationError(f"{problem}; nothing written (--min-sqnr {min_sqnr:g})")
    else:
        problem = sqnr_problem(rep, WARN_SQNR_DB)
        if problem:
            typer.echo(f"warning: {problem}", err=True)
    m.save(out, key=key)
    if report is not None:
        atomic_write(report, json.dumps(rep, indent=2).encode())
    if plot is not None:
        plot_report(rep, plot)
    if as_json:
        typer.echo(json.dumps({"model": str(model), "output": str(out), "target": target, "bits": bits,
                               "report": rep}, indent=2))
    else:
        sq = rep.get("output_sqnr_db")
        typer.echo(f"wrote {out} ({target}, {'int' + str(bits)}, {len(m.graph.nodes)} nodes)"
                   + (f"; output SQNR {sq:.1f} dB vs float" if isinstance(sq, (int, float)) else ""))


def register(app: typer.Typer) -> None:
    app.command("quantize")(quantize)
