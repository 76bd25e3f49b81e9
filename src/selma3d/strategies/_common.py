"""Pieces shared by the SSL strategies: config merge, seeded generators, heads, EMA, losses."""

from __future__ import annotations

import copy
import math
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from selma3d.nets import models
from selma3d.nets.dynunet import single_output
from selma3d.core.errors import InputError
from selma3d.strategies import resolve_strategy_config, strategy_network
from selma3d.strategies.base import Strategy


class StrategyBase(Strategy):
    """Strategy with config merged over ``defaults``, a seeded generator and the encoder net.

    ``defaults`` are the team's (``selma3d.strategies.defaults``); the config resolves over them
    with :func:`selma3d.strategies.resolve_strategy_config`, the network with
    :func:`selma3d.strategies.strategy_network`.

    ``export_scope`` is ``"encoder"`` (export the encoder tensors only) or ``"network"``
    (encoder and decoder: reconstruction through the whole net; the output layer is left out).
    """

    defaults: dict[str, Any] = {}
    export_scope = "encoder"

    def __init__(self, config: dict[str, Any], in_channels: int = 1):
        # the same resolution as the workflow's (team defaults < config; None means unset)
        merged = resolve_strategy_config(self.name, {}, config)
        super().__init__(merged, in_channels=in_channels)
        self.config["in_channels"] = in_channels
        self.net_config = strategy_network(self.name, self.config)
        self.backbone = self.net_config["backbone"]
        self.encoder_net = models.build_segmentation_net(self.net_config)
        single_output(self.encoder_net)  # pretext tasks read the main output (no deep-supervision stack)
        self.feat_dim = models.encoder_channels(self.net_config)
        self.pool_dim = 2 * self.feat_dim  # see pool_features
        self._gen: torch.Generator | None = None
        if self.export_scope == "encoder":
            # the decoder is not used by the pretext task: keep it out of the optimiser
            enc = tuple(models.encoder_prefixes(self.backbone, self.net_config))
            for name, p in self.encoder_net.named_parameters():
                if not name.startswith(enc):
                    p.requires_grad_(False)

    # -- helpers ---------------------------------------------------------------------------
    def generator(self, device: torch.device) -> torch.Generator:
        """Seeded generator on the batch's device (created once; its state advances per step)."""
        if self._gen is None or self._gen.device.type != torch.device(device).type:
            self._gen = torch.Generator(device=device)
            self._gen.manual_seed(int(self.config.get("seed", 0)))
        return self._gen

    def export_weights(self) -> dict[str, torch.Tensor]:
        sd = self.encoder_net.state_dict()
        if self.export_scope == "encoder":
            keep = tuple(models.encoder_prefixes(self.backbone, self.net_config))
            return {k: v.detach().clone() for k, v in sd.items() if k.startswith(keep)}
        drop = tuple(models.output_prefixes(self.backbone, self.net_config))
        return {k: v.detach().clone() for k, v in sd.items() if not k.startswith(drop)}

    def momentum(self, step: int, base: float) -> float:
        """EMA momentum: cosine from ``base`` to 1 over ``total_steps`` (constant if unset)."""
        total = self.config.get("total_steps")
        if not total:
            return base
        t = min(1.0, step / float(total))
        return 1.0 - (1.0 - base) * (math.cos(math.pi * t) + 1.0) / 2.0

    @staticmethod
    def require_batch(batch: torch.Tensor, least: int, name: str) -> None:
        if batch.ndim != 5:
            raise InputError(None, "batch of shape (B, C, D, H, W)", f"shape {tuple(batch.shape)}")
        if batch.shape[0] < least:
            raise InputError(None, f"batch size >= {least} for strategy {name!r}", f"batch size {batch.shape[0]}")

    def pooled(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Pooled deepest encoder features (B, 2C), see :func:`pool_features`."""
        return pool_features(models.encode(net, x, self.backbone))


def pool_features(feat: torch.Tensor) -> torch.Tensor:
    """Global mean and max of a (B, C, d, h, w) map, concatenated (B, 2C).

    Instance-normalised encoders (BasicUNet, SwinUNETR's blocks) give nearly sample-independent
    channel means, so average pooling alone starts every embedding at the same point; the max
    keeps per-sample information.
    """
    f = feat.float().flatten(2)
    return torch.cat([f.mean(2), f.amax(2)], dim=1)


def mlp(dim_in: int, hidden: int, dim_out: int, norm: str = "bn", layers: int = 2) -> nn.Sequential:
    """Projector / predictor MLP (Linear-Norm-ReLU ... Linear)."""
    mods: list[nn.Module] = []
    d = dim_in
    for _ in range(layers - 1):
        mods += [nn.Linear(d, hidden), nn.BatchNorm1d(hidden) if norm == "bn" else nn.LayerNorm(hidden), nn.ReLU(inplace=True)]
        d = hidden
    mods.append(nn.Linear(d, dim_out))
    return nn.Sequential(*mods)


class UpsampleHead(nn.Module):
    """Light transposed-conv decoder from the deepest encoder map to the input size (Tang et al.)."""

    def __init__(self, dim_in: int, dim_out: int, stride: int, min_channels: int = 8):
        super().__init__()
        n = int(round(math.log2(stride)))
        mods: list[nn.Module] = []
        c = dim_in
        for i in range(n):
            nxt = max(min_channels, c // 2)
            mods += [nn.ConvTranspose3d(c, nxt, 2, stride=2), nn.InstanceNorm3d(nxt, affine=True), nn.LeakyReLU(inplace=True)]
            c = nxt
        mods.append(nn.Conv3d(c, dim_out, 1))
        self.layers = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def make_teacher(net: nn.Module) -> nn.Module:
    """Frozen EMA copy of a network."""
    t = copy.deepcopy(net)
    for p in t.parameters():
        p.requires_grad_(False)
    return t


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, m: float, names: Iterable[str] | None = None) -> None:
    """teacher ← m·teacher + (1−m)·student for parameters (optionally only those under ``names``
    prefixes); buffers copied."""
    sp = dict(student.named_parameters())
    prefixes = tuple(names) if names else None
    tl, sl = [], []
    for k, p in teacher.named_parameters():
        if prefixes is None or k.startswith(prefixes):
            tl.append(p.data)
            sl.append(sp[k].data.to(p.dtype))
    if tl:
        torch._foreach_lerp_(tl, sl, 1.0 - m)
    sb = dict(student.named_buffers())
    for k, b in teacher.named_buffers():
        if k in sb:
            b.copy_(sb[k])


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR NT-Xent: each sample's other view is the positive, the other 2B−2 the negatives."""
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    b = z1.shape[0]
    sim = z @ z.t() / temperature
    sim = sim.masked_fill(torch.eye(2 * b, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    return F.cross_entropy(sim, target)


def masked_recon_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """Mean reconstruction error over masked voxels (``mask`` True = masked)."""
    diff = pred.float() - target.float()
    err = diff.abs() if kind == "l1" else diff.pow(2)
    m = mask.float()
    return (err * m).sum() / m.sum().clamp_min(1.0)


def embedding_std(z: torch.Tensor) -> float:
    """Mean per-dimension std of L2-normalised embeddings across the batch (collapse → 0)."""
    return float(F.normalize(z.detach().float(), dim=1).std(0).mean())
