"""The shape of graphnet.ops.conv: small modules, the planner imported only by the fused
steps, every old import path still working, and a short call chain below a conv op."""
from __future__ import annotations

import ast
import importlib
import os
import sys
from pathlib import Path

import numpy as np
import pytest

import graphnet as gn
from graphnet import ops, parallel
from graphnet.ops import conv
from graphnet.optim import Adam

from cupy_emulation.catalog import package_source  # noqa: E402

PACKAGE = package_source() / "ops" / "conv"  # the source as written, also under mutmut
ROOT = os.path.dirname(gn.__file__)


def _modules():
    return sorted(PACKAGE.glob("*.py"))


def test_every_module_is_small():
    sizes = {p.name: len(p.read_text().splitlines()) for p in _modules()}
    assert len(sizes) >= 5 and max(sizes.values()) <= 450, sizes


def _imported(path: Path) -> set:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            names.add("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_only_the_fused_steps_import_the_planner_and_only_register_fusion():
    for path in _modules():
        engine_side = {m for m in _imported(path) if m.split(".")[-1] in ("planner", "stepgen")}
        assert not engine_side or path.name == "fusion.py", (path.name, engine_side)
    tree = ast.parse((PACKAGE / "fusion.py").read_text())
    taken = [a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
             and (n.module or "").endswith("planner") for a in n.names]
    assert taken == ["register_fusion"]


OLD_NAMES = ["conv2d", "max_pool2d", "avg_pool2d", "set_im2col_limit", "IM2COL_LIMIT_BYTES",
             "Conv2d", "MaxPool2d", "AvgPool2d", "ConvGeometry", "im2col", "col2im",
             "COL2IM_BODY", "conv_row_width", "pool_offsets", "max_pool_backward",
             "MAX_POOL_BW_BODY", "BLOCK_CHUNKS", "DEFAULT_CHUNK_BYTES"]


@pytest.mark.parametrize("name", OLD_NAMES)
def test_old_names_import_from_graphnet_ops_conv(name):
    assert getattr(importlib.import_module("graphnet.ops.conv"), name) is not None


def test_the_im2col_limit_read_from_the_package_is_the_current_one():
    old = conv.set_im2col_limit(12345)
    try:
        assert conv.IM2COL_LIMIT_BYTES == 12345
    finally:
        conv.set_im2col_limit(old)
    assert conv.IM2COL_LIMIT_BYTES == old


def test_moved_modules_re_export_the_same_objects():
    from graphnet.ops import fused
    for name in ("GROUPS", "set_workers", "workers", "for_each_chunk", "run_scope"):
        assert getattr(parallel, name) is getattr(conv, name)
    assert fused.ConvActivation is conv.ConvActivation
    sys.modules.pop("graphnet.ops.conv_pool", None)
    with pytest.warns(DeprecationWarning, match="graphnet.ops.conv"):
        old = importlib.import_module("graphnet.ops.conv_pool")
    assert old.ConvMaxPool is conv.ConvMaxPool and old.first_max_index is conv.first_max_index


def _cnn(order):
    """conv 4x3x3, ReLU, max-pool 2 (in ``order``), flatten, two linear layers, Adam."""
    rng = np.random.default_rng(0)
    x = gn.Input("x", shape=(None, 1, 28, 28))
    y = gn.Input("y", shape=(None,), dtype="int64")
    w1, b1 = gn.Parameter(0.3 * rng.standard_normal((4, 1, 3, 3))), gn.Parameter(np.zeros(4))
    z = ops.conv2d(x, w1, b1)
    for step in order:
        z = gn.relu(z) if step == "relu" else ops.max_pool2d(z, 2)
    z = ops.flatten(z)
    w2, b2 = gn.Parameter(0.1 * rng.standard_normal((z.shape[1], 16))), gn.Parameter(np.zeros(16))
    w3, b3 = gn.Parameter(0.1 * rng.standard_normal((16, 10))), gn.Parameter(np.zeros(10))
    logits = ops.linear(gn.relu(ops.linear(z, w2, b2)), w3, b3)
    graph = gn.Graph(logits, cost=ops.softmax_cross_entropy(logits, y))
    return graph, x, y, Adam([w1, b1, w2, b2, w3, b3], lr=1e-3)


def _depths(graph, opt, feed) -> dict:
    """Per (conv op class, method): the most graphnet frames from it down, itself included."""
    deepest: dict = {}

    def profile(frame, event, arg):
        if event != "call" or not frame.f_code.co_filename.startswith(ROOT):
            return
        depth, f = 0, frame
        while f is not None:
            if f.f_code.co_filename.startswith(ROOT):
                depth += 1
                me = f.f_locals.get("self") if f.f_code.co_name in ("forward", "backward") else None
                if me is not None and type(me).__name__ in ("Conv2d", "ConvActivation", "ConvMaxPool"):
                    key = (type(me).__name__, f.f_code.co_name)
                    deepest[key] = max(deepest.get(key, 0), depth)
                    return
            f = f.f_back

    opt.minimize(graph, feed)  # the first step builds the plan and generates its code
    sys.setprofile(profile)
    try:
        opt.minimize(graph, feed)
    finally:
        sys.setprofile(None)
    return deepest


@pytest.mark.parametrize("order,fused", [(("relu", "pool"), "ConvActivation"),
                                         (("pool", "relu"), "ConvMaxPool")])
@pytest.mark.parametrize("limit", [None, 1])
def test_a_conv_op_calls_at_most_five_frames_deep(numpy_backend, order, fused, limit):
    graph, x, y, opt = _cnn(order)
    rng = np.random.default_rng(1)
    feed = {x: rng.standard_normal((32, 1, 28, 28)).astype(np.float32),
            y: rng.integers(0, 10, 32)}
    old_workers = parallel.set_workers(1)  # every chunk on the thread the profile sees
    old_limit = conv.set_im2col_limit(limit) if limit else None  # 32 chunks in 8 blocks
    try:
        depths = _depths(graph, opt, feed)
    finally:
        parallel.set_workers(old_workers)
        if old_limit is not None:
            conv.set_im2col_limit(old_limit)
    assert set(depths) == {(fused, "forward"), (fused, "backward")}
    assert max(depths.values()) <= 5, depths
