"""What the engine checks and how it words its errors: outputs, feeds, ``into=`` arrays,
run-time cost shape, non-finite values and failing ops."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Mapping

from .errors import (ArgumentTypeError, FeedError, GraphError, NumericsError, OutOfMemoryError,
                     RunError)
from .node import Input, Node, Parameter

if TYPE_CHECKING:
    from .reference import Reference as Graph


def output_list(outputs: Any) -> list[Node]:
    """``outputs`` (a sequence of nodes) as a list, or GraphError naming what is not a node."""
    if isinstance(outputs, (str, bytes, Mapping)) or not isinstance(outputs, Iterable):
        raise GraphError(f"Graph outputs must be a node or a list of nodes, got "
                         f"{type(outputs).__name__} {outputs!r}")
    outs = list(outputs)
    for k, o in enumerate(outs):
        if not isinstance(o, Node):
            raise GraphError(f"Graph outputs[{k}] must be a node, got {type(o).__name__} {o!r}")
    return outs


def resolve_feed(graph: "Graph", feed: Mapping[Any, Any]) -> dict[int, Any]:
    """``{input id: value}`` for ``feed``, each value checked by its input."""
    b = graph.backend
    by_name = graph.by_name
    if type(feed) is not dict and not isinstance(feed, Mapping):
        raise FeedError(f"the feed must be a dict {{input or its name: array}}, got "
                        f"{type(feed).__name__}")
    fed: dict[int, Any] = {}
    for key, value in feed.items():
        node = by_name.get(key) if isinstance(key, str) else key
        if not isinstance(node, Input) or node.id not in graph.index:
            label = key if isinstance(key, str) else getattr(key, "name", repr(key))
            other = " (a different Input of the same name)" if label in by_name else ""
            raise FeedError(f"feed names {label!r}{other}, which is not an input of this graph "
                            f"(inputs: {', '.join(repr(n.name) for n in graph.inputs)})")
        if node.id in fed:
            raise FeedError(f"input {node.name!r} is fed twice (once by the node, once by "
                            "its name): give it once")
        fed[node.id] = node.check_feed(b, value)
    return fed


def check_nodes(graph: "Graph", nodes: Any, who: str) -> tuple:
    """The ids of ``nodes``, a list of this graph's nodes, or an error saying what is not."""
    if not isinstance(nodes, (list, tuple)) or not all(isinstance(n, Node) for n in nodes):
        raise ArgumentTypeError(f"{who}(nodes=...) takes a list of this graph's nodes, got "
                                f"{nodes!r}")
    for n in nodes:
        if n.id not in graph.index:
            raise GraphError(f"{n!r} is not part of this graph")
    return tuple([n.id for n in nodes])


def check_targets(graph: "Graph", wrt: Any) -> tuple:
    """The nodes to differentiate: ``wrt``, or the trainable parameters where it is None."""
    if wrt is None:
        return tuple(p for p in graph.params if p.trainable)
    targets = tuple(wrt)
    for t in targets:
        if not isinstance(t, Node) or t.id not in graph.index:
            raise GraphError(f"cannot take a gradient with respect to {t!r}: "
                             "it is not part of this graph")
    return targets


def check_into(graph: "Graph", targets: tuple, values: list, into: Mapping[Node, Any]) -> None:
    """GraphError unless ``into`` has an array of the right kind for every target."""
    for t in targets:
        buf = into.get(t)
        if buf is None:
            raise GraphError(f"gradients(into=...) has no array for {t.name!r}")
        v = values[graph.index[t.id]]
        if v is None:  # not on the cost's path: its gradient is zero
            v = getattr(t, "value", None)
        shape = tuple(v.shape) if v is not None else t.shape
        dtype = v.dtype if v is not None else t.dtype
        if not graph.backend.is_array(buf) or tuple(buf.shape) != shape or buf.dtype != dtype:
            raise GraphError(f"gradients(into=...): the array for {t.name!r} must be a "
                             f"{graph.backend.name} array of shape {shape} and dtype {dtype}, "
                             f"got {type(buf).__name__} {tuple(getattr(buf, 'shape', ()))} "
                             f"{getattr(buf, 'dtype', '')}")


def check_scalar_cost(graph: "Graph", cost: Any) -> None:
    """GraphError if the cost's value is not a scalar."""
    if tuple(getattr(cost, "shape", ())) != ():
        raise GraphError(f"the cost must be a scalar, but {graph.cost.name!r} has shape "
                         f"{tuple(cost.shape)} at run time (reduce it, e.g. with .mean())")


