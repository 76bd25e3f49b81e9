"""Anisotropy-aware, anti-aliased downsampling of huge volumes into an OME-Zarr pyramid.

Light-sheet voxels are anisotropic (e.g. 1.6 × 1.6 µm in-plane, 4-6 µm in z), so each axis gets
its own factor ``target / source``; an axis already at or coarser than the target is left alone.

Each axis is resampled by a 1D linear operator, applied separably (x, then y, then z):

* ``mean``: block mean over an integer factor (the box filter is its own anti-aliasing); a
  trailing partial block is the mean of the voxels it has.
* ``gaussian``: for other factors, the scikit-image ``resize(anti_aliasing=True, order=1)``
  recipe: Gaussian prefilter with sigma = (factor - 1) / 2 (truncate 4, mirror boundary), then
  linear interpolation at pixel-centre positions ``(i + 0.5) * factor - 0.5``. Prefilter and
  interpolation are fused into one banded weight matrix per axis.

Because every output row needs only a short band of input rows, the operator streams: z-slabs
(and y-bands within them) flow through :class:`AxisStream`, which keeps only the rows still
needed (the halo). Memory is bounded by one input block plus a few output planes, and the
streamed result is identical to :func:`downsample_array` on the whole array.

Level 0 is at the target spacing; each further level halves y and x by block mean, and z too
once that keeps z no coarser than the new in-plane spacing (near-isotropic data).
"""

from __future__ import annotations

import itertools
import math
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from selma3d.core.schema import schema_default
from selma3d.core.atomic import atomic_path
from selma3d.io import case_name, open_reader
from selma3d.io.omezarr import ChunkIO, create_ome_zarr, write_block, zarr_workers
from selma3d.preprocess.blocks import STREAM_BLOCK_BYTES, lcm, plan_blocks, prefetch, progress_bar

METHODS = ("auto", "mean", "gaussian")
_INT_TOL = 1e-6
_PARALLEL_MIN = 1 << 22  # voxels; smaller blocks are not worth a thread hand-off


# --------------------------------------------------------------------------------------------
# 1D operators


@dataclass
class AxisOp:
    """Output row ``i`` = sum_t ``w[i, t] * input[idx[i, t]]`` along one axis."""

    n_in: int
    n_out: int
    kind: str  # identity | mean | gaussian
    factor: float  # output spacing / input spacing
    idx: np.ndarray  # (n_out, T) int64 input indices (mirror-folded into range)
    w: np.ndarray  # (n_out, T) float32 weights

    def __post_init__(self) -> None:
        live = self.w != 0
        big = np.iinfo(np.int64).max
        lo = np.where(live, self.idx, big).min(axis=1) if self.n_out else np.zeros(0, np.int64)
        hi = np.where(live, self.idx, -1).max(axis=1) + 1 if self.n_out else np.zeros(0, np.int64)
        lo = np.where(lo == big, 0, lo)
        #: the last input row (exclusive) output i needs, made monotone for streaming
        self.hi = np.maximum.accumulate(hi) if self.n_out else hi
        #: the first input row any output >= i needs (rows below can be dropped)
        self.keep_from = np.minimum.accumulate(lo[::-1])[::-1] if self.n_out else lo


def _mirror(p: np.ndarray, n: int) -> np.ndarray:
    """scipy.ndimage ``mode='mirror'`` index folding (d c b | a b c d | c b a)."""
    if n == 1:
        return np.zeros_like(p)
    period = 2 * (n - 1)
    p = np.abs(p) % period
    return np.where(p >= n, period - p, p)


def integer_factor(f: float) -> int | None:
    r = round(f)
    return int(r) if r >= 1 and abs(f - r) < _INT_TOL else None


