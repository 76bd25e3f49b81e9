"""DINOv2-style self-distillation with an iBOT masked-token objective, in 3D (team Tonyxu).

A student ViT sees two global and several local crops (global tokens partly replaced by a
learned mask token); an EMA teacher sees the two unmasked global crops. Losses: DINO
cross-entropy between the centred, sharpened teacher distribution of each global crop and
the student distribution of every other crop (mean-pooled tokens: MONAI's ViT has no class
token), iBOT cross-entropy on the masked patch tokens, and the KoLeo spreading term on the
student's global embeddings. Only the ViT is exported.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from selma3d.augment import views as augment
from selma3d.core.errors import InputError
from selma3d.strategies import register, team_defaults
from selma3d.strategies._common import StrategyBase, ema_update, embedding_std, make_teacher


class DINOHead(nn.Module):
    """MLP → L2-normalised bottleneck → weight-normalised prototypes (norm fixed to 1)."""

    def __init__(self, dim_in: int, out_dim: int, hidden: int, bottleneck: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim_in, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, bottleneck))
        last = nn.Linear(bottleneck, out_dim, bias=False)
        self.last = nn.utils.parametrizations.weight_norm(last)
        g = self.last.parametrizations.weight.original0
        g.data.fill_(1.0)
        g.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(F.normalize(self.mlp(x), dim=-1))


def _koleo(z: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """KoLeo: −mean log distance of each embedding to its nearest neighbour in the batch."""
    z = F.normalize(z.float(), dim=1)
    d = torch.cdist(z, z)
    d = d + torch.eye(len(z), device=z.device) * 1e4
    return -torch.log(d.min(1).values + eps).mean()


@register("dino")
class DINO(StrategyBase):
    #: the team's settings: :data:`selma3d.strategies.defaults.TEAM_DEFAULTS` (torch-free)
    defaults: dict[str, Any] = team_defaults("dino")
    needs_views = True

    def __init__(self, config: dict[str, Any], in_channels: int = 1):
        super().__init__(config, in_channels)
        if self.backbone != "vit":
            raise InputError(None, "backbone 'vit' for strategy 'dino'", f"backbone {self.backbone!r}")
        c = self.config
        self.head = DINOHead(self.feat_dim, int(c["out_dim"]), int(c["head_hidden"]), int(c["head_bottleneck"]))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, self.feat_dim))
        nn.init.normal_(self.mask_token, std=0.02)
        self.teacher = make_teacher(self.encoder_net)
        self.teacher_head = make_teacher(self.head)
        self.register_buffer("center", torch.zeros(1, int(c["out_dim"])))
        self.register_buffer("center_patch", torch.zeros(1, int(c["out_dim"])))

    def _teacher_temp(self, step: int) -> float:
        c = self.config
        n = int(c["teacher_temp_warmup_steps"])
        t = 1.0 if n <= 0 else min(1.0, step / n)
        return float(c["warmup_teacher_temp"]) + t * (float(c["teacher_temp"]) - float(c["warmup_teacher_temp"]))

    def _crop(self, x, size, scale, g):
        v = augment.random_resized_crop(x, size, scale, flip=True, generator=g)
        v = augment.random_intensity(v, g)
        return augment.random_blur(v, g, p=0.5)

    def loss(self, batch: torch.Tensor, step: int, meta: dict[str, Any] | None = None):
        self.require_batch(batch, 2, self.name)
        c = self.config
        b, dev = batch.shape[0], batch.device
        g = self.generator(dev)
        gsize = tuple(batch.shape[2:])
        ls = int(c["local_size"])
        globals_ = [self._crop(batch, gsize, tuple(c["global_scale"]), g) for _ in range(2)]
        locals_ = [self._crop(batch, (ls, ls, ls), tuple(c["local_scale"]), g) for _ in range(int(c["n_local_crops"]))]
        tt, ts = self._teacher_temp(step), float(c["student_temp"])

        s_cls, s_glob, ibot_terms, t_cls, t_patch_all = [], [], [], [], []
        for gv in globals_:
            with torch.no_grad():
                t_tok, _, _ = self.teacher.tokens(gv)
            n = t_tok.shape[1]
            m = augment.token_mask(b, n, tuple(c["mask_ratio"]), float(c["mask_sample_probability"]), g, dev)
            s_tok, _, _ = self.encoder_net.tokens(gv, mask=m, mask_token=self.mask_token)
            pooled = s_tok.mean(1)
            s_glob.append(pooled)
            s_cls.append(self.head(pooled).float())
            with torch.no_grad():
                t_cls.append(self.teacher_head(t_tok.mean(1)).float())
            if m.any():
                with torch.no_grad():
                    t_patch = self.teacher_head(t_tok[m]).float()
                t_patch_all.append(t_patch)
                tp = F.softmax((t_patch - self.center_patch) / tt, dim=-1)
                sp = F.log_softmax(self.head(s_tok[m]).float() / ts, dim=-1)
                ibot_terms.append(-(tp * sp).sum(-1).mean())
        for lv in locals_:
            tok, _, _ = self.encoder_net.tokens(lv)
            s_cls.append(self.head(tok.mean(1)).float())

        t_probs = [F.softmax((t - self.center) / tt, dim=-1) for t in t_cls]
        terms = []
        for i, tp in enumerate(t_probs):
            for j, s in enumerate(s_cls):
                if j != i:
                    terms.append(-(tp * F.log_softmax(s / ts, dim=-1)).sum(-1).mean())
        dino = torch.stack(terms).mean()
        # teacher entropy: dino − entropy is the student–teacher KL (what the student can lower)
        t_ent = torch.stack([-(tp * torch.log(tp.clamp_min(1e-12))).sum(-1).mean() for tp in t_probs]).mean()
        ibot = torch.stack(ibot_terms).mean() if ibot_terms else dino.new_zeros(())
        koleo = torch.stack([_koleo(z) for z in s_glob]).mean()
        loss = c["w_dino"] * dino + c["w_ibot"] * ibot + c["w_koleo"] * koleo

        with torch.no_grad():
            cm = float(c["center_momentum"])
            self.center.mul_(cm).add_((1 - cm) * torch.cat(t_cls).mean(0, keepdim=True))
            if t_patch_all:
                self.center_patch.mul_(cm).add_((1 - cm) * torch.cat(t_patch_all).mean(0, keepdim=True))
        return loss, {"dino": float(dino.detach()), "ibot": float(ibot.detach()), "koleo": float(koleo.detach()),
                      "dino_kl": float(dino.detach() - t_ent),
                      "teacher_temp": tt, "emb_std": embedding_std(s_glob[0])}

    def after_step(self, step: int) -> None:
        m = self.momentum(step, float(self.config["ema_momentum"]))
        ema_update(self.teacher, self.encoder_net, m, ["vit."])
        ema_update(self.teacher_head, self.head, m)
