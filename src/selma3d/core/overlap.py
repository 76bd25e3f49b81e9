"""Dice overlap of binary masks: one definition for validation during training and for evaluation."""

from __future__ import annotations

import numpy as np


def dice_from_counts(inter: int, n_pred: int, n_gt: int, protocol_year: int = 2024) -> float:
    """``2|P∩G| / (|P| + |G|)`` from voxel counts; 1.0 when both masks are empty.

    ``protocol_year=2026`` makes it explicitly 0 when exactly one mask is empty (the same
    number: the intersection is then empty too; the 2026 evaluator special-cases it).
    """
    if n_pred + n_gt == 0:
        return 1.0
    if protocol_year == 2026 and (n_pred == 0 or n_gt == 0):
        return 0.0
    return float(2.0 * inter / (n_pred + n_gt))


def dice(pred: np.ndarray, gt: np.ndarray, ignore: np.ndarray | None = None, protocol_year: int = 2024) -> float:
    """Dice of two boolean masks, counting only voxels outside ``ignore`` (unannotated ones)."""
    if ignore is not None:
        pred, gt = pred & ~ignore, gt & ~ignore
    return dice_from_counts(int(np.count_nonzero(pred & gt)), int(np.count_nonzero(pred)),
                            int(np.count_nonzero(gt)), protocol_year)
