"""Resource limits: refuse a tensor whose declared size exceeds a cap, before allocating it.

The cap defaults to 2 GiB per tensor and can be changed with the ``CHUNKWISE_MAX_TENSOR_BYTES``
environment variable or :func:`set_max_tensor_bytes`.
"""

from __future__ import annotations

import os

from .errors import ResourceLimitError

_DEFAULT = 2 * 1024**3
_cap: int | None = None


def max_tensor_bytes() -> int:
    if _cap is not None:
        return _cap
    env = os.environ.get("CHUNKWISE_MAX_TENSOR_BYTES")
    if env:
        try:
            return int(env)
        except ValueError:
            raise ResourceLimitError(f"CHUNKWISE_MAX_TENSOR_BYTES={env!r} is not an integer") from None
    return _DEFAULT


def max_tensor_bytes_override() -> int | None:
    """The cap set by :func:`set_max_tensor_bytes` (None: the default/environment value applies)."""
    return _cap


def set_max_tensor_bytes(n: int | None) -> None:
    """Set the per-tensor cap in bytes (None restores the default/environment value)."""
    global _cap
    _cap = n


def check_alloc(nbytes: int, what: str) -> None:
    cap = max_tensor_bytes()
    if nbytes > cap:
        raise ResourceLimitError(
            f"{what} needs {nbytes:,} bytes, over the {cap:,}-byte limit "
            "(raise it with CHUNKWISE_MAX_TENSOR_BYTES if this is intended)"
        )