def not_fed(node: Input) -> str:
    return (f"input {node.name!r} was not fed (pass it in the feed dict: "
            "graph.run({input: array}))")


def wrong_backend(graph: "Graph", node: Parameter) -> str:
    return (f"parameter {node.name!r} lives on the {node.backend.name!r} backend "
            f"but this graph runs on {graph.backend.name!r}: move the model first")


def check_finite(graph: "Graph", node: Node, values: list, arg_idx: tuple) -> None:
    xp = graph.backend.xp
    y = values[graph.index[node.id]]
    if y is None or not hasattr(y, "dtype") or y.dtype.kind != "f":
        return
    if bool(xp.isfinite(y).all()):
        return
    where = "input" if isinstance(node, Input) else f"op {node.op!r}"
    raise NumericsError(f"node {node.name!r} ({where}) produced non-finite values"
                        + _ranges(graph, values, arg_idx))

def _ranges(graph: "Graph", values: list, arg_idx: tuple) -> str:
    parts = []
    for j in arg_idx:
        v = values[j]
        name = graph.order[j].name
        if hasattr(v, "shape") and getattr(v, "size", 0):
            parts.append(f"{name!r} {tuple(v.shape)} range [{float(v.min()):.4g}, {float(v.max()):.4g}]")
        else:
            parts.append(f"{name!r} = {v!r}")
    return "; inputs: " + ", ".join(parts) if parts else ""

def describe_failure(graph: "Graph", node: Node, values: list, arg_idx: tuple, exc: Exception) -> str:
    shapes = ", ".join(f"{graph.order[j].name!r} {tuple(getattr(values[j], 'shape', ()))}"
                       for j in arg_idx)
    return f"op {node.op!r} at node {node.name!r} failed on inputs [{shapes}]: {exc}"


def run_failure(graph: "Graph", node: Node, values: list, arg_idx: tuple, exc: Exception,
                phase: str = "forward") -> Exception:
    """The error to raise for ``exc`` from ``node``'s ``phase``: a RunError, or for memory an
    OutOfMemoryError naming the batch size."""
    if not out_of_memory(exc):
        what = "" if phase == "forward" else f" ({phase})"
        return RunError(describe_failure(graph, node, values, arg_idx, exc) + what)
    fed = [values[graph.index[n.id]] for n in graph.inputs]
    batch = next((v.shape[0] for v in fed if getattr(v, "ndim", 0) >= 1), None)
    where = "host" if graph.backend.name == "numpy" else f"{graph.backend.name} device"
    return OutOfMemoryError(
        f"out of {where} memory in the {phase} of op {node.op!r} at node {node.name!r}"
        + (f", batch of {batch}" if batch is not None else "")
        + f": reduce the batch size ({type(exc).__name__}: {exc})")


# The status names with which the CUDA libraries report a failed allocation, as CuPy's error
# classes spell them at the start of their message (CUDARuntimeError, CUDADriverError,
# CUBLASError, CURANDError, CuFFTError, CUSOLVERError, CuSparseError, CuDNNError,
# CuTensorError, NVRTCError). Matched by name so that cupy is never imported here.
CUDA_OUT_OF_MEMORY = frozenset("""
cudaErrorMemoryAllocation CUDA_ERROR_OUT_OF_MEMORY CUBLAS_STATUS_ALLOC_FAILED
CURAND_STATUS_ALLOCATION_FAILED CUFFT_ALLOC_FAILED CUSOLVER_STATUS_ALLOC_FAILED
CUSPARSE_STATUS_ALLOC_FAILED CUDNN_STATUS_ALLOC_FAILED CUTENSOR_STATUS_ALLOC_FAILED
NVRTC_ERROR_OUT_OF_MEMORY
""".split())


def out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is the host's MemoryError or an array library's out-of-memory error
    (CuPy's allocator, or a CUDA runtime, driver or library call that could not allocate)."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    return _cuda_status(exc) in CUDA_OUT_OF_MEMORY


def _cuda_status(exc: BaseException) -> str:
    """The CUDA status name a CuPy error's message starts with ("" for other errors)."""
    if not type(exc).__module__.startswith("cupy"):
        return ""
    text = str(exc).lstrip()
    return text.split(":", 1)[0].split(None, 1)[0] if text else ""
