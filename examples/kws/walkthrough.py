"""Keyword spotting, from a float model to a verified streaming .espdl for esp32s3 and esp32p4.

A DS-CNN over time x MFCC features (49 frames x 10 coefficients), made causal in time so it can run one
frame at a time: every conv pads only the past on the time axis, and the head looks at the last 8 frames
(Slice -> GlobalAveragePool -> Flatten -> Gemm). The float model is built with onnx.helper and seeded
weights (no PyTorch needed); `--torch` builds the same network in PyTorch and exports it instead.

    python examples/kws/walkthrough.py --out kws-out

Each step is also one CLI command; the script prints them as it goes.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FRAMES, MFCC, CLASSES, TAIL = 49, 10, 12, 8


def build_kws_onnx(seed: int = 0, channels: int = 32) -> onnx.ModelProto:
    """Causal DS-CNN, NCHW input [1, 1, 49, 10]: conv -> 2 depthwise-separable blocks -> tail head."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def const(name, value, dtype=np.float32):
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def conv(name, x, cin, cout, k, dil=(1, 1), group=1):
        kt, kf = k
        pt = dil[0] * (kt - 1)  # causal in time: pad only the past
        pf = dil[1] * (kf - 1) // 2
        w = rng.standard_normal((cout, cin // group, kt, kf)) * np.sqrt(2.0 / (cin // group * kt * kf))
        out = f"{name}_out"
        nodes.append(helper.make_node("Conv", [x, const(f"{name}.w", w), const(f"{name}.b", rng.standard_normal(cout) * 0.05)],
                                      [out], name=name, kernel_shape=[kt, kf], dilations=list(dil), group=group,
                                      pads=[pt, pf, 0, pf], strides=[1, 1]))
        relu = f"{name}_relu"
        nodes.append(helper.make_node("Relu", [out], [relu], name=f"{name}/Relu"))
        return relu

    x = conv("conv0", "mfcc", 1, channels, (3, 3))
    for i, d in enumerate((1, 2)):
        x = conv(f"dw{i}", x, channels, channels, (3, 3), dil=(d, 1), group=channels)
        x = conv(f"pw{i}", x, channels, channels, (1, 1))
    starts = const("tail.starts", [-TAIL], np.int64)
    ends = const("tail.ends", [FRAMES], np.int64)
    axes = const("tail.axes", [2], np.int64)
    nodes.append(helper.make_node("Slice", [x, starts, ends, axes], ["tail"], name="tail/Slice"))
    nodes.append(helper.make_node("GlobalAveragePool", ["tail"], ["pooled"], name="head/GAP"))
    nodes.append(helper.make_node("Flatten", ["pooled"], ["flat"], name="head/Flatten", axis=1))
    w = rng.standard_normal((CLASSES, channels)) * np.sqrt(1.0 / channels)
    nodes.append(helper.make_node("Gemm", ["flat", const("fc.w", w), const("fc.b", np.zeros(CLASSES))], ["logits"],
                                  name="head/Gemm", transB=1))
    graph = helper.make_graph(nodes, "kws_dscnn",
                              [helper.make_tensor_value_info("mfcc", TensorProto.FLOAT, [1, 1, FRAMES, MFCC])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, CLASSES])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="kws-example")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def build_kws_torch(path: Path, seed: int = 0, channels: int = 32) -> None:  # pragma: no cover - optional
    """The same network in PyTorch, exported to ONNX (needs torch)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)

    class CausalConv(nn.Module):
        def __init__(self, cin, cout, k, dil=(1, 1), groups=1):
            super().__init__()
            self.pad = (dil[1] * (k[1] - 1) // 2, dil[1] * (k[1] - 1) // 2, dil[0] * (k[0] - 1), 0)
            self.conv = nn.Conv2d(cin, cout, k, dilation=dil, groups=groups)

        def forward(self, x):
            return torch.relu(self.conv(nn.functional.pad(x, self.pad)))

    class KWS(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(CausalConv(1, channels, (3, 3)),
                                      CausalConv(channels, channels, (3, 3), groups=channels),
                                      CausalConv(channels, channels, (1, 1)),
                                      CausalConv(channels, channels, (3, 3), (2, 1), groups=channels),
                                      CausalConv(channels, channels, (1, 1)))
            self.fc = nn.Linear(channels, CLASSES)

        def forward(self, x):
            y = self.body(x)[:, :, -TAIL:, :]
            return self.fc(y.mean(dim=(2, 3)))

    torch.onnx.export(KWS().eval(), torch.zeros(1, 1, FRAMES, MFCC), str(path), opset_version=17,
                      input_names=["mfcc"], output_names=["logits"])


def features(n: int, seed: int) -> np.ndarray:
    """MFCC-like features: smooth in time and frequency, decaying with the coefficient index."""
    rng = np.random.default_rng(seed)
    raw = rng.standard_normal((n, 1, FRAMES + 4, MFCC))
    smooth = sum(raw[:, :, i:i + FRAMES, :] for i in range(5)) / np.sqrt(5)
    return (smooth * np.linspace(2.0, 0.3, MFCC)).astype(np.float32)


def sh(*args: str) -> str:
    print("$ chunkwise " + " ".join(args), flush=True)
    res = subprocess.run([sys.executable, "-m", "chunkwise", *args], capture_output=True, text=True)
    print(res.stdout.rstrip())
    if res.stderr.strip():
        print(res.stderr.rstrip())
    if res.returncode:
        raise SystemExit(f"chunkwise {args[0]} failed with exit code {res.returncode}")
    return res.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="kws-out")
    ap.add_argument("--torch", action="store_true", help="build the float model with PyTorch")
    ap.add_argument("--chunk", type=int, default=1, help="MFCC frames per streaming step")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / "kws.onnx"
    if args.torch:
        build_kws_torch(onnx_path)
    else:
        onnx.save(build_kws_onnx(), str(onnx_path))
    np.save(out / "calib.npy", features(64, seed=1)[:, 0:1])
    np.save(out / "test.npy", features(1, seed=2)[0])
    print(f"float model: {onnx_path}; calibration: 64 samples of [1, {FRAMES}, {MFCC}]\n")
    for target in ("esp32s3", "esp32p4"):
        offline = out / f"kws_{target}.espdl"
        streaming = out / f"kws_{target}_stream.espdl"
        sh("quantize", str(onnx_path), "-o", str(offline), "--target", target, "--calib", str(out / "calib.npy"),
           "--test-input", str(out / "test.npy"), "--plot", str(out / f"quant_{target}.png"), "--quiet")
        sh("emu", "test", str(offline))
        sh("stream", str(offline), "-o", str(streaming), "--chunk", str(args.chunk))
        sh("emu", "run", str(streaming), "--compare", str(offline), "--plot", str(out / f"stream_{target}.png"))
        print()


if __name__ == "__main__":
    main()
