"""Ground-truth conventions: foreground, background and an ignore label for partial annotation."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def binarize_label(label: np.ndarray, ignore_label: int | None = None,
                   background_values: tuple[int, ...] = (0,),
                   annotated_z: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Foreground mask and the ignore mask of a label volume.

    Foreground is every value that is neither background nor the ignore label. The TRAILMAP
    axon volume, for instance, uses 0 = unlabelled (ignore), 1 = background, 2/4 = axon:
    ``binarize_label(l, ignore_label=0, background_values=(1,))``. ``annotated_z`` (z planes,
    axis 0) keeps only those planes annotated: every voxel of another plane is ignored, which
    splits one partially annotated volume by plane (train on some planes, validate on others).

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
    if annotated_z is not None:
        planes = np.asarray(list(annotated_z), dtype=np.int64)
        if planes.size and (planes.min() < 0 or planes.max() >= label.shape[0]):
            raise ValueError(f"annotated_z: planes {sorted(set(planes.tolist()))} outside 0..{label.shape[0] - 1}")
        outside = np.ones(label.shape[0], bool)
        outside[planes] = False
        if outside.any():
            off = np.broadcast_to(outside.reshape((-1,) + (1,) * (label.ndim - 1)), label.shape)
            ignore = off.copy() if ignore is None else ignore | off
    fg = ~np.isin(label, np.asarray(background_values))
    if ignore is not None:
        fg &= ~ignore
    return fg.astype(np.uint8), ignore
