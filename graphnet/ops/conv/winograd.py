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

Layout. Passes over short strided rows (every second element of rows of 26) cost NumPy
more than the products save, so the padded images are split by the parity of their rows
and columns: ``P[k0, l0, c, n, T, S] = padded[n, c, 2T + k0, 2S + l0]``, (2, 2, C, m, hq, wq)
with ``hq = th + 1``, ``wq = tw + 1``. The patch offset ``k = 2 k1 + k0`` (rows; columns
alike) is then a shift of ``k1 * wq`` (columns: ``l1``) along the flattened (C, m, hq, wq)
planes, so every pass is one contiguous run over the whole chunk. It computes "tiles" at
every (c, n, T, S) position: those in row ``T = th`` or column ``S = tw`` are junk (they
read the next row or image), dropped in forward, given zero gradient in backward. The
output comes as parity planes too (:class:`Tiles`), ``y[.., 2t + i, 2s + j] = planes[i, j,
.., t, s]``, which the fused 2x2 max-pool reads directly. All through the backend's ``xp``,
so CuPy runs it as well.
"""
from __future__ import annotations

from typing import Any, NamedTuple

from ...errors import ArgumentError

ALGORITHMS = ("auto", "im2col", "winograd")
_algorithm = "auto"
# Auto keeps im2col below this many input channels: measured (BENCHMARKS.md, session 7),
# conv C_in -> 64 3x3 on 26x26 + ReLU, Winograd took 1.3x im2col's time at C_in 8, as long at 16.
MIN_AUTO_CHANNELS = 16

# G (4x3): the weight transform U = G g G^T; B^T and A^T are written out as passes below.
G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))
PLANES = ((0, 0), (0, 1), (1, 0), (1, 1))  # (row, column) parity of the output planes


def set_algorithm(name: str) -> str:
    """Choose conv2d's method: ``"auto"`` (Winograd where it is faster), ``"im2col"`` or
    ``"winograd"`` (wherever it applies: 3x3 kernels, stride 1, inputs of one dtype,
    float32 or float64; im2col elsewhere). Returns the previous choice."""
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
            and x.dtype == w.dtype and x.dtype.kind == "f" and x.dtype.itemsize >= 4)
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
    return 16 * (c + co) * (th + 1) * (tw + 1) * itemsize


def weights(xp: Any, w: Any, dtype: Any) -> Any:
    """``U = G g G^T`` of each (C_out, C_in) 3x3 kernel as (16, C_out, C_in), contiguous."""
    g = xp.asarray(G, dtype=dtype)
    u = xp.einsum("ai,kcij,bj->abkc", g, w.astype(dtype, copy=False), g)
    return xp.ascontiguousarray(u.reshape(16, w.shape[0], w.shape[1]))


def weight_grad(xp: Any, du: Any, shape: tuple) -> Any:
    """The weight gradient ``G^T dU G`` (C_out, C_in, 3, 3) from ``dU`` (16, C_out, C_in)."""
    g = xp.asarray(G, dtype=du.dtype)
    return xp.einsum("ai,abkc,bj->kcij", g, du.reshape(4, 4, shape[0], shape[1]), g)


class Tiles(NamedTuple):
    """A block's output (forward) or a chunk's output gradient (backward) as parity planes.

    ``planes`` (2, 2, C_out, m, th + 1, tw + 1): ``y[:, :, 2t + i, 2s + j] = planes[i, j, :, :,
    t, s]``, row ``th`` and column ``tw`` junk (zero in backward); ``rows`` a (C_out, m, 2th,
    2tw) buffer for the same values as rows; ``oh``, ``ow`` the true output size.
    """

    planes: Any
    rows: Any
    oh: int
    ow: int

    def interleaved(self) -> Any:
        """The planes as rows (C_out, m, OH, 2tw), in ``rows``; the columns past OW junk."""
        th, tw = self.rows.shape[2] // 2, self.rows.shape[3] // 2
        for i, j in PLANES:
            self.rows[:, :, i::2, j::2] = self.planes[i, j, :, :, :th, :tw]
        return self.rows[:, :, :self.oh]

    def to_nchw(self, xp: Any, out: Any, bias: Any) -> None:
        """The planes into the NCHW ``out`` (m, C_out, OH, OW), ``bias`` (1, C_out, 1, 1)
        or None added."""
        for i, j in PLANES:
            r, c = (self.oh + 1 - i) // 2, (self.ow + 1 - j) // 2  # plane (i, j)'s share
            part = self.planes[i, j, :, :, :r, :c].transpose(1, 0, 2, 3)
            if bias is None:
                out[:, :, i::2, j::2] = part
            else:
                xp.add(part, bias, out=out[:, :, i::2, j::2])

    def from_nchw(self, g: Any) -> None:
        """All of the planes from the NCHW gradient ``g`` (m, C_out, OH, OW), junk zero."""
        for i, j in PLANES:
            r, c = (self.oh + 1 - i) // 2, (self.ow + 1 - j) // 2
            plane = self.planes[i, j]
            plane[:, :, :r, :c] = g[:, :, i::2, j::2].transpose(1, 0, 2, 3)
            plane[:, :, r:] = 0
            plane[:, :, :r, c:] = 0

    def split(self) -> None:
        """``planes`` from ``rows``, whose first OH rows hold the gradient (the rest: zero)."""
        th, tw = self.rows.shape[2] // 2, self.rows.shape[3] // 2
        if self.rows.shape[2] > self.oh:
            self.rows[:, :, self.oh:] = 0
        for i, j in PLANES:
            self.planes[i, j, :, :, :th, :tw] = self.rows[:, :, i::2, j::2]
        self.planes[..., th, :] = 0
        self.planes[..., :th, tw] = 0


class Buffers:
    """One worker's Winograd buffers for chunks of up to ``m`` images (flat, sliced per
    chunk); ``block``: the most images whose output planes are kept at once."""

    def __init__(self, xp: Any, sizes: tuple, m: int, block: int, dtype: Any,
                 backward: bool, need_x: bool = False) -> None:
        c, co, th, tw = sizes
        per = (th + 1) * (tw + 1)  # tiles per image and channel, junk included
        self.shape = (2, 2, c, m, th + 1, tw + 1)
        self.images = xp.zeros((2, 2, c * m * per + tw + 1), dtype=dtype)  # + a spare row
        self.rows = xp.empty((8 * (c * m * per + 1),), dtype=dtype)  # + a spare element
        self.v = xp.empty((16 * c * m * per,), dtype=dtype)
        self.m = xp.empty((16 * co * m * per,), dtype=dtype)
        self.t = xp.empty((8 * co * m * per,), dtype=dtype)  # half-done output transform
        self.planes = xp.empty((4 * co * block * per,), dtype=dtype)
        self.du = xp.empty((16, co, c), dtype=dtype) if backward else None
        self.vt = xp.empty((16 * c * m * per,), dtype=dtype) if backward else None  # V^T
        self.dimages = xp.empty((4 * (c * m * per + tw + 1),), dtype=dtype) if need_x else None


def view(buf: Any, *shape: int) -> Any:
    """The first ``prod(shape)`` elements of the flat ``buf`` as ``shape``."""
    size = 1
    for s in shape:
        size *= s
    return buf[:size].reshape(shape)


def _parity(p: int, n: int, k: int) -> tuple:
    """``(plane slice, image slice)``: the elements of parity ``k`` of a length-``n`` axis
    padded by ``p`` (padded index 2T + k = index + p)."""
    first = (k - p) % 2
    count = len(range(first, n, 2))
    return slice((first + p) // 2, (first + p) // 2 + count), slice(first, n, 2)


def load(xp: Any, x: Any, n0: int, n1: int, padding: tuple, b: Buffers) -> Any:
    """Images ``n0:n1`` of the NCHW ``x``, zero-padded, as flat parity planes (2, 2, C*m*hq*wq
    + wq), the last ``wq`` a spare zero row."""
    c, m, hq, wq = x.shape[1], n1 - n0, b.shape[4], b.shape[5]
    flat = c * m * hq * wq
    p = b.images if m == b.shape[3] else xp.zeros((2, 2, flat + wq), dtype=b.images.dtype)
    p6 = p[:, :, :flat].reshape(2, 2, c, m, hq, wq)
    for k in range(2):
        rows = _parity(padding[0], x.shape[2], k)
        for j in range(2):
            cols = _parity(padding[1], x.shape[3], j)
            p6[k, j, :, :, rows[0], cols[0]] = x[n0:n1, :, rows[1], cols[1]].transpose(1, 0, 2, 3)
    return p


def store(xp: Any, dp: Any, gx: Any, n0: int, n1: int, shape: tuple) -> None:
    """The images' gradient ``gx[n0:n1]`` (NCHW) from the padded one's flat parity planes
    ``dp``; ``shape``: (padding, hq, wq)."""
    padding, hq, wq = shape
    c, m = gx.shape[1], n1 - n0
    d6 = dp[:, :, :c * m * hq * wq].reshape(2, 2, c, m, hq, wq)
    for k in range(2):
        rows = _parity(padding[0], gx.shape[2], k)
        for j in range(2):
            cols = _parity(padding[1], gx.shape[3], j)
            gx[n0:n1, :, rows[1], cols[1]] = d6[k, j, :, :, rows[0], cols[0]].transpose(1, 0, 2, 3)


def _bt_pass(xp: Any, src: list, out: Any) -> None:
    """``out[a] = sum_k B^T[a, k] src[k]`` for the four arrays ``src`` (B^T's rows)."""
    xp.subtract(src[0], src[2], out=out[0])
    xp.add(src[1], src[2], out=out[1])
    xp.subtract(src[2], src[1], out=out[2])
    xp.subtract(src[1], src[3], out=out[3])


def input_transform(xp: Any, p: Any, c: int, wq: int, b: Buffers) -> Any:
    """``V = B^T d B`` of every 4x4 patch of the images' flat parity planes ``p`` (see
    :func:`load`) of ``c`` channels: (16, C, m*hq*wq)."""
    flat = p.shape[2] - wq
    r = view(b.rows, 4, 2, flat + 1)  # one spare element: the last junk tile reads it
    r[..., flat] = 0
    _bt_pass(xp, [p[k % 2, :, k // 2 * wq:k // 2 * wq + flat] for k in range(4)], r[..., :flat])
    v = view(b.v, 4, 4, flat)
    _bt_pass(xp, [r[:, k % 2, k // 2:k // 2 + flat] for k in range(4)], v.swapaxes(0, 1))
    return v.reshape(16, c, flat // c)


def output_transform(xp: Any, mm: Any, out: Any, b: Buffers) -> None:
    """``Y = A^T M A`` of the products ``mm`` (16, C_out, m*F) into planes ``out`` (2, 2, C_out, m, F)."""
    co, m, per = out.shape[2:]
    m5 = mm.reshape(4, 4, co, m, per)
    t = view(b.t, 2, 4, co, m, per)
    t0, t1 = t[0], t[1]
    xp.add(m5[0], m5[1], out=t0)
    xp.add(t0, m5[2], out=t0)
    xp.subtract(m5[1], m5[2], out=t1)
    xp.subtract(t1, m5[3], out=t1)
    even, odd = out[:, 0], out[:, 1]
    xp.add(t[:, 0], t[:, 1], out=even)
    xp.add(even, t[:, 2], out=even)
    xp.subtract(t[:, 1], t[:, 2], out=odd)
    xp.subtract(odd, t[:, 3], out=odd)


def output_adjoint(xp: Any, planes: Any, b: Buffers) -> Any:
    """``dM = A dY A^T`` per tile of the output gradient's ``planes``: (16, C_out, m*hq*wq)."""
    co = planes.shape[2]
    flat = planes[0, 0].size
    g3 = planes.reshape(2, 2, flat)
    s = view(b.t, 2, 4, flat)  # s[i, b] = sum_j dY[i, j] A^T[j, b]
    xp.copyto(s[:, 0], g3[:, 0])
    xp.add(g3[:, 0], g3[:, 1], out=s[:, 1])
    xp.subtract(g3[:, 0], g3[:, 1], out=s[:, 2])
    xp.negative(g3[:, 1], out=s[:, 3])
    dm = view(b.m, 4, 4, flat)
    xp.copyto(dm[0], s[0])
    xp.add(s[0], s[1], out=dm[1])
    xp.subtract(s[0], s[1], out=dm[2])
    xp.negative(s[1], out=dm[3])
    return dm.reshape(16, co, flat // co)


def _scatter(xp: Any, dv: list, even: Any, odd: Any, shift: int) -> None:
    """The adjoint of :func:`_bt_pass` and of the overlapping gather: offset ``k = 2 k1 + k0``
    of ``sum_a B^T[a, k] dv[a]`` added at a shift of ``k1 * shift`` into ``even`` (k0 = 0)
    or ``odd`` (k0 = 1), both written whole."""
    n = dv[0].shape[-1]
    head, tail = even[..., :n], even[..., shift:shift + n]
    xp.copyto(head, dv[0])  # k = 0
    even[..., n:] = 0
    xp.add(tail, dv[1], out=tail)  # k = 2: dv1 + dv2 - dv0
    xp.add(tail, dv[2], out=tail)
    xp.subtract(tail, dv[0], out=tail)
    head, tail = odd[..., :n], odd[..., shift:shift + n]
    xp.subtract(dv[1], dv[2], out=head)  # k = 1: dv1 - dv2 + dv3
    xp.add(head, dv[3], out=head)
    odd[..., n:] = 0
    xp.subtract(tail, dv[3], out=tail)  # k = 3: -dv3


def input_adjoint(xp: Any, dv: Any, wq: int, b: Buffers) -> Any:
    """``dd = B dV B^T`` of every patch from ``dv`` (16, C, m*hq*wq), the overlapping patches
    summed: the padded images' gradient as flat parity planes (2, 2, C*m*hq*wq + wq)."""
    flat = dv[0].size
    d3 = dv.reshape(4, 4, flat)
    r = view(b.rows, 4, 2, flat + 1)
    _scatter(xp, [d3[:, k] for k in range(4)], r[:, 0], r[:, 1], 1)  # columns, per row a
    dp = view(b.dimages, 2, 2, flat + wq)
    _scatter(xp, [r[a, :, :flat] for a in range(4)], dp[0], dp[1], wq)  # rows
    return dp
