"""conv2d fused with what follows it in training steps, and convolution chunks on threads.

conv2d followed by max_pool2d:

The fused step (graphnet/ops/conv/fusion.py) must give the bits of the two nodes run one
after the other by the reference executor, in every case the fusion meets: ties (flat
regions, as MNIST's background gives), NaN in a window, NaN and inf in the upstream
gradient, windows that leave rows or columns over, strides, padding, no bias, float64,
a short last chunk, and windows it does not fuse (overlapping, with gaps). Chunks on
several threads must give the bits of one thread. conv2d followed by an activation (the
activation applied to each chunk in place) must also give the two nodes' bits.
"""
from __future__ import annotations

import numpy as np
import pytest

import graphnet as gn
from graphnet import ops, parallel
from graphnet.errors import ArgumentError
from graphnet.ops.conv import set_im2col_limit
from graphnet.ops.conv import first_max_index
from graphnet.ops.unary import keep_where


def _bits(a) -> bytes:
    a = np.ascontiguousarray(gn.to_numpy(a))
    return a.dtype.str.encode() + str(a.shape).encode() + a.tobytes()


def _assert_bits(a, b, what: str) -> None:
    a, b = gn.to_numpy(a), gn.to_numpy(b)
    if _bits(a) != _bits(b):
        diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
        pytest.fail(f"{what}: not the same bits (shape {a.shape} vs {b.shape}, "
                    f"max |difference| {np.nanmax(diff) if diff.size else 0})")


def _net(x_shape, w_shape, with_bias=True, stride=1, padding=0, pool=2, pool_stride=None):
    x = gn.Input("x", shape=(None,) + x_shape[1:])
    w = gn.Input("w", shape=w_shape)
    b = gn.Input("b", shape=(w_shape[0],)) if with_bias else None
    y = ops.max_pool2d(ops.conv2d(x, w, b, stride=stride, padding=padding), pool, pool_stride)
    r = gn.Input("r", shape=None)
    cost = gn.sum(gn.tanh(y) * r)
    return (x, w, b, r), y, cost


