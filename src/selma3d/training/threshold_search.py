"""Grid search of a score threshold and a minimum component size maximising mean Dice.

The shared engine of :mod:`selma3d.inference.postprocess` (thresholds on predicted
probabilities) and :mod:`selma3d.training.classical` (thresholds on normalised intensities).
A mask is ``score > threshold`` with every 26-connected component (cc3d) of fewer than
``min_size`` voxels removed (``min_size`` 0 or 1: nothing removed), as
``selma3d.inference.patches.remove_small_components`` does. Dice counts annotated voxels only
(``ignore`` True = not annotated) and is 1.0 when prediction and truth are both empty, as
``selma3d.training.finetune.dice_score``.

Optionally a third axis, ``peaks`` (hysteresis): a component is kept only if one of its voxels
scores above ``peak`` as well (a peak at or below the threshold keeps every component, so 0 is
"off" for probabilities). A light-sheet detector's false components on an unseen specimen are
mostly faint: they cross the threshold but never reach a confident peak (``benchmarks/
postprocess.py``).

Per threshold the volume is labelled once; the Dice of every ``min_size`` and ``peak`` follows
from each component's size, annotated size, overlap with the truth and voxel count above each
peak, so the grid costs one cc3d call per (case, threshold).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def components_table(mask: np.ndarray, gt: np.ndarray, ignore: np.ndarray | None = None,
                     score: np.ndarray | None = None, peaks: Sequence[float] = ()):
    """Per 26-connected component of ``mask``: (size, annotated size, overlap with ``gt``), the
    number of annotated truth voxels, and per peak of ``peaks`` whether the component holds a
    voxel of ``score > peak`` (an array (len(peaks), components))."""
    import cc3d

    valid = np.ones(mask.shape, bool) if ignore is None else ~np.asarray(ignore, bool)
    gt = np.asarray(gt, bool) & valid
    labels, n = cc3d.connected_components(np.asarray(mask, np.uint8), connectivity=26, return_N=True)
    n = int(n)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    annotated = np.bincount(labels[valid], minlength=n + 1)[1:]
    overlap = np.bincount(labels[gt], minlength=n + 1)[1:]
    peaked = np.ones((len(peaks), n), dtype=bool)
    if len(peaks) and n:
        on = labels > 0
        inside, values = labels[on], np.asarray(score)[on]
        for k, peak in enumerate(peaks):
            peaked[k] = np.bincount(inside[values > float(peak)], minlength=n + 1)[1:] > 0
    return sizes, annotated, overlap, int(gt.sum()), peaked


def dice_by_min_size(sizes, annotated, overlap, n_gt: int, min_sizes: Sequence[int],
                     kept: np.ndarray | None = None) -> np.ndarray:
    """Dice after removing components smaller than each of ``min_sizes`` (and, with ``kept``, a
    bool per component, every component it marks False)."""
    out = np.empty(len(min_sizes), dtype=np.float64)
    for j, m in enumerate(min_sizes):
        keep = sizes >= max(int(m), 1)
        if kept is not None:
            keep &= kept
        p, i = int(annotated[keep].sum()), int(overlap[keep].sum())
        denom = p + n_gt
        out[j] = 1.0 if denom == 0 else 2.0 * i / denom
    return out


def dice_grid(scores: Sequence[np.ndarray], labels: Sequence[np.ndarray], ignores: Sequence[np.ndarray | None] | None,
              thresholds: Sequence[float], min_sizes: Sequence[int], peaks: Sequence[float] | None = None) -> np.ndarray:
    """Dice of every (threshold, min_size, case): array (len(thresholds), len(min_sizes), n_cases);
    with ``peaks``, of every (threshold, peak, min_size, case): (thresholds, peaks, min_sizes, cases)."""
    if len(scores) != len(labels) or not len(scores):
        raise ValueError(f"threshold search: {len(scores)} score volumes for {len(labels)} label volumes")
    ignores = list(ignores) if ignores is not None else [None] * len(scores)
    if len(ignores) != len(scores):
        raise ValueError(f"threshold search: {len(ignores)} ignore masks for {len(scores)} cases")
    axes = () if peaks is None else tuple(float(p) for p in peaks)
    table = np.empty((len(thresholds), max(len(axes), 1), len(min_sizes), len(scores)), dtype=np.float64)
    for c, (s, g, ig) in enumerate(zip(scores, labels, ignores)):
        s = np.asarray(s)
        g = np.asarray(g) > 0.5 if np.asarray(g).dtype.kind == "f" else np.asarray(g).astype(bool)
        if s.shape != g.shape or (ig is not None and np.shape(ig) != s.shape):
            raise ValueError(f"threshold search case {c}: score {s.shape}, label {g.shape}"
                             f"{'' if ig is None else f', ignore {np.shape(ig)}'} differ")
        for t, thr in enumerate(thresholds):
            *counts, peaked = components_table(s > thr, g, ig, s, axes)
            for k in range(table.shape[1]):
                table[t, k, :, c] = dice_by_min_size(*counts, min_sizes, peaked[k] if axes else None)
    return table if peaks is not None else table[:, 0]


def best_on_grid(table: np.ndarray, thresholds: Sequence[float], min_sizes: Sequence[int],
                 prefer_threshold: float = 0.5, tol: float = 1e-12, peaks: Sequence[float] | None = None) -> dict:
    """The (threshold, min_size) of highest mean Dice over cases (with ``peaks``, of a
    :func:`dice_grid` table with a peak axis: the (threshold, peak, min_size), ``peak`` in the result).

    Ties (within ``tol``) go to the lower peak (no filter first), then the lower ``min_size``, then
    the threshold closest to ``prefer_threshold``, then the lower threshold: the choice is
    deterministic.
    """
    grid = table[:, None] if peaks is None else table
    axis = [0.0] if peaks is None else [float(p) for p in peaks]
    mean = grid.mean(axis=3)
    best = float(mean.max())
    cands = [(axis[k], int(min_sizes[j]), abs(float(thresholds[t]) - prefer_threshold), float(thresholds[t]), t, k, j)
             for t in range(len(thresholds)) for k in range(len(axis)) for j in range(len(min_sizes))
             if mean[t, k, j] >= best - tol]
    *_, t, k, j = min(cands)
    out = {"threshold": float(thresholds[t]), "min_size": int(min_sizes[j]), "score": float(mean[t, k, j]),
           "per_case": [float(v) for v in grid[t, k, j]]}
    if peaks is not None:
        out["peak"] = axis[k]
    return out
