"""Build the model-family corpus: small float ONNX models exported by PyTorch, as users export them.

The quantizer (issue 13), the streaming converter (issue 14) and the speed work are measured on these
models. Each model is written to ``OUT/<name>/`` (default ``tests/fixtures/corpus``):

- ``model.onnx``   the float model, ``torch.onnx.export(..., opset_version=13, dynamo=False,
                   input_names=["input"], output_names=["output"])`` (the classic exporter, seeded weights,
                   seeded non-trivial BatchNorm statistics);
- ``calib.npy``    32 calibration samples, float32 ``[32, *input shape without batch]``: sinusoid mixtures
                   plus smoothed noise along the frame axis (not white N(0, 1));
- ``heldout.npy``  one held-out sample (batch 1, the input shape) from another seed;
  models with several inputs have ``calib.npz`` / ``heldout.npz`` instead (one array per input name,
  same shape convention);
- ``meta.json``    family, input layout, frame axis, whether the model can stream (and why not), the ONNX
                   operator types, inputs/outputs with shapes, parameter count, seeds, versions, and the
                   max |onnxruntime - torch| on the held-out input.

Dev-only (torch is never a dependency of chunkwise). Reproduce in a separate venv::

    python3 -m venv /work/devvenv && . /work/devvenv/bin/activate && pip install --upgrade pip
    pip install torch==2.13.0 && pip install esp-ppq onnx onnxruntime onnxscript
    python tools/make_corpus.py                       # all models
    python tools/make_corpus.py --models wavenet,crn2d

Every export is checked: onnxruntime runs it on the held-out input and must match torch (the script
fails otherwise). The output is deterministic: same seeds, same files.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn

N_CALIB = 32
OPSET = 13
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "tests" / "fixtures" / "corpus"


# ================================================================================================
# signals: what calibration data looks like in practice (feature frames, audio), seeded
# ================================================================================================

def _smooth(rng: np.random.Generator, shape: tuple[int, ...], width: int) -> np.ndarray:
    """White noise low-passed along the last axis by a ``width``-tap moving average (unit variance)."""
    n = rng.standard_normal((*shape[:-1], shape[-1] + width - 1))
    c = np.cumsum(n, axis=-1)
    c = np.concatenate([np.zeros((*shape[:-1], 1)), c], axis=-1)
    out = (c[..., width:] - c[..., :-width]) / np.sqrt(width)
    return out


def feature_frames(rng: np.random.Generator, n: int, channels: int, frames: int) -> np.ndarray:
    """``[n, channels, frames]`` feature-like frames: per-channel offset, a slow envelope, 2-4 sinusoids
    with random frequencies and phases, and smoothed noise; roughly unit scale, a few outliers to 3-4."""
    t = np.arange(frames)
    out = np.empty((n, channels, frames))
    for i in range(n):
        offset = rng.normal(0.0, 0.6, (channels, 1)) * np.linspace(1.5, 0.3, channels)[:, None]
        k = int(rng.integers(2, 5))
        freq = rng.uniform(0.01, 0.25, k)
        amp = rng.uniform(0.2, 1.0, (channels, k))
        phase = rng.uniform(0, 2 * np.pi, (channels, k))
        tone = (amp[:, :, None] * np.sin(2 * np.pi * freq[None, :, None] * t + phase[:, :, None])).sum(1)
        envelope = 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.005, 0.03) * t + rng.uniform(0, 2 * np.pi))
        noise = 0.5 * _smooth(rng, (channels, frames), int(rng.integers(2, 6)))
        x = offset + envelope * tone / np.sqrt(k) + noise
        out[i] = x * rng.uniform(0.6, 1.4)
    return out


def audio(rng: np.random.Generator, n: int, samples: int) -> np.ndarray:
    """``[n, samples]`` waveform-like: a few partials with a decaying/swelling envelope plus a little
    low-passed noise, peak about 0.5-0.95."""
    t = np.arange(samples)
    out = np.empty((n, samples))
    for i in range(n):
        k = int(rng.integers(3, 6))
        f0 = rng.uniform(0.01, 0.06)
        partials = f0 * np.arange(1, k + 1) * rng.uniform(0.97, 1.03, k)
        amp = rng.uniform(0.2, 1.0, k) / np.arange(1, k + 1)
        phase = rng.uniform(0, 2 * np.pi, k)
        x = (amp[:, None] * np.sin(2 * np.pi * partials[:, None] * t + phase[:, None])).sum(0)
        x *= np.exp(-t / rng.uniform(samples / 2, 4 * samples)) * (0.7 + 0.3 * np.sin(2 * np.pi * t / samples))
        x += 0.05 * _smooth(rng, (samples,), 3)
        out[i] = x / np.abs(x).max() * rng.uniform(0.5, 0.95)
    return out


def hidden_state(rng: np.random.Generator, n: int, shape: tuple[int, ...]) -> np.ndarray:
    """A recurrent state as a GRU leaves it: values in (-1, 1), smooth over the hidden units."""
    return 0.8 * np.tanh(_smooth(rng, (n, *shape), 3))


# ================================================================================================
# model families
# ================================================================================================

@dataclass
class Spec:
    """One corpus model: the module, its inputs and how to make their data, and what meta.json says."""

    module: nn.Module
    inputs: list[tuple[str, list[int]]]        # ONNX input names and shapes (batch 1)
    outputs: list[str]
    make_data: object                          # (rng, n) -> {input name: float array [n, *shape[1:]]}
    family: str
    input_layout: str
    frame_axis_onnx: int | None                # frame (time) axis of the first input, ONNX layout
    output_frame_axis: int | None              # frame axis of the first output; None: a tail head
    streamable: bool
    notes: str
    why_not: str = ""
    min_chunk: int = 1                         # smallest input chunk (frames) it streams with: the time strides
    output_rate: tuple | None = (1, 1)         # output frames per input frame (num, den); None: a tail head
    output_offset: int = 0                     # input frames consumed before the first output frame ("valid")
    extra: dict = field(default_factory=dict)


def _feat(channels: int, frames: int, layout: str):
    """Data maker for a single feature input; layout NCW ([C, T]), NWC ([T, C]) or NCHW_TF ([1, T, F])."""

    def make(rng, n):
        x = feature_frames(rng, n, channels, frames)
        if layout == "NWC":
            x = x.transpose(0, 2, 1)
        elif layout == "NCHW_TF":
            x = x.transpose(0, 2, 1)[:, None]
        return {"input": x.astype(np.float32)}

    return make


def randomize_bn(model: nn.Module, gen: torch.Generator) -> None:
    """A fresh BatchNorm is the identity; give it seeded running statistics and affine parameters."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            m.running_mean.copy_(0.3 * torch.randn(c, generator=gen))
            m.running_var.copy_(0.4 + torch.rand(c, generator=gen))
            m.weight.data.copy_(0.7 + 0.6 * torch.rand(c, generator=gen))
            m.bias.data.copy_(0.1 * torch.randn(c, generator=gen))
        elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
            m.weight.data.copy_(0.7 + 0.6 * torch.rand(m.weight.shape, generator=gen))
            m.bias.data.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))


