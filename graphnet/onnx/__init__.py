"""ONNX export and import (the optional extra: ``pip install "graphnet[onnx]"``).

``export(model, path)`` writes a graph or a ``Classifier`` as an ONNX model (opset
:data:`OPSET`); ``load(path)`` builds a graphnet graph from an ONNX model
(:class:`ImportedModel`). The ``onnx`` package is imported only when one of them runs,
so ``import graphnet`` never needs it. See docs/onnx.md.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

from ..hints import PathLike
from .support import INSTALL_HINT, MIN_IMPORT_OPSET, OPSET, OnnxError, OnnxMissingError


if TYPE_CHECKING:
    from pathlib import Path

    from .importer import ImportedModel

Names = Optional[Union[str, Sequence[str]]]


def export(model: Any, path: PathLike, output_names: Names = None) -> "Path":
    """Write ``model`` (a Graph, a Classifier, or output node(s)) to ``path`` as ONNX;
    returns the path. See :func:`graphnet.onnx.exporter.export`."""
    from .exporter import export as _export
    return _export(model, path, output_names)


def to_proto(model: Any, output_names: Names = None) -> Any:
    """The ``onnx.ModelProto`` :func:`export` would write."""
    from .exporter import to_proto as _to_proto
    return _to_proto(model, output_names)


def load(path: PathLike) -> "ImportedModel":
    """An :class:`ImportedModel` built from the ONNX file at ``path``."""
    from .importer import load as _load
    return _load(path)


def from_proto(model: Any, source: str = "model") -> "ImportedModel":
    """An :class:`ImportedModel` built from an ``onnx.ModelProto`` already in memory."""
    from .importer import from_proto as _from_proto
    return _from_proto(model, source)


def __getattr__(name: str) -> Any:
    if name == "ImportedModel":
        from .importer import ImportedModel
        return ImportedModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["export", "to_proto", "load", "from_proto", "ImportedModel", "OnnxError",
           "OnnxMissingError", "OPSET", "MIN_IMPORT_OPSET", "INSTALL_HINT"]
