"""Post-processing tuned on validation cases: probability threshold + minimum component size.

Usage::

    from selma3d.inference.postprocess import select_threshold_and_min_size, apply_postprocess
    best = select_threshold_and_min_size(val_probs, val_labels, val_ignores)
    mask = apply_postprocess(prob, best["threshold"], best["min_size"])

:func:`select_threshold_and_min_size` evaluates every (threshold, min_size) of the grids on every
case (``prob > threshold``, then 26-connected components (cc3d) of fewer than ``min_size`` voxels
removed) and returns the pair of highest mean Dice (annotated voxels only; 1.0 for an empty
prediction of an empty truth). Ties go to the lower ``min_size``, then the threshold closest to
0.5 (then the lower one). Tune one structure at a time (:func:`select_per_structure` groups).
Engine: :mod:`selma3d.training.threshold_search`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from selma3d.inference.patches import remove_small_components
from selma3d.training.threshold_search import best_on_grid, dice_grid

#: default grids: thresholds 0.05 .. 0.95 by 0.05; min sizes (voxels) 0 (keep all) .. 128
THRESHOLDS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))
MIN_SIZES: tuple[int, ...] = (0, 2, 3, 5, 8, 12, 16, 24, 32, 48, 64, 96, 128)
METRICS = ("dice",)


def select_threshold_and_min_size(probs_list: Sequence[np.ndarray], labels_list: Sequence[np.ndarray],
                                  ignore_list: Sequence[np.ndarray | None] | None = None,
                                  thresholds: Sequence[float] = THRESHOLDS, min_sizes: Sequence[int] = MIN_SIZES,
                                  metric: str = "dice") -> dict:
    """Threshold and minimum component size maximising mean Dice over the cases.

    Args:
        probs_list: per case, foreground probabilities (z, y, x).
        labels_list: per case, the truth (bool / {0, 1}; floats are thresholded at 0.5).
        ignore_list: per case, a bool mask of voxels not annotated (or None).
        thresholds, min_sizes: the grids.
        metric: ``dice`` (the only one for now).
    Returns:
        ``{"threshold", "min_size", "score" (mean Dice), "per_case" (Dice per case),
        "default_score" (mean Dice at threshold 0.5, no removal)}``.
    """
    if metric not in METRICS:
        raise ValueError(f"post-processing metric one of {list(METRICS)}, found {metric!r}")
    thresholds = [float(t) for t in thresholds]
    min_sizes = [int(m) for m in min_sizes]
    if not thresholds or not min_sizes:
        raise ValueError("post-processing search: empty threshold or min_size grid")
    table = dice_grid(probs_list, labels_list, ignore_list, thresholds, min_sizes)
    out = best_on_grid(table, thresholds, min_sizes, prefer_threshold=0.5)
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


def apply_postprocess(prob: np.ndarray, threshold: float = 0.5, min_size: int = 0) -> np.ndarray:
    """uint8 mask: ``prob > threshold`` without 26-connected components under ``min_size`` voxels."""
    return remove_small_components(np.asarray(prob) > float(threshold), int(min_size)).astype(np.uint8)
