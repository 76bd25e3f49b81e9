"""Masked volume inpainting (team XunDJ, SELMA3D 2024).

Random cubes of the patch are blanked and the whole segmentation network (SwinUNETR by
default; any backbone works) reconstructs them; the loss is taken on masked voxels only, so
the network has to infer hidden structure from context rather than copy visible voxels
through its skip connections. Encoder and decoder are exported (the 1×1 output layer is not).
"""

from __future__ import annotations

from typing import Any

import torch

from selma3d.augment import views as augment
from selma3d.strategies import register, team_defaults
from selma3d.strategies._common import StrategyBase, masked_recon_loss


@register("mae")
class MaskedInpainting(StrategyBase):
    #: the team's settings: :data:`selma3d.strategies.defaults.TEAM_DEFAULTS` (torch-free)
    defaults: dict[str, Any] = team_defaults("mae")
    export_scope = "network"

    def loss(self, batch: torch.Tensor, step: int, meta: dict[str, Any] | None = None):
        self.require_batch(batch, 1, self.name)
        g = self.generator(batch.device)
        mask = augment.cube_mask((batch.shape[0], *batch.shape[2:]), float(self.config["mask_ratio"]),
                                 int(self.config["mask_cube"]), g, batch.device)
        x_in = torch.where(mask, torch.full_like(batch, float(self.config["mask_value"])), batch)
        pred = self.encoder_net(x_in)
        loss = masked_recon_loss(pred, batch, mask, self.config["recon_loss"])
        return loss, {"recon": float(loss.detach()), "masked_fraction": float(mask.float().mean())}
