"""Every CUDA kernel graphnet defines, found two ways, and compiled with NVRTC (no device needed).

- ``declared_kernel_names()`` reads graphnet's source: each call that makes a kernel
  (``ElementwiseKernel``/``RawKernel``/``ReductionKernel``/``RawModule``, or a helper that passes
  its own parameter on as the kernel name, such as ``CupyBackend.elementwise``) and the string
  names that can reach it.
- ``launched_kernels()`` trains small networks on the CuPy backend running on the emulation, in
  float32 and float64, and records every kernel launch with its real arguments.
``compile_with_nvrtc`` then builds the CUDA source exactly as CuPy's own code generator does for
those arguments, with CuPy's headers and options, and compiles it for a given architecture.
COMPILED ONLY: nothing here executes a kernel on a GPU.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

CONSTRUCTORS = {"ElementwiseKernel": 3, "RawKernel": 1, "ReductionKernel": 7, "RawModule": None}


def package_source(checkout: Path = Path(__file__).resolve().parents[2]) -> Path:
    """graphnet's own source files, also when mutmut runs the tests from its ``mutants/`` copy
    (the tests that read the source, not run it, take it from here).

    mutmut rewrites the copy (each function beside its mutated variants, whose kernel names
    are mutated too), so the scan reads the unmutated package the copy was made from.
    """
    if checkout.name == "mutants" and (checkout.parent / "graphnet").is_dir():
        return checkout.parent / "graphnet"
    return checkout / "graphnet"


GRAPHNET = package_source()


# --- what the source declares ------------------------------------------------------------
def declared_kernel_names(root: Path = GRAPHNET) -> tuple[set[str], list[str]]:
    """(kernel names found in graphnet's source, places whose kernel name cannot be read)."""
    trees = {p: ast.parse(p.read_text()) for p in sorted(root.rglob("*.py"))}
    makers = dict(CONSTRUCTORS)  # function name -> position of its kernel-name argument
    names: set[str] = set()
    unknown: list[str] = []
    for _ in range(4):  # helpers of helpers: iterate to a fixed point
        names, unknown, grew = set(), [], False
        for path, tree in trees.items():
            for func, call in _calls(tree, makers):
                expr = _name_arg(call, makers[_callee(call)])
                found = _strings(expr, func)
                if found:
                    names |= found
                elif (helper := _passes_own_parameter(expr, func)) and helper not in makers:
                    makers[helper], grew = _param_position(func, _own_param(expr)), True
                elif not _passes_own_parameter(expr, func):
                    unknown.append(f"{path.name}:{call.lineno}")
        if not grew:
            break
    return names, unknown


def _callee(call: ast.Call) -> str:
    f = call.func
    return f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")


def _calls(tree: ast.AST, makers: dict) -> list:
    """(enclosing function or None, call) for each call to a kernel maker."""
    out = []

    def visit(node: ast.AST, func: Any) -> None:
        for child in ast.iter_child_nodes(node):
            inner = child if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else func
            if isinstance(child, ast.Call) and _callee(child) in makers:
                out.append((func, child))
            visit(child, inner)
    visit(tree, None)
    return out


def _name_arg(call: ast.Call, position: int | None) -> ast.AST | None:
    for kw in call.keywords:
        if kw.arg == "name":
            return kw.value
    if position is not None and len(call.args) > position:
        return call.args[position]
    return None


def _strings(expr: Any, func: Any) -> set[str]:
    """The string constants ``expr`` can evaluate to (literals, conditionals, local names)."""
    if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
        return {expr.value}
    if isinstance(expr, ast.IfExp):
        return _strings(expr.body, func) | _strings(expr.orelse, func)
    if isinstance(expr, ast.Name) and func is not None:
        out: set[str] = set()
        for node in ast.walk(func):
            if isinstance(node, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id == expr.id for t in node.targets):
                out |= _strings(node.value, func)
        return out
    return set()


def _passes_own_parameter(expr: Any, func: Any) -> str | None:
    """The enclosing function's name if ``expr`` is one of its parameters (a kernel helper)."""
    if func is None:
        return None
    if isinstance(expr, ast.JoinedStr):  # f"graphnet_{name}"
        inner = [v.value for v in expr.values if isinstance(v, ast.FormattedValue)]
        expr = inner[0] if len(inner) == 1 else None
    params = [a.arg for a in func.args.args + func.args.kwonlyargs]
    return func.name if isinstance(expr, ast.Name) and expr.id in params else None


def _own_param(expr: Any) -> str:
    if isinstance(expr, ast.JoinedStr):
        expr = next(v.value for v in expr.values if isinstance(v, ast.FormattedValue))
    return expr.id


def _param_position(func: Any, name: str) -> int:
    params = [a.arg for a in func.args.args]
    pos = params.index(name) if name in params else 0
    return pos - 1 if params and params[0] == "self" else pos


# --- what the code launches ---------------------------------------------------------------
@dataclass(frozen=True)
class Launch:
    """One kernel as launched: its spec and the arguments' kinds, dtypes and dimensions."""
    name: str
    in_spec: str
    out_spec: str
    operation: str
    preamble: str
    args: tuple  # per parameter: ("array", dtype name, ndim, c_contiguous) or ("scalar", dtype name)
    types: tuple  # (placeholder, dtype name) pairs

    @property
    def dtype_label(self) -> str:
        return ",".join(f"{t}={d}" for t, d in self.types) or "fixed"


def launched_kernels() -> tuple[list[Launch], str | None]:
    """Every distinct kernel launch made by small training runs on the emulated CuPy backend,
    and the error that stopped the runs early, if any (the launches before it are kept, so a
    kernel whose body does not compile is still handed to NVRTC)."""
    from . import _kernels, emulated
    error, recorded = None, []
    _kernels.RECORD = recorded
    try:
        with emulated():
            import graphnet as gn
            from graphnet.backends.cupy_backend import CupyBackend
            with gn.use_backend(CupyBackend()):
                for dtype in ("float32", "float64"):
                    with gn.default_dtype(dtype):
                        try:
                            _train_a_little(gn)
                        except Exception as exc:  # noqa: BLE001 - reported by the tests
                            error = error or f"{dtype}: {type(exc).__name__}: {exc}"
    finally:
        _kernels.RECORD = None
    seen: dict[Launch, None] = {}
    for kern, sig in recorded:
        seen.setdefault(_describe(kern, sig), None)
    return list(seen), error


def _train_a_little(gn: Any) -> None:
    """Two steps of every optimizer on a network using every layer kind graphnet has."""
    from graphnet import nn, optim
    gn.seed(0)
    net = nn.Sequential([nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 2, stride=2),
                         nn.BatchNorm2d(4), nn.Tanh(), nn.Dropout(0.25), nn.Flatten(),
                         nn.Linear(None, 8), nn.Sigmoid(), nn.Linear(8, 8), nn.ReLU(),
                         nn.Dropout(0.5), nn.Linear(8, 10)])
    model = nn.Classifier(net, input_shape=(1, 10, 10))
    rng = np.random.default_rng(0)
    x = gn.asarray(rng.integers(0, 255, size=(6, 1, 10, 10)))
    y = gn.asarray(rng.integers(0, 10, size=6))
    model.fit_preprocessing(x)
    feed = {model.images: model.prepare(x), model.labels: y}
    for opt in (optim.SGD(model.parameters(), lr=0.1),
                optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4),
                optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True),
                optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)):
        for _ in range(2):
            opt.minimize(model.train_graph, feed)  # the update masked on the cost
        opt.step(model.train_graph.gradients(feed))  # the plain update
    model.eval_graph.run(feed)


