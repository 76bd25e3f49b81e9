"""Image panels: contrast, prediction/ground-truth overlays and outlines, slices, scale bars."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from selma3d import io
from selma3d.core.errors import InputError
from selma3d.core.labels import binarize_label
from selma3d.data.manifest import label_rule
from selma3d.reporting.style import PRED_RGB


def contrast(img: np.ndarray) -> np.ndarray:
    """Percentile stretch (1–99.5 %) to [0, 1]: light-sheet intensities have long bright tails."""
    img = np.asarray(img, dtype=np.float32)
    lo, hi = np.percentile(img, [1, 99.5])
    return np.clip((img - lo) / max(float(hi - lo), 1e-6), 0, 1)


def overlay(base: np.ndarray, mask: np.ndarray, rgb=PRED_RGB, alpha: float = 0.55) -> np.ndarray:
    """Grey image (values in [0, 1]) with ``mask`` tinted ``rgb``; an (y, x, 3) float image."""
    out = np.repeat(base[..., None], 3, axis=2).astype(np.float32)
    m = np.asarray(mask, dtype=bool)
    out[m] = (1 - alpha) * out[m] + alpha * np.asarray(rgb, dtype=np.float32)
    return out


def outline(base: np.ndarray, mask: np.ndarray, rgb=PRED_RGB) -> np.ndarray:
    """Grey image with the boundary of a 2D mask drawn in ``rgb`` (the MIP "3D view")."""
    from skimage.segmentation import find_boundaries

    out = np.repeat(base[..., None], 3, axis=2).astype(np.float32)
    edge = find_boundaries(np.asarray(mask, dtype=bool), mode="inner")
    out[edge] = rgb
    return out


def best_slice(gt: np.ndarray) -> int:
    return int(np.argmax(gt.sum(axis=(1, 2)))) if gt.any() else gt.shape[0] // 2


def nice_length(limit: float) -> float:
    """Largest 1/2/5 × 10^k not above ``limit``."""
    if limit <= 0:
        return 0.0
    k = math.floor(math.log10(limit))
    for m in (5, 2, 1):
        if m * 10**k <= limit:
            return float(m * 10**k)
    return float(10**k)


def scale_bar(ax, width_px: int, spacing_x: float) -> None:
    """A white scale bar (µm) about a quarter of the panel wide, bottom right."""
    from matplotlib.font_manager import FontProperties
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    um = nice_length(width_px * spacing_x / 4)
    if um <= 0 or spacing_x <= 0:
        return
    bar = AnchoredSizeBar(ax.transData, um / spacing_x, f"{um:g} µm", "lower right", pad=0.1, borderpad=0.9,
                          color="white", frameon=False, size_vertical=max(width_px / 60, 0.5),
                          fontproperties=FontProperties(size=6))
    ax.add_artist(bar)


def image_axes(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)


def read_mask(path: Path, shape, what: str, rule: tuple | None = None) -> np.ndarray:
    """``> 0`` as a mask, or by ``rule`` (``(ignore_label, background_values, annotated_z)``,
    :func:`selma3d.data.manifest.label_rule`) when it is not the default one."""
    if not path.exists():
        raise InputError(path, f"the {what} of this case", "nothing at that path")
    data = io.read_volume(path).data
    if data.shape != tuple(shape):
        raise InputError(path, f"a {what} of the image's shape {tuple(shape)}", f"shape {data.shape}")
    if rule is None or tuple(rule) == (None, (0,), None):
        return data > 0
    return binarize_label(data, *rule)[0].astype(bool)


def read_label(row, shape) -> np.ndarray:
    """A manifest pair's ground truth as a mask, by the label row's own rule when it sets one."""
    return read_mask(Path(row.label), shape, "label", label_rule(row))
