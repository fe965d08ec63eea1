"""``python -m chunkwise.ir.ops``: print the operator x stage coverage table (docs/coverage.md)."""

from . import coverage_markdown

print(coverage_markdown(), end="")
