"""Backbones, encoder prefixes, pretrained loading and finetune modes."""

from __future__ import annotations

import pytest
import torch

from selma3d.nets import models as M
from selma3d.core.errors import InputError
from selma3d.training.losses import build_loss

TINY = {
    "unet": dict(backbone="unet", patch_size=[32, 32, 32], features=[4, 8, 8, 16, 16, 4]),
    "attention_unet": dict(backbone="attention_unet", patch_size=[32, 32, 32], channels=[4, 8, 8, 16], strides=[2, 2, 2]),
    "vit": dict(backbone="vit", patch_size=[32, 32, 32], vit_patch_size=8, hidden_size=32, mlp_dim=64, num_layers=2,
                num_heads=2, feature_size=4),
    "swinunetr": dict(backbone="swinunetr", patch_size=[64, 64, 64], feature_size=12, depths=[1, 1, 1, 1],
                      num_heads=[1, 1, 2, 2], window_size=4),
}



def _batch(cfg, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 1, *cfg["patch_size"], generator=g)
    y = (torch.rand(b, 1, *cfg["patch_size"], generator=g) > 0.8).float()
    return x, y


@pytest.mark.parametrize("backbone", ["unet", "attention_unet", "vit"])
def test_nets_output_one_logit_channel_and_expose_the_encoder(backbone):
    cfg = TINY[backbone]
    net = M.build_segmentation_net(cfg)
    x, _ = _batch(cfg)
    y = net(x)
    assert y.shape == (2, 1, *cfg["patch_size"])
    sd = net.state_dict()
    prefixes = M.encoder_prefixes(backbone, cfg)
    for p in prefixes:
        assert any(k.startswith(p) for k in sd), p
    enc_keys = [k for k in sd if k.startswith(tuple(prefixes))]
    assert 0 < len(enc_keys) < len(sd)
    feat = M.encode(net, x)
    s = M.encoder_stride(cfg)
    assert feat.shape == (2, M.encoder_channels(cfg), *[p // s for p in cfg["patch_size"]])
    net.eval()
    y2, feat2 = M.forward_with_bottleneck(net, x)
    assert torch.allclose(y2, net(x)) and feat2.shape == feat.shape


def test_swinunetr_encoder_is_swinvit():
    cfg = TINY["swinunetr"]
    net = M.build_segmentation_net(cfg)
    assert M.encoder_prefixes("swinunetr") == ["swinViT."]
    with torch.no_grad():
        feat = M.encode(net, torch.zeros(1, 1, 64, 64, 64))
    assert feat.shape == (1, 12 * 16, 2, 2, 2)


def test_bad_configs_are_named():
    with pytest.raises(InputError, match="divisible by 32"):
        M.build_segmentation_net({**TINY["swinunetr"], "patch_size": [48, 64, 64]})
    with pytest.raises(InputError, match="backbone"):
        M.build_segmentation_net({"backbone": "resnet"})
    with pytest.raises(InputError, match="multiple of 12"):
        M.build_segmentation_net({**TINY["swinunetr"], "feature_size": 16})


def test_load_pretrained_counts_and_rejects_nothing_matching():
    cfg = TINY["unet"]
    src, dst = M.build_segmentation_net(cfg), M.build_segmentation_net(cfg)
    enc = {k: v for k, v in src.state_dict().items() if k.startswith(tuple(M.encoder_prefixes("unet")))}
    n = M.load_pretrained(dst, enc)
    assert n == len(enc) > 0
    for k, v in enc.items():
        assert torch.equal(dst.state_dict()[k], v)
    with pytest.raises(InputError, match="0 of"):
        M.load_pretrained(dst, {"foo.weight": torch.zeros(3)}, source="w.pt")
    partial = dict(list(enc.items())[:3])
    with pytest.raises(InputError, match="encoder tensors"):
        M.load_pretrained(dst, partial)
    assert M.load_pretrained(dst, partial, strict_encoder=False) == 3
    # a different backbone's weights load nothing
    with pytest.raises(InputError):
        M.load_pretrained(M.build_segmentation_net(TINY["vit"]), enc)


def _train_step(net, cfg, steps=2):
    x, y = _batch(cfg, seed=1)
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-2)
    loss = build_loss("dice_ce")
    net.train()
    for _ in range(steps):
        opt.zero_grad()
        loss(net(x), y).backward()
        opt.step()


@pytest.mark.parametrize("backbone", ["unet", "attention_unet", "vit"])
def test_frozen_mode_keeps_encoder_bit_identical(backbone):
    cfg = TINY[backbone]
    net = M.apply_finetune_mode(M.build_segmentation_net(cfg), "frozen", backbone)
    prefixes = tuple(M.encoder_prefixes(backbone, cfg))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    _train_step(net, cfg)
    after = net.state_dict()
    changed_dec = False
    for k, v in before.items():
        if k.startswith(prefixes):
            assert torch.equal(v, after[k]), k  # includes BatchNorm running stats (attention_unet)
        elif v.is_floating_point() and not torch.equal(v, after[k]):
            changed_dec = True
    assert changed_dec
    assert all(not m.training for n, m in net.named_modules() if n and (n + ".").startswith(prefixes))


def test_adapter_mode_trains_only_adapters_and_decoder():
    cfg = TINY["vit"]
    net = M.apply_finetune_mode(M.build_segmentation_net(cfg), "adapter", "vit", adapter_dim=8)
    trainable = [n for n, p in net.named_parameters() if p.requires_grad]
    assert any(".adapter." in n for n in trainable)
    assert all(not n.startswith("vit.") or ".adapter." in n for n in trainable)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    _train_step(net, cfg)
    after = net.state_dict()
    for k, v in before.items():
        if k.startswith("vit.") and ".adapter." not in k:
            assert torch.equal(v, after[k]), k
    assert not torch.equal(before["vit.blocks.0.adapter.up.weight"], after["vit.blocks.0.adapter.up.weight"])
    assert not torch.equal(before["out.conv.conv.weight"], after["out.conv.conv.weight"])
    with pytest.raises(InputError, match="adapter"):
        M.apply_finetune_mode(M.build_segmentation_net(TINY["unet"]), "adapter", "unet")


def test_full_mode_and_bf16_autocast():
    cfg = TINY["unet"]
    net = M.apply_finetune_mode(M.build_segmentation_net(cfg), "full")
    assert all(p.requires_grad for p in net.parameters())
    x, y = _batch(cfg)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
        val = build_loss("blob")(out, y)
    val.backward()
    assert torch.isfinite(val) and val.dtype == torch.float32
