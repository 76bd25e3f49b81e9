"""Masked reconstruction + image–text alignment + EMA distillation (LSM foundation model).

After Scheinfeld et al.'s LSM foundation model: the student network reconstructs masked cubes
(L1 on masked voxels, through the whole segmentation net); each patch's caption (the free-text
``caption`` of its manifest row when there is one, else a sentence built from its metadata:
organism, stain, structure and its category, voxel size) is encoded by a small
word-level transformer trained from scratch (hashed tokens, no downloaded weights) and aligned
with the pooled volume embedding by a CLIP loss (samples with identical captions count as
positives of each other) plus a per-pair cosine term; an EMA teacher that sees the unmasked
patch supplies per-location channel distributions of the deepest encoder features that the
student matches (KL). Encoder and decoder are exported.
"""

from __future__ import annotations

import re
import zlib
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from selma3d.augment import views as augment
from selma3d.nets import models
from selma3d.core.structures import STRUCTURE_CATEGORY
from selma3d.strategies import register, team_defaults
from selma3d.strategies._common import StrategyBase, ema_update, embedding_std, make_teacher, masked_recon_loss, mlp, pool_features


def _fmt(v: Any) -> str:
    return f"{float(v):g}"


def caption(meta: dict[str, Any] | None, i: int) -> str:
    """Caption of sample ``i``: its real ``caption`` when the metadata carries a non-empty one
    (a manifest's ``caption`` column), else a sentence from the per-sample metadata lists
    (missing values read "unknown")."""
    meta = meta or {}

    def get(key):
        vals = meta.get(key)
        if vals is None or i >= len(vals) or vals[i] is None or (isinstance(vals[i], float) and vals[i] != vals[i]):
            return None
        return vals[i]

    text = get("caption")
    if text is not None and str(text).strip():
        return " ".join(str(text).split())
    structure = get("structure")
    organism = get("organism") or "unknown organism"
    stain = get("stain") or "unknown"
    parts = [f"{organism} light-sheet microscopy", f"{stain} stain"]
    if structure:
        cat = STRUCTURE_CATEGORY.get(str(structure))
        s = str(structure).replace("_", " ")
        parts.append(f"{s} ({cat.replace('_', ' ')})" if cat else s)
    else:
        parts.append("unknown structure")
    sp = get("spacing_um")
    if sp is not None:
        zyx = [float(t) for t in str(sp).split(",")] if isinstance(sp, str) else [float(t) for t in sp]
        if len(zyx) == 3:
            parts.append(f"voxel size z {_fmt(zyx[0])} y {_fmt(zyx[1])} x {_fmt(zyx[2])} um")
    return ", ".join(parts)


class TextEncoder(nn.Module):
    """Word-level transformer over hashed tokens (crc32 buckets; 0 = padding), mean-pooled."""

    def __init__(self, dim_out: int, vocab: int = 4096, width: int = 128, layers: int = 2, heads: int = 4, max_len: int = 32):
        super().__init__()
        self.vocab, self.max_len = vocab, max_len
        self.embed = nn.Embedding(vocab, width, padding_idx=0)
        self.pos = nn.Parameter(torch.zeros(1, max_len, width))
        nn.init.normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.proj = nn.Linear(width, dim_out)

    def tokenize(self, texts: Sequence[str], device) -> torch.Tensor:
        ids = torch.zeros(len(texts), self.max_len, dtype=torch.long)
        for r, t in enumerate(texts):
            words = re.findall(r"[a-z0-9]+(?:\.[0-9]+)?|[^\sa-z0-9]", t.lower())[: self.max_len]
            for c, w in enumerate(words):
                ids[r, c] = 1 + zlib.crc32(w.encode()) % (self.vocab - 1)
        return ids.to(device)

    def forward(self, texts: Sequence[str], device) -> torch.Tensor:
        ids = self.tokenize(texts, device)
        pad = ids == 0
        x = self.embed(ids) + self.pos[:, : ids.shape[1]]
        x = self.norm(self.encoder(x, src_key_padding_mask=pad))
        keep = (~pad).unsqueeze(-1).to(x.dtype)
        return self.proj((x * keep).sum(1) / keep.sum(1).clamp_min(1))


@register("mae_text")
class MaskedTextAligned(StrategyBase):
    #: the team's settings: :data:`selma3d.strategies.defaults.TEAM_DEFAULTS` (torch-free)
    defaults: dict[str, Any] = team_defaults("mae_text")
    export_scope = "network"

    def __init__(self, config: dict[str, Any], in_channels: int = 1):
        super().__init__(config, in_channels)
        c = self.config
        self.image_proj = mlp(self.pool_dim, int(c["embed_dim"]), int(c["embed_dim"]))
        self.text_encoder = TextEncoder(int(c["embed_dim"]), int(c["text_vocab"]), int(c["text_width"]),
                                        int(c["text_layers"]), max_len=int(c["text_max_len"]))
        self.teacher = make_teacher(self.encoder_net)

    def loss(self, batch: torch.Tensor, step: int, meta: dict[str, Any] | None = None):
        self.require_batch(batch, 2, self.name)
        c = self.config
        b, dev = batch.shape[0], batch.device
        g = self.generator(dev)
        ratio = float(c["mask_ratio_warmup"]) if step < int(c["mask_warmup_steps"]) else float(c["mask_ratio"])
        mask = augment.cube_mask((b, *batch.shape[2:]), ratio, int(c["mask_cube"]), g, dev)
        x_in = torch.where(mask, torch.full_like(batch, float(c["mask_value"])), batch)
        pred, feat = models.forward_with_bottleneck(self.encoder_net, x_in, self.backbone)
        recon = masked_recon_loss(pred, batch, mask, c["recon_loss"])

        with torch.no_grad():
            t_feat = models.encode(self.teacher, batch, self.backbone).float()
        t_p = F.softmax(t_feat / float(c["teacher_temp"]), dim=1)
        s_logp = F.log_softmax(feat.float() / float(c["student_temp"]), dim=1)
        distill = (t_p * (torch.log(t_p.clamp_min(1e-12)) - s_logp)).sum(1).mean()

        img = F.normalize(self.image_proj(pool_features(feat)), dim=1)
        caps = [caption(meta, i) for i in range(b)]
        txt = F.normalize(self.text_encoder(caps, dev).float(), dim=1)
        logits = img @ txt.t() / float(c["clip_temperature"])
        same = torch.tensor([[a == bb for bb in caps] for a in caps], dtype=torch.float32, device=dev)
        target = same / same.sum(1, keepdim=True)
        clip = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
        align = (1 - (img * txt).sum(1)).mean()

        loss = c["w_recon"] * recon + c["w_distill"] * distill + c["w_clip"] * clip + c["w_align"] * align
        return loss, {"recon": float(recon.detach()), "distill": float(distill.detach()), "clip": float(clip.detach()),
                      "align": float(align.detach()), "emb_std": embedding_std(img)}

    def after_step(self, step: int) -> None:
        ema_update(self.teacher, self.encoder_net, self.momentum(step, float(self.config["ema_momentum"])))
