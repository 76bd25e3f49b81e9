"""Test-time mirroring (nnU-Net): average the prediction over every flip of the chosen axes.

:func:`predict_with_tta` runs MONAI ``sliding_window_inference`` (Gaussian blending, as
``selma3d.training.finetune.predict_probability``) with a predictor that, for every window
batch, evaluates the network on all 2^k flips of ``mirror_axes`` (k axes; default z, y, x:
8 passes), flips each output back and averages. Averaging per window equals averaging whole
sliding-window predictions of the flipped volume whenever the window grid is mirror-symmetric
(it is when the windows tile the volume evenly), and costs one pass over the windows.

``average="probabilities"`` (default) averages sigmoid probabilities per window and blends
them; ``average="logits"`` averages logits (nnU-Net v2) and applies the sigmoid after blending,
so ``mirror_axes=()`` with it reproduces ``predict_probability`` exactly.

Example::

    from selma3d.inference.tta import predict_with_tta
    prob = predict_with_tta(net, normalised_image, roi_size=(64, 64, 64), device="cpu")

``selma3d.inference.patches.infer_test_split(..., mirror_axes=(0, 1, 2))`` uses it.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np
import torch

from selma3d.core.schema import schema_default
from selma3d.training.runtime import autocast


def flip_combinations(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every subset of ``axes`` (spatial axes 0=z, 1=y, 2=x), the empty one (no flip) first."""
    axes = tuple(sorted({int(a) for a in axes}))
    if any(a not in (0, 1, 2) for a in axes):
        raise ValueError(f"mirror axes must be among 0 (z), 1 (y), 2 (x); found {axes}")
    return [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]


class MirroredPredictor(torch.nn.Module):
    """``net`` averaged over flips of (B, C, z, y, x) inputs; returns logits or probabilities."""

    def __init__(self, net: torch.nn.Module, mirror_axes: Sequence[int] = (0, 1, 2), average: str = "probabilities"):
        super().__init__()
        if average not in ("probabilities", "logits"):
            raise ValueError(f"TTA average 'probabilities' or 'logits', found {average!r}")
        self.net, self.average = net, average
        self.combos = flip_combinations(mirror_axes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = None
        for combo in self.combos:
            dims = [a + 2 for a in combo]
            xi = torch.flip(x, dims) if dims else x
            y = self.net(xi).float()
            if self.average == "probabilities":
                y = torch.sigmoid(y)
            y = torch.flip(y, dims) if dims else y
            total = y if total is None else total + y
        return total / len(self.combos)


def predict_with_tta(net: torch.nn.Module, image: np.ndarray, roi_size: Sequence[int], device, overlap: float = 0.5,
                     mirror_axes: Sequence[int] = (0, 1, 2),
                     sw_batch_size: int = schema_default("infer.sw_batch_size"), blend: str = "gaussian",
                     precision: str = "auto", average: str = "probabilities") -> np.ndarray:
    """Foreground probability (z, y, x) float32 of a normalised volume, mirrored over ``mirror_axes``.

    Args:
        net: network returning the foreground logit (one channel); put it in eval mode.
        image: (z, y, x) normalised intensities.
        roi_size: sliding window (the model's patch size).
        device: torch device (or its name).
        overlap, sw_batch_size, blend: as MONAI ``sliding_window_inference`` (blend ``gaussian``).
        mirror_axes: spatial axes to flip (0=z, 1=y, 2=x); ``()`` for no TTA.
        precision: autocast setting (``selma3d.training.runtime.autocast``).
        average: ``probabilities`` or ``logits`` (see the module docstring).
    """
    from monai.inferers import sliding_window_inference

    from selma3d.training.finetune import window_streams

    device = torch.device(device)
    predictor = MirroredPredictor(net, mirror_axes, average)
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None].to(device)
    with torch.inference_mode(), autocast(device, precision), window_streams(predictor, device) as model:
        out = sliding_window_inference(x, tuple(int(r) for r in roi_size), sw_batch_size, model, overlap=overlap,
                                       mode=blend, padding_mode="reflect" if min(image.shape) > 1 else "constant")
    out = out.float()
    if average == "logits":
        out = torch.sigmoid(out)
    return out[0, 0].cpu().numpy()
