"""``python -m chunkwise``: the command line."""

from .cli import main

main()
