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


NORMALIZERS = {"percentile": percentile_scale, "zscore": zscore}


def normalize(x: np.ndarray, method: str = "percentile") -> np.ndarray:
    try:
        return NORMALIZERS[method](x)
    except KeyError:
        raise ValueError(f"unknown normalisation {method!r}; choose from {sorted(NORMALIZERS)}") from None
