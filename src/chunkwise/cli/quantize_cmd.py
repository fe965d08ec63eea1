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
    test_input: Annotated[Optional[Path], typer.Option("--test-input", help="Input embedded as the test value "
                                                       "(default: the first calibration sample).")] = None,
    report: Annotated[Optional[Path], typer.Option("--report", help="Write the per-layer report as JSON.")] = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Draw per-layer error as a PNG.")] = None,
    key: Annotated[Optional[str], typer.Option("--key", help="Encrypt the output with this AES-128 key.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as one JSON document.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Calibrate with onnxruntime, quantize with ESP-PPQ's conventions, embed test values, write .espdl."""
    import numpy as np

    import chunkwise
    from ..errors import ShapeError
    from ..espdl.container import atomic_write
    from ..quant import plot_report

    if calib is None:
        raise ShapeError("--calib is required: calibration data (.npy, .npz or a folder of .npy files)")
    x = None
    if test_input is not None:
        try:
            x = np.load(test_input, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ShapeError(f"cannot read {test_input}: {e}") from None
    nodes = [n for n in (int16 or "").split(",") if n]
    m = chunkwise.quantize(model, calib, target=target, bits=bits, calib_method=calib_method, int16_nodes=nodes,
                           test_input=x, progress=not (quiet or as_json))
    m.save(out, key=key)
    rep = getattr(m, "quant_report", {}) or {}
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
