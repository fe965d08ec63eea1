"""Run every golden .espdl under the given folders and report bit-exactness per operator.

    python tools/golden_report.py ../shared/golden [tests/fixtures/golden] [--ops Conv,Add] [--fail-only]
"""

from __future__ import annotations

import argparse
import collections
import sys
import warnings
from pathlib import Path

import chunkwise
from chunkwise.emu.check import check_test_values


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("dirs", nargs="+")
    ap.add_argument("--ops", default="", help="comma-separated operator folders to run")
    ap.add_argument("--fail-only", action="store_true")
    args = ap.parse_args()
    wanted = {o for o in args.ops.split(",") if o}
    stats = collections.defaultdict(lambda: [0, 0, 0])
    warnings.simplefilter("ignore")
    for d in args.dirs:
        for f in sorted(Path(d).rglob("*.espdl")):
            op = f.parent.name
            if wanted and op not in wanted:
                continue
            key = (f.parent.parent.name, op)
            try:
                m = chunkwise.load(f)
                checks = check_test_values(m)
                ok = all(c.bit_exact for c in checks)
                msg = "; ".join(f"{c.name}: {c.mismatches} off, max {c.max_abs_diff:g}" for c in checks if not c.bit_exact)
                stats[key][0 if ok else 1] += 1
            except Exception as e:  # report, keep going
                ok, msg = False, f"{type(e).__name__}: {e}"
                stats[key][2] += 1
            if not ok or not args.fail_only:
                print(f"{'OK  ' if ok else 'FAIL'} {f}: {msg}" if not ok else f"OK   {f}")
    print("\nsuite/op: exact, wrong, error")
    tot = [0, 0, 0]
    for k in sorted(stats):
        s = stats[k]
        tot = [a + b for a, b in zip(tot, s)]
        print(f"  {k[0]}/{k[1]}: {s[0]}, {s[1]}, {s[2]}")
    print(f"total: {tot[0]} exact, {tot[1]} wrong, {tot[2]} error")
    return 0 if tot[1] == tot[2] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