def axis_op(n: int, factor: float, method: str = "auto") -> AxisOp:
    """The 1D resampling operator for an axis of ``n`` voxels shrunk by ``factor``.

    ``factor <= 1`` gives the identity (no upsampling). ``method``: ``auto`` (block mean for
    integer factors, Gaussian + linear otherwise), ``mean`` (integer factors only) or
    ``gaussian``.
    """
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, found {method!r}")
    if n < 1:
        raise ValueError(f"axis length must be >= 1, found {n}")
    if factor <= 1 + _INT_TOL:
        idx = np.arange(n, dtype=np.int64)[:, None]
        return AxisOp(n, n, "identity", 1.0, idx, np.ones((n, 1), np.float32))
    k = integer_factor(factor)
    if method == "mean" and k is None:
        raise ValueError(f"method 'mean' needs an integer factor, found {factor:g}")
    if k is not None and method in ("auto", "mean"):
        n_out = -(-n // k)
        idx = np.arange(n_out, dtype=np.int64)[:, None] * k + np.arange(k)[None, :]
        valid = idx < n
        counts = valid.sum(axis=1, keepdims=True)
        w = np.where(valid, 1.0 / counts, 0.0).astype(np.float32)
        return AxisOp(n, n_out, "mean", float(k), np.minimum(idx, n - 1), w)
    # Gaussian prefilter (sigma from the factor, scipy's kernel) fused with linear interpolation.
    n_out = max(1, int(math.floor(n / factor + 0.5)))
    sigma = max(0.0, (factor - 1) / 2)
    radius = int(4.0 * sigma + 0.5)
    taps = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 / sigma**2 * taps.astype(np.float64) ** 2) if sigma > 0 else np.ones(1)
    kernel /= kernel.sum()
    centres = (np.arange(n_out) + 0.5) * factor - 0.5
    i0 = np.floor(centres).astype(np.int64)
    frac = centres - i0
    T = 2 * (2 * radius + 1)
    idx = np.zeros((n_out, T), np.int64)
    w = np.zeros((n_out, T), np.float64)
    for i in range(n_out):
        acc: dict[int, float] = {}
        for p, wp in ((i0[i], 1.0 - frac[i]), (i0[i] + 1, frac[i])):
            if wp == 0.0:
                continue
            q = int(_mirror(np.array([p]), n)[0])  # the filtered signal is mirror-symmetric too
            for j, kj in zip(_mirror(q + taps, n), kernel):
                acc[int(j)] = acc.get(int(j), 0.0) + wp * kj
        items = sorted(acc.items())
        idx[i, : len(items)] = [j for j, _ in items]
        idx[i, len(items):] = items[0][0]
        w[i, : len(items)] = [v for _, v in items]
    used = int((w != 0).sum(axis=1).max())
    return AxisOp(n, n_out, "gaussian", float(factor), idx[:, :used].copy(), w[:, :used].astype(np.float32))


def _is_regular(idx: np.ndarray, w: np.ndarray) -> bool:
    """Rows that are one strided slice per tap with shared weights (block mean, identity)."""
    if idx.shape[0] == 1:
        return True
    d = np.diff(idx, axis=0)
    return bool(d[0, 0] > 0 and np.all(d == d[0, 0]) and np.all(w == w[0]))


def _apply_into(out: np.ndarray, a: np.ndarray, idx: np.ndarray, w: np.ndarray, axis: int) -> None:
    R, T = idx.shape
    regular = _is_regular(idx, w)
    step = int(idx[1, 0] - idx[0, 0]) if R > 1 else 1
    bshape = [1] * a.ndim
    bshape[axis] = R
    if regular and T > 1 and a.dtype.kind in "ui" and a.dtype.itemsize <= 2 and np.all(w[0] == w[0, 0]):
        # block mean of 8/16-bit data: exact integer sum, one scaling (about 1.5x faster)
        acc = None
        for t in range(T):
            sl = [slice(None)] * a.ndim
            start = int(idx[0, t])
            sl[axis] = slice(start, start + step * (R - 1) + 1, step)
            if acc is None:
                acc = a[tuple(sl)].astype(np.int32 if a.dtype.kind == "i" else np.uint32)
            else:
                acc += a[tuple(sl)]
        np.multiply(acc, w[0, 0], out=out, dtype=np.float32, casting="unsafe")
        return
    tmp = np.empty(out.shape, np.float32) if T > 1 else None
    for t in range(T):
        if regular:
            sl = [slice(None)] * a.ndim
            start = int(idx[0, t])
            sl[axis] = slice(start, start + step * (R - 1) + 1, step)
            src, wt = a[tuple(sl)], w[0, t]
        else:
            src, wt = np.take(a, idx[:, t], axis=axis), w[:, t].reshape(bshape)
        dest = out if t == 0 else tmp
        np.multiply(src, wt, out=dest, dtype=np.float32, casting="unsafe")
        if t:
            out += tmp


