"""Domain errors. The CLI turns these into exit codes; nothing else should catch them silently."""

from __future__ import annotations


class ChunkwiseError(Exception):
    """Base class of every error chunkwise raises on purpose.

    ``exit_code`` is what the CLI returns for it (2: bad input, 3: a check that failed).
    """

    exit_code = 2


class FormatError(ChunkwiseError):
    """A file is not a valid .espdl (or ONNX) file: names the field and the problem."""

    def __init__(self, message: str, *, field: str | None = None, path: str | None = None):
        self.field = field
        self.path = path
        where = []
        if path:
            where.append(str(path))
        if field:
            where.append(f"field {field}")
        prefix = f"{': '.join(where)}: " if where else ""
        super().__init__(prefix + message)


class KeyRequiredError(ChunkwiseError):
    """The model is AES-encrypted and no key (or a wrong key) was given."""


class ModelSelectError(ChunkwiseError):
    """A package was asked for a model name/index it does not hold."""


class UnsupportedError(ChunkwiseError):
    """An operator, attribute, dtype or layout the emulator (or a pass) does not support."""

    def __init__(self, message: str, *, node: str | None = None, op: str | None = None,
                 supported: list[str] | tuple[str, ...] | None = None):
        self.node = node
        self.op = op
        self.supported = list(supported) if supported else []
        parts = []
        if node is not None or op is not None:
            parts.append(f"node {node!r} ({op})")
        parts.append(message)
        text = ": ".join(parts)
        if self.supported:
            text += f". Supported: {', '.join(self.supported)}"
        super().__init__(text)


class ShapeError(ChunkwiseError):
    """An input or tensor has a shape, dtype or size that does not fit."""


class ResourceLimitError(ChunkwiseError):
    """A tensor would need more memory than the configured cap."""


class StreamingError(ChunkwiseError):
    """A graph cannot be streamed (names the node and why) or a chunk size is invalid."""


class VerificationError(ChunkwiseError):
    """A bit-exactness check failed."""

    exit_code = 3
