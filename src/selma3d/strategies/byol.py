"""BYOL (team Zoomlin, 1st in SELMA3D 2024; Grill et al. 2020) on a 3D UNet encoder.

Online encoder + projector + predictor regress the target (EMA of encoder + projector)
projection of the other augmented view; loss = 2 − 2·cos, symmetrised. No negatives: the
predictor and the slowly moving target prevent collapse.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from selma3d.augment import views as augment
from selma3d.nets import models
from selma3d.strategies import register, team_defaults
from selma3d.strategies._common import StrategyBase, embedding_std, ema_update, make_teacher, mlp


@register("byol")
class BYOL(StrategyBase):
    #: the team's settings: :data:`selma3d.strategies.defaults.TEAM_DEFAULTS` (torch-free)
    defaults: dict[str, Any] = team_defaults("byol")
    needs_views = True

    def __init__(self, config: dict[str, Any], in_channels: int = 1):
        super().__init__(config, in_channels)
        c = self.config
        self.projector = mlp(self.pool_dim, int(c["proj_hidden"]), int(c["proj_dim"]))
        self.predictor = mlp(int(c["proj_dim"]), int(c["proj_hidden"]), int(c["proj_dim"]))
        self.target_net = make_teacher(self.encoder_net)
        self.target_projector = make_teacher(self.projector)
        self._enc = models.encoder_prefixes(self.backbone, self.net_config)

    def _views(self, batch):
        g = self.generator(batch.device)
        c = self.config
        return [augment.augment_view(batch, None, g, tuple(c["crop_scale"]), float(c["blur_p"]),
                                     noise_std=float(c["noise_std"])) for _ in range(2)]

    def loss(self, batch: torch.Tensor, step: int, meta: dict[str, Any] | None = None):
        self.require_batch(batch, 2, self.name)
        v1, v2 = self._views(batch)
        z1, z2 = self.projector(self.pooled(self.encoder_net, v1)), self.projector(self.pooled(self.encoder_net, v2))
        p1, p2 = self.predictor(z1), self.predictor(z2)
        with torch.no_grad():
            t1 = self.target_projector(self.pooled(self.target_net, v1))
            t2 = self.target_projector(self.pooled(self.target_net, v2))

        def reg(p, t):
            return (2 - 2 * F.cosine_similarity(p.float(), t.float(), dim=1)).mean()

        loss = reg(p1, t2) + reg(p2, t1)
        return loss, {"byol": float(loss.detach()), "emb_std": embedding_std(z1)}

    def after_step(self, step: int) -> None:
        m = self.momentum(step, float(self.config["ema_momentum"]))
        ema_update(self.target_net, self.encoder_net, m, self._enc)
        ema_update(self.target_projector, self.projector, m)
