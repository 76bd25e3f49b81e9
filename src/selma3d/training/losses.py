"""Segmentation losses for finetuning: Dice+BCE, focal+Dice, blob loss, clDice.

Every loss is called as ``loss(logits, target, ignore=None)``:

- ``logits``: (B, 1, D, H, W) foreground logits (the networks of :mod:`selma3d.nets.models`);
- ``target``: same shape, values in {0, 1};
- ``ignore``: optional bool tensor of the same shape, True where a voxel is not annotated
  (partially annotated volumes, e.g. label 0 = unlabelled in TRAILMAP axons). Ignored voxels
  contribute nothing: changing logits or target under the mask leaves the loss unchanged.

Computation is in float32 whatever the autocast dtype of the logits.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

LOSSES = ("dice_ce", "focal_dice", "blob", "cldice")


def _prepare(logits: torch.Tensor, target: torch.Tensor, ignore: torch.Tensor | None):
    if logits.shape != target.shape or logits.ndim < 3 or logits.shape[1] != 1:
        raise ValueError(
            f"loss inputs: expected logits and target of equal shape (B, 1, ...), "
            f"found logits {tuple(logits.shape)} and target {tuple(target.shape)}"
        )
    if ignore is not None and ignore.shape != logits.shape:
        raise ValueError(f"loss ignore mask: expected shape {tuple(logits.shape)}, found {tuple(ignore.shape)}")
    x = logits.float()
    valid = torch.ones_like(x) if ignore is None else (~ignore.bool()).float()
    t = (target.float() > 0.5).float() * valid
    return x, t, valid


def _soft_dice_loss(p: torch.Tensor, t: torch.Tensor, smooth_nr: float, smooth_dr: float, batch: bool) -> torch.Tensor:
    """MONAI ``DiceLoss`` on already masked probabilities (kept via MONAI for identical semantics)."""
    from monai.losses import DiceLoss

    return DiceLoss(sigmoid=False, smooth_nr=smooth_nr, smooth_dr=smooth_dr, batch=batch)(p, t)


class DiceCELoss(nn.Module):
    """Soft Dice (MONAI) + binary cross-entropy on logits; with no ``ignore`` it equals MONAI's
    ``DiceCELoss(sigmoid=True)``."""

    def __init__(self, lambda_dice: float = 1.0, lambda_ce: float = 1.0, smooth_nr: float = 1e-5,
                 smooth_dr: float = 1e-5, batch: bool = False):
        super().__init__()
        self.lambda_dice, self.lambda_ce = lambda_dice, lambda_ce
        self.smooth_nr, self.smooth_dr, self.batch = smooth_nr, smooth_dr, batch

    def forward(self, logits, target, ignore=None):
        x, t, v = _prepare(logits, target, ignore)
        dice = _soft_dice_loss(torch.sigmoid(x) * v, t, self.smooth_nr, self.smooth_dr, self.batch)
        ce = (F.binary_cross_entropy_with_logits(x, t, reduction="none") * v).sum() / v.sum().clamp_min(1.0)
        return self.lambda_dice * dice + self.lambda_ce * ce


class FocalDiceLoss(nn.Module):
    """MONAI ``FocalLoss`` (sigmoid, γ=2) + soft Dice, as used by teams BioAI and Wu."""

    def __init__(self, gamma: float = 2.0, alpha: float | None = None, lambda_focal: float = 1.0,
                 lambda_dice: float = 1.0, smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, batch: bool = False):
        super().__init__()
        from monai.losses import FocalLoss

        self.focal = FocalLoss(gamma=gamma, alpha=alpha, use_softmax=False, reduction="none")
        self.lambda_focal, self.lambda_dice = lambda_focal, lambda_dice
        self.smooth_nr, self.smooth_dr, self.batch = smooth_nr, smooth_dr, batch

    def forward(self, logits, target, ignore=None):
        x, t, v = _prepare(logits, target, ignore)
        focal = (self.focal(x, t) * v).sum() / v.sum().clamp_min(1.0)
        dice = _soft_dice_loss(torch.sigmoid(x) * v, t, self.smooth_nr, self.smooth_dr, self.batch)
        return self.lambda_focal * focal + self.lambda_dice * dice


def label_components(target: torch.Tensor, connectivity: int = 26) -> tuple[torch.Tensor, list[int]]:
    """Connected components of each sample of a (B, 1, ...) binary target (cc3d, on CPU).

    Returns labels (B, ...) int64 on the target's device, unique across the batch (0 =
    background), and the number of components per sample.
    """
    import cc3d

    t = (target.detach() > 0.5).cpu().numpy()[:, 0]
    out = np.zeros(t.shape, dtype=np.int64)
    counts, offset = [], 0
    for i in range(t.shape[0]):
        lab, n = cc3d.connected_components(t[i].astype(np.uint8), connectivity=connectivity, return_N=True)
        lab = lab.astype(np.int64)
        out[i] = np.where(lab > 0, lab + offset, 0)
        counts.append(int(n))
        offset += int(n)
    return torch.from_numpy(out).to(target.device), counts


class BlobLoss(nn.Module):
    """Blob loss (Kofler et al.): ``alpha · global + beta · blob``.

    For every ground-truth connected component k, the prediction is restricted to k plus the
    background (other components hidden) and soft Dice is taken against k alone; component
    losses are averaged per sample, then over samples that have components. Vectorised: the
    restricted Dice of component k is 2·S_k / (S_k + S_bg + N_k) with S_k the summed
    probability on k, S_bg on the sample's background and N_k the size of k, all from one
    ``index_add_`` over component ids (labelling by cc3d once per batch on CPU).
    """

    def __init__(self, alpha: float = 2.0, beta: float = 1.0, global_loss: str = "dice_ce", connectivity: int = 26,
                 smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, **global_kwargs: Any):
        super().__init__()
        self.alpha, self.beta, self.connectivity = alpha, beta, connectivity
        self.smooth_nr, self.smooth_dr = smooth_nr, smooth_dr
        self.global_loss = build_loss(global_loss, **global_kwargs)

    def blob_term(self, logits, target, ignore=None) -> torch.Tensor:
        x, t, v = _prepare(logits, target, ignore)
        labels, counts = label_components(target, self.connectivity)
        b = x.shape[0]
        total = sum(counts)
        if total == 0:
            return x.sum() * 0.0
        p = (torch.sigmoid(x) * v)[:, 0]
        vv = v[:, 0]
        ids = labels.flatten()
        s = torch.zeros(total + 1, device=x.device).index_add_(0, ids, p.flatten())
        n = torch.zeros(total + 1, device=x.device).index_add_(0, ids, vv.flatten())
        bg = (p * (labels == 0)).flatten(1).sum(1)  # per-sample background probability mass
        owner = torch.repeat_interleave(torch.arange(b, device=x.device), torch.tensor(counts, device=x.device))
        s_k, n_k = s[1:], n[1:]
        dice = (2 * s_k + self.smooth_nr) / (s_k + bg[owner] + n_k + self.smooth_dr)
        keep = n_k > 0  # components entirely under the ignore mask do not count
        loss_k = (1 - dice) * keep
        per_sample = torch.zeros(b, device=x.device).index_add_(0, owner, loss_k)
        n_comp = torch.zeros(b, device=x.device).index_add_(0, owner, keep.float())
        has = n_comp > 0
        if not bool(has.any()):
            return x.sum() * 0.0
        return (per_sample[has] / n_comp[has]).mean()

    def forward(self, logits, target, ignore=None):
        return self.alpha * self.global_loss(logits, target, ignore) + self.beta * self.blob_term(logits, target, ignore)


def _soft_erode(x: torch.Tensor) -> torch.Tensor:
    p1 = -F.max_pool3d(-x, (3, 1, 1), 1, (1, 0, 0))
    p2 = -F.max_pool3d(-x, (1, 3, 1), 1, (0, 1, 0))
    p3 = -F.max_pool3d(-x, (1, 1, 3), 1, (0, 0, 1))
    return torch.minimum(torch.minimum(p1, p2), p3)


def _soft_dilate(x: torch.Tensor) -> torch.Tensor:
    return F.max_pool3d(x, 3, 1, 1)


def soft_skeleton(x: torch.Tensor, iterations: int = 3) -> torch.Tensor:
    """Differentiable skeleton by iterated min/max-pool morphology (Shit et al., clDice)."""
    skel = F.relu(x - _soft_dilate(_soft_erode(x)))
    for _ in range(iterations):
        x = _soft_erode(x)
        delta = F.relu(x - _soft_dilate(_soft_erode(x)))
        skel = skel + F.relu(delta - skel * delta)
    return skel


class SoftClDiceLoss(nn.Module):
    """``(1 − alpha) · soft Dice + alpha · (1 − soft clDice)`` for tree-like structures.

    Ignored voxels are zeroed in prediction and target *before* skeletonisation, so the
    masked region cannot influence the skeletons of annotated voxels either.
    """

    def __init__(self, alpha: float = 0.5, iterations: int = 3, smooth: float = 1.0,
                 smooth_nr: float = 1e-5, smooth_dr: float = 1e-5):
        super().__init__()
        self.alpha, self.iterations, self.smooth = alpha, iterations, smooth
        self.smooth_nr, self.smooth_dr = smooth_nr, smooth_dr

    def forward(self, logits, target, ignore=None):
        x, t, v = _prepare(logits, target, ignore)
        if x.ndim != 5:
            raise ValueError(f"clDice loss: expected 3D volumes (B, 1, D, H, W), found {tuple(x.shape)}")
        p = torch.sigmoid(x) * v
        dice = _soft_dice_loss(p, t, self.smooth_nr, self.smooth_dr, False)
        sp, st = soft_skeleton(p, self.iterations), soft_skeleton(t, self.iterations)
        tprec = ((sp * t).sum() + self.smooth) / (sp.sum() + self.smooth)
        tsens = ((st * p).sum() + self.smooth) / (st.sum() + self.smooth)
        cl = 1 - 2 * tprec * tsens / (tprec + tsens)
        return (1 - self.alpha) * dice + self.alpha * cl


_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "dice_ce": DiceCELoss,
    "focal_dice": FocalDiceLoss,
    "blob": BlobLoss,
    "cldice": SoftClDiceLoss,
}


def build_loss(name: str, **kwargs: Any) -> nn.Module:
    """Loss module by config name (``dice_ce`` default, ``focal_dice``, ``blob``, ``cldice``)."""
    if name not in _BUILDERS:
        raise KeyError(f"unknown loss {name!r}; available: {list(LOSSES)}")
    return _BUILDERS[name](**kwargs)