def _data(rng, x_shape, w_shape, dtype, flat=False, nan=False):
    x = rng.standard_normal(x_shape).astype(dtype)
    if flat:  # constant patches: every window of the conv output there is a tie
        x[:, :, : x_shape[2] // 2] = 0.5
    if nan:
        x[0, 0, 1, 1] = np.nan
    w = (0.3 * rng.standard_normal(w_shape)).astype(dtype)
    b = (0.1 * rng.standard_normal(w_shape[0])).astype(dtype)
    return x, w, b


def _compare(x_shape, w_shape, dtype=np.float32, flat=False, nan=False, nan_grad=False,
             with_bias=True, **conv):
    nodes, y, cost = _net(x_shape, w_shape, with_bias, **conv)
    x, w, b, r = nodes
    fast = gn.Graph(y, cost=cost)
    ref = gn.Graph(y, cost=cost, plan="reference")
    rng = np.random.default_rng(7)
    xv, wv, bv = _data(rng, x_shape, w_shape, dtype, flat, nan)
    out_shape = ref.run({x: xv, w: wv, **({b: bv} if with_bias else {})})[0].shape
    rv = rng.standard_normal(out_shape).astype(dtype)
    if nan_grad:
        rv.reshape(-1)[:3] = [np.nan, np.inf, -np.inf]
    feed = {x: xv, w: wv, r: rv, **({b: bv} if with_bias else {})}
    wrt = [x, w] + ([b] if with_bias else [])
    for step in range(2):  # the second step reuses the first one's arrays
        c1, g1 = fast.gradients(feed, wrt=wrt, return_cost=True)
        c2, g2 = ref.gradients(feed, wrt=wrt, return_cost=True)
        _assert_bits(c1, c2, f"step {step} cost")
        for node in wrt:
            _assert_bits(g1[node], g2[node], f"step {step} gradient of {node.name}")
    fused = fast.planner.fused_ops(fast._targets(wrt))
    return fused


CASES = {
    "mnist-like, ties": dict(x_shape=(5, 3, 14, 14), w_shape=(4, 3, 3, 3), flat=True),
    "nan in a window": dict(x_shape=(3, 2, 10, 10), w_shape=(3, 2, 3, 3), nan=True),
    "nan and inf upstream": dict(x_shape=(3, 2, 10, 10), w_shape=(3, 2, 3, 3), nan_grad=True),
    "rows and columns left over": dict(x_shape=(3, 2, 9, 11), w_shape=(3, 2, 3, 3), pool=3),
    "strided, padded conv": dict(x_shape=(4, 2, 11, 11), w_shape=(3, 2, 3, 3), stride=2,
                                 padding=1),
    "no bias": dict(x_shape=(3, 2, 8, 8), w_shape=(3, 2, 3, 3), with_bias=False),
    "float64": dict(x_shape=(3, 2, 8, 8), w_shape=(3, 2, 3, 3), dtype=np.float64, flat=True),
    "rectangular windows": dict(x_shape=(3, 2, 10, 12), w_shape=(3, 2, 3, 3), pool=(2, 3)),
    "overlapping windows (not fused)": dict(x_shape=(3, 2, 10, 10), w_shape=(3, 2, 3, 3),
                                            pool=3, pool_stride=2),
    "windows with gaps (not fused)": dict(x_shape=(3, 2, 10, 10), w_shape=(3, 2, 3, 3),
                                          pool=2, pool_stride=3),
}


@pytest.mark.parametrize("name", list(CASES))
def test_fused_conv_pool_gives_the_bits_of_the_two_nodes(backend, name):
    assert _compare(**CASES[name]) == ["conv2d+max_pool2d"], "the fusion did not happen"


def test_short_last_chunk_and_many_chunks(numpy_backend):
    old = set_im2col_limit(3 * 27 * 14 * 4 * 2)  # two images per chunk: 5 images -> 2, 2, 1
    try:
        _compare(x_shape=(5, 3, 14, 14), w_shape=(4, 3, 3, 3), flat=True)
    finally:
        set_im2col_limit(old)


def test_blocks_of_chunks(backend):
    """One image per chunk, 40 chunks: forward takes them in blocks of 4, backward one by
    one; both must agree on where each window's maximum was."""
    old = set_im2col_limit(2 * 9 * 8 * 10 * 4)  # one image's cols per chunk
    try:
        _compare(x_shape=(40, 2, 10, 10), w_shape=(3, 2, 3, 3), flat=True)
        _compare(x_shape=(37, 2, 10, 10), w_shape=(3, 2, 3, 3), pool=3)  # a short last block
    finally:
        set_im2col_limit(old)


def test_chunks_on_threads_give_the_bits_of_one_thread(numpy_backend):
    if parallel._blas_controller() is None:
        pytest.skip("threadpoolctl cannot drive this BLAS: chunks always run on one thread")
    nodes, y, cost = _net((16, 3, 14, 14), (4, 3, 3, 3))
    x, w, b, r = nodes
    rng = np.random.default_rng(3)
    xv, wv, bv = _data(rng, (16, 3, 14, 14), (4, 3, 3, 3), np.float32, flat=True)
    feed = {x: xv, w: wv, b: bv, r: rng.standard_normal((16, 4, 6, 6)).astype(np.float32)}
    old_limit = set_im2col_limit(3 * 9 * 12 * 14 * 4)  # one image per chunk: 16 chunks
    results = []
    try:
        for n in (1, 2, 3):
            parallel.set_workers(n)
            assert parallel.workers(gn.backend(), 16) == n
            g = gn.Graph(y, cost=cost)
            c, grads = g.gradients(feed, wrt=[x, w, b], return_cost=True)
            results.append([c, grads[x], grads[w], grads[b], g.run(feed)[0]])
    finally:
        parallel.set_workers(None)
        set_im2col_limit(old_limit)
    for n, res in zip((2, 3), results[1:]):
        for k, (a, b_) in enumerate(zip(results[0], res)):
            _assert_bits(a, b_, f"{n} workers, result {k}")


def test_a_failing_chunk_raises_and_restores_blas_threads(numpy_backend):
    blas = parallel._blas_controller()
    if blas is None:
        pytest.skip("threadpoolctl cannot drive this BLAS")
    before = blas.get_num_threads()
    parallel.set_workers(2)
    try:
        def work(scratch, c):
            if c == 3:
                raise RuntimeError("chunk 3 failed")
        with pytest.raises(RuntimeError, match="chunk 3 failed"):
            parallel.for_each_chunk(gn.backend(), 6, work, lambda: None)
    finally:
        parallel.set_workers(None)
    assert blas.get_num_threads() == before


def test_every_chunk_runs_once_in_group_order(numpy_backend):
    seen = []
    parallel.set_workers(2)
    try:
        parallel.for_each_chunk(gn.backend(), 11, lambda s, c: seen.append(c), lambda: None)
    finally:
        parallel.set_workers(None)
    assert sorted(seen) == list(range(11))
    for group in range(parallel.GROUPS):
        mine = [c for c in seen if c % parallel.GROUPS == group]
        assert mine == sorted(mine), f"group {group} ran out of order: {mine}"


@pytest.mark.parametrize("bad", [0, parallel.GROUPS + 1, 1.5, "2", True])
def test_set_workers_refuses_bad_counts(bad):
    with pytest.raises((ArgumentError, TypeError), match="workers"):
        parallel.set_workers(bad)


def test_first_max_index_picks_the_first_maximum(backend):
    xp = backend.xp
    d = np.array([[1, 5, 5, np.nan, 2, 0],
                  [3, 5, 1, 1.0, 2, -0.0],
                  [3, 1, 5, 1.0, 2, 0],
                  [2, 4, 5, 1.0, 2, 0]], dtype=np.float32)
    mx = np.array([3, 5, 5, np.nan, 2, 0], dtype=np.float32)
    out = xp.zeros(6, dtype=xp.uint8)
    first_max_index(backend, xp.asarray(d), xp.asarray(mx), out)
    # column 3: a NaN maximum has no first maximum (4 = none); column 5: -0 == 0
    assert gn.to_numpy(out).tolist() == [1, 0, 0, 4, 0, 0]


def test_first_max_index_refuses_huge_windows(numpy_backend):
    with pytest.raises(ValueError, match="255"):
        first_max_index(numpy_backend, np.zeros((255, 2)), np.zeros(2), np.zeros(2, np.uint8))


def test_keep_where_passes_nan_and_inf_only_where_kept(backend):
    xp = backend.xp
    a = np.array([np.nan, np.inf, -1.0, -np.inf, 2.0], dtype=np.float32)
    cond = np.array([False, False, False, True, True])
    out = xp.empty(5, dtype=xp.float32)
    keep_where(backend, xp.asarray(cond), xp.asarray(a), out=out)
    got = gn.to_numpy(out)
    assert _bits(got) == _bits(np.array([0.0, 0.0, 0.0, -np.inf, 2.0], dtype=np.float32))
    assert not np.signbit(got[2]), "a dropped -1 must give +0, not -0"


@pytest.mark.parametrize("act", ["relu", "tanh", "sigmoid"])
@pytest.mark.parametrize("nan_grad", [False, True])
def test_fused_conv_activation_gives_the_bits_of_the_two_nodes(backend, act, nan_grad):
    x = gn.Input("x", shape=(None, 2, 9, 9))
    w = gn.Input("w", shape=(3, 2, 3, 3))
    b = gn.Input("b", shape=(3,))
    y = getattr(gn, act)(ops.conv2d(x, w, b, padding=1))
    r = gn.Input("r", shape=None)
    cost = gn.sum(y * r)  # the activation's gradient meets r directly, NaN and inf included
    rng = np.random.default_rng(11)
    xv, wv, bv = _data(rng, (5, 2, 9, 9), (3, 2, 3, 3), np.float32, flat=True)
    rv = rng.standard_normal((5, 3, 9, 9)).astype(np.float32)
    if nan_grad:
        rv.reshape(-1)[:4] = [np.nan, np.inf, -np.inf, np.nan]
    feed = {x: xv, w: wv, b: bv, r: rv}
    fast, ref = gn.Graph(y, cost=cost), gn.Graph(y, cost=cost, plan="reference")
    old = set_im2col_limit(2 * 18 * 9 * 11 * 4)  # several chunks, the last one short
    try:
        for step in range(2):
            c1, g1 = fast.gradients(feed, wrt=[x, w, b], return_cost=True)
            c2, g2 = ref.gradients(feed, wrt=[x, w, b], return_cost=True)
            _assert_bits(c1, c2, f"step {step} cost")
            for node in (x, w, b):
                _assert_bits(g1[node], g2[node], f"step {step} gradient of {node.name}")
    finally:
        set_im2col_limit(old)
    assert fast.planner.fused_ops(fast._targets([x, w, b])) == [f"conv2d+{act}"]


def _small_cnn_step(workers: int):
    from graphnet import nn, optim
    parallel.set_workers(workers)
    try:
        gn.seed(5)
        net = nn.Sequential([nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 8, 3), nn.MaxPool2d(2),
                             nn.ReLU(), nn.Flatten(), nn.Linear(8 * 5 * 5, 700), nn.ReLU(),
                             nn.Linear(700, 10)])
        x = gn.Input("x", shape=(None, 1, 14, 14))
        y = gn.Input("y", shape=(None,), dtype="int64")
        logits = net(x)
        graph = gn.Graph(logits, cost=gn.softmax_cross_entropy(logits, y))
        opt = optim.Adam(net.parameters(), lr=1e-2)
        rng = np.random.default_rng(0)
        for _ in range(3):
            feed = {x: rng.standard_normal((48, 1, 14, 14)).astype(np.float32),
                    y: rng.integers(0, 10, 48)}
            opt.minimize(graph, feed)
        return [gn.to_numpy(p.value).copy() for p in net.parameters()]
    finally:
        parallel.set_workers(None)


