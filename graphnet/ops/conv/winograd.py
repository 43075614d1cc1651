"""Winograd F(2x2, 3x3): a 3x3, stride-1 convolution in 2.25x fewer multiplications.

Each 2x2 block of outputs ("tile" t, s: output rows 2t, 2t+1 and columns 2s, 2s+1) comes
from the 4x4 input patch ``d`` at rows 2t..2t+3, columns 2s..2s+3 of the padded image:

    Y = A^T [ U (.) V ] A,   U = G g G^T (per weight),   V = B^T d B (per patch),

summed over the input channels, which makes the middle step 16 matrix products
``M[e] = U[e] @ V[e]``: (C_out, C_in) @ (C_in, tiles), e = 4a + b over the 16 entries.
The transforms with B, A and G are small add/subtract passes over whole arrays. Odd
output sizes get one extra output row/column, computed from zero padding and dropped.

Backward runs the adjoints: ``dM = A dY A^T``, ``dU += dM @ V^T`` (summed in the Winograd
domain per chunk group, turned into the weight gradient once, ``gw = G^T dU G``),
``dV = U^T @ dM`` and ``dd = B dV B^T``, the overlapping patches (stride 2) added back
into the padded images.

Layouts, per chunk of ``m`` images with ``th x tw`` tiles each: padded images (C, m,
2th + 2, 2tw + 2); ``V`` (4, 4, C, m, th, tw), ``M`` (4, 4, C_out, m, th, tw); the output
rows (C_out, m, 2th, 2tw). All through the backend's ``xp``, so CuPy runs it as well.
"""
from __future__ import annotations

from typing import Any

from ...errors import ArgumentError

ALGORITHMS = ("auto", "im2col", "winograd")
_algorithm = "auto"
MIN_AUTO_CHANNELS = 8  # auto keeps im2col below this many input channels (see choose)

# G (4x3): the weight transform U = G g G^T; B^T and A^T are written out as passes below.
G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))


def set_algorithm(name: str) -> str:
    """Choose conv2d's method: ``"auto"`` (Winograd where it is faster), ``"im2col"`` or
    ``"winograd"`` (wherever it applies: 3x3 kernels, stride 1, floating inputs of one
    dtype; im2col elsewhere). Returns the previous choice."""
    global _algorithm
    if not isinstance(name, str) or name not in ALGORITHMS:
        raise ArgumentError(f"algorithm must be one of {', '.join(map(repr, ALGORITHMS))}, "
                            f"got {name!r}")
    old, _algorithm = _algorithm, name
    return old


def choose(be: Any, x: Any, w: Any, stride: tuple) -> str:
    """``"winograd"`` or ``"im2col"`` for one call of conv2d on arrays ``x`` and ``w``.

    Auto picks Winograd on NumPy with at least :data:`MIN_AUTO_CHANNELS` input channels
    (below that the transforms cost more than the products save); CuPy keeps im2col.
    """
    fits = (tuple(w.shape[2:]) == (3, 3) and tuple(stride) == (1, 1)
            and x.dtype == w.dtype and x.dtype.kind == "f")
    if not fits or _algorithm == "im2col":
        return "im2col"
    if _algorithm == "winograd":
        return "winograd"
    return "winograd" if be.name == "numpy" and w.shape[1] >= MIN_AUTO_CHANNELS else "im2col"


