"""Model-level reference exports made with ESP-PPQ (the reference quantizer) for small float models.

For each model this writes ``OUT/<model>/``:

- ``model.onnx``            the float model (torch export, opset 13, seeded weights)
- ``calib.npy``             32 seeded calibration samples, shape ``[32, *input_shape[1:]]`` (float32);
                            sample ``i`` is ``calib[i:i+1]``
- ``test_input.npy``        a held-out seeded test input, shape ``input_shape`` (float32)
- ``<target>_s<bits>.espdl`` ESP-PPQ's quantized export with embedded test values for ``test_input``
                            (``export_test_values=True``; ``.json`` kept when small)
- ``<target>_s8_streaming.espdl`` (TCN models only) ESP-PPQ's streaming export
                            (``auto_streaming=True``), no test values (the streaming input shape
                            differs from the offline test input, as in ESP-DL's tutorial)
- ``<target>_s8_streaming_bound.espdl`` the same with caches bound to their Conv/Pool consumer
                            (see ``bind_shared_caches``: works around ESP-PPQ 1.3.12 rewiring a
                            residual Add to a cache output)
- ``meta.json``             input shape, streaming chunk, seed, versions, and ESP-PPQ failures if any

Models: ``tcn_tutorial`` (the TCN of ESP-DL's how_to_deploy_streaming_model tutorial, same
structure, names and hyper-parameters), ``dscnn_kws`` (small DS-CNN keyword spotter on a
[1,1,49,10] time x MFCC input), ``cnn2d`` (a small image CNN), ``tcn_rand{0,1,2}`` (seeded random
causal TCNs). Targets: esp32p4 and esp32s3, int8 for all, int16 also for the TCNs.

ESP-PPQ and torch are NOT dependencies of chunkwise. Reproduce in a separate venv::

    python3.11 -m venv /work/ppqvenv
    /work/ppqvenv/bin/pip install torch==2.13.0          # CPU wheel; install torch FIRST
    /work/ppqvenv/bin/pip install esp-ppq==1.3.12 onnx onnxruntime numpy
    /work/ppqvenv/bin/pip install -e .                    # chunkwise, for the built-in check
    /work/ppqvenv/bin/python tools/make_ppq_refs.py --out tests/fixtures/ppq_refs

``--models a,b`` regenerates only some models. After export each quantized model is loaded with
``chunkwise.load`` and its embedded test values are checked by the emulator (reported, not fatal).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import traceback
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

N_CALIB = 32
OPSET = 13
KEEP_SIDE_FILE = 24_000  # keep ESP-PPQ's .json beside an export when at most this many bytes


# ----------------------------------------------------------------------------------------------
# (a) the tutorial TCN (examples/tutorial/how_to_deploy_streaming_model/quantize_streaming_model/
#     models.py in esp-dl): same layers, module names and hyper-parameters, written anew here.
# ----------------------------------------------------------------------------------------------
class CausalDSConv1d(nn.Module):
    """Left-padded depthwise conv -> ReLU -> pointwise conv -> BatchNorm -> ReLU."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.pad = (kernel_size - 1) * dilation
        self.depthwise = nn.Conv1d(in_ch, in_ch, kernel_size, stride=stride, dilation=dilation, groups=in_ch)
        self.pointwise = nn.Conv1d(in_ch, out_ch, 1)
        self.batchnorm = nn.BatchNorm1d(out_ch)

    def forward(self, x):
        x = F.relu(self.depthwise(F.pad(x, (self.pad, 0))))
        return F.relu(self.batchnorm(self.pointwise(x)))


class CausalAvgPool1d(nn.Module):
    def __init__(self, kernel_size: int):
        super().__init__()
        self.k = kernel_size

    def forward(self, x):
        return F.avg_pool1d(F.pad(x, (self.k - 1, 0)), self.k, stride=1)


class TutorialTCN(nn.Module):
    def __init__(self, in_channels=16, expand_channels=32, out_channels=16, kernel_size=3, stride=1,
                 dilation=2, output_frame_size=3):
        super().__init__()
        e = expand_channels
        self.prev_conv = nn.Conv1d(in_channels, e, 1)
        self.layer = nn.Sequential(
            CausalDSConv1d(e, e, kernel_size, stride, 1), nn.SiLU(),
            CausalDSConv1d(e, e, kernel_size, stride, dilation), nn.SiLU(),
            CausalDSConv1d(e, e, kernel_size, stride, 1), nn.SiLU(),
        )
        self.avgpool = CausalAvgPool1d(kernel_size)
        self.out_conv = nn.Conv1d(e, out_channels, 1)
        self.output_frame_size = output_frame_size
        self.linear = nn.Linear(out_channels * output_frame_size, out_channels)

    def forward(self, x):
        x = self.prev_conv(x)
        x = x + self.layer(x)
        x = self.out_conv(self.avgpool(x))
        x = x[:, :, -self.output_frame_size:]
        return self.linear(torch.flatten(x, 1))