def _describe(kern: Any, sig: tuple) -> Launch:
    params = kern.in_params + kern.out_params
    types: dict[str, str] = {}
    for p, a in zip(params, sig):
        if p.placeholder and a[0] == "array":
            types.setdefault(p.ctype, a[1])
    kinds = []
    for k, p in enumerate(params):
        a = sig[k] if k < len(sig) else ("array", types.get(p.ctype, p.ctype), 1, True)  # allocated out
        if a[0] == "array":
            _, dtype, ndim, contiguous = a
            # CuPy indexes a contiguous non-raw array through a reduced, 1-d view
            kinds.append(("array", dtype, ndim if p.raw or not contiguous else 1, contiguous, p.raw))
        else:
            kinds.append(("scalar", np.dtype(types.get(p.ctype, p.ctype)).name))
    return Launch(kern.name, kern.in_spec, kern.out_spec, kern.operation, kern.preamble,
                  tuple(kinds), tuple(sorted(types.items())))


# --- NVRTC --------------------------------------------------------------------------------
def nvrtc_unavailable_reason() -> str | None:
    """Why NVRTC cannot be used here (None when it can)."""
    import sys
    if getattr(sys.modules.get("cupy"), "__graphnet_emulation__", False):
        return "`cupy` is the CPU emulation in this process (GRAPHNET_CUPY_EMULATION=force), not real CuPy"
    try:
        from cupy.cuda import compiler
    except Exception as exc:  # noqa: BLE001 - any import failure means "cannot compile here"
        return f"CuPy is not importable ({exc}); install graphnet[cuda12-compile]"
    try:
        compiler._get_nvrtc_version()
    except Exception as exc:  # noqa: BLE001
        return f"the NVRTC runtime library does not load ({exc}); pip install nvidia-cuda-nvrtc-cu12"
    probe = Launch("probe", "T x", "T y", "y = x", "", (("array", "float32", 1, True, False),) * 2,
                   (("T", "float32"),))
    try:
        cuda_source(probe)  # CuPy's code generator is internal API: check this CuPy has it
    except Exception as exc:  # noqa: BLE001
        import cupy
        return f"CuPy {cupy.__version__}'s internal kernel code generator differs ({exc!r})"
    return None


