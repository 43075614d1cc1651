"""ONNX -> graphnet: :func:`load` checks a model completely, then builds its graph."""
from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np

from ..errors import FeedError, GraphnetError
from ..graph import Graph
from ..hints import Array, Data, PathLike
from ..node import Constant, Input, Node, Parameter
from . import checks
from .from_onnx import SPECS
from .support import FROZEN, OnnxError, require_onnx

BN_STATS = (3, 4)  # BatchNormalization's running mean and variance: not trainable


class ImportedModel:
    """A graphnet graph built from an ONNX model.

    ``graph``: a :class:`~graphnet.Graph` of the model's outputs (no cost: add one to
    train). ``inputs``/``outputs``: ``{ONNX name: node}`` in the model's order.
    ``initializers``: ``{ONNX name: node}`` of the stored tensors the graph uses (float
    ones as Parameters). ``run(feed)`` returns ``{output name: array}``.
    """

    def __init__(self, graph: Graph, inputs: dict, outputs: dict, initializers: dict,
                 opset: int) -> None:
        self.graph, self.inputs, self.outputs = graph, inputs, outputs
        self.initializers, self.opset = initializers, opset

    def parameters(self) -> list[Parameter]:
        """The trainable parameters (the float initializers, batch statistics excepted)."""
        return self.graph.parameters()

    def run(self, feed: Mapping[Any, Data], training: bool = False) -> dict[str, Array]:
        """``{output name: value}`` for ``feed`` ({input name or Input: array})."""
        if not isinstance(feed, Mapping):
            raise FeedError(f"run: feed must be a mapping {{input name: array}}, got "
                            f"{type(feed).__name__}")
        values = self.graph.run(dict(feed), training=training)
        return dict(zip(self.outputs, values))

    def __repr__(self) -> str:
        return (f"<ImportedModel inputs={list(self.inputs)} outputs={list(self.outputs)} "
                f"parameters={len(self.parameters())} opset={self.opset}>")


class Builder:
    """The tensors built so far, and the initializers and constants they may read."""

    def __init__(self, onnx: Any, model: Any, source: str) -> None:
        self.onnx, self.source = onnx, source
        g = model.graph
        self.stored = {t.name: t for t in g.initializer}
        self.consts: dict[str, np.ndarray] = {}
        self.values: dict[str, Node] = {}
        self.used: dict[str, Node] = {}
        self.frozen = {n.input[k] for n in g.node if n.op_type == "BatchNormalization"
                       for k in BN_STATS if k < len(n.input)}
        self.frozen |= {t.name for t in g.initializer if t.doc_string == FROZEN}

    def error(self, node: Any, why: str) -> OnnxError:
        return OnnxError(f"{self.source}: node {node.name or '(unnamed)'!r} ({node.op_type}): {why}")

    def const(self, name: str) -> np.ndarray:
        """The value of a constant tensor (an initializer or a Constant node's output)."""
        if name not in self.consts:
            self.consts[name] = self.onnx.numpy_helper.to_array(self.stored[name]).copy()
        return self.consts[name]

    def node(self, name: str) -> Node:
        """The graphnet node of tensor ``name`` (made on first use for stored tensors)."""
        if name not in self.values:
            value = self.const(name)
            if value.dtype.kind == "f" and name in self.stored:
                made: Node = Parameter(value, name=name, trainable=name not in self.frozen)
            else:
                made = Constant(value, name=name)
            self.values[name] = self.used[name] = made
        return self.values[name]

    def add(self, onnx_node: Any) -> None:
        if onnx_node.op_type == "Constant":
            self.consts[onnx_node.output[0]] = self.onnx.numpy_helper.to_array(
                onnx_node.attribute[0].t).copy()
            return
        spec = SPECS[onnx_node.op_type]
        args = [self.node(i) if i and k not in spec.consts else None
                for k, i in enumerate(onnx_node.input)]
        attrs = {a.name: _attr(self.onnx, a) for a in onnx_node.attribute}
        made = {id(n) for n in self.values.values()}
        try:
            out = spec.build(self, onnx_node, args, attrs)
        except OnnxError:
            raise
        except (GraphnetError, ValueError, TypeError) as exc:
            raise self.error(onnx_node, f"cannot be built: {exc}") from None
        if id(out) not in made:
            out.name = onnx_node.output[0]
        self.values[onnx_node.output[0]] = out


def _attr(onnx: Any, a: Any) -> Any:
    v = onnx.helper.get_attribute_value(a)
    return v.decode() if isinstance(v, bytes) else list(v) if isinstance(v, (list, tuple)) or \
        type(v).__name__ == "RepeatedScalarContainer" else v


def _input(info: Any) -> Input:
    tt = info.type.tensor_type
    shape = tuple(int(d.dim_value) if d.HasField("dim_value") else None for d in tt.shape.dim) \
        if tt.HasField("shape") else None
    dtype = "int64" if tt.elem_type == 7 else None  # floats: the default float dtype
    return Input(info.name, shape=shape, dtype=dtype)


def from_proto(model: Any, source: str = "model") -> ImportedModel:
    """Check ``model`` (an ``onnx.ModelProto``) completely, then build its graph."""
    onnx = require_onnx()
    if not isinstance(model, onnx.ModelProto):
        raise OnnxError(f"from_proto: expected an onnx.ModelProto, got {type(model).__name__}")
    order = checks.check_model(onnx, model, source)
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # the checker's own error types vary between versions
        raise OnnxError(f"{source}: not a valid ONNX model: {str(exc)[:300]}") from None
    b = Builder(onnx, model, source)
    init = set(b.stored)
    inputs = {i.name: _input(i) for i in model.graph.input if i.name not in init}
    b.values.update(inputs)
    for node in order:
        b.add(node)
    outputs = {o.name: b.node(o.name) for o in model.graph.output}
    graph = Graph(list(outputs.values()))
    opset = max(o.version for o in model.opset_import if o.domain in checks.DEFAULT_DOMAINS)
    return ImportedModel(graph, inputs, outputs, {k: v for k, v in b.used.items() if k in init},
                         opset)


def load(path: PathLike) -> ImportedModel:
    """The ONNX model at ``path`` as an :class:`ImportedModel` (see docs/onnx.md).

    The file must be a regular file holding the whole model (external data is refused);
    unsupported operators, attributes or dtypes are listed in one OnnxError before
    anything is built.
    """
    onnx = require_onnx()
    data = checks.read_bytes(path)
    return from_proto(checks.parse(onnx, data, str(path)), str(path))
