"""``chunkwise emu test`` and ``chunkwise emu run``: bit-exact emulation on the host."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

emu = typer.Typer(help="Run .espdl models in the bit-exact emulator.", no_args_is_help=True)

ModelArg = Annotated[Path, typer.Argument(help="The .espdl model.", show_default=False)]
KeyOpt = Annotated[Optional[str], typer.Option("--key", help="AES-128 key (32 hex digits).", envvar="CHUNKWISE_KEY")]
TargetOpt = Annotated[Optional[str], typer.Option("--target", "-t",
                                                  help="esp32p4, esp32s3, esp32s31 or c (default: from the file).")]
PickOpt = Annotated[Optional[str], typer.Option("--model", "-m", help="Package entry (name or index).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document.")]


@emu.command("test")
def test(model: ModelArg, key: KeyOpt = None, target: TargetOpt = None, pick: PickOpt = None,
         as_json: JsonOpt = False,
         chip_tolerance: Annotated[bool, typer.Option(
             "--chip-tolerance", help="Pass (exit 0) when ESP-DL's own model->test() would: int16 outputs within "
             "+-1, everything else exact. Default: pass only when bit-exact.")] = False) -> None:
    """Run the embedded test inputs and compare with the embedded test outputs (exit 0 iff bit-exact; with
    --chip-tolerance, iff ESP-DL's model->test() would pass)."""
    import chunkwise
    from ..emu.check import check_test_values

    m = chunkwise.load(model, key=key, model=pick, target=target)
    checks = check_test_values(m)
    exact = all(c.bit_exact for c in checks)
    chip = all(c.chip_test for c in checks)
    passed = exact or (chip_tolerance and chip)
    if as_json:
        typer.echo(json.dumps({"model": str(model), "target": m.target, "target_source": m.target_source,
                               "bit_exact": exact, "chip_test_pass": chip,
                               "outputs": [c.as_dict() for c in checks]}, indent=2))
    else:
        for c in checks:
            if c.bit_exact:
                typer.echo(f"{c.name}: bit-exact ({'x'.join(map(str, c.shape))} {c.dtype})")
            else:
                within = " (within the +-1 ESP-DL's model->test() allows for int16)" if c.chip_test else ""
                typer.echo(f"{c.name}: {c.mismatches} mismatches, max |diff| {c.max_abs_diff:g}, "
                           f"first at index {c.first_mismatch}{within}")
        typer.echo(f"{'PASS' if passed else 'FAIL'}: {model} on {m.target}"
                   + (" (within model->test()'s tolerance, not bit-exact)" if passed and not exact else ""))
        if not exact and chip and not chip_tolerance:
            typer.echo("Not bit-exact, but ESP-DL's model->test() on the chip would pass (int16 outputs off by "
                       "at most 1: docs/int16-deviations.md; --chip-tolerance accepts that).")
    if not passed:
        raise typer.Exit(3)


@emu.command("run")
def run(
    model: ModelArg,
    input: Annotated[Optional[Path], typer.Option("--input", "-i", help="X.npy (one input) or X.npz (by name). "
                                                  "Float arrays are quantized, integers used as they are.")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write OUT.npz: NAME (raw integers) "
                                                   "and NAME.float (dequantized).")] = None,
    chunks: Annotated[Optional[int], typer.Option("--chunks", "-n", min=1, help="Streaming: push N chunks "
                                                  "split along the frame axis.")] = None,
    compare: Annotated[Optional[Path], typer.Option("--compare", help="Offline .espdl to check the streaming "
                                                    "outputs against.")] = None,
    frame_axis: Annotated[int, typer.Option("--frame-axis", help="Frame (time) axis of the input.")] = 1,
    delay: Annotated[Optional[int], typer.Option("--delay", help="Frames the streaming output lags the offline "
                                                 "one (default: streaming_delay_frames from the model's metadata, "
                                                 "written by stream --allow-lookahead).")] = None,
    dump: Annotated[Optional[Path], typer.Option("--dump", help="Write every intermediate value as .npy here.")]
    = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="With --compare: PNG of streaming vs offline "
                                                 "outputs over time, chunk boundaries marked.")] = None,
    key: KeyOpt = None,
    target: TargetOpt = None,
    pick: PickOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run a model once, or chunk by chunk (--chunks), optionally checking against an offline model."""
    import numpy as np

    import chunkwise
    from ..emu import io as eio
    from ..errors import ShapeError

    m = chunkwise.load(model, key=key, model=pick, target=target)
    state = {p["input"] for p in json.loads(m.graph.metadata.get("streaming_state", "[]"))}
    names = [v.name for v in m.graph.inputs if v.name not in m.graph.initializers and v.name not in state]
    off = chunkwise.load(compare, key=key, target=m.target) if compare is not None else None
    if off is not None:  # the input is the offline model's (an initial recurrent state included)
        names = [v.name for v in off.graph.inputs if v.name not in off.graph.initializers]
    feeds = eio.read_inputs(input, names) if input is not None else None
    if off is not None:
        from ..emu.streamcheck import verify_streaming

        res = verify_streaming(m, off, feeds, frame_axis=frame_axis, chunks=chunks, delay=delay)
        doc = {"model": str(model), "offline": str(compare), "target": m.target, **res.as_dict()}
        if plot is not None:
            from ..plots import plot_streaming

            plot_streaming(m, off, feeds, res, plot)
            doc["plot"] = str(plot)
        if as_json:
            typer.echo(json.dumps(doc, indent=2))
        else:
            for o, s in res.outputs.items():
                typer.echo(f"{o}: {s['kind']}, {s['checked_chunks']} chunks compared, {s['mismatches']} mismatches")
            if res.bit_exact:
                typer.echo(f"PASS: {res.chunks} chunks of {res.chunk_frames} frames are bit-exact with {compare}")
            else:
                typer.echo(f"FAIL: first mismatching chunk {res.first_bad_chunk}; first differing node "
                           f"{res.first_bad_node!r} (value {res.first_bad_value!r})")
        if not res.bit_exact:
            raise typer.Exit(3)
        return
    if feeds is None:
        if not m.graph.test_inputs:
            raise ShapeError(f"{model} has no embedded test input: pass --input")
        feeds = m.test_feeds()
    if chunks is not None:
        from ..emu.streamcheck import split_chunks

        sess = m.session()
        x = m.prepare_inputs({**sess.state, **feeds}, fixed_shape=False)
        data = sess.input_names  # recurrent state inputs are carried by the session (given: the initial state)
        chunk = sess.shapes[data[0]][frame_axis]
        parts = {k: split_chunks(x[k], chunk, frame_axis, chunks) for k in data}
        first = {k: v for k, v in x.items() if k not in data}
        outs = sess.push_many([{**(first if i == 0 else {}), **{k: parts[k][i] for k in data}}
                               for i in range(chunks)])
        values = outs
    else:
        values = m.run(feeds, intermediates=dump is not None)
        outs = {v.name: values[v.name] for v in m.graph.outputs}
    if dump is not None and chunks is None:
        eio.dump_values(dump, m, values)
    if output is not None:
        eio.write_outputs(output, m, outs)
    if as_json:
        typer.echo(json.dumps({"model": str(model), "target": m.target, "outputs": {
            k: {"shape": list(v.shape), "dtype": str(v.dtype), "min": float(np.min(v)) if v.size else None,
                "max": float(np.max(v)) if v.size else None} for k, v in outs.items()}}, indent=2))
    else:
        for k, v in outs.items():
            typer.echo(f"{k}: {v.dtype} {list(v.shape)}")
        if output is not None:
            typer.echo(f"wrote {output}")


def register(app: typer.Typer) -> None:
    app.add_typer(emu, name="emu")
