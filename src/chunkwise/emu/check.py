"""Compare emulated outputs with expected values (embedded test outputs or another run).

Integers must be equal (``bit_exact``). Float outputs are compared as ESP-DL's ``model->test()`` does:
absolute tolerance 2e-5.

``chip_test`` says whether ESP-DL's own ``Model::test()`` (``dl/model/src/dl_model_base.cpp``) would accept
the value: it allows +-1 on int16 / uint16 outputs ("The int16 quantization cannot be fully aligned, and
there may be rounding errors of +-1", i.e. the chip itself is not expected to reproduce ESP-PPQ's int16
values exactly) and 2e-5 on everything else, which is exact for integers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..errors import VerificationError

FLOAT_ATOL = 2e-5
CHIP_INT16_TOLERANCE = 1  # Model::test(): output->equal(output_gt, 1 + 1e-5) for int16 / uint16


@dataclass
class OutputCheck:
    name: str
    shape: tuple
    dtype: str
    bit_exact: bool
    mismatches: int
    max_abs_diff: float
    first_mismatch: list[int] | None
    chip_test: bool = False

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
    max_diff = float(diff.max()) if diff.size else 0.0
    chip = n == 0 or (got.dtype.kind in "iu" and got.dtype.itemsize == 2 and max_diff <= CHIP_INT16_TOLERANCE)
    return OutputCheck(name, tuple(got.shape), str(got.dtype), n == 0, n, max_diff, first, chip)


def check_test_values(model) -> list[OutputCheck]:
    """Run the model on its embedded test inputs and compare with its embedded test outputs."""
    g = model.graph
    if not g.test_inputs or not g.test_outputs:
        raise VerificationError(f"{model.path or 'model'} carries no test values "
                                "(export with ESP-PPQ's export_test_values=True, or chunkwise quantize)")
    # ESP-PPQ may name intermediate values as test outputs; Model::test() checks them where they are made
    graph_outs = {v.name for v in g.outputs}
    outs = model.run(model.test_feeds(), intermediates=not set(g.test_outputs) <= graph_outs)
    checks = []
    for name, t in g.test_outputs.items():
        if name not in outs:
            checks.append(OutputCheck(name, tuple(t.dims), t.dtype, False, -1, float("inf"), None))
            continue
        checks.append(compare(name, outs[name], t.data))
    return checks