def test_training_steps_on_workers_give_the_bits_of_one_thread(numpy_backend):
    """Chunks on workers with the BLAS held at one thread for the whole step (run_scope)
    give the bits of a run on one thread."""
    blas = parallel._blas_controller()
    if blas is None:
        pytest.skip("threadpoolctl cannot drive this BLAS")
    before = blas.get_num_threads()
    old = set_im2col_limit(4 * 9 * 12 * 14 * 4)  # a few images per chunk
    try:
        blas.set_num_threads(1)  # one worker, one BLAS thread: a plain single-thread run
        try:
            one = _small_cnn_step(1)
        finally:
            blas.set_num_threads(before)
        two = _small_cnn_step(2)
    finally:
        set_im2col_limit(old)
    for k, (a, b) in enumerate(zip(one, two)):
        _assert_bits(a, b, f"parameter {k} after 3 Adam steps")
    assert blas.get_num_threads() == before


def test_workers_follow_the_blas_thread_count(numpy_backend):
    """OPENBLAS_NUM_THREADS=1 (or threadpoolctl's limit) means one core: one worker."""
    blas = parallel._blas_controller()
    if blas is None:
        pytest.skip("threadpoolctl cannot drive this BLAS")
    before = blas.get_num_threads()
    try:
        for n in (1, 2, 3):
            blas.set_num_threads(n)
            assert parallel.workers(numpy_backend, 64) == n
            assert parallel.workers(numpy_backend, 1) == 1  # one chunk: nothing to share
        blas.set_num_threads(8)
        assert parallel.workers(numpy_backend, 64) == parallel.GROUPS
    finally:
        blas.set_num_threads(before)
    device = type("Device", (), {"host_parallel": False})()  # e.g. CuPy: no host threads
    assert parallel.workers(device, 64) == 1


def test_run_scope_needs_a_graph():
    with pytest.raises(TypeError, match="run_scope needs a graphnet Graph, got list"):
        with parallel.run_scope([1, 2]):
            pass
