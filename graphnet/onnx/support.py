"""What the ONNX modules share: the opset, the errors, and the lazy import of ``onnx``."""
from __future__ import annotations

from typing import Any

from ..errors import GraphnetError

OPSET = 17             #: the opset ``export`` writes and the newest ``load`` reads
MIN_IMPORT_OPSET = 13  #: the oldest opset ``load`` reads (Softmax, ReduceSum, Squeeze changed in 13)
INSTALL_HINT = 'pip install "graphnet[onnx]"'
FROZEN = "graphnet: not trainable"  #: doc_string of a non-trainable Parameter's initializer


class OnnxError(GraphnetError, ValueError):
    """A model cannot be exported to ONNX, or an ONNX file cannot be imported."""


class OnnxMissingError(GraphnetError, ImportError):
    """The ``onnx`` package is not installed."""


def require_onnx() -> Any:
    """The ``onnx`` module, or OnnxMissingError saying how to install it."""
    try:
        import onnx
    except ImportError as exc:
        raise OnnxMissingError(f"ONNX support needs the onnx package ({exc}); install it "
                               f"with: {INSTALL_HINT}") from None
    return onnx