# ----------------------------------------------------------------------------------------------
# (b) DS-CNN keyword spotting on [1, 1, T=49, F=10] (time x MFCC), NCHW
# ----------------------------------------------------------------------------------------------
class DSBlock2d(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.dw = nn.Conv2d(ch, ch, 3, padding=1, groups=ch, bias=False)
        self.bn1 = nn.BatchNorm2d(ch)
        self.pw = nn.Conv2d(ch, ch, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(ch)

    def forward(self, x):
        x = F.relu(self.bn1(self.dw(x)))
        return F.relu(self.bn2(self.pw(x)))


class DSCNN(nn.Module):
    def __init__(self, ch: int = 24, n_blocks: int = 3, n_classes: int = 12):
        super().__init__()
        self.stem = nn.Conv2d(1, ch, (10, 4), stride=(2, 2), padding=(5, 1))
        self.bn = nn.BatchNorm2d(ch)
        self.blocks = nn.Sequential(*[DSBlock2d(ch) for _ in range(n_blocks)])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(ch, n_classes)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        x = self.blocks(x)
        return self.fc(torch.flatten(self.pool(x), 1))


# ----------------------------------------------------------------------------------------------
# (c) a small 2-D CNN [1, 3, 24, 24]: conv/relu/maxpool, a residual add, concat, GAP, FC
# ----------------------------------------------------------------------------------------------
class SmallCNN(nn.Module):
    def __init__(self, n_classes: int = 10):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, stride=1, padding=1)
        self.c2 = nn.Conv2d(16, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.c3a = nn.Conv2d(16, 8, 1)
        self.c3b = nn.Conv2d(16, 8, 3, padding=1)
        self.c4 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.fc = nn.Linear(32, n_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.c1(x)), 2)
        x = x + F.relu(self.bn2(self.c2(x)))
        x = torch.cat([F.relu(self.c3a(x)), torch.sigmoid(self.c3b(x))], dim=1)
        x = F.relu(self.c4(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# ----------------------------------------------------------------------------------------------
# (d) seeded random causal TCNs [1, C, T] -> [1, C_out, T] (all convs causal: streamable)
# ----------------------------------------------------------------------------------------------
class RandTCNBlock(nn.Module):
    def __init__(self, ch: int, k: int, d: int, act: str, residual: bool):
        super().__init__()
        self.pad = (k - 1) * d
        self.act = act
        self.residual = residual
        self.dw = nn.Conv1d(ch, ch, k, dilation=d, groups=ch)
        if act == "gate":  # WaveNet gate: tanh(a) * sigmoid(b)
            self.pa = nn.Conv1d(ch, ch, 1)
            self.pb = nn.Conv1d(ch, ch, 1)
        else:
            self.pw = nn.Conv1d(ch, ch, 1)
            if act == "sigmoid_gate":  # x * sigmoid(g(x))
                self.g = nn.Conv1d(ch, ch, 1)

    def forward(self, x):
        y = self.dw(F.pad(x, (self.pad, 0)))
        if self.act == "gate":
            y = torch.tanh(self.pa(y)) * torch.sigmoid(self.pb(y))
        elif self.act == "sigmoid_gate":
            y = self.pw(y)
            y = y * torch.sigmoid(self.g(y))
        elif self.act == "relu":
            y = F.relu(self.pw(y))
        else:  # silu
            y = F.silu(self.pw(y))
        return x + y if self.residual else y


class RandTCN(nn.Module):
    def __init__(self, c_in: int, hidden: int, c_out: int, blocks: list[dict], pool: int):
        super().__init__()
        self.inp = nn.Conv1d(c_in, hidden, 1)
        self.blocks = nn.Sequential(*[RandTCNBlock(hidden, **b) for b in blocks])
        self.pool = pool
        self.out = nn.Conv1d(hidden, c_out, 1)

    def forward(self, x):
        x = self.blocks(F.relu(self.inp(x)))
        if self.pool > 1:
            x = F.avg_pool1d(F.pad(x, (self.pool - 1, 0)), self.pool, stride=1)
        return self.out(x)


def rand_tcn_spec(seed: int) -> dict:
    rng = np.random.default_rng(1000 + seed)
    blocks = []
    for _ in range(int(rng.integers(2, 5))):
        blocks.append(dict(k=int(rng.choice([2, 3, 5])), d=int(rng.choice([1, 2, 4])),
                           act=str(rng.choice(["relu", "gate", "sigmoid_gate", "silu"])),
                           residual=bool(rng.integers(0, 2))))
    chunk = int(rng.choice([1, 2, 4]))
    return dict(c_in=int(rng.choice([4, 8, 12])), hidden=int(rng.choice([8, 16, 24])),
                c_out=int(rng.choice([4, 8])), blocks=blocks, pool=int(rng.choice([1, 2, 3])),
                T=int(rng.choice([16, 20, 24, 32])) // chunk * chunk, chunk=chunk)


def randomize_bn(model: nn.Module, gen: torch.Generator) -> None:
    """Seeded non-trivial BatchNorm statistics (a fresh BN is the identity)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(0.2 * torch.randn(n, generator=gen))
            m.running_var.copy_(0.5 + torch.rand(n, generator=gen))
            m.weight.data.copy_(0.8 + 0.4 * torch.rand(n, generator=gen))
            m.bias.data.copy_(0.1 * torch.randn(n, generator=gen))


def build(name: str):
    """-> (module, input_shape, quant list [(target, bits)], streaming dict or None, seed)."""
    p4s3 = ["esp32p4", "esp32s3"]
    if name == "tcn_tutorial":
        seed = 1
        torch.manual_seed(seed)
        m = TutorialTCN()
        # the tutorial's manual cache entries: the Slice keeps the last 3 frames of out_conv's output
        # (+ a window-1 entry on the Slice output, whose layout Transpose auto-streaming can't place)
        table = [("/out_conv/Conv_output_0", m.output_frame_size - 1, None), ("PPQ_Variable_0", 1, "/Slice"),
                 ("/Slice_output_0", 1, None)]
        return (m, [1, 16, 24], [(t, b) for t in p4s3 for b in (8, 16)],
                dict(shape=[1, 16, 3], table=table), seed)
    if name == "dscnn_kws":
        seed = 2
        torch.manual_seed(seed)
        return DSCNN(), [1, 1, 49, 10], [(t, 8) for t in p4s3], None, seed
    if name == "cnn2d":
        seed = 3
        torch.manual_seed(seed)
        return SmallCNN(), [1, 3, 24, 24], [(t, 8) for t in p4s3], None, seed
    if name.startswith("tcn_rand"):
        k = int(name[len("tcn_rand"):])
        seed = 10 + k
        spec = rand_tcn_spec(k)
        torch.manual_seed(seed)
        m = RandTCN(spec["c_in"], spec["hidden"], spec["c_out"], spec["blocks"], spec["pool"])
        m.spec = spec
        return (m, [1, spec["c_in"], spec["T"]], [(t, b) for t in p4s3 for b in (8, 16)],
                dict(shape=[1, spec["c_in"], spec["chunk"]], table=[]), seed)
    raise SystemExit(f"unknown model {name}")


MODELS = ["tcn_tutorial", "dscnn_kws", "cnn2d", "tcn_rand0", "tcn_rand1", "tcn_rand2"]


def bind_shared_caches(graph):
    """Streaming custom pass (workaround): a cached variable that also feeds other ops (e.g. the
    input of a residual block) gets its StreamingCache bound to the Conv/Pool that needs it.

    ESP-PPQ 1.3.12's AutoStreamingPattern registers caches per variable with no consumer, and
    insert_streaming_cache_op then rewires EVERY consumer of the variable to the cache output
    ([window-1+chunk] frames), so a residual Add gets mismatched shapes. Naming the consumer makes
    ESP-PPQ insert the cache before that op only (its own insert_op_before path)."""
    from esp_ppq.parser.espdl.espdl_streaming import (
        CONV_STREAMING_OP_SET,
        StreamingTable,
        get_conv_cache_window_size,
    )

    table = StreamingTable()
    for op in graph.topological_sort():
        if op.type in CONV_STREAMING_OP_SET:
            var = op.inputs[0]
            if var.name not in table.get_table() and len(var.dest_ops) > 1:
                window = get_conv_cache_window_size(op)
                if window > 1:
                    table.add(var.name, op.name, window)
    return None


def quantize(onnx_path: Path, dest: Path, input_shape, calib, test_input, target, bits, *,
             streaming=None, bind=False) -> None:
    from esp_ppq.api import espdl_quantize_onnx, insert_streaming_cache_on_var

    with tempfile.TemporaryDirectory() as tmp:
        # espdl_quantize_onnx overwrites its input with the simplified model: give it a copy
        src = Path(tmp) / "model.onnx"
        shutil.copy(onnx_path, src)
        out = Path(tmp) / dest.name
        kw = {}
        if streaming is not None:
            table = [insert_streaming_cache_on_var(v, w, op) if op else insert_streaming_cache_on_var(v, w)
                     for v, w, op in streaming["table"]]
            kw = dict(auto_streaming=True, streaming_input_shape=streaming["shape"],
                      streaming_table=table or None,
                      streaming_custom_passes=[bind_shared_caches] if bind else None)
        espdl_quantize_onnx(
            onnx_import_file=str(src), espdl_export_file=str(out),
            calib_dataloader=[torch.from_numpy(calib[i:i + 1]) for i in range(len(calib))],
            calib_steps=len(calib), input_shape=input_shape,
            inputs=[torch.from_numpy(test_input)], target=target, num_of_bits=bits,
            device="cpu", error_report=False, skip_export=False, export_config=True,
            export_test_values=streaming is None, verbose=0,
            metadata_props={"target": target}, **kw)
        shutil.copy(out, dest)
        side = out.with_suffix(".json")
        if side.exists() and side.stat().st_size <= KEEP_SIDE_FILE:
            shutil.copy(side, dest.with_suffix(".json"))


def check(path: Path) -> str:
    try:
        import warnings

        import chunkwise
        from chunkwise.emu.check import check_test_values

        warnings.simplefilter("ignore")
        checks = check_test_values(chunkwise.load(path))
        bad = [c for c in checks if not c.bit_exact]
        return "bit-exact" if not bad else "; ".join(f"{c.name}: {c.mismatches} off" for c in bad)
    except Exception as e:  # the emulator may not support every op yet
        return f"{type(e).__name__}: {str(e)[:160]}"


def check_streaming(d: Path, fname: str, target: str) -> str:
    """Push the test input chunk by chunk through the streaming export and compare with the
    emulated offline int8 export (same calibration, so the same exponents): informational."""
    try:
        import warnings

        import chunkwise

        warnings.simplefilter("ignore")
        off = chunkwise.load(d / f"{target}_s8.espdl")
        st = chunkwise.load(d / fname)
        feeds = off.test_feeds()
        (name, x), = feeds.items()
        want = off.run(feeds)
        sess = st.session()
        chunk = sess.shapes[sess.input_names[0]][1]
        outs = [sess.push(x[:, i:i + chunk]) for i in range(0, x.shape[1] - chunk + 1, chunk)]
        res = []
        for k, w in want.items():
            got = np.concatenate([o[list(o)[0]] for o in outs], axis=1) if w.ndim == 3 else outs[-1][list(outs[-1])[0]]
            w = w if w.ndim != 3 else w[:, :got.shape[1]]
            res.append("streaming == offline" if np.array_equal(got.reshape(w.shape), w)
                       else f"streaming != offline ({int((got.reshape(w.shape) != w).sum())} differ)")
        return "; ".join(res)
    except Exception as e:
        return f"streaming check: {type(e).__name__}: {str(e)[:200]}"


def make(name: str, root: Path) -> dict:
    import importlib.metadata

    model, input_shape, quants, streaming, seed = build(name)
    randomize_bn(model, torch.Generator().manual_seed(seed))
    model.eval()
    d = root / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    calib = rng.standard_normal((N_CALIB, *input_shape[1:])).astype(np.float32)
    test_input = rng.standard_normal(input_shape).astype(np.float32)
    np.save(d / "calib.npy", calib)
    np.save(d / "test_input.npy", test_input)
    with torch.no_grad():
        torch.onnx.export(model, (torch.zeros(input_shape),), str(d / "model.onnx"), opset_version=OPSET,
                          input_names=["input"], output_names=["output"], do_constant_folding=True,
                          dynamo=False)
    meta = dict(model=name, seed=seed, input_shape=input_shape, opset=OPSET, n_calib=N_CALIB,
                esp_ppq=importlib.metadata.version("esp-ppq"), torch=torch.__version__,
                spec=getattr(model, "spec", None), exports={}, failures={})
    jobs = [(f"{t}_s{b}.espdl", t, b, None, False) for t, b in quants]
    if streaming is not None:
        meta["streaming_input_shape"] = streaming["shape"]
        meta["streaming_table"] = streaming["table"]
        for t in ("esp32p4", "esp32s3"):
            jobs.append((f"{t}_s8_streaming.espdl", t, 8, streaming, False))
            jobs.append((f"{t}_s8_streaming_bound.espdl", t, 8, streaming, True))
    for fname, t, b, st, bind in jobs:
        try:
            quantize(d / "model.onnx", d / fname, input_shape, calib, test_input, t, b, streaming=st, bind=bind)
            meta["exports"][fname] = check_streaming(d, fname, t) if st else check(d / fname)
        except Exception as e:
            meta["failures"][fname] = f"{type(e).__name__}: {e}"
            traceback.print_exc()
        print(f"{name}/{fname}: {meta['exports'].get(fname) or meta['failures'].get(fname)}", flush=True)
    (d / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("tests/fixtures/ppq_refs"))
    ap.add_argument("--models", default=",".join(MODELS))
    args = ap.parse_args()
    torch.set_num_threads(1)
    for name in [m for m in args.models.split(",") if m]:
        make(name, args.out)
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"{args.out}: {size / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
