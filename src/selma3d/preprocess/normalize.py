"""Intensity normalisation of light-sheet patches (raw counts vary between brains)."""

from __future__ import annotations

import numpy as np


def percentile_scale(x: np.ndarray, low: float = 0.05, high: float = 99.95) -> np.ndarray:
    """Map the [low, high] percentile range to [-1, 1] and clip (team Tonyxu's recipe)."""
    x = np.asarray(x, dtype=np.float32)
    lo, hi = (np.float32(v) for v in np.percentile(x, [low, high]))
    if hi <= lo:
        return np.zeros_like(x)
    return np.clip((x - lo) / (hi - lo) * np.float32(2.0) - np.float32(1.0), -1.0, 1.0).astype(np.float32)


def zscore(x: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance (a constant patch maps to zeros)."""
    x = np.asarray(x, dtype=np.float32)
    std = float(x.std())
    return (x - float(x.mean())) / std if std > 0 else np.zeros_like(x)


#: the window (z, y, x voxels) of :func:`local_contrast`'s background estimate: larger than a
#: c-Fos cell or nucleus (3-10 voxels across at SELMA3D's native spacing), smaller than the
#: autofluorescence gradients it removes
LOCAL_WINDOW = (5, 15, 15)


def local_contrast(x: np.ndarray, window: tuple[int, int, int] = LOCAL_WINDOW) -> np.ndarray:
    """Log ratio of each voxel to its local background: ``log((x + 1) / (b + 1))``.

    ``b`` is a grey-scale opening of ``x`` (which removes bright objects smaller than
    ``window``: the background a light-sheet cell-detection pipeline such as ClearMap subtracts)
    smoothed by a box filter of the same size; edges are mirrored. Background maps to about 0
    and an object to its contrast over its surroundings, whatever the specimen's brightness,
    the patch's share of tissue or its autofluorescence gradient: per-case percentiles move with
    all three (a patch half outside the tissue, or with one saturated cell, rescales every
    voxel), a ratio does not. Output clipped to [-2, 4] (a factor e^4 ≈ 55 above background).
    """
    from scipy import ndimage

    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 3:
        raise ValueError(f"local_contrast expects a (z, y, x) volume, got shape {x.shape}")
    size = tuple(max(1, int(w)) for w in window)
    background = ndimage.uniform_filter(ndimage.grey_opening(x, size=size, mode="mirror"), size=size,
                                        mode="mirror")
    one = np.float32(1.0)
    out = np.log((np.maximum(x, 0) + one) / (np.maximum(background, 0) + one))
    return np.clip(out, -2.0, 4.0).astype(np.float32)


def local_contrast_reach(window: tuple[int, int, int] = LOCAL_WINDOW) -> tuple[int, int, int]:
    """How far (voxels per axis) :func:`local_contrast` looks from a voxel: the opening's
    erosion and dilation, then the box filter, each reach ``window // 2``."""
    return tuple(3 * (int(w) // 2) for w in window)


NORMALIZERS = {"percentile": percentile_scale, "zscore": zscore, "local": local_contrast}


def normalize(x: np.ndarray, method: str = "percentile") -> np.ndarray:
    try:
        return NORMALIZERS[method](x)
    except KeyError:
        raise ValueError(f"unknown normalisation {method!r}; choose from {sorted(NORMALIZERS)}") from None
