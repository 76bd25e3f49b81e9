"""Ground-truth conventions: foreground, background and an ignore label for partial annotation."""

from __future__ import annotations

import numpy as np


def binarize_label(label: np.ndarray, ignore_label: int | None = None,
                   background_values: tuple[int, ...] = (0,)) -> tuple[np.ndarray, np.ndarray | None]:
    """Foreground mask and the ignore mask of a label volume.

    Foreground is every value that is neither background nor the ignore label. The TRAILMAP
    axon volume, for instance, uses 0 = unlabelled (ignore), 1 = background, 2/4 = axon:
    ``binarize_label(l, ignore_label=0, background_values=(1,))``.

    Returns:
        (uint8 foreground mask, bool ignore mask or None when nothing is ignored)
    """
    label = np.asarray(label)
    if np.issubdtype(label.dtype, np.floating):
        if not np.isfinite(label).all():
            raise ValueError("label volume holds NaN or inf")
        label = np.rint(label).astype(np.int64)
    ignore = None
    if ignore_label is not None:
        ignore = label == ignore_label
        if not ignore.any():
            ignore = None
    fg = ~np.isin(label, np.asarray(background_values))
    if ignore is not None:
        fg &= ~ignore
    return fg.astype(np.uint8), ignore
