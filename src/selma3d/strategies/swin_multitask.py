"""Multi-task pretraining after Tang et al. (CVPR 2022), as used by team BioAI (SELMA3D 2024).

Two copies of each patch are rotated by a random multiple of 90° in the (y, x) plane and get
random cubes blanked; the encoder must (1) predict the rotation (4 classes), (2) match the two
copies' embeddings against the rest of the batch (contrastive coding, NT-Xent) and
(3) reconstruct the unmasked rotated patch through a light transposed-conv head on the deepest
features. BioAI's optional structure classification adds a head predicting ``meta["structure"]``
(samples without a known structure are ignored). SwinUNETR's ``swinViT`` by default; any
backbone's encoder works. Only the encoder is exported.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from selma3d.augment import views as augment
from selma3d.nets import models
from selma3d.strategies import register, team_defaults
from selma3d.strategies._common import StrategyBase, UpsampleHead, embedding_std, mlp, nt_xent, pool_features


@register("swin_multitask")
class SwinMultiTask(StrategyBase):
    #: the team's settings: :data:`selma3d.strategies.defaults.TEAM_DEFAULTS` (torch-free)
    defaults: dict[str, Any] = team_defaults("swin_multitask")

    def __init__(self, config: dict[str, Any], in_channels: int = 1):
        super().__init__(config, in_channels)
        c = self.config
        self.rot_head = nn.Linear(self.pool_dim, 4)
        self.contrast_head = mlp(self.pool_dim, int(c["embed_dim"]), int(c["embed_dim"]))
        self.recon_head = UpsampleHead(self.feat_dim, in_channels, models.encoder_stride(self.net_config))
        self.classes = list(c["structure_classes"] or [])
        self.class_head = nn.Linear(self.pool_dim, len(self.classes)) if self.classes else None

    def _labels(self, meta: dict[str, Any] | None, b: int, dev) -> torch.Tensor | None:
        names = (meta or {}).get("structure")
        if self.class_head is None or names is None:
            return None
        idx = {n: i for i, n in enumerate(self.classes)}
        return torch.tensor([idx.get(n, -100) for n in list(names)[:b]], device=dev)

    def loss(self, batch: torch.Tensor, step: int, meta: dict[str, Any] | None = None):
        self.require_batch(batch, 2, self.name)
        b, dev = batch.shape[0], batch.device
        g = self.generator(dev)
        c = self.config
        xs, ks, ins = [], [], []
        for _ in range(2):
            k = (augment._rand(g, (b,), dev) * 4).long().clamp_max(3)
            x = augment.rot90_yx(batch, k)
            m = augment.cube_mask((b, *batch.shape[2:]), float(c["mask_ratio"]), int(c["mask_cube"]), g, dev)
            xs.append(x)
            ks.append(k)
            ins.append(torch.where(m, torch.zeros_like(x), x))
        x_all, k_all = torch.cat(xs), torch.cat(ks)
        feat = models.encode(self.encoder_net, torch.cat(ins), self.backbone)
        pooled = pool_features(feat)
        rot = F.cross_entropy(self.rot_head(pooled), k_all)
        z = self.contrast_head(pooled)
        z1, z2 = z.chunk(2)
        con = nt_xent(z1, z2, float(c["temperature"]))
        recon = F.l1_loss(self.recon_head(feat).float(), x_all.float())
        loss = c["w_rot"] * rot + c["w_contrast"] * con + c["w_recon"] * recon
        logs = {"rot": float(rot.detach()), "contrast": float(con.detach()), "recon": float(recon.detach()),
                "emb_std": embedding_std(z1)}
        labels = self._labels(meta, b, dev)
        if labels is not None and (labels >= 0).any():
            cls = F.cross_entropy(self.class_head(pooled), labels.repeat(2), ignore_index=-100)
            loss = loss + c["w_class"] * cls
            logs["class"] = float(cls.detach())
        return loss, logs
