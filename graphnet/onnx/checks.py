"""Hostile ONNX files: read only regular files of bounded size, and check a parsed model
completely (opset, external data, operators, attributes, dtypes, sizes, cycles) before
anything is built. Nothing in a model is ever executed."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..checks import host_memory_bytes
from ..io import open_regular
from .from_onnx import SPECS
from .support import MIN_IMPORT_OPSET, OPSET, OnnxError

MAX_FILE_BYTES = 2**31 - 1   # protobuf's own limit for one message
DEFAULT_DOMAINS = ("", "ai.onnx")
DTYPES = {1: "float32", 11: "float64", 7: "int64"}   # TensorProto codes graphnet reads
FLOAT_CODES = (1, 11)


def read_bytes(path: Any) -> bytes:
    """The bytes of the ONNX file at ``path``: a regular file, at most MAX_FILE_BYTES."""
    if not isinstance(path, (str, os.PathLike)):
        raise OnnxError(f"load: path must be a file path, got {type(path).__name__} {path!r}")
    path = Path(path)
    if not path.exists():
        raise OnnxError(f"{path}: no such ONNX file")
    try:
        with open_regular(path, OnnxError) as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise OnnxError(f"{path}: cannot be read: {exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise OnnxError(f"{path}: larger than {MAX_FILE_BYTES} bytes, the most one ONNX file "
                        "without external data can hold")
    return data


def parse(onnx: Any, data: bytes, source: str) -> Any:
    """The ``ModelProto`` in ``data``; OnnxError for bytes that are not one."""
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as exc:  # untrusted bytes: whatever protobuf raises
        raise OnnxError(f"{source}: not a readable ONNX model (truncated or corrupted?): "
                        f"{type(exc).__name__}: {str(exc)[:200]}") from None
    if not model.HasField("graph") or not model.graph.output:
        raise OnnxError(f"{source}: not a readable ONNX model (no graph with outputs; truncated "
                        "or not an ONNX file?)")
    return model


def check_model(onnx: Any, model: Any, source: str) -> list:
    """Every problem of ``model`` in one OnnxError; else its nodes, inputs before users."""
    _check_versions(onnx, model, source)
    problems: list[str] = []
    _check_tensors(onnx, model, problems)
    _check_nodes(onnx, model, problems)
    if problems:
        raise OnnxError(f"{source}: cannot import this ONNX model:\n  - " + "\n  - ".join(problems))
    return _node_order(model, source)


def _check_versions(onnx: Any, model: Any, source: str) -> None:
    if model.ir_version > onnx.IR_VERSION or model.ir_version < 3:
        raise OnnxError(f"{source}: ONNX IR version {model.ir_version} is not supported (this "
                        f"onnx package reads 3 to {onnx.IR_VERSION})")
    versions = {o.domain: o.version for o in model.opset_import}
    opset = max((versions[d] for d in DEFAULT_DOMAINS if d in versions), default=None)
    if opset is None or not MIN_IMPORT_OPSET <= opset <= OPSET:
        raise OnnxError(f"{source}: opset {opset} of the default ONNX domain is not supported: "
                        f"graphnet imports opsets {MIN_IMPORT_OPSET} to {OPSET} (re-export the "
                        f"model with opset {OPSET})")
    if model.functions:
        raise OnnxError(f"{source}: model-local functions are not supported "
                        f"({', '.join(f.name for f in model.functions)})")


def _tensors(model: Any):
    """``(what, TensorProto)`` of every tensor stored in the graph (initializers, Constants)."""
    for t in model.graph.initializer:
        yield f"initializer {t.name!r}", t
    for node in model.graph.node:
        for a in node.attribute:
            if a.HasField("t"):
                yield f"attribute {a.name!r} of node {node.name or node.op_type!r}", a.t


def _check_tensors(onnx: Any, model: Any, problems: list) -> None:
    limit = host_memory_bytes() or 2**40
    if model.graph.sparse_initializer:
        problems.append("sparse initializers are not supported")
    for what, t in _tensors(model):
        if t.data_location == onnx.TensorProto.EXTERNAL or t.external_data:
            problems.append(f"{what} refers to external data; graphnet refuses external data "
                            "(save the model with its weights inside the file)")
            continue
        if t.data_type not in DTYPES:
            problems.append(f"{what} has unsupported dtype "
                            f"{onnx.TensorProto.DataType.Name(t.data_type)} (supported: float32, "
                            "float64, int64)")
            continue
        count = 1
        for d in t.dims:
            count *= max(int(d), 0)
        itemsize = 4 if t.data_type == 1 else 8
        if count * itemsize > limit:
            problems.append(f"{what} declares shape {tuple(t.dims)}: {count * itemsize:.3g} "
                            f"bytes, more than this machine's memory")
            continue
        held = len(t.raw_data) // itemsize if t.raw_data else \
            len(t.float_data) + len(t.double_data) + len(t.int64_data)
        if held != count or (t.raw_data and len(t.raw_data) % itemsize):
            problems.append(f"{what} declares shape {tuple(t.dims)} ({count} values) but holds "
                            f"{held} (truncated or corrupted)")
    for what, info in _value_infos(model):
        _check_info(onnx, what, info, limit, problems)


def _value_infos(model: Any):
    g = model.graph
    init = {t.name for t in g.initializer}
    yield from ((f"input {i.name!r}", i) for i in g.input if i.name not in init)
    yield from ((f"output {o.name!r}", o) for o in g.output)


def _check_info(onnx: Any, what: str, info: Any, limit: int, problems: list) -> None:
    if not info.type.HasField("tensor_type"):
        problems.append(f"{what} is not a tensor (sequences, maps and optionals are not supported)")
        return
    tt = info.type.tensor_type
    if tt.elem_type not in DTYPES:
        problems.append(f"{what} has unsupported dtype "
                        f"{onnx.TensorProto.DataType.Name(tt.elem_type)} (supported: float32, "
                        "float64, int64)")
    count = 1
    for d in tt.shape.dim:
        if d.HasField("dim_value"):
            count *= max(int(d.dim_value), 0)
    if count * 8 > limit:
        problems.append(f"{what} declares dimensions of {count} values per tensor, more than "
                        "this machine's memory")


def _check_nodes(onnx: Any, model: Any, problems: list) -> None:
    consts = {t.name for t in model.graph.initializer}
    consts |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    for node in model.graph.node:
        label = f"node {node.name or '(unnamed)'!r} ({node.op_type})"
        spec = SPECS.get(node.op_type) if node.domain in DEFAULT_DOMAINS else None
        if spec is None:
            domain = f" of domain {node.domain!r}" if node.domain not in DEFAULT_DOMAINS else ""
            problems.append(f"{label}: operator {node.op_type!r}{domain} is not supported")
            continue
        for a in node.attribute:
            check = spec.attrs.get(a.name)
            why = "unknown to graphnet's importer" if check is None else \
                check(onnx.helper.get_attribute_value(a))
            if why:
                problems.append(f"{label}: attribute {a.name}="
                                f"{str(onnx.helper.get_attribute_value(a))[:60]} is not supported "
                                f"({why})")
        if len([i for i in node.input if i]) > spec.max_inputs or \
                any(o for o in node.output[1:]):
            problems.append(f"{label}: only {spec.max_inputs} inputs and one output are supported")
        for k in spec.consts:
            if k < len(node.input) and node.input[k] and node.input[k] not in consts:
                problems.append(f"{label}: input {k} ({node.input[k]!r}) must be a constant "
                                "(an initializer or a Constant node)")


def _node_order(model: Any, source: str) -> list:
    """The nodes, each after the nodes it reads from; OnnxError for a cycle or a missing tensor."""
    g = model.graph
    ready = {i.name for i in g.input} | {t.name for t in g.initializer} | {""}
    producers: dict[str, Any] = {}
    for node in g.node:
        for o in node.output:
            if o and (o in producers or o in ready):
                raise OnnxError(f"{source}: tensor {o!r} is produced twice (by node "
                                f"{node.name or node.op_type!r} and another)")
            producers[o] = node
    order, waiting = [], list(g.node)
    while waiting:
        left = [n for n in waiting if not all(i in ready for i in n.input)]
        if len(left) == len(waiting):
            break
        for n in waiting:
            if all(i in ready for i in n.input):
                order.append(n)
                ready.update(n.output)
        waiting = left
    missing = sorted({i for n in waiting for i in n.input if i not in ready and i not in producers})
    if missing:
        raise OnnxError(f"{source}: nodes read tensors that no input, initializer or node "
                        f"provides: {missing}")
    if waiting:
        raise OnnxError(f"{source}: the graph has a cycle through nodes "
                        f"{[n.name or n.op_type for n in waiting][:10]}")
    lost = [o.name for o in g.output if o.name not in ready]
    if lost:
        raise OnnxError(f"{source}: outputs {lost} are not computed by the graph")
    return order
