"""Grid search of a score threshold and a minimum component size maximising mean Dice.

The shared engine of :mod:`selma3d.inference.postprocess` (thresholds on predicted
probabilities) and :mod:`selma3d.training.classical` (thresholds on normalised intensities).
A mask is ``score > threshold`` with every 26-connected component (cc3d) of fewer than
``min_size`` voxels removed (``min_size`` 0 or 1: nothing removed), as
``selma3d.inference.patches.remove_small_components`` does. Dice counts annotated voxels only
(``ignore`` True = not annotated) and is 1.0 when prediction and truth are both empty, as
``selma3d.training.finetune.dice_score``.

Per threshold the volume is labelled once; the Dice of every ``min_size`` follows from each
component's size, annotated size and overlap with the truth, so the grid costs one cc3d call per
(case, threshold).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def components_table(mask: np.ndarray, gt: np.ndarray, ignore: np.ndarray | None = None):
    """Per 26-connected component of ``mask``: (size, annotated size, overlap with ``gt``), and
    the number of annotated truth voxels."""
    import cc3d

    valid = np.ones(mask.shape, bool) if ignore is None else ~np.asarray(ignore, bool)
    gt = np.asarray(gt, bool) & valid
    labels, n = cc3d.connected_components(np.asarray(mask, np.uint8), connectivity=26, return_N=True)
    n = int(n)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    annotated = np.bincount(labels[valid], minlength=n + 1)[1:]
    overlap = np.bincount(labels[gt], minlength=n + 1)[1:]
    return sizes, annotated, overlap, int(gt.sum())


def dice_by_min_size(sizes, annotated, overlap, n_gt: int, min_sizes: Sequence[int]) -> np.ndarray:
    """Dice after removing components smaller than each of ``min_sizes``."""
    out = np.empty(len(min_sizes), dtype=np.float64)
    for j, m in enumerate(min_sizes):
        keep = sizes >= max(int(m), 1)
        p, i = int(annotated[keep].sum()), int(overlap[keep].sum())
        denom = p + n_gt
        out[j] = 1.0 if denom == 0 else 2.0 * i / denom
    return out


def dice_grid(scores: Sequence[np.ndarray], labels: Sequence[np.ndarray], ignores: Sequence[np.ndarray | None] | None,
              thresholds: Sequence[float], min_sizes: Sequence[int]) -> np.ndarray:
    """Dice of every (threshold, min_size, case): array (len(thresholds), len(min_sizes), n_cases)."""
    if len(scores) != len(labels) or not len(scores):
        raise ValueError(f"threshold search: {len(scores)} score volumes for {len(labels)} label volumes")
    ignores = list(ignores) if ignores is not None else [None] * len(scores)
    if len(ignores) != len(scores):
        raise ValueError(f"threshold search: {len(ignores)} ignore masks for {len(scores)} cases")
    table = np.empty((len(thresholds), len(min_sizes), len(scores)), dtype=np.float64)
    for c, (s, g, ig) in enumerate(zip(scores, labels, ignores)):
        s = np.asarray(s)
        g = np.asarray(g) > 0.5 if np.asarray(g).dtype.kind == "f" else np.asarray(g).astype(bool)
        if s.shape != g.shape or (ig is not None and np.shape(ig) != s.shape):
            raise ValueError(f"threshold search case {c}: score {s.shape}, label {g.shape}"
                             f"{'' if ig is None else f', ignore {np.shape(ig)}'} differ")
        for t, thr in enumerate(thresholds):
            table[t, :, c] = dice_by_min_size(*components_table(s > thr, g, ig), min_sizes)
    return table


def best_on_grid(table: np.ndarray, thresholds: Sequence[float], min_sizes: Sequence[int],
                 prefer_threshold: float = 0.5, tol: float = 1e-12) -> dict:
    """The (threshold, min_size) of highest mean Dice over cases.

    Ties (within ``tol``) go to the lower ``min_size``, then the threshold closest to
    ``prefer_threshold``, then the lower threshold: the choice is deterministic.
    """
    mean = table.mean(axis=2)
    best = float(mean.max())
    cands = [(int(min_sizes[j]), abs(float(thresholds[t]) - prefer_threshold), float(thresholds[t]), t, j)
             for t in range(len(thresholds)) for j in range(len(min_sizes)) if mean[t, j] >= best - tol]
    _, _, thr, t, j = min(cands)
    return {"threshold": float(thresholds[t]), "min_size": int(min_sizes[j]), "score": float(mean[t, j]),
            "per_case": [float(v) for v in table[t, j]]}