def apply_op(a: np.ndarray, op: AxisOp, axis: int, r0: int = 0, r1: int | None = None,
             offset: int = 0, pool: ThreadPoolExecutor | None = None) -> np.ndarray:
    """Output rows ``r0:r1`` of ``op`` along ``axis`` of ``a``, whose row 0 is input row
    ``offset``. Returns float32. Each output value is computed by the same arithmetic (same
    weights, same order) whichever rows are asked for, so streamed and whole-array results
    are bit-identical. With a ``pool``, large blocks are split across its threads along
    another axis (numpy releases the GIL in these loops)."""
    r1 = op.n_out if r1 is None else r1
    idx = op.idx[r0:r1] - offset
    w = op.w[r0:r1]
    R = r1 - r0
    shape = list(a.shape)
    shape[axis] = R
    if op.kind == "identity":
        sl = [slice(None)] * a.ndim
        if R:
            sl[axis] = slice(int(idx[0, 0]), int(idx[0, 0]) + R)
        else:
            sl[axis] = slice(0, 0)
        return np.array(a[tuple(sl)], dtype=np.float32)
    out = np.empty(shape, np.float32)
    if R == 0:
        return out
    # a block mean with a partial last block is regular except for its last row
    split = R if _is_regular(idx, w) or R == 1 else (R - 1 if _is_regular(idx[:-1], w[:-1]) else 0)
    jobs = []
    for lo, hi in ((0, split), (split, R)):
        if hi > lo:
            sl = [slice(None)] * a.ndim
            sl[axis] = slice(lo, hi)
            jobs.append((tuple(sl), idx[lo:hi], w[lo:hi]))
    other = 0 if axis != 0 else 1
    n_threads = getattr(pool, "_max_workers", 1) if pool is not None else 1
    if n_threads > 1 and a.size >= _PARALLEL_MIN and a.shape[other] >= n_threads:
        bounds = np.linspace(0, a.shape[other], n_threads + 1).astype(int)
        tasks = []
        for sl, ii, ww in jobs:
            for b0, b1 in zip(bounds[:-1], bounds[1:]):
                part = [slice(None)] * a.ndim
                part[other] = slice(b0, b1)
                dst = list(sl)
                dst[other] = slice(b0, b1)
                tasks.append(pool.submit(_apply_into, out[tuple(dst)], a[tuple(part)], ii, ww, axis))
        for t in tasks:
            t.result()
    else:
        for sl, ii, ww in jobs:
            _apply_into(out[sl], a, ii, ww, axis)
    return out


class AxisStream:
    """Apply an :class:`AxisOp` to input arriving in consecutive blocks along one axis,
    emitting each output row as soon as its input band is complete and dropping input rows no
    longer needed (the halo is all that is kept)."""

    def __init__(self, op: AxisOp, axis: int, pool: ThreadPoolExecutor | None = None):
        self.op, self.axis, self.pool = op, axis, pool
        self.buf: np.ndarray | None = None
        self.buf_start = 0
        self.received = 0
        self.emitted = 0
        self.peak_rows = 0

    def push(self, block: np.ndarray) -> np.ndarray | None:
        """Feed the next rows; returns the output rows now complete (or None)."""
        self.buf = block if self.buf is None else np.concatenate([self.buf, block], axis=self.axis)
        self.received += block.shape[self.axis]
        self.peak_rows = max(self.peak_rows, self.buf.shape[self.axis])
        ready = int(np.searchsorted(self.op.hi, self.received, side="right"))
        if ready <= self.emitted:
            return None
        out = apply_op(self.buf, self.op, self.axis, self.emitted, ready, self.buf_start, self.pool)
        self.emitted = ready
        keep = int(self.op.keep_from[ready]) if ready < self.op.n_out else self.received
        drop = max(0, keep - self.buf_start)
        if drop:
            sl = [slice(None)] * self.buf.ndim
            sl[self.axis] = slice(drop, None)
            self.buf = self.buf[tuple(sl)].copy() if drop < self.buf.shape[self.axis] else None
            self.buf_start += drop
        return out

    @property
    def done(self) -> bool:
        return self.emitted == self.op.n_out


def to_dtype(a: np.ndarray, dtype) -> np.ndarray:
    """Round and clip float results into the volume's dtype (already-converted data as is)."""
    dtype = np.dtype(dtype)
    if a.dtype == dtype:
        return a
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        return np.clip(np.rint(a), info.min, info.max).astype(dtype)
    if dtype.kind == "b":
        return a >= 0.5
    return a.astype(dtype)


