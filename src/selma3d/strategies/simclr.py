"""SimCLR (team Wu, SELMA3D 2024; Chen et al. 2020), here in 3D.

Two views per patch from resized crops + flips, contrast/gamma change and Gaussian blur (Wu's
"contrast enhancement + Gaussian blur"); pooled encoder features → MLP projector → NT-Xent.
Attention U-Net encoder by default (Wu), plain UNet as an option.
"""

from __future__ import annotations

from typing import Any

import torch

from selma3d.augment import views as augment
from selma3d.strategies import register
from selma3d.strategies._common import StrategyBase, embedding_std, mlp, nt_xent


@register("simclr")
class SimCLR(StrategyBase):
    #: Attention U-Net after Wu; temperature 0.5 (SimCLR's small-batch value); rest assumed
    defaults: dict[str, Any] = {
        "backbone": "attention_unet",
        "patch_size": [64, 64, 64],
        "batch_size": 8,
        "lr": 1e-4,
        "weight_decay": 1e-6,
        "warmup_steps": 500,
        "temperature": 0.5,
        "proj_hidden": 512,
        "proj_dim": 128,
        "crop_scale": [0.3, 1.0],
        "blur_p": 0.5,
        "blur_sigma": [0.1, 2.0],
        "noise_std": 0.05,
        "seed": 0,
    }
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