def tiles(oh: int, ow: int) -> tuple:
    """The tiles ``(th, tw)`` that cover an ``oh x ow`` output (one spare row/column if odd)."""
    return -(-oh // 2), -(-ow // 2)


def chunk_bytes(c: int, co: int, oh: int, ow: int, itemsize: int) -> int:
    """One image's V and M (the largest buffers) in bytes: what sizes the chunks."""
    th, tw = tiles(oh, ow)
    return 16 * (c + co) * th * tw * itemsize


def weights(xp: Any, w: Any, dtype: Any) -> Any:
    """``U = G g G^T`` of each (C_out, C_in) 3x3 kernel as (16, C_out, C_in), contiguous."""
    g = xp.asarray(G, dtype=dtype)
    u = xp.einsum("ai,kcij,bj->abkc", g, w.astype(dtype, copy=False), g)
    return xp.ascontiguousarray(u.reshape(16, w.shape[0], w.shape[1]))


def weight_grad(xp: Any, du: Any, shape: tuple) -> Any:
    """The weight gradient ``G^T dU G`` (C_out, C_in, 3, 3) from ``dU`` (16, C_out, C_in)."""
    g = xp.asarray(G, dtype=du.dtype)
    return xp.einsum("ai,abkc,bj->kcij", g, du.reshape(4, 4, shape[0], shape[1]), g)


class Buffers:
    """One worker's Winograd buffers for chunks of up to ``m`` images (flat, sliced per chunk)."""

    def __init__(self, xp: Any, c: int, co: int, m: int, th: int, tw: int, dtype: Any,
                 backward: bool) -> None:
        self.rows = xp.empty((4 * c * m * th * (2 * tw + 2),), dtype=dtype)  # row pass / its adjoint
        self.v = xp.empty((16 * c * m * th * tw,), dtype=dtype)
        self.m = xp.empty((16 * co * m * th * tw,), dtype=dtype)
        self.t = xp.empty((8 * co * m * th * tw,), dtype=dtype)  # half-done output transform
        self.du = xp.empty((16, co, c), dtype=dtype) if backward else None


def _view(buf: Any, *shape: int) -> Any:
    size = 1
    for s in shape:
        size *= s
    return buf[:size].reshape(shape)


def _bt_pass(xp: Any, src: list, out: Any) -> None:
    """``out[a] = sum_k B^T[a, k] src[k]`` for the four slices ``src`` (B^T's rows)."""
    xp.subtract(src[0], src[2], out=out[0])
    xp.add(src[1], src[2], out=out[1])
    xp.subtract(src[2], src[1], out=out[2])
    xp.subtract(src[1], src[3], out=out[3])


def input_transform(xp: Any, images: Any, b: Buffers) -> Any:
    """``V = B^T d B`` of every 4x4 patch of the padded ``images``: (16, C, m*th*tw)."""
    c, m, hp, wp = images.shape
    th, tw = (hp - 2) // 2, (wp - 2) // 2
    r = _view(b.rows, 4, c, m, th, wp)
    _bt_pass(xp, [images[:, :, k:k + 2 * th - 1:2] for k in range(4)], r)
    v = _view(b.v, 4, 4, c, m, th, tw)
    _bt_pass(xp, [r[..., k:k + 2 * tw - 1:2] for k in range(4)], v.transpose(1, 0, 2, 3, 4, 5))
    return v.reshape(16, c, m * th * tw)


def output_transform(xp: Any, mm: Any, y: Any, b: Buffers) -> None:
    """``Y = A^T M A`` of the products ``mm`` (16, C_out, m*th*tw) into ``y`` (C_out, m, 2th, 2tw)."""
    co, m, th, tw = y.shape[0], y.shape[1], y.shape[2] // 2, y.shape[3] // 2
    m6 = mm.reshape(4, 4, co, m, th, tw)
    t = _view(b.t, 2, 4, co, m, th, tw)
    t0, t1 = t[0], t[1]
    xp.add(m6[0], m6[1], out=t0)
    xp.add(t0, m6[2], out=t0)
    xp.subtract(m6[1], m6[2], out=t1)
    xp.subtract(t1, m6[3], out=t1)
    for i in range(2):
        even, odd = y[:, :, i::2, 0::2], y[:, :, i::2, 1::2]
        xp.add(t[i, 0], t[i, 1], out=even)
        xp.add(even, t[i, 2], out=even)
        xp.subtract(t[i, 1], t[i, 2], out=odd)
        xp.subtract(odd, t[i, 3], out=odd)


def product(xp: Any, u: Any, images: Any, y: Any, b: Buffers) -> None:
    """The convolution of the padded ``images`` (C, m, 2th+2, 2tw+2) with ``U`` into ``y``."""
    v = input_transform(xp, images, b)
    mm = _view(b.m, 16, u.shape[1], v.shape[2])
    xp.matmul(u, v, out=mm)
    output_transform(xp, mm, y, b)


def output_adjoint(xp: Any, g: Any, b: Buffers) -> Any:
    """``dM = A dY A^T`` per tile of the output gradient ``g`` (C_out, m, 2th, 2tw): (16, C_out, m*th*tw)."""
    co, m, th, tw = g.shape[0], g.shape[1], g.shape[2] // 2, g.shape[3] // 2
    s = _view(b.t, 2, 4, co, m, th, tw)  # s[i, b] = sum_j dY[i, j] A^T[j, b]
    for i in range(2):
        even, odd = g[:, :, i::2, 0::2], g[:, :, i::2, 1::2]
        xp.copyto(s[i, 0], even)
        xp.add(even, odd, out=s[i, 1])
        xp.subtract(even, odd, out=s[i, 2])
        xp.negative(odd, out=s[i, 3])
    dm = _view(b.m, 4, 4, co, m, th, tw)
    xp.copyto(dm[0], s[0])
    xp.add(s[0], s[1], out=dm[1])
    xp.subtract(s[0], s[1], out=dm[2])
    xp.negative(s[1], out=dm[3])
    return dm.reshape(16, co, m * th * tw)


def _scatter(xp: Any, dv: list, out: Any) -> None:
    """``out[..., 2t + k] = sum over tiles t of (sum_a B^T[a, k] dv[a])[..., t]``: the adjoint
    of :func:`_bt_pass` on patches every 2 along the last axis (they overlap by 2)."""
    t = dv[0].shape[-1]
    even, odd = out[..., 0::2], out[..., 1::2]
    head, tail = even[..., :t], even[..., 1:]  # k = 0 of tile t, k = 2 of tile t - 1
    xp.copyto(head, dv[0])
    even[..., t] = 0
    xp.add(tail, dv[1], out=tail)
    xp.add(tail, dv[2], out=tail)
    xp.subtract(tail, dv[0], out=tail)
    head, tail = odd[..., :t], odd[..., 1:]  # k = 1 of tile t, k = 3 of tile t - 1
    xp.subtract(dv[1], dv[2], out=head)
    xp.add(head, dv[3], out=head)
    odd[..., t] = 0
    xp.subtract(tail, dv[3], out=tail)


def input_adjoint(xp: Any, dv: Any, images: Any, b: Buffers) -> None:
    """``dd = B dV B^T`` of every patch, the overlapping patches summed, into all of
    ``images`` (C, m, 2th + 2, 2tw + 2), from ``dv`` (16, C, m*th*tw)."""
    c, m, hp, wp = images.shape
    th, tw = (hp - 2) // 2, (wp - 2) // 2
    d6 = dv.reshape(4, 4, c, m, th, tw)
    r = _view(b.rows, 4, c, m, th, wp)
    _scatter(xp, [d6[:, k] for k in range(4)], r)  # the columns of each row a
    _scatter(xp, [r[a].swapaxes(-1, -2) for a in range(4)], images.swapaxes(-1, -2))


def grads(xp: Any, u: Any, images: Any, g: Any, b: Buffers, dimages: Any) -> None:
    """One chunk's share of the gradients from its output gradient ``g`` (C_out, m, 2th, 2tw):
    ``dM @ V^T`` into ``b.du``; with ``dimages`` (not None), the images' gradient into it."""
    v = input_transform(xp, images, b)
    dm = output_adjoint(xp, g, b)
    xp.matmul(dm, v.transpose(0, 2, 1), out=b.du)
    if dimages is not None:
        dv = _view(b.v, 16, u.shape[2], dm.shape[2])  # V is no longer needed
        xp.matmul(u.transpose(0, 2, 1), dm, out=dv)
        input_adjoint(xp, dv, dimages, b)