def cuda_source(launch: Launch) -> str:
    """The CUDA source CuPy generates for ``launch`` (its code generator, its headers)."""
    import cupy
    from cupy._core import _kernel, core
    kern = cupy.ElementwiseKernel(launch.in_spec, launch.out_spec, launch.operation,
                                  launch.name, preamble=launch.preamble)
    infos = []
    for kind in launch.args:
        if kind[0] == "array":
            _, dtype, ndim, contiguous, _raw = kind
            infos.append(_kernel._ArgInfo(1, cupy.ndarray, np.dtype(dtype), ndim, contiguous, True))
        else:
            infos.append(_kernel._ArgInfo(3, np.dtype(kind[1]).type, np.dtype(kind[1]), 0, True, True))
    infos.append(_kernel._ArgInfo(2, None, None, 1, True, True))  # the indexer
    type_map = _kernel._TypeMap(tuple((t, np.dtype(d).type) for t, d in launch.types))
    code = _kernel._get_elementwise_kernel_code(tuple(infos), type_map, kern.params,
                                                kern.operation, kern.name, kern.preamble)
    header = "".join(f"#include <{h}>\n" for h in core._cupy_header_list)
    return header + code


def compile_with_nvrtc(source: str, arch: str) -> bytes:
    """``source`` compiled by NVRTC for ``arch`` (``"sm_90"``: a cubin) with CuPy's options.

    Raises ``cupy.cuda.compiler.CompileException`` with the compiler's log on an error.
    """
    from cupy._core import core
    from cupy.cuda import compiler
    options = core.assemble_cupy_compiler_options(()) + (
        f"-arch={arch}", "--device-as-default-execution-space")
    program = compiler._NVRTCProgram(source, "graphnet_kernel.cu",
                                     method="cubin" if arch.startswith("sm_") else "ptx")
    binary, _ = program.compile(options)
    return binary


if __name__ == "__main__":  # python -m tests.cupy_emulation.catalog: list and compile them all
    declared, unread = declared_kernel_names()
    print(f"declared kernel names: {sorted(declared)}; unreadable: {unread}")
    launches, error = launched_kernels()
    if error:
        print(f"the survey stopped early: {error}")
    reason = nvrtc_unavailable_reason()
    for launch in launches:
        for arch in ("sm_90", "sm_80"):
            status = "skipped: " + reason if reason else \
                f"{len(compile_with_nvrtc(cuda_source(launch), arch))} bytes"
            print(f"{launch.name} [{launch.dtype_label}] {arch}: {status}")