class CausalConv1d(nn.Module):
    """``F.pad`` left by ``(k-1)*d`` then an unpadded Conv1d: output frame t sees input frames <= t."""

    def __init__(self, cin, cout, k, stride=1, dilation=1, groups=1, bias=True):
        super().__init__()
        self.left = (k - 1) * dilation
        self.conv = nn.Conv1d(cin, cout, k, stride=stride, dilation=dilation, groups=groups, bias=bias)

    def forward(self, x):
        return self.conv(F.pad(x, (self.left, 0)))


class ChopConv1d(nn.Module):
    """The other way people write a causal conv: symmetric padding (k-1)*d, then drop the last frames."""

    def __init__(self, cin, cout, k, dilation=1, bias=True):
        super().__init__()
        self.chop = (k - 1) * dilation
        self.conv = nn.Conv1d(cin, cout, k, padding=self.chop, dilation=dilation, bias=bias)

    def forward(self, x):
        return self.conv(x)[:, :, :-self.chop]


# ---- KWS DS-CNN: 2-D time x MFCC, offline classifier ---------------------------------------------
class DSConvBlock2d(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.dw = nn.Conv2d(ch, ch, 3, padding=1, groups=ch, bias=False)
        self.bn_dw = nn.BatchNorm2d(ch)
        self.pw = nn.Conv2d(ch, ch, 1, bias=False)
        self.bn_pw = nn.BatchNorm2d(ch)

    def forward(self, x):
        return F.relu(self.bn_pw(self.pw(F.relu(self.bn_dw(self.dw(x))))))


class KwsDSCNN(nn.Module):
    def __init__(self, ch=32, blocks=3, classes=12):
        super().__init__()
        self.stem = nn.Conv2d(1, ch, (5, 3), stride=(2, 1), padding=(2, 1), bias=False)
        self.bn = nn.BatchNorm2d(ch)
        self.blocks = nn.Sequential(*[DSConvBlock2d(ch) for _ in range(blocks)])
        self.fc = nn.Linear(ch, classes)

    def forward(self, x):
        x = self.blocks(F.relu(self.bn(self.stem(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# ---- TC-ResNet: MFCC bins as channels, strided residual blocks, last-frame head ------------------
class TCResBlock(nn.Module):
    def __init__(self, cin, cout, k=9, stride=2):
        super().__init__()
        self.conv1 = CausalConv1d(cin, cout, k, stride=stride, bias=False)
        self.bn1 = nn.BatchNorm1d(cout)
        self.conv2 = CausalConv1d(cout, cout, k, bias=False)
        self.bn2 = nn.BatchNorm1d(cout)
        self.short = nn.Conv1d(cin, cout, 1, stride=stride, bias=False)
        self.bn_s = nn.BatchNorm1d(cout)

    def forward(self, x):
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(y + self.bn_s(self.short(x)))


class TCResNet(nn.Module):
    def __init__(self, cin=40, widths=(12, 16, 24), classes=12):
        super().__init__()
        self.stem = ChopConv1d(cin, widths[0], 3)
        self.blocks = nn.Sequential(*[TCResBlock(a, b) for a, b in zip(widths[:-1], widths[1:])])
        self.fc = nn.Linear(widths[-1], classes)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.fc(x[:, :, -1])


# ---- WaveNet: gated dilated causal stack, residual + skip sum ------------------------------------
class GatedLayer(nn.Module):
    def __init__(self, ch, skip, k, dilation):
        super().__init__()
        self.left = (k - 1) * dilation
        self.filt = nn.Conv1d(ch, ch, k, dilation=dilation)
        self.gate = nn.Conv1d(ch, ch, k, dilation=dilation)
        self.res = nn.Conv1d(ch, ch, 1)
        self.skip = nn.Conv1d(ch, skip, 1)

    def forward(self, x):
        p = F.pad(x, (self.left, 0))  # one padded tensor feeds both convolutions
        z = torch.tanh(self.filt(p)) * torch.sigmoid(self.gate(p))
        return x + self.res(z), self.skip(z)


class WaveNet(nn.Module):
    def __init__(self, ch=16, skip=16, out=8, dilations=(1, 2, 4, 8)):
        super().__init__()
        self.inp = CausalConv1d(1, ch, 2)
        self.layers = nn.ModuleList([GatedLayer(ch, skip, 2, d) for d in dilations])
        self.post1 = nn.Conv1d(skip, skip, 1)
        self.post2 = nn.Conv1d(skip, out, 1)

    def forward(self, x):
        x = self.inp(x)
        total = None
        for layer in self.layers:
            x, s = layer(x)
            total = s if total is None else total + s
        return self.post2(F.relu(self.post1(F.relu(total))))


# ---- CRNN: causal conv front end, GRU / LSTM, per-frame Linear -----------------------------------
class CRNN(nn.Module):
    def __init__(self, feat=16, conv=24, hidden=32, out=8, rnn="gru", layers=1, bidirectional=False,
                 time_major_input=False):
        super().__init__()
        self.time_major_input = time_major_input   # input [B, T, F] instead of [B, F, T]
        self.c1 = CausalConv1d(feat, conv, 3, bias=False)
        self.bn1 = nn.BatchNorm1d(conv)
        self.c2 = CausalConv1d(conv, conv, 3, dilation=2)
        cls = nn.GRU if rnn == "gru" else nn.LSTM
        self.rnn = cls(conv, hidden, num_layers=layers, batch_first=True, bidirectional=bidirectional)
        self.fc = nn.Linear(hidden * (2 if bidirectional else 1), out)

    def forward(self, x):
        if self.time_major_input:
            x = x.transpose(1, 2)
        x = F.relu(self.c2(F.relu(self.bn1(self.c1(x)))))
        y, _ = self.rnn(x.transpose(1, 2))
        return self.fc(y)


class GRUSeqFirst(nn.Module):
    """nn.GRU with batch_first=False: the model moves time to axis 0 itself."""

    def __init__(self, feat=16, hidden=24, out=8):
        super().__init__()
        self.inp = nn.Linear(feat, hidden)
        self.rnn = nn.GRU(hidden, hidden)
        self.fc = nn.Linear(hidden, out)

    def forward(self, x):                       # [B, T, F]
        h = torch.tanh(self.inp(x)).transpose(0, 1)
        y, _ = self.rnn(h)                       # [T, B, H]
        return self.fc(y.transpose(0, 1))


class GRUWithState(nn.Module):
    """GRU whose initial state is a model input; the final state is a second output (how a user
    carries state between calls on the chip)."""

    def __init__(self, feat=16, hidden=24, out=8):
        super().__init__()
        self.inp = nn.Linear(feat, hidden)
        self.rnn = nn.GRU(hidden, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, out)

    def forward(self, x, h0):
        y, hn = self.rnn(F.relu(self.inp(x)), h0)
        return self.fc(y), hn


class LSTMWithState(nn.Module):
    """LSTM with (h0, c0) as model inputs and (hn, cn) as outputs besides the per-frame output."""

    def __init__(self, feat=16, hidden=20, out=8):
        super().__init__()
        self.inp = nn.Linear(feat, hidden)
        self.rnn = nn.LSTM(hidden, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, out)

    def forward(self, x, h0, c0):
        y, (hn, cn) = self.rnn(torch.tanh(self.inp(x)), (h0, c0))
        return self.fc(y), hn, cn


# ---- frame-wise MLPs on [B, T, C] ----------------------------------------------------------------
class MLPGelu(nn.Module):
    def __init__(self, cin=16, hidden=48, out=8):
        super().__init__()
        self.fc1 = nn.Linear(cin, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, out)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class SwishMLP(nn.Module):
    def __init__(self, cin=16, hidden=32, out=8):
        super().__init__()
        self.fc1 = nn.Linear(cin, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, out)

    def forward(self, x):
        h = self.fc1(x)
        h = h * torch.sigmoid(h)                 # written out, as in many code bases
        h = F.silu(self.fc2(h))                  # nn.SiLU: the same pattern at opset 13
        return self.fc3(h)


# ---- norms between causal convs ------------------------------------------------------------------
class LNTCN(nn.Module):
    def __init__(self, cin=16, ch=24, out=8):
        super().__init__()
        self.c1 = CausalConv1d(cin, ch, 3)
        self.ln1 = nn.LayerNorm(ch)
        self.c2 = CausalConv1d(ch, ch, 3, dilation=2)
        self.ln2 = nn.LayerNorm(ch)
        self.c3 = nn.Conv1d(ch, out, 1)

    def forward(self, x):
        x = F.relu(self.ln1(self.c1(x).transpose(1, 2)).transpose(1, 2))
        x = F.relu(self.ln2(self.c2(x).transpose(1, 2)).transpose(1, 2))
        return self.c3(x)


class RMSNorm(nn.Module):
    """The RMSNorm people write by hand (pre-2.4 torch has no nn.RMSNorm): x / sqrt(mean(x^2) + eps) * g."""

    def __init__(self, ch, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(ch))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class RMSNormTCN(nn.Module):
    def __init__(self, cin=16, ch=24, out=8):
        super().__init__()
        self.c1 = CausalConv1d(cin, ch, 3)
        self.n1 = RMSNorm(ch)
        self.c2 = CausalConv1d(ch, ch, 3, dilation=2)
        self.c3 = nn.Conv1d(ch, out, 1)

    def forward(self, x):
        x = F.relu(self.n1(self.c1(x).transpose(1, 2)).transpose(1, 2))
        return self.c3(F.relu(self.c2(x)))


class ConvChannelMean(nn.Module):
    """1-D conv, then per frame: subtract the mean over channels (ReduceMean on the last axis of
    [B, T, C]) and a per-frame Linear."""

    def __init__(self, cin=16, ch=24, out=8):
        super().__init__()
        self.c1 = CausalConv1d(cin, ch, 3)
        self.fc = nn.Linear(ch, out)

    def forward(self, x):
        h = F.relu(self.c1(x)).transpose(1, 2)   # [B, T, C]
        return self.fc(h - h.mean(dim=-1, keepdim=True))


# ---- Conv-TasNet-like: encoder / mask net / ConvTranspose decoder --------------------------------
class TasBlock(nn.Module):
    def __init__(self, ch, hidden, dilation):
        super().__init__()
        self.inp = nn.Conv1d(ch, hidden, 1)
        self.act1 = nn.PReLU(hidden)
        self.dw = CausalConv1d(hidden, hidden, 3, dilation=dilation, groups=hidden)
        self.act2 = nn.PReLU(hidden)
        self.out = nn.Conv1d(hidden, ch, 1)

    def forward(self, x):
        return x + self.out(self.act2(self.dw(self.act1(self.inp(x)))))


class ConvTasNet(nn.Module):
    def __init__(self, filters=32, bottleneck=16, hidden=32, kernel=16, stride=8, dilations=(1, 2, 4)):
        super().__init__()
        self.kernel, self.stride = kernel, stride
        self.encoder = nn.Conv1d(1, filters, kernel, stride=stride, bias=False)
        self.bottleneck = nn.Conv1d(filters, bottleneck, 1)
        self.blocks = nn.Sequential(*[TasBlock(bottleneck, hidden, d) for d in dilations])
        self.mask = nn.Conv1d(bottleneck, filters, 1)
        self.decoder = nn.ConvTranspose1d(filters, 1, kernel, stride=stride, bias=False)

    def forward(self, x):                        # [B, 1, S] waveform, S = stride * frames
        n = x.shape[-1]
        w = F.relu(self.encoder(F.pad(x, (self.kernel - self.stride, 0))))   # [B, N, S / stride]
        m = torch.sigmoid(self.mask(self.blocks(self.bottleneck(w))))
        y = self.decoder(w * m)                  # [B, 1, S + kernel - stride]: overlap-add
        return y[:, :, :n]                       # sample s is final once frame s // stride is in


class UpsampleTCN(nn.Module):
    """Time up-sampling by 2 with a ConvTranspose1d (k4, stride 2) between causal convs; the transposed
    conv's overlap-add tail is chopped so output frame s is final once input frame s // 2 is in."""

    def __init__(self, cin=16, ch=16, out=8):
        super().__init__()
        self.c1 = CausalConv1d(cin, ch, 3)
        self.up = nn.ConvTranspose1d(ch, ch, 4, stride=2)
        self.c2 = CausalConv1d(ch, out, 3)

    def forward(self, x):
        n = x.shape[-1]
        u = F.relu(self.up(F.relu(self.c1(x))))[:, :, :2 * n]
        return self.c2(u)


# ---- 2-D CRN: down-sample frequency, causal in time, transposed-conv up-sampling, skip concat ----
class CRN2d(nn.Module):
    def __init__(self, c1=8, c2=16):
        super().__init__()
        self.e1 = nn.Conv2d(1, c1, (2, 3), stride=(1, 2))
        self.bn1 = nn.BatchNorm2d(c1)
        self.e2 = nn.Conv2d(c1, c2, (2, 3), stride=(1, 2))
        self.bn2 = nn.BatchNorm2d(c2)
        self.mid = nn.Conv2d(c2, c2, (2, 3))
        self.d2 = nn.ConvTranspose2d(c2, c1, (1, 4), stride=(1, 2), padding=(0, 1))
        self.d1 = nn.ConvTranspose2d(2 * c1, c1, (1, 4), stride=(1, 2), padding=(0, 1))
        self.out = nn.Conv2d(c1, 1, 1)

    @staticmethod
    def _pad(x):                                 # frequency both sides, time left only
        return F.pad(x, (1, 1, 1, 0))

    def forward(self, x):                        # [B, 1, T, F]
        a = F.relu(self.bn1(self.e1(self._pad(x))))          # F / 2
        b = F.relu(self.bn2(self.e2(self._pad(a))))          # F / 4
        b = F.relu(self.mid(self._pad(b)))
        u = F.relu(self.d2(b))                                # F / 2
        u = F.relu(self.d1(torch.cat([u, a], dim=1)))         # F
        return torch.sigmoid(self.out(u)) * x


# ---- inception: causal branches of different kernels, channel concat -----------------------------
class CausalInception(nn.Module):
    def __init__(self, cin, branch):
        super().__init__()
        self.b1 = nn.Conv1d(cin, branch, 1)
        self.b3 = CausalConv1d(cin, branch, 3)
        self.b5 = CausalConv1d(cin, branch, 5)
        self.bp = nn.Conv1d(cin, branch, 1)

    def forward(self, x):
        pooled = F.max_pool1d(F.pad(x, (2, 0)), 3, stride=1)
        return F.relu(torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(pooled)], dim=1))


class Inception(nn.Module):
    def __init__(self, cin=16, branch=8, out=8):
        super().__init__()
        self.i1 = CausalInception(cin, branch)
        self.i2 = CausalInception(4 * branch, branch)
        self.out = nn.Conv1d(4 * branch, out, 1)

    def forward(self, x):
        return self.out(self.i2(self.i1(x)))


# ---- causal pools written as F.pad + pool --------------------------------------------------------
class CausalPools(nn.Module):
    def __init__(self, cin=16, ch=16, out=8):
        super().__init__()
        self.c0 = nn.Conv1d(cin, ch, 1)
        self.c1 = nn.Conv1d(ch, ch, 1)
        self.c2 = nn.Conv1d(ch, ch, 1)
        self.c3 = nn.Conv1d(ch, out, 1)

    def forward(self, x):
        x = self.c0(x)                                                    # may be negative: pad 0 matters
        x = F.max_pool1d(F.pad(x, (2, 0)), 3, stride=1)
        x = F.relu(self.c1(x))
        x = F.avg_pool1d(F.pad(x, (2, 0)), 3, stride=1)
        x = self.c2(x)
        x = F.max_pool1d(F.pad(x, (1, 0)), 2, stride=2)                   # T / 2
        x = F.avg_pool1d(F.pad(x, (2, 0)), 3, stride=2)                   # T / 4
        return self.c3(x)


# ---- "valid" convs -------------------------------------------------------------------------------
class ValidConvs(nn.Module):
    def __init__(self, cin=12, ch=16, out=8):
        super().__init__()
        self.c1 = nn.Conv1d(cin, ch, 3)
        self.c2 = nn.Conv1d(ch, ch, 5, dilation=2)
        self.c3 = nn.Conv1d(ch, ch, 3, groups=ch)
        self.c4 = nn.Conv1d(ch, out, 1)

    def forward(self, x):
        x = F.relu(self.c1(x))
        x = F.relu(self.c2(x))
        x = F.relu(self.c3(x))
        return self.c4(x)


# ================================================================================================
# the registry: name -> Spec (T = frames of the ONNX input along its frame axis)
# ================================================================================================

def build(name: str) -> Spec:
    if name == "kws_dscnn":
        return Spec(KwsDSCNN(), [("input", [1, 1, 49, 10])], ["output"], _feat(10, 49, "NCHW_TF"),
                    "kws_dscnn", "NCHW (N, 1, time, MFCC)", 2, None, False,
                    "KWS DS-CNN: (5,3) stem stride (2,1), 3 depthwise-separable blocks with BN+ReLU, "
                    "global average pool, Linear to 12 classes",
                    why_not="'same' (symmetric) padding along time in every 3x3 conv and a global average pool "
                            "over time: an offline classifier")
    if name == "tc_resnet":
        return Spec(TCResNet(), [("input", [1, 40, 32])], ["output"], _feat(40, 32, "NCW"),
                    "tc_resnet", "NCW (N, MFCC, time)", 2, None, True,
                    "TC-ResNet: causal stem k3 written as padding + chop (Slice), 2 residual blocks (causal "
                    "k9 stride-2 conv and k9 conv via F.pad left, BN, 1x1 stride-2 shortcut + BN, Add, ReLU), "
                    "head x[:, :, -1] (Gather index -1) then Linear", min_chunk=4, output_rate=None)
    if name == "wavenet":
        return Spec(WaveNet(), [("input", [1, 1, 64])], ["output"],
                    lambda rng, n: {"input": audio(rng, n, 64)[:, None].astype(np.float32)},
                    "wavenet", "NCW (N, 1, samples)", 2, 2, True,
                    "WaveNet: causal k2 input conv, 4 gated layers (dilation 1,2,4,8; one F.pad tensor feeds "
                    "both the filter and the gate conv; tanh*sigmoid), residual adds, skip sum, 1x1 post net")
    if name == "crnn_gru":
        return Spec(CRNN(rnn="gru", layers=1), [("input", [1, 16, 32])], ["output"], _feat(16, 32, "NCW"),
                    "crnn_gru", "NCW (N, features, time)", 2, 1, True,
                    "causal conv front end (k3 + BN, k3 dilation 2) then nn.GRU(batch_first=True, 1 layer, "
                    "hidden 32) then per-frame Linear; output [1, T, 8]")
    if name == "crnn_lstm":
        return Spec(CRNN(rnn="lstm", layers=2, hidden=24, time_major_input=True), [("input", [1, 32, 16])],
                    ["output"], _feat(16, 32, "NWC"),
                    "crnn_lstm", "NWC (N, time, features)", 1, 1, True,
                    "input [1, T, F] transposed in the model, causal conv front end, nn.LSTM(batch_first=True, "
                    "2 layers, hidden 24), per-frame Linear; output [1, T, 8]")
    if name == "crnn_gru_bidir":
        return Spec(CRNN(rnn="gru", layers=1, hidden=16, bidirectional=True), [("input", [1, 16, 32])],
                    ["output"], _feat(16, 32, "NCW"),
                    "crnn_gru_bidir", "NCW (N, features, time)", 2, 1, False,
                    "as crnn_gru with a bidirectional GRU (hidden 16 per direction)",
                    why_not="bidirectional GRU: the backward direction needs every future frame")
    if name == "gru_seqfirst":
        return Spec(GRUSeqFirst(), [("input", [1, 32, 16])], ["output"], _feat(16, 32, "NWC"),
                    "gru_seqfirst", "NWC (N, time, features)", 1, 1, True,
                    "per-frame Linear+tanh, transpose to [T, B, C], nn.GRU(batch_first=False, hidden 24), "
                    "transpose back, per-frame Linear")
    if name == "gru_state":
        def make(rng, n):
            x = feature_frames(rng, n, 16, 32).transpose(0, 2, 1)
            return {"input": x.astype(np.float32), "h0": hidden_state(rng, n, (1, 24)).astype(np.float32)}

        return Spec(GRUWithState(), [("input", [1, 32, 16]), ("h0", [1, 1, 24])], ["output", "hn"], make,
                    "gru_state", "NWC (N, time, features); h0 [layers, N, hidden]", 1, 1, True,
                    "two inputs (frames and the initial GRU state h0) and two outputs (per-frame output and "
                    "the final state hn): per-frame Linear+ReLU, nn.GRU(batch_first=True, hidden 24, h0), "
                    "per-frame Linear. calib.npz/heldout.npz hold 'input' [N, 32, 16] and 'h0' [N, 1, 24] "
                    "(h0 sample i is h0[i:i+1], shape [1, 1, 24])")
    if name == "lstm_state":
        def make(rng, n):
            x = feature_frames(rng, n, 16, 32).transpose(0, 2, 1)
            return {"input": x.astype(np.float32), "h0": hidden_state(rng, n, (1, 20)).astype(np.float32),
                    "c0": (2.0 * hidden_state(rng, n, (1, 20))).astype(np.float32)}

        return Spec(LSTMWithState(), [("input", [1, 32, 16]), ("h0", [1, 1, 20]), ("c0", [1, 1, 20])],
                    ["output", "hn", "cn"], make,
                    "lstm_state", "NWC (N, time, features); h0, c0 [layers, N, hidden]", 1, 1, True,
                    "three inputs (frames, h0, c0) and three outputs (per-frame output, hn, cn): per-frame "
                    "Linear+tanh, nn.LSTM(batch_first=True, hidden 20, (h0, c0)), per-frame Linear. "
                    "calib.npz/heldout.npz hold 'input' [N, 32, 16], 'h0' and 'c0' [N, 1, 20]")
    if name == "mlp_gelu":
        return Spec(MLPGelu(), [("input", [1, 32, 16])], ["output"], _feat(16, 32, "NWC"),
                    "mlp_gelu", "NWC (N, time, channels)", 1, 1, True,
                    "frame-wise MLP: nn.Linear(16, 48) on [B, T, C] (MatMul + Add), nn.GELU() (exact: "
                    "Div/Erf/Add/Mul/Mul at opset 13), nn.Linear(48, 8)")
    if name == "swish_mlp":
        return Spec(SwishMLP(), [("input", [1, 32, 16])], ["output"], _feat(16, 32, "NWC"),
                    "swish_mlp", "NWC (N, time, channels)", 1, 1, True,
                    "frame-wise MLP with h * torch.sigmoid(h) written out and F.silu (both Sigmoid + Mul)")
    if name == "ln_tcn":
        return Spec(LNTCN(), [("input", [1, 16, 32])], ["output"], _feat(16, 32, "NCW"),
                    "ln_tcn", "NCW (N, channels, time)", 2, 2, True,
                    "causal convs with a per-frame nn.LayerNorm over channels between them (transpose to "
                    "[B, T, C], LayerNorm, transpose back; decomposed at opset 13: ReduceMean/Sub/Pow/"
                    "ReduceMean/Add/Sqrt/Div/Mul/Add)")
    if name == "rmsnorm_tcn":
        return Spec(RMSNormTCN(), [("input", [1, 16, 32])], ["output"], _feat(16, 32, "NCW"),
                    "rmsnorm_tcn", "NCW (N, channels, time)", 2, 2, True,
                    "causal convs with a hand-written per-frame RMSNorm over channels "
                    "(x * rsqrt(mean(x^2) + eps) * g: Pow/ReduceMean/Add/Sqrt/Div/Mul)")
    if name == "conv_chmean":
        return Spec(ConvChannelMean(), [("input", [1, 16, 32])], ["output"], _feat(16, 32, "NCW"),
                    "conv_chmean", "NCW (N, channels, time)", 2, 1, True,
                    "causal 1-D conv + ReLU, transpose to [B, T, C], subtract x.mean(dim=-1, keepdim=True) "
                    "(ReduceMean over channels), per-frame Linear; output [1, T, 8]")
    if name == "convtasnet":
        return Spec(ConvTasNet(), [("input", [1, 1, 256])], ["output"],
                    lambda rng, n: {"input": audio(rng, n, 256)[:, None].astype(np.float32)},
                    "convtasnet", "NCW (N, 1, samples)", 2, 2, True,
                    "Conv-TasNet-like: causal encoder Conv1d(1, 32, k16, stride 8) + ReLU (32 frames), mask "
                    "net (1x1 bottleneck, 3 blocks of 1x1 + PReLU + causal depthwise k3 dilation 1,2,4 + "
                    "PReLU + 1x1, residual), sigmoid mask, multiply, ConvTranspose1d(32, 1, k16, stride 8) "
                    "decoder, first 256 samples kept (Slice). Frames are audio samples: chunks must be "
                    "multiples of 8 samples", min_chunk=8)
    if name == "upsample_tcn":
        return Spec(UpsampleTCN(), [("input", [1, 16, 32])], ["output"], _feat(16, 32, "NCW"),
                    "upsample_tcn", "NCW (N, channels, time)", 2, 2, True,
                    "causal conv, ConvTranspose1d(16, 16, k4, stride 2) along time + ReLU, first 2T frames "
                    "kept (Slice), causal conv: output [1, 8, 64] (2 output frames per input frame)",
                    output_rate=(2, 1))
    if name == "crn2d":
        return Spec(CRN2d(), [("input", [1, 1, 32, 32])], ["output"], _feat(32, 32, "NCHW_TF"),
                    "crn2d", "NCHW (N, 1, time, frequency)", 2, 2, True,
                    "2-D CRN: F.pad (frequency both sides, time left) + Conv2d (2,3) stride (1,2) twice "
                    "(32 -> 16 -> 8 bins, BN+ReLU), a (2,3) conv, ConvTranspose2d (1,4) stride (1,2) "
                    "up-sampling frequency twice with a skip concat (channel concat) between, 1x1 conv, "
                    "sigmoid mask times the input")
    if name == "inception":
        return Spec(Inception(), [("input", [1, 16, 32])], ["output"], _feat(16, 32, "NCW"),
                    "inception", "NCW (N, channels, time)", 2, 2, True,
                    "two causal inception blocks: branches 1x1, F.pad + k3, F.pad + k5 and F.pad + MaxPool k3 "
                    "+ 1x1, channel concat, ReLU; 1x1 output conv")
    if name == "causal_pools":
        return Spec(CausalPools(), [("input", [1, 16, 32])], ["output"], _feat(16, 32, "NCW"),
                    "causal_pools", "NCW (N, channels, time)", 2, 2, True,
                    "F.pad(left) + MaxPool1d k3 s1, AvgPool1d k3 s1, MaxPool1d k2 s2, AvgPool1d k3 s2, "
                    "with 1x1 convs between (the first pool sees negative values: the zero padding "
                    "matters); 32 -> 8 frames", min_chunk=4, output_rate=(1, 4))
    if name == "valid_convs":
        return Spec(ValidConvs(), [("input", [1, 12, 32])], ["output"], _feat(12, 32, "NCW"),
                    "valid_convs", "NCW (N, channels, time)", 2, 2, True,
                    "unpadded ('valid') convs: k3, k5 dilation 2, depthwise k3, 1x1 (32 -> 20 frames); a "
                    "valid conv is a causal conv whose first (k-1)*d outputs are dropped", output_offset=12)
    raise SystemExit(f"unknown model {name!r}; known: {', '.join(MODELS)}")


MODELS = ["kws_dscnn", "tc_resnet", "wavenet", "crnn_gru", "crnn_lstm", "crnn_gru_bidir", "gru_seqfirst",
          "gru_state", "lstm_state", "mlp_gelu", "swish_mlp", "ln_tcn", "rmsnorm_tcn", "conv_chmean", "convtasnet",
          "upsample_tcn", "crn2d", "inception", "causal_pools", "valid_convs"]
# weights: SEEDS[name]; data: seed * 10 + 1 (calib), + 2 (heldout). From the name, so adding a model
# leaves the others unchanged.
SEEDS = {name: 100 + zlib.crc32(name.encode()) % 9000 for name in MODELS}


# ================================================================================================
# export + check
# ================================================================================================

def _shape_of(vi) -> list:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in vi.type.tensor_type.shape.dim]


def make(name: str, out_root: Path) -> dict:
    seed = SEEDS[name]
    torch.manual_seed(seed)
    spec = build(name)
    model = spec.module
    randomize_bn(model, torch.Generator().manual_seed(seed))
    model.eval()

    calib = spec.make_data(np.random.default_rng(seed * 10 + 1), N_CALIB)
    heldout = spec.make_data(np.random.default_rng(seed * 10 + 2), 1)
    for n, shp in spec.inputs:
        assert calib[n].shape == (N_CALIB, *shp[1:]), (name, n, calib[n].shape, shp)
        assert heldout[n].shape == (1, *shp[1:]), (name, n, heldout[n].shape, shp)

    d = out_root / name
    if d.exists():  # also drops ESP-PPQ's exports of the old model: re-run tools/make_corpus_ppq.py
        shutil.rmtree(d)
    d.mkdir(parents=True)
    status = out_root / "ppq_status.json"
    if status.exists():
        st = json.loads(status.read_text())
        if st.get("models", {}).pop(name, None) is not None:
            status.write_text(json.dumps(st, indent=1) + "\n")
    onnx_path = d / "model.onnx"
    args = tuple(torch.from_numpy(heldout[n].reshape(shp)) for n, shp in spec.inputs)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = model(*args)
        torch.onnx.export(model, args if len(args) > 1 else args[0], str(onnx_path), opset_version=OPSET,
                          dynamo=False, input_names=[n for n, _ in spec.inputs], output_names=spec.outputs)
    refs = [r.numpy() for r in (ref if isinstance(ref, tuple) else (ref,))]

    # onnxruntime must reproduce torch on the held-out input
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {n: heldout[n].reshape(shp) for n, shp in spec.inputs})
    diffs = []
    for o, g, r in zip(spec.outputs, got, refs):
        assert g.shape == r.shape, (name, o, g.shape, r.shape)
        diff = float(np.abs(g - r).max())
        scale = float(np.abs(r).max())
        diffs.append(diff)
        if diff > 1e-4 * max(1.0, scale):
            raise SystemExit(f"{name}: onnxruntime differs from torch on {o}: max |diff| {diff:g}")

    if len(spec.inputs) == 1:
        np.save(d / "calib.npy", calib["input"])
        np.save(d / "heldout.npy", heldout["input"])
    else:
        np.savez(d / "calib.npz", **calib)
        np.savez(d / "heldout.npz", **heldout)

    proto = onnx.load(str(onnx_path))
    onnx.checker.check_model(proto)
    ops = sorted({n.op_type for n in proto.graph.node})
    meta = {
        "family": spec.family,
        "input_layout": spec.input_layout,
        "frame_axis_onnx": spec.frame_axis_onnx,
        "output_frame_axis": spec.output_frame_axis,
        # how it streams (null when it cannot): chunk granularity, output frames per input frame, and
        # how many input frames a "valid" model eats before its first output frame
        "stream": {"min_chunk": spec.min_chunk, "output_rate": list(spec.output_rate) if spec.output_rate else None,
                   "output_offset": spec.output_offset} if spec.streamable else None,
        "streamable": spec.streamable,
        "why_not": spec.why_not if not spec.streamable else "",
        "ops": ops,
        "notes": spec.notes,
        "inputs": [{"name": vi.name, "shape": _shape_of(vi)} for vi in proto.graph.input],
        # concrete shapes (the classic exporter may declare symbolic output dims, e.g. after F.pad)
        "outputs": [{"name": vi.name, "shape": list(r.shape), "onnx_declared_shape": _shape_of(vi)}
                    for vi, r in zip(proto.graph.output, refs)],
        "params": int(sum(p.numel() for p in model.parameters())),
        "seed": seed,
        "data_seeds": {"calib": seed * 10 + 1, "heldout": seed * 10 + 2},
        "n_calib": N_CALIB,
        "opset": OPSET,
        "torch": torch.__version__.split("+")[0],
        "ort_vs_torch_max_abs_diff": max(diffs),
        **spec.extra,
    }
    (d / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"{name:15s} params {meta['params']:6d}  ops {len(ops):2d}  onnxruntime vs torch max |diff| "
          f"{max(diffs):.2e}  streamable {spec.streamable}", flush=True)
    return meta


def write_index(out_root: Path) -> None:
    """``index.json``: the model names in corpus order (tests/corpus.py reads it)."""
    names = [m for m in MODELS if (out_root / m / "meta.json").exists()]
    (out_root / "index.json").write_text(json.dumps({"models": names}, indent=1) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated subset")
    args = ap.parse_args()
    torch.set_num_threads(1)
    names = [m for m in args.models.split(",") if m]
    for m in names:
        if m not in MODELS:
            raise SystemExit(f"unknown model {m!r}; known: {', '.join(MODELS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    for m in names:
        make(m, args.out)
    write_index(args.out)
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"{args.out}: {size / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
