"""GRU / LSTM golden models with ESP-PPQ (export_test_values=True), which ESP-DL's ops_test cannot make.

ESP-PPQ 1.3.12 fails on GRU/LSTM without an initial state (IndexError in refine.py), so h0 (and c0) are
model inputs here. Run in a dev venv with esp-ppq and torch==2.13.0:

    TGT=esp32p4 python tools/make_rnn_golden.py GRU 8 5_32_16_0_0 OUT_DIR [SEED]

CASE is seq_input_hidden_bidirectional_bias. Committed fixtures: tests/fixtures/golden/*/{GRU,LSTM}.
"""
import os
import sys

import torch
import torch.nn as nn
from torch.utils.data import DataLoader
from esp_ppq import QuantizationSettingFactory
from esp_ppq.api import espdl_quantize_torch
torch.manual_seed(int(sys.argv[5]) if len(sys.argv) > 5 else 0)
op, bits, case, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
seq, inp, hid, bidir, bias = [int(v) for v in case.split("_")]
D = 2 if bidir else 1
class M(nn.Module):
    def __init__(self):
        super().__init__()
        cls = nn.GRU if op == "GRU" else nn.LSTM
        self.rnn = cls(input_size=inp, hidden_size=hid, bidirectional=bool(bidir), bias=bool(bias))
    def forward(self, x, h0, c0=None):
        if op == "GRU":
            return self.rnn(x, h0)
        y, (h, c) = self.rnn(x, (h0, c0))
        return y, h, c
shapes = [[seq, 1, inp], [D, 1, hid]] + ([[D, 1, hid]] if op == "LSTM" else [])
data = [[torch.randn(s) * (1.0 if i == 0 else 0.5) for i, s in enumerate(shapes)] for _ in range(16)]
class DS(torch.utils.data.Dataset):
    def __len__(self): return len(data)
    def __getitem__(self, i): return data[i]
dl = DataLoader(DS(), batch_size=1, shuffle=False)
def collate(b):
    return [t.reshape(s).float() for t, s in zip(b, shapes)]
setting = QuantizationSettingFactory.espdl_setting()
os.makedirs(out, exist_ok=True)
name = f"{op.lower()}_{case}_s{bits}.espdl"
espdl_quantize_torch(model=M().eval(), espdl_export_file=os.path.join(out, name), calib_dataloader=dl, calib_steps=16,
                     input_shape=shapes, target=os.environ.get("TGT", "esp32p4"), num_of_bits=bits, collate_fn=collate, setting=setting,
                     device="cpu", error_report=False, skip_export=False, export_test_values=True, export_config=True,
                     verbose=0, int16_lut_step=1, metadata_props={"target": os.environ.get("TGT", "esp32p4")})
print("ok", name)
