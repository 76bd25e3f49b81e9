"""SimCLR (team Wu, SELMA3D 2024; Chen et al. 2020), here in 3D.

Two views per patch from resized crops + flips, contrast/gamma change and Gaussian blur (Wu's
"contrast enhancement + Gaussian blur"); pooled encoder features → MLP projector → NT-Xent.
Attention U-Net encoder by default (Wu), plain UNet as an option.
"""

from __future__ import annotations

from typing import Any

import torch

from selma3d.augment import views as augment
from selma3d.strategies import register, team_defaults
from selma3d.strategies._common import StrategyBase, embedding_std, mlp, nt_xent


@register("simclr")
class SimCLR(StrategyBase):
    #: the team's settings: :data:`selma3d.strategies.defaults.TEAM_DEFAULTS` (torch-free)
    defaults: dict[str, Any] = team_defaults("simclr")
    needs_views = True

    def __init__(self, config: dict[str, Any], in_channels: int = 1):
        super().__init__(config, in_channels)
        self.projector = mlp(self.pool_dim, int(self.config["proj_hidden"]), int(self.config["proj_dim"]))

    def loss(self, batch: torch.Tensor, step: int, meta: dict[str, Any] | None = None):
        self.require_batch(batch, 2, self.name)
        g = self.generator(batch.device)
        c = self.config
        v1, v2 = (augment.augment_view(batch, None, g, tuple(c["crop_scale"]), float(c["blur_p"]),
                                       tuple(c["blur_sigma"]), float(c["noise_std"])) for _ in range(2))
        z = self.projector(self.pooled(self.encoder_net, torch.cat([v1, v2])))
        z1, z2 = z.chunk(2)
        loss = nt_xent(z1, z2, float(c["temperature"]))
        return loss, {"nt_xent": float(loss.detach()), "emb_std": embedding_std(z1)}
