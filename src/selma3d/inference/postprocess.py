"""Post-processing tuned on validation cases: probability threshold, minimum component size and
peak (hysteresis).

Usage::

    from selma3d.inference.postprocess import select_threshold_and_min_size, apply_postprocess
    best = select_threshold_and_min_size(val_probs, val_labels, val_ignores)
    mask = apply_postprocess(prob, best["threshold"], best["min_size"], best["peak"])

:func:`select_threshold_and_min_size` evaluates every (threshold, peak, min_size) of the grids on
every case (``prob > threshold``, then every 26-connected component (cc3d) of fewer than
``min_size`` voxels removed, and every one whose highest probability is not above ``peak``) and
returns the triple of highest mean Dice (annotated voxels only; 1.0 for an empty prediction of an
empty truth). A peak at or below the threshold removes nothing (0: off). Ties go
to the lower peak, then the lower ``min_size``, then the threshold closest to 0.5 (then the lower
one). Tune one structure at a time (:func:`select_per_structure` groups). Engine:
:mod:`selma3d.training.threshold_search`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from selma3d.inference.patches import keep_peaked_components, remove_small_components
from selma3d.training.threshold_search import best_on_grid, dice_grid

#: default grids: thresholds 0.05 .. 0.95 by 0.05; min sizes (voxels) 0 (keep all) .. 128
THRESHOLDS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))
MIN_SIZES: tuple[int, ...] = (0, 2, 3, 5, 8, 12, 16, 24, 32, 48, 64, 96, 128)
#: default peak grid (0: no peak filter), the schema's ``infer.postprocess.peaks``
PEAKS: tuple[float, ...] = (0.0, 0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999)
METRICS = ("dice",)


def select_threshold_and_min_size(probs_list: Sequence[np.ndarray], labels_list: Sequence[np.ndarray],
                                  ignore_list: Sequence[np.ndarray | None] | None = None,
                                  thresholds: Sequence[float] = THRESHOLDS, min_sizes: Sequence[int] = MIN_SIZES,
                                  metric: str = "dice", peaks: Sequence[float] = PEAKS) -> dict:
    """Threshold, minimum component size and peak maximising mean Dice over the cases.

    Args:
        probs_list: per case, foreground probabilities (z, y, x).
        labels_list: per case, the truth (bool / {0, 1}; floats are thresholded at 0.5).
        ignore_list: per case, a bool mask of voxels not annotated (or None).
        thresholds, min_sizes, peaks: the grids.
        metric: ``dice`` (the only one for now).
    Returns:
        ``{"threshold", "min_size", "peak", "score" (mean Dice), "per_case" (Dice per case),
        "default_score" (mean Dice at threshold 0.5, no removal)}``.
    """
    if metric not in METRICS:
        raise ValueError(f"post-processing metric one of {list(METRICS)}, found {metric!r}")
    thresholds = [float(t) for t in thresholds]
    min_sizes = [int(m) for m in min_sizes]
    peaks = [float(p) for p in peaks]
    if not thresholds or not min_sizes or not peaks:
        raise ValueError("post-processing search: empty threshold, min_size or peak grid")
    table = dice_grid(probs_list, labels_list, ignore_list, thresholds, min_sizes, peaks)
    out = best_on_grid(table, thresholds, min_sizes, prefer_threshold=0.5, peaks=peaks)
    default = dice_grid(probs_list, labels_list, ignore_list, [0.5], [0])
    out["default_score"] = float(default.mean())
    return out


def select_per_structure(probs_list: Sequence[np.ndarray], labels_list: Sequence[np.ndarray],
                         structures: Sequence[str], ignore_list: Sequence[np.ndarray | None] | None = None,
                         **kwargs) -> dict[str, dict]:
    """:func:`select_threshold_and_min_size` on the cases of each structure: ``{structure: result}``."""
    if len(structures) != len(probs_list):
        raise ValueError(f"{len(structures)} structures for {len(probs_list)} cases")
    ignore_list = list(ignore_list) if ignore_list is not None else [None] * len(probs_list)
    out = {}
    for s in sorted(set(structures)):
        idx = [i for i, x in enumerate(structures) if x == s]
        out[s] = select_threshold_and_min_size([probs_list[i] for i in idx], [labels_list[i] for i in idx],
                                               [ignore_list[i] for i in idx], **kwargs)
    return out


def apply_postprocess(prob: np.ndarray, threshold: float = 0.5, min_size: int = 0, peak: float = 0.0) -> np.ndarray:
    """uint8 mask: ``prob > threshold`` without 26-connected components under ``min_size`` voxels
    or whose highest probability is not above ``peak``."""
    prob = np.asarray(prob)
    mask = keep_peaked_components(prob > float(threshold), prob, peak)
    return remove_small_components(mask, int(min_size)).astype(np.uint8)
