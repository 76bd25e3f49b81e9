"""The interface every self-supervised strategy implements.

A strategy owns its networks (an encoder shared with finetuning, plus pretext heads and any
EMA teacher) and knows how to turn a batch of unlabelled patches into a loss. The training
loop (``selma3d.training.pretrain``) is the same for every strategy: it calls :meth:`loss`, steps the
optimiser on :meth:`parameters`, then calls :meth:`after_step` (EMA updates, schedules).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import nn


class Strategy(nn.Module, ABC):
    """Base class of SSL strategies.

    Args:
        config: the strategy's config block (patch_size, backbone, mask_ratio, ema, ...),
            defaults already filled in by the workflow schema.
        in_channels: image channels (1 for light-sheet volumes).

    Subclasses set ``self.encoder_net``: a full segmentation network built by
    ``selma3d.nets.models.build_segmentation_net`` (same names as the finetuning net), whose
    encoder part the pretext heads use; :meth:`export_weights` returns its state dict
    restricted to what the pretext task trained.
    """

    #: config name, set by the registry decorator
    name: str = ""
    #: whether the strategy wants two augmented views per sample (contrastive / distillation)
    needs_views: bool = False

    def __init__(self, config: dict[str, Any], in_channels: int = 1):
        super().__init__()
        self.config = dict(config)
        self.in_channels = in_channels

    @abstractmethod
    def loss(self, batch: torch.Tensor, step: int, meta: dict[str, Any] | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Pretext loss on a batch (B, C, D, H, W) of normalised patches.

        Args:
            batch: float tensor on the training device.
            step: the optimisation step (for schedules).
            meta: per-sample metadata lists (e.g. ``structure``), for strategies that use it.

        Returns:
            (scalar loss with grad, dict of float logs such as component losses)
        """

    def after_step(self, step: int) -> None:
        """Hook after each optimiser step (EMA teacher updates). Default: nothing."""

    @abstractmethod
    def export_weights(self) -> dict[str, torch.Tensor]:
        """Pretrained weights keyed as in the finetuning network's ``state_dict``."""

    def trainable_parameters(self):
        """Parameters the optimiser updates (EMA teachers excluded)."""
        return [p for p in self.parameters() if p.requires_grad]
