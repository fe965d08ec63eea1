"""chunkwise: quantize, stream, serialize and bit-exactly emulate ESP-DL models on the host."""

from .errors import (ChunkwiseError, FormatError, KeyRequiredError, ModelSelectError, ResourceLimitError,
                     ShapeError, StreamingError, UnsupportedError, VerificationError)
from .model import Model, TargetGuessWarning, load

__version__ = "0.1.0"


def quantize(*args, **kwargs):
    """Float ONNX -> quantized :class:`Model` (see :func:`chunkwise.quant.quantize`)."""
    from .quant import quantize as _quantize

    return _quantize(*args, **kwargs)


__all__ = ["ChunkwiseError", "FormatError", "KeyRequiredError", "Model", "ModelSelectError", "ResourceLimitError",
           "ShapeError", "StreamingError", "TargetGuessWarning", "UnsupportedError", "VerificationError", "load",
           "quantize", "__version__"]
