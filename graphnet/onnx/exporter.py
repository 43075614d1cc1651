"""graphnet -> ONNX: the inference graph of a Graph, a Classifier or output nodes."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ..backends.host import to_numpy
from ..errors import ArgumentTypeError
from ..graph import Graph, topological_order
from ..graph_checks import output_list
from ..hints import PathLike
from ..io import atomic_write
from ..node import Constant, Input, Node, Parameter
from .support import FROZEN, OPSET, OnnxError, require_onnx
from .to_onnx import CONVERTERS

PRODUCER = "graphnet"


class Emitter:
    """Collects the ONNX nodes, initializers and unique tensor names of one export."""

    def __init__(self, onnx: Any) -> None:
        self.onnx, self.helper = onnx, onnx.helper
        self.nodes: list = []
        self.initializers: list = []
        self.names: dict[int, str] = {}
        self.used: set[str] = set()
        self.scalars: dict[tuple, str] = {}

    def unique(self, hint: str) -> str:
        """A tensor name not used yet, ``hint`` itself where free."""
        name, k = hint, 1
        while name in self.used:
            name, k = f"{hint}_{k}", k + 1
        self.used.add(name)
        return name

    def name(self, node: Node, like: Optional[Node] = None) -> str:
        """The tensor name of ``node``'s value; a scalar constant takes ``like``'s dtype."""
        if isinstance(node, Constant) and node.dtype is None:
            dtype = np.dtype(like.dtype if like is not None and like.dtype is not None else "float32")
            key = (node.value, dtype.str)
            if key not in self.scalars:
                self.scalars[key] = self.fixed(np.asarray(node.value, dtype), "scalar")
            return self.scalars[key]
        if node.id not in self.names:
            if isinstance(node, Parameter):
                self.names[node.id] = self.const(to_numpy(node.value), node.name, node.trainable)
            elif isinstance(node, Constant):
                self.names[node.id] = self.fixed(to_numpy(node.value), node.name)
            else:
                self.names[node.id] = self.unique(node.name)
        return self.names[node.id]

    def const(self, array: np.ndarray, hint: str, trainable: bool = True) -> str:
        """An initializer holding ``array`` (a Parameter's value); returns its name."""
        name = self.unique(hint)
        tensor = self.onnx.numpy_helper.from_array(np.ascontiguousarray(array), name)
        if not trainable:
            tensor.doc_string = FROZEN
        self.initializers.append(tensor)
        return name

    def fixed(self, array: np.ndarray, hint: str) -> str:
        """A Constant node holding ``array`` (never trained, unlike initializers on import)."""
        value = self.onnx.numpy_helper.from_array(np.ascontiguousarray(array), hint)
        return self.add("Constant", [], self.unique(hint), value=value)

    def ints(self, values: Sequence[int], hint: str) -> str:
        """An int64 initializer (shapes, axes, slice bounds)."""
        return self.const(np.asarray(list(values), np.int64), hint)

    def add(self, op_type: str, inputs: Sequence[str], output: Optional[str] = None,
            **attrs: Any) -> str:
        """Append one ONNX node; returns its output's name (a new one unless given)."""
        out = output or self.unique(op_type.lower())
        self.nodes.append(self.helper.make_node(op_type, list(inputs), [out],
                                                name=self.unique(f"{out}_node"), **attrs))
        return out


def _source(model: Any) -> tuple[list[Node], Optional[Any]]:
    """The output nodes to export, and the Classifier when ``model`` is one."""
    from ..nn import Classifier
    if isinstance(model, Classifier):
        return [model.probs], model
    if isinstance(model, Graph):
        return list(model.outputs), None
    if isinstance(model, Node):
        return [model], None
    if isinstance(model, (list, tuple)) and model and all(isinstance(n, Node) for n in model):
        return output_list(model), None
    raise ArgumentTypeError(f"export: model must be a Graph, a graphnet.nn.Classifier, a node or "
                            f"a list of nodes, got {type(model).__name__}")


def _value_info(em: Emitter, name: str, node: Node) -> Any:
    dims = [d if d is not None else ("batch" if k == 0 else f"{name}_dim{k}")
            for k, d in enumerate(node.shape or ())]
    elem = em.helper.np_dtype_to_tensor_dtype(np.dtype(node.dtype or "float32"))
    return em.helper.make_tensor_value_info(name, elem, dims if node.shape is not None else None)


def _preprocess(em: Emitter, model: Any) -> Input:
    """The Classifier's raw-pixel input, as ``predict`` takes it (``(N, 28, 28)`` for MNIST),
    reshaped to the network's input and ``* pixel_scale - mean`` inside the graph."""
    images = model.images
    dtype = to_numpy(model.mean.value).dtype
    natural = tuple(model.image_shapes()[-1])  # without leading 1-axes, square if it is
    raw = Input(images.name, shape=(None,) + natural, dtype=dtype)
    x = em.name(raw)
    if natural != tuple(model.input_shape):
        x = em.add("Reshape", [x, em.ints((-1,) + tuple(model.input_shape), "input_shape")])
    scaled = em.add("Mul", [x, em.fixed(np.asarray(model.pixel_scale, dtype), "pixel_scale")])
    em.names[images.id] = em.add("Sub", [scaled, em.name(model.mean)], "centred")
    return raw


def _names(outputs: list[Node], given: Any) -> list[Optional[str]]:
    if given is None:
        return [None] * len(outputs)
    names = [given] if isinstance(given, str) else list(given) if isinstance(given, (list, tuple)) else None
    if names is None or len(names) != len(outputs) or not all(isinstance(n, str) and n for n in names) \
            or len(set(names)) != len(names):
        raise OnnxError(f"export: output_names must be {len(outputs)} distinct non-empty strings "
                        f"(one per output), got {given!r}")
    return names


def to_proto(model: Any, output_names: Any = None) -> Any:
    """The ONNX ``ModelProto`` of ``model``'s inference graph (opset :data:`OPSET`).

    Parameters become initializers; dimensions unknown at build time (the batch) become
    symbolic. A Classifier takes raw pixels and returns probabilities.
    """
    onnx = require_onnx()
    outputs, classifier = _source(model)
    wanted = _names(outputs, output_names if classifier is None or output_names else ["probabilities"])
    em = Emitter(onnx)
    inputs = [_preprocess(em, classifier)] if classifier is not None else []
    order = topological_order(outputs)
    inputs += [n for n in order if isinstance(n, Input) and n.id not in em.names]
    in_infos = [_value_info(em, em.name(n), n) for n in inputs]
    clash = sorted(set(n for n in wanted if n) & em.used)
    if clash:
        raise OnnxError(f"export: output_names {clash} are already taken (an input's name)")
    em.used |= {n for n in wanted if n}
    for node in order:
        if node.inputs and node.id not in em.names:
            _convert(em, node)
    out_infos, seen = [], set()
    for node, name in zip(outputs, wanted):
        src = em.name(node)
        out = src if name is None and node.inputs and src not in seen else \
            em.add("Identity", [src], name or em.unique(f"{node.name}_out"))
        seen.add(out)
        out_infos.append(_value_info(em, out, node))
    graph = em.helper.make_graph(em.nodes, "graphnet", in_infos, out_infos, em.initializers)
    proto = em.helper.make_model(graph, producer_name=PRODUCER,
                                 opset_imports=[em.helper.make_opsetid("", OPSET)])
    proto.ir_version = min(proto.ir_version, 8)  # opset 17 needs IR 8; older runtimes read it
    if any(n.shape is None for n in outputs):  # e.g. x[[0, 2]]: shapes from ONNX's inference
        proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    return proto


def _convert(em: Emitter, node: Node) -> None:
    convert = CONVERTERS.get(node.op)
    if convert is None:
        raise OnnxError(f"cannot export node {node.name!r}: op {node.op!r} has no ONNX "
                        f"counterpart in graphnet's exporter (docs/onnx.md lists the covered ops)")
    out = em.unique(node.name)
    em.names[node.id] = out
    convert(em, node, [em.name(x, like=node) for x in node.inputs], out)


def export(model: Any, path: PathLike, output_names: Any = None) -> Path:
    """Write ``model``'s inference graph to ``path`` (atomically); returns the path.

    ``model``: a :class:`~graphnet.Graph` (its outputs; the cost is left out), a
    :class:`graphnet.nn.Classifier` (raw pixels in, probabilities out, as ``predict_proba``)
    or output node(s). ``output_names``: one name per output (default: the nodes' names).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise ArgumentTypeError(f"export: path must be a file path, got {type(path).__name__}")
    data = to_proto(model, output_names).SerializeToString()
    path = Path(path)
    atomic_write(path, [data])
    return path
