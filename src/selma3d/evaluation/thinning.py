"""scikit-image's 3D (Lee) thinning, voxel for voxel, visiting only the voxels that can change.

``skimage.morphology.skeletonize`` of a 3D image (scikit-image 0.26,
``_skeletonize_lee_cy._compute_thin_image``, the logic of ImageJ's Skeletonize3D) pads the image
with one background voxel and repeats rounds of up to six directional passes (border types 4, 3,
2, 1, 5, 6: −y, +y, +x, −x, +z, −z; only the first four when the padded image is three slices
thick along z, i.e. the input one slice thick) until a whole round deletes nothing. A pass first
collects, over the *whole* volume in raster order, the foreground voxels that are border points
of its direction, not endpoints (exactly one foreground neighbour), Euler invariant (Lee's
δG26 table over the eight octants) and simple (their 26-neighbours form at most one
26-connected component); then it re-tests each candidate for simplicity in that order on the
current image and deletes it if it still is.

Every test reads a voxel's 3×3×3 neighbourhood only. This module runs the same passes, in the
same order, with the same tests, but

* visits only the foreground voxels (a list in raster order, compacted after each pass) instead
  of scanning every voxel of the volume in every pass (the scan is most of scikit-image's time
  on sparse masks such as vessels);
* skips a voxel in a pass of direction d when nothing in its 3×3×3 neighbourhood changed since
  it was last tested for direction d: its candidate test would give the same answer, which was
  "no" (had it been a candidate, it was either deleted then — itself a change — or failed the
  re-test, which needs a changed neighbourhood). Bits 1–6 of each voxel hold "test again for
  direction d"; a deletion sets them on its 27 voxels, testing clears the direction's bit.

So the deletions, and their order, are those of scikit-image: the result is identical, which
``tests/test_skeleton_real.py`` checks against ``skeletonize`` on the real masks.
"""

from __future__ import annotations

import numba
import numpy as np

#: border types in scikit-image's order, as (dz, dy, dx) of the neighbour that must be background
_BORDERS = np.array([(0, -1, 0), (0, 1, 0), (0, 0, 1), (0, 0, -1), (1, 0, 0), (-1, 0, 0)], dtype=np.int64)


def _euler_lut() -> np.ndarray:
    """Lee's δG26 column (Table 2 of Lee et al. 1994) at the odd indices, as scikit-image fills it."""
    arr = [1, -1, -1, 1, -3, -1, -1, 1, -1, 1, 1, -1, 3, 1, 1, -1, -3, -1,
           3, 1, 1, -1, 3, 1, -1, 1, 1, -1, 3, 1, 1, -1, -3, 3, -1, 1, 1,
           3, -1, 1, -1, 1, 1, -1, 3, 1, 1, -1, 1, 3, 3, 1, 5, 3, 3, 1,
           -1, 1, 1, -1, 3, 1, 1, -1, -7, -1, -1, 1, -3, -1, -1, 1, -1,
           1, 1, -1, 3, 1, 1, -1, -3, -1, 3, 1, 1, -1, 3, 1, -1, 1, 1,
           -1, 3, 1, 1, -1, -3, 3, -1, 1, 1, 3, -1, 1, -1, 1, 1, -1, 3,
           1, 1, -1, 1, 3, 3, 1, 5, 3, 3, 1, -1, 1, 1, -1, 3, 1, 1, -1]
    lut = np.zeros(256, dtype=np.int64)
    lut[1::2] = arr
    return lut


#: neighbourhood index k of (dz, dy, dx) is 9(dz+1) + 3(dx+1) + (dy+1) (scikit-image's numbering)
_OCTANTS = np.array([  # per octant, the neighbourhood indices that set bits 128, 64, ..., 2
    (2, 1, 11, 10, 5, 4, 14), (0, 9, 3, 12, 1, 10, 4), (8, 7, 17, 16, 5, 4, 14),
    (6, 15, 7, 16, 3, 12, 4), (20, 23, 19, 22, 11, 14, 10), (18, 21, 9, 12, 19, 22, 10),
    (26, 23, 17, 14, 25, 22, 16), (24, 25, 15, 16, 21, 22, 12)], dtype=np.int64)


