"""Compare emulated outputs with expected values (embedded test outputs or another run).

Integers must be equal. Float outputs are compared as ESP-DL's ``model->test()`` does: absolute
tolerance 2e-5.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..errors import VerificationError

FLOAT_ATOL = 2e-5


@dataclass
class OutputCheck:
    name: str
    shape: tuple
    dtype: str
    bit_exact: bool
    mismatches: int
    max_abs_diff: float
    first_mismatch: list[int] | None

    def as_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d


def compare(name: str, got: np.ndarray, want: np.ndarray) -> OutputCheck:
    got = np.asarray(got)
    want = np.asarray(want)
    if got.shape != want.shape:
        if got.size == want.size:
            want = want.reshape(got.shape)
        else:
            return OutputCheck(name, got.shape, str(got.dtype), False, int(max(got.size, want.size)),
                               float("inf"), [])
    if got.dtype.kind == "f" or want.dtype.kind == "f":
        g64, w64 = got.astype(np.float64), want.astype(np.float64)
        with np.errstate(invalid="ignore"):
            diff = np.abs(g64 - w64)
        # As ESP-DL's TensorBase::compare_elements: NaN equals NaN only; equal infinities match.
        gnan, wnan = np.isnan(g64), np.isnan(w64)
        same_inf = np.isinf(g64) & (g64 == w64)
        bad = (gnan != wnan) | (~gnan & ~wnan & ~same_inf & ~(diff <= FLOAT_ATOL))
        diff = np.where(gnan & wnan | same_inf, 0.0, diff)
    else:
        diff = np.abs(got.astype(np.int64) - want.astype(np.int64))
        bad = diff != 0
    n = int(bad.sum())
    first = [int(i) for i in np.argwhere(bad)[0]] if n else None
    return OutputCheck(name, tuple(got.shape), str(got.dtype), n == 0, n,
                       float(diff.max()) if diff.size else 0.0, first)


def check_test_values(model) -> list[OutputCheck]:
    """Run the model on its embedded test inputs and compare with its embedded test outputs."""
    g = model.graph
    if not g.test_inputs or not g.test_outputs:
        raise VerificationError(f"{model.path or 'model'} carries no test values "
                                "(export with ESP-PPQ's export_test_values=True, or chunkwise quantize)")
    outs = model.run(model.test_feeds())
    checks = []
    for name, t in g.test_outputs.items():
        if name not in outs:
            checks.append(OutputCheck(name, tuple(t.dims), t.dtype, False, -1, float("inf"), None))
            continue
        checks.append(compare(name, outs[name], t.data))
    return checks
