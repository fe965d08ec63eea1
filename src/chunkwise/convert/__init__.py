"""Graph passes; the streaming converter lives in :mod:`chunkwise.convert.streaming`."""

from .streaming import StreamReport, TableEntry, load_table, stream

__all__ = ["StreamReport", "TableEntry", "load_table", "stream"]