def _index_offsets() -> np.ndarray:
    """(dz, dy, dx) of each neighbourhood index 0..26."""
    out = np.zeros((27, 3), dtype=np.int64)
    for k in range(27):
        out[k] = (k // 9 - 1, k % 3 - 1, (k % 9) // 3 - 1)
    return out


def _adjacency() -> np.ndarray:
    """Bit mask of the 26-neighbours of each neighbourhood index, within the 3×3×3 cube, centre excluded."""
    off = _index_offsets()
    adj = np.zeros(27, dtype=np.int64)
    for a in range(27):
        for b in range(27):
            if a != b and b != 13 and np.abs(off[a] - off[b]).max() <= 1:
                adj[a] |= 1 << b
    return adj


_LUT = _euler_lut()
_ADJ = _adjacency()
_OFFSETS = _index_offsets()
_DIRTY = np.uint8(0b1111110)  # bits 1..6: test again for border type j (bit j + 1)


@numba.njit(cache=True, nogil=True)
def _neighbourhood(img, v, nb_off):
    """27-bit mask of the foreground (bit 0 of each byte) around flat index ``v``."""
    m = 0
    for k in range(27):
        if img[v + nb_off[k]] & 1:
            m |= 1 << k
    return m


@numba.njit(cache=True, nogil=True)
def _is_simple(m, adj):
    """At most one 26-connected component among the 26 neighbours (scikit-image's octree labelling)."""
    fg = m & ~(1 << 13)
    if fg == 0:
        return True
    comp = fg & -fg
    frontier = comp
    while frontier:
        grow = 0
        for k in range(27):
            if (frontier >> k) & 1:
                grow |= adj[k]
        grow &= fg
        frontier = grow & ~comp
        comp |= grow
    return comp == fg


@numba.njit(cache=True, nogil=True)
def _is_euler_invariant(m, octants, lut):
    total = 0
    for o in range(8):
        n = 1
        for j in range(7):
            if (m >> octants[o, j]) & 1:
                n |= 128 >> j
        total += lut[n]
    return total == 0


@numba.njit(cache=True, nogil=True)
def _popcount27(m):
    s = 0
    while m:
        m &= m - 1
        s += 1
    return s


@numba.njit(cache=True, nogil=True)
def _thin(img, fg, num_borders, border_off, nb_off, octants, lut, adj):
    """Thin the flat padded image in place (bit 0 = foreground); ``fg``: its foreground, raster order."""
    cand = np.empty(fg.size, dtype=np.int64)
    nfg = fg.size
    unchanged = 0
    while unchanged < num_borders:
        unchanged = 0
        for j in range(num_borders):
            bit = np.uint8(2 << j)
            clear = np.uint8(255 - (2 << j))
            bo = border_off[j]
            nc = 0
            for i in range(nfg):
                v = fg[i]
                if not img[v] & bit:
                    continue
                img[v] &= clear
                if img[v + bo] & 1:
                    continue
                m = _neighbourhood(img, v, nb_off)
                if _popcount27(m) == 2 or not _is_euler_invariant(m, octants, lut) or not _is_simple(m, adj):
                    continue
                cand[nc] = v
                nc += 1
            removed = 0
            for i in range(nc):
                v = cand[i]
                if _is_simple(_neighbourhood(img, v, nb_off), adj):
                    img[v] = 0
                    removed += 1
                    for k in range(27):
                        img[v + nb_off[k]] |= _DIRTY
            if removed == 0:
                unchanged += 1
            else:  # keep only the foreground in the list, still in raster order
                n = 0
                for i in range(nfg):
                    if img[fg[i]] & 1:
                        fg[n] = fg[i]
                        n += 1
                nfg = n
    return img


def thin(mask: np.ndarray) -> np.ndarray:
    """``skimage.morphology.skeletonize`` of a 3D bool mask, voxel for voxel.

    Like scikit-image, a mask one slice thick along axis 0 is thinned in-plane (4 directions).
    """
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 3:
        raise ValueError(f"thin expects a 3D mask, got shape {m.shape}")
    planar = m.shape[0] == 1
    img, fg = _prepare(np.ascontiguousarray(m).view(np.uint8))
    shape = img.shape
    strides = np.array([shape[1] * shape[2], shape[2], 1], dtype=np.int64)
    _thin(img.ravel(), fg, 4 if planar else 6, _BORDERS @ strides, _OFFSETS @ strides, _OCTANTS, _LUT, _ADJ)
    out = img[1:-1, 1:-1, 1:-1]
    out &= 1
    return out.view(bool)


@numba.njit(cache=True, nogil=True)
def _prepare(m):
    """The mask padded by one background voxel, foreground marked for testing, and its flat
    foreground indices in raster order (one pass instead of pad, mark and ``flatnonzero``)."""
    nz, ny, nx = m.shape
    img = np.zeros((nz + 2, ny + 2, nx + 2), dtype=np.uint8)
    n = 0
    for z in range(nz):
        for y in range(ny):
            for x in range(nx):
                if m[z, y, x]:
                    n += 1
    fg = np.empty(n, dtype=np.int64)
    sz, sy = (ny + 2) * (nx + 2), nx + 2
    n = 0
    for z in range(nz):
        for y in range(ny):
            for x in range(nx):
                if m[z, y, x]:
                    img[z + 1, y + 1, x + 1] = 1 | _DIRTY
                    fg[n] = (z + 1) * sz + (y + 1) * sy + x + 1
                    n += 1
    return img, fg
