"""Deep-supervision loss for the ``dynunet`` backbone (nnU-Net's recipe).

In ``train()`` mode a deep-supervised MONAI ``DynUNet`` returns a stack
(B, 1 + n_heads, C, D, H, W): the main output, then the heads of the decoder stages 1..n,
each nearest-upsampled to the full size. :class:`DeepSupervisionLoss` wraps any loss of
:mod:`selma3d.training.losses` (same call ``loss(logits, target, ignore=None)``):

- a plain (B, C, D, H, W) input (``eval()`` mode, or a net without deep supervision) gets the
  wrapped loss unchanged;
- a stack gets ``sum_i w_i * loss(head_i, target_i, ignore_i)`` with ``w_i`` proportional to
  1, 1/2, 1/4, ... and normalised to sum 1 (nnU-Net).

``mode="downsample"`` (default, nnU-Net): every head is brought back to its native resolution
(exactly: nearest upsampling by an integer factor f repeats each value f times, so taking every
f-th voxel recovers the head) and the target and ignore mask are down-sampled to it by
:func:`downsample_target`. ``mode="upsampled"`` compares each upsampled head with the
full-resolution target (MONAI tutorial style; no factors needed).

Example::

    from selma3d.training.losses import build_loss
    from selma3d.training.deep_supervision import DeepSupervisionLoss
    loss_fn = DeepSupervisionLoss(build_loss("dice_ce"), factors=dynunet.head_factors(net.selma3d_cfg))
    loss = loss_fn(net(x), y, ignore=ign)      # net in train() mode
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

TARGET_MODES = ("area", "nearest", "max")


def head_weights(n: int) -> list[float]:
    """nnU-Net's weights 1, 1/2, 1/4, ... for ``n`` outputs, normalised to sum 1."""
    w = [0.5**i for i in range(n)]
    s = sum(w)
    return [v / s for v in w]


def unstack_heads(stacked: torch.Tensor, factors: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """The native-resolution outputs of a DynUNet deep-supervision stack.

    Args:
        stacked: (B, H, C, D, H, W) as DynUNet returns in train mode.
        factors: per output, the per-axis down-sampling factor (``dynunet.head_factors``).
    """
    if stacked.ndim < 4 or stacked.shape[1] != len(factors):
        raise ValueError(f"deep supervision: expected a stack of {len(factors)} outputs (B, H, C, ...), "
                         f"found shape {tuple(stacked.shape)}")
    out = []
    for i, f in enumerate(factors):
        h = stacked[:, i]
        sl = (slice(None), slice(None)) + tuple(slice(None, None, int(s)) for s in f)
        out.append(h[sl])
    return out


def downsample_target(target: torch.Tensor, ignore: torch.Tensor | None, factor: Sequence[int],
                      mode: str = "area") -> tuple[torch.Tensor, torch.Tensor | None]:
    """Down-sample a (B, 1, D, H, W) float target and its ignore mask by an integer factor per axis.

    - ``area``: a coarse voxel is foreground when most of its *annotated* fine voxels are
      (fraction > 0.5), ignored when none of them is annotated;
    - ``nearest``: the fine voxel at the block start (what nearest interpolation picks);
    - ``max``: foreground when any annotated fine voxel is (keeps one-voxel spots), ignored
      when none is annotated.
    Returns (target in {0, 1} float, ignore bool or None).
    """
    f = tuple(int(s) for s in factor)
    if all(s == 1 for s in f):
        return target, ignore
    if mode not in TARGET_MODES:
        raise ValueError(f"deep supervision target mode one of {list(TARGET_MODES)}, found {mode!r}")
    t = (target.float() > 0.5).float()
    if mode == "nearest":
        sl = (slice(None), slice(None)) + tuple(slice(None, None, s) for s in f)
        return t[sl], (None if ignore is None else ignore.bool()[sl])
    valid = torch.ones_like(t) if ignore is None else (~ignore.bool()).float()
    pool = F.avg_pool3d if t.ndim == 5 else F.avg_pool2d
    vfrac = pool(valid, f, f)
    if mode == "area":
        fg = pool(t * valid, f, f)
        out = (fg > 0.5 * vfrac).float() * (vfrac > 0).float()
    else:
        mpool = F.max_pool3d if t.ndim == 5 else F.max_pool2d
        out = mpool(t * valid, f, f)
    ign = None if ignore is None else (vfrac == 0)
    return out, ign


class DeepSupervisionLoss(nn.Module):
    """Weighted sum of a loss over the outputs of a deep-supervised network (see module doc).

    Args:
        loss: a loss called ``loss(logits, target, ignore=None)``.
        factors: per output of the stack, its per-axis down-sampling factor
            (``selma3d.nets.dynunet.head_factors(cfg)``); required for ``mode="downsample"``.
        weights: per output; default 1, 1/2, 1/4, ... Always normalised to sum 1.
        mode: ``downsample`` (heads at native resolution vs down-sampled targets) or
            ``upsampled`` (the stack as is vs the full target).
        target_mode: how targets are down-sampled (:func:`downsample_target`).
    """

    def __init__(self, loss: nn.Module, factors: Sequence[Sequence[int]] | None = None,
                 weights: Sequence[float] | None = None, mode: str = "downsample", target_mode: str = "area"):
        super().__init__()
        if mode not in ("downsample", "upsampled"):
            raise ValueError(f"deep supervision mode 'downsample' or 'upsampled', found {mode!r}")
        if mode == "downsample" and factors is None:
            raise ValueError("deep supervision mode 'downsample' needs the heads' factors (dynunet.head_factors)")
        if target_mode not in TARGET_MODES:
            raise ValueError(f"deep supervision target mode one of {list(TARGET_MODES)}, found {target_mode!r}")
        self.loss = loss
        self.factors = None if factors is None else [[int(s) for s in f] for f in factors]
        self.weights = None if weights is None else [float(w) for w in weights]
        self.mode, self.target_mode = mode, target_mode

    def _weights(self, n: int) -> list[float]:
        if self.weights is None:
            return head_weights(n)
        if len(self.weights) != n:
            raise ValueError(f"deep supervision: {len(self.weights)} weights for {n} outputs")
        s = sum(self.weights)
        return [w / s for w in self.weights]

    def forward(self, logits: torch.Tensor, target: torch.Tensor, ignore: torch.Tensor | None = None) -> torch.Tensor:
        if logits.ndim == target.ndim:  # single output (eval mode / no deep supervision)
            return self.loss(logits, target, ignore=ignore)
        if logits.ndim != target.ndim + 1:
            raise ValueError(f"deep supervision: logits {tuple(logits.shape)} neither like target "
                             f"{tuple(target.shape)} nor a stack of such")
        n = logits.shape[1]
        w = self._weights(n)
        if self.mode == "upsampled":
            heads = list(torch.unbind(logits, dim=1))
            targets = [(target, ignore)] * n
        else:
            if len(self.factors) != n:
                raise ValueError(f"deep supervision: {len(self.factors)} head factors for a stack of {n} outputs")
            heads = unstack_heads(logits, self.factors)
            targets = [downsample_target(target, ignore, f, self.target_mode) for f in self.factors]
        total = logits.new_zeros((), dtype=torch.float32)
        for wi, h, (t, ig) in zip(w, heads, targets):
            if wi:
                total = total + wi * self.loss(h, t, ignore=ig)
        return total