# --------------------------------------------------------------------------------------------
# Exact integer block mean: the fast kernel for the common case


_BAND_BYTES = 1 << 20  # input bytes per kernel step: small enough to stay in cache


def exact_mean_factors(dtype, ops: Sequence[AxisOp]) -> tuple[int, int, int] | None:
    """The per-axis factors when :class:`BlockMean` reproduces the operators bit for bit.

    That holds for 8/16-bit integers shrunk by block means over power-of-two factors whose
    product keeps every intermediate of the float32 reference exact (``bits + log2(F) <= 24``):
    each reference step then scales an integer sum by a power of two, so the reference's
    float32 values are exactly ``sum / F`` and rounding them is rounding the integer sum.
    Partial blocks at the volume's far edges are left to the reference arithmetic.
    """
    dtype = np.dtype(dtype)
    if dtype.kind not in "ui" or dtype.itemsize > 2:
        return None
    ks = []
    for op in ops:
        k = 1 if op.kind == "identity" else (int(op.factor) if op.kind == "mean" else 0)
        if k < 1 or k & (k - 1):
            return None
        ks.append(k)
    total = ks[0] * ks[1] * ks[2]
    if dtype.itemsize * 8 + total.bit_length() - 1 > 24:
        return None
    return tuple(ks)


class BlockMean:
    """Level 0 of the pyramid for :func:`exact_mean_factors` cases: the block mean as integer
    sums (z planes, then rows, then columns, in cache-sized bands), then one rounding.

    Bit-identical to the separable float32 operators (x, then y, then z, then
    :func:`to_dtype`); the partial blocks at the volume's far edges go through those
    operators themselves. Blocks must start on the factor grid.
    """

    def __init__(self, shape: Sequence[int], dtype, ops: Sequence[AxisOp], factors: Sequence[int]):
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.ops = list(ops)
        self.k = tuple(int(f) for f in factors)
        self.acc = np.dtype(np.int32 if self.dtype.kind == "i" else np.uint32)
        self.scale = np.float32(1.0 / (self.k[0] * self.k[1] * self.k[2]))

    def __call__(self, block: np.ndarray, z0: int, y0: int) -> np.ndarray:
        """Output voxels of the input ``block`` at ``(z0, y0, 0)`` (it spans all of x):
        shape ``(ceil(bz / kz), ceil(by / ky), n_out_x)``."""
        kz, ky, kx = self.k
        bz, by, X = block.shape
        if z0 % kz or y0 % ky or X != self.shape[2]:
            raise ValueError(f"block at ({z0}, {y0}) of shape {block.shape} is not on the factor grid {self.k}")
        if (bz % kz and z0 + bz != self.shape[0]) or (by % ky and y0 + by != self.shape[1]):
            raise ValueError(f"block at ({z0}, {y0}) of shape {block.shape} ends inside a factor block")
        zc, yc, xc = bz - bz % kz, by - by % ky, X - X % kx
        out = np.empty((-(-bz // kz), -(-by // ky), self.ops[2].n_out), self.dtype)
        if zc and yc and xc:
            self._core(block[:zc, :yc, :xc], out[:zc // kz, :yc // ky, :xc // kx])
        # partial blocks at the far edges: the reference operators on just those voxels
        for zs, ys, xs in ((slice(0, zc), slice(0, yc), slice(xc, X)),
                           (slice(0, zc), slice(yc, by), slice(0, X)),
                           (slice(zc, bz), slice(0, by), slice(0, X))):
            if zs.stop > zs.start and ys.stop > ys.start and xs.stop > xs.start:
                lo = (zs.start // kz, ys.start // ky, xs.start // kx)
                hi = (-(-zs.stop // kz), -(-ys.stop // ky), -(-xs.stop // kx))
                dst = tuple(slice(a, b) for a, b in zip(lo, hi))
                out[dst] = self._reference(block[zs, ys, xs], (z0 + zs.start, y0 + ys.start, xs.start),
                                           [a + o // k for a, o, k in zip(lo, (z0, y0, 0), self.k)],
                                           [b + o // k for b, o, k in zip(hi, (z0, y0, 0), self.k)])
        return out

    def _core(self, a: np.ndarray, out: np.ndarray) -> None:
        kz, ky, kx = self.k
        bz, by, X = a.shape
        rows = max(ky, (_BAND_BYTES // max(1, kz * X * a.itemsize)) // ky * ky)
        for g in range(bz // kz):
            planes = a[g * kz:(g + 1) * kz]
            for r0 in range(0, by, rows):
                r1 = min(by, r0 + rows)
                s = planes[0, r0:r1].astype(self.acc)
                for p in planes[1:]:
                    s += p[r0:r1]
                if ky > 1:
                    s = s.reshape((r1 - r0) // ky, ky, X)
                    t = s[:, 0] + s[:, 1]
                    for j in range(2, ky):
                        t += s[:, j]
                    s = t
                if kx > 1:
                    t = s[:, 0::kx] + s[:, 1::kx]
                    for j in range(2, kx):
                        t += s[:, j::kx]
                    s = t
                out[g, r0 // ky:r1 // ky] = to_dtype(np.multiply(s, self.scale, dtype=np.float32), self.dtype)

    def _reference(self, a: np.ndarray, origin, lo, hi) -> np.ndarray:
        t = a
        for axis in (2, 1, 0):
            t = apply_op(t, self.ops[axis], axis, lo[axis], hi[axis], origin[axis])
        return to_dtype(t, self.dtype)


# --------------------------------------------------------------------------------------------
# Planning and the in-memory reference


@dataclass
class Level:
    """One pyramid level: its shape, the per-axis factor from the previous level, its voxel size
    and its translation (voxel 0's centre in the source frame, µm)."""

    shape: tuple[int, int, int]
    factors: tuple[float, float, float]
    spacing: tuple[float, float, float]
    translation: tuple[float, float, float]
    methods: tuple[str, str, str]


def plan_pyramid(shape: Sequence[int], spacing: Sequence[float], target_spacing: Sequence[float],
                 levels: int = 3, method: str = "auto") -> list[Level]:
    """Level 0 at ``target_spacing`` (no upsampling on any axis), then ×2 in-plane per level,
    and ×2 in z while z stays no coarser than the new in-plane spacing."""
    if len(target_spacing) != 3 or min(target_spacing) <= 0:
        raise ValueError(f"target_spacing_um: expected three positive numbers (z, y, x), found {target_spacing}")
    if levels < 1:
        raise ValueError(f"levels: expected >= 1, found {levels}")
    src = np.asarray(spacing, float)
    factors = [max(1.0, t / s) for t, s in zip(target_spacing, src)]
    factors = [float(integer_factor(f) or f) for f in factors]
    ops = [axis_op(n, f, method) for n, f in zip(shape, factors)]
    total = np.asarray(factors)
    out = [Level(tuple(o.n_out for o in ops), tuple(factors), tuple((src * total).tolist()),
                 tuple(((total - 1) / 2 * src).tolist()), tuple(o.kind for o in ops))]
    for _ in range(1, levels):
        prev = out[-1]
        new_xy = prev.spacing[1] * 2
        fz = 2.0 if prev.spacing[0] * 2 <= max(new_xy, prev.spacing[2] * 2) * 1.01 else 1.0
        f = np.array([fz, 2.0, 2.0])
        total = total * f
        shp = tuple(-(-n // int(k)) for n, k in zip(prev.shape, f))
        out.append(Level(shp, tuple(f.tolist()), tuple((src * total).tolist()),
                         tuple(((total - 1) / 2 * src).tolist()),
                         tuple("mean" if k > 1 else "identity" for k in f)))
    return out


def _level_ops(level: Level, prev_shape: Sequence[int], method: str) -> list[AxisOp]:
    return [axis_op(n, f, method) for n, f in zip(prev_shape, level.factors)]


def downsample_array(data: np.ndarray, factors: Sequence[float], method: str = "auto") -> np.ndarray:
    """The whole-array version of the streamed operator (x, then y, then z); float32."""
    out = np.asarray(data)
    for axis in (2, 1, 0):
        out = apply_op(out, axis_op(out.shape[axis], factors[axis], method), axis)
    return out


def pyramid_arrays(data: np.ndarray, spacing: Sequence[float], target_spacing: Sequence[float],
                   levels: int = 3, method: str = "auto") -> list[np.ndarray]:
    """All pyramid levels computed in memory (the reference for the streamed writer)."""
    plan = plan_pyramid(data.shape, spacing, target_spacing, levels, method)
    out, prev = [], np.asarray(data)
    for level in plan:
        prev = to_dtype(downsample_array(prev, level.factors, method if not out else "mean"), data.dtype)
        out.append(prev)
    return out


# --------------------------------------------------------------------------------------------
# Streaming writer


class _LevelWriter:
    """Collects finished planes of one level and writes whole z-chunks in a background thread
    (one write in flight, so memory stays bounded)."""

    def __init__(self, array, pool: ThreadPoolExecutor, workers: int = 2):
        self.array, self.pool = array, pool
        self.fast = ChunkIO.for_array(array, workers)
        self.cz = int(array.chunks[0])
        self.parts: list[np.ndarray] = []
        self.buffered = 0
        self.z = 0
        self.pending: Future | None = None

    def push(self, planes: np.ndarray) -> None:
        self.parts.append(planes)
        self.buffered += planes.shape[0]
        if self.buffered >= self.cz:
            self._flush(self.buffered - self.buffered % self.cz)

    def _flush(self, n: int) -> None:
        if n <= 0:
            return
        data = np.concatenate(self.parts, axis=0) if len(self.parts) > 1 else self.parts[0]
        head, rest = data[:n], data[n:]
        self.parts = [rest] if rest.shape[0] else []
        self.buffered = rest.shape[0]
        self.wait()
        z0 = self.z
        self.pending = self.pool.submit(write_block, self.array, self.fast, (z0, 0, 0), head)
        self.z += n

    def finish(self) -> None:
        self._flush(self.buffered)
        self.wait()
        if self.fast is not None:
            self.fast.close()
        if self.z != self.array.shape[0]:
            raise RuntimeError(f"level {self.array.path}: wrote {self.z} of {self.array.shape[0]} planes")

    def wait(self) -> None:
        if self.pending is not None:
            self.pending.result()
            self.pending = None


class _PyramidStream:
    """Level 0 planes in, every level written: each level's finished planes feed the next."""

    def __init__(self, plan: list[Level], arrays: list, dtype, pool: ThreadPoolExecutor, workers: int = 2):
        self.plan, self.dtype = plan, np.dtype(dtype)
        self.writers = [_LevelWriter(a, pool, workers) for a in arrays]
        self.ops = [None] + [_level_ops(plan[k], plan[k - 1].shape, "mean") for k in range(1, len(plan))]
        self.zstreams = [None] + [AxisStream(ops[0], 0) for ops in self.ops[1:]]

    def push(self, level: int, planes: np.ndarray) -> None:
        planes = to_dtype(planes, self.dtype)
        self.writers[level].push(planes)
        if level + 1 < len(self.plan):
            ops = self.ops[level + 1]
            t = apply_op(planes, ops[2], 2)
            t = apply_op(t, ops[1], 1)
            nxt = self.zstreams[level + 1].push(t)
            if nxt is not None:
                self.push(level + 1, nxt)

    def finish(self) -> None:
        for w in self.writers:
            w.finish()

    def close(self) -> None:
        """Release the writers' threads (also after a failure)."""
        for w in self.writers:
            if w.fast is not None:
                w.fast.close()


class PyramidBuilder:
    """Streams (z, y)-blocks of a source volume into an OME-Zarr pyramid.

    Blocks must arrive in z-major order: whole z-slabs, each as consecutive y-bands starting
    at ``y0 == 0`` and ending at ``y1 == Y``, every band spanning all of x (the order
    :func:`selma3d.preprocess.blocks.plan_blocks` produces). Used by :func:`downsample_volume` and, to
    build the pyramid in the same pass as the full-resolution copy, by
    :func:`selma3d.preprocess.ingest.ingest_volume`.
    """

    def __init__(self, out_ome_zarr: str | Path, shape: Sequence[int], dtype, spacing: Sequence[float],
                 target_spacing_um: Sequence[float], levels: int = 3, workers: int = 2, method: str = "auto",
                 chunks: Sequence[int] = (64, 256, 256), compressor: str = "zstd", clevel: int = 1,
                 ngff_version: str = "0.5", source_name: str | None = None, fast: bool = True):
        self.out = Path(out_ome_zarr)
        self.shape = tuple(int(s) for s in shape)
        self.plan = plan_pyramid(self.shape, spacing, target_spacing_um, levels, method)
        self.ops0 = [axis_op(n, f, method) for n, f in zip(self.shape, self.plan[0].factors)]
        factors = exact_mean_factors(dtype, self.ops0) if fast else None
        #: level 0 by :class:`BlockMean` (blocks then start on multiples of ``align`` in z and y)
        self._mean = BlockMean(self.shape, dtype, self.ops0, factors) if factors else None
        self.align = (factors[0], factors[1]) if factors else (1, 1)
        meta = {"stage": "downsample", "source": source_name, "source_shape": list(self.shape),
                "source_spacing_um": [float(s) for s in spacing],
                "target_spacing_um": [float(t) for t in target_spacing_um],
                "level_factors": [list(lv.factors) for lv in self.plan],
                "methods": [list(lv.methods) for lv in self.plan]}
        method_meta = {"description": "level 0: per-axis block mean (integer factors) or Gaussian "
                       "sigma=(f-1)/2 + linear interpolation; further levels: 2x block mean",
                       "method": "selma3d.preprocess.pyramid.PyramidBuilder", "version": "1"}
        self._atomic = atomic_path(self.out)
        tmp = self._atomic.__enter__()
        self._pools = [ThreadPoolExecutor(1, thread_name_prefix="ds-write"),
                       ThreadPoolExecutor(max(1, int(workers)), thread_name_prefix="ds-compute")]
        self._cpool = self._pools[1]
        try:
            arrays = create_ome_zarr(tmp, [lv.shape for lv in self.plan], dtype, chunks,
                                     [lv.spacing for lv in self.plan], [lv.translation for lv in self.plan],
                                     name=case_name(self.out), compressor=compressor, clevel=clevel,
                                     ngff_version=ngff_version,
                                     method="mean" if set(self.plan[0].methods) <= {"mean", "identity"} else "gaussian",
                                     method_metadata=method_meta, attributes={"selma3d": meta})
            self._pyramid = _PyramidStream(self.plan, arrays, dtype, self._pools[0], workers)
        except BaseException as exc:
            self._close(exc)
            raise
        self._zstream = AxisStream(self.ops0[0], 0)
        self._ystream: AxisStream | None = None
        self._parts: list[np.ndarray] = []

    def push(self, z0: int, z1: int, y0: int, y1: int, block: np.ndarray) -> None:
        """Feed the source block ``[z0:z1, y0:y1, :]``."""
        if self._mean is not None:
            if y0 == 0:
                self._parts = []
            self._parts.append(self._mean_parallel(block, z0, y0))
            if y1 == self.shape[1]:
                slab = np.concatenate(self._parts, axis=1) if len(self._parts) > 1 else self._parts[0]
                self._parts = []
                self._pyramid.push(0, slab)
            return
        if y0 == 0:  # a new z-slab: its y-bands stream through a fresh y operator
            self._ystream, self._parts = AxisStream(self.ops0[1], 1, self._cpool), []
        got = self._ystream.push(apply_op(block, self.ops0[2], 2, pool=self._cpool))
        if got is not None:
            self._parts.append(got)
        if y1 == self.shape[1]:
            slab = np.concatenate(self._parts, axis=1) if len(self._parts) > 1 else self._parts[0]
            self._parts = []
            planes = self._zstream.push(slab)
            if planes is not None:
                self._pyramid.push(0, planes)

    def _mean_parallel(self, block: np.ndarray, z0: int, y0: int) -> np.ndarray:
        """:class:`BlockMean` on the compute threads, each taking whole z-groups of the block."""
        kz = self.align[0]
        groups = -(-block.shape[0] // kz)
        n = min(groups, getattr(self._cpool, "_max_workers", 1))
        if n < 2 or block.size < _PARALLEL_MIN:
            return self._mean(block, z0, y0)
        cuts = [kz * (groups * i // n) for i in range(n)] + [block.shape[0]]
        parts = [self._cpool.submit(self._mean, block[a:b], z0 + a, y0) for a, b in itertools.pairwise(cuts)]
        return np.concatenate([f.result() for f in parts], axis=0)

    def finish(self) -> Path:
        """Flush every level and move the pyramid into place."""
        try:
            self._pyramid.finish()
        except BaseException as exc:
            self._close(exc)
            raise
        self._close(None)
        return self.out

    def abort(self, exc: BaseException | None = None) -> None:
        """Discard the partial pyramid (nothing complete-looking stays)."""
        self._close(exc or RuntimeError("aborted"))

    def _close(self, exc: BaseException | None) -> None:
        if self._atomic is None:
            return
        if hasattr(self, "_pyramid"):
            self._pyramid.close()
        for pool in self._pools:
            pool.shutdown(wait=True)
        atomic, self._atomic = self._atomic, None
        if exc is None:
            atomic.__exit__(None, None, None)
        else:
            atomic.__exit__(type(exc), exc, exc.__traceback__)


def downsample_volume(in_store, out_ome_zarr: str | Path, target_spacing_um: Sequence[float],
                      levels: int = schema_default("preprocess.pyramid_levels"),
                      workers: int = schema_default("preprocess.workers"), progress: bool = True, method: str = "auto",
                      spacing: Sequence[float] | None = None, chunks: Sequence[int] = (64, 256, 256),
                      compressor: str = "zstd", clevel: int = 1, max_block_bytes: int = STREAM_BLOCK_BYTES,
                      ngff_version: str = "0.5", fast: bool = True) -> Path:
    """Stream a volume into an OME-Zarr pyramid whose level 0 is at ``target_spacing_um``.

    Reads the source itself (a TIFF slice series is read straight from its files, slice headers
    validated first): no full-resolution copy is needed, and the pyramid is the same as the one
    built from an ingested store.

    Args:
        in_store: the volume (anything :func:`selma3d.io.open_reader` takes: TIFF series or
            stack, NIfTI, MHA, OME-Zarr).
        out_ome_zarr: the pyramid to write; replaced atomically when complete.
        target_spacing_um: (z, y, x) µm of level 0; axes already coarser stay as they are.
        levels: number of pyramid levels.
        workers: threads for reading/compressing.
        method: ``auto`` | ``mean`` | ``gaussian`` (see the module docstring).
        spacing: override the input's voxel size (z, y, x) µm.
        chunks, compressor, clevel, ngff_version: output layout (zstd level 1: as small as
            level 3 on these volumes and about 3x faster to write).
        max_block_bytes: bound on one input block (memory scales with it, not the volume).
        fast: level 0 by the exact integer :class:`BlockMean` where it applies (identical
            output); False runs the separable float32 operators everywhere (the reference).

    Returns:
        The path of the pyramid.
    """
    reader = open_reader(in_store, spacing=spacing, workers=workers)
    try:
        if reader.spacing_source == "default":
            warnings.warn(f"{reader.path}: no voxel size in the input and none given; assuming (1, 1, 1) µm, "
                          "so the factors may be wrong", stacklevel=2)
        builder = PyramidBuilder(out_ome_zarr, reader.shape, reader.dtype, reader.spacing, target_spacing_um,
                                 levels, workers, method, chunks, compressor, clevel, ngff_version,
                                 source_name=Path(str(reader.path)).name if reader.path else None, fast=fast)
        try:
            blocks = plan_blocks(reader, _z_step(reader, max_block_bytes, builder.align[0]), max_block_bytes,
                                 row_step=lcm(builder.align[1], reader.row_chunk))
            with zarr_workers(workers), ThreadPoolExecutor(1, thread_name_prefix="ds-read") as rpool, \
                    progress_bar(reader.nbytes, f"downsample {case_name(out_ome_zarr)}", progress) as bar:
                for (z0, z1, y0, y1), block in prefetch(reader, blocks, rpool):
                    builder.push(z0, z1, y0, y1, block)
                    bar.update(block.nbytes)
                    del block
        except BaseException as exc:
            builder.abort(exc)
            raise
        return builder.finish()
    finally:
        if reader is not in_store:
            reader.close()


def _z_step(reader, max_block_bytes: int, align: int = 1) -> int:
    """Planes per block: whole chunks for chunked input (each decompressed once), otherwise as
    many as the block budget allows (up to 64 for y-band readers); a multiple of ``align``."""
    _, Y, X = reader.shape
    itemsize = np.dtype(reader.dtype).itemsize
    if reader.z_chunk > 1:
        return lcm(reader.z_chunk, align)
    if reader.row_chunk:  # slice files read as y-bands: up to 64 planes per band
        step = int(min(64, max(1, max_block_bytes // max(1, lcm(reader.row_chunk, align) * X * itemsize))))
    else:  # whole planes: as many as fit the block budget
        step = max(1, max_block_bytes // max(1, Y * X * itemsize))
    return max(align, step // align * align)
