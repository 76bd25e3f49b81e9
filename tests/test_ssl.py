"""SSL strategies: registry, loss decreases, no collapse, exported weights load into finetuning nets."""

from __future__ import annotations

import pytest
import torch

from selma3d.nets import models as M
from selma3d.strategies import available, build_strategy, get_strategy

UNET = dict(backbone="unet", patch_size=[32, 32, 32], features=[4, 8, 8, 16, 16, 4])
AUNET = dict(backbone="attention_unet", patch_size=[32, 32, 32], channels=[4, 8, 8, 16], strides=[2, 2, 2])
VIT = dict(backbone="vit", patch_size=[32, 32, 32], vit_patch_size=8, hidden_size=32, mlp_dim=64, num_layers=2,
           num_heads=2, feature_size=4)
TINY = {
    "mae": dict(UNET, mask_cube=4),
    "byol": dict(UNET, proj_hidden=64, proj_dim=32, ema_momentum=0.9),
    "simclr": dict(AUNET, proj_hidden=64, proj_dim=32),
    "swin_multitask": dict(UNET, embed_dim=32, mask_cube=4),
    "dino": dict(VIT, out_dim=64, head_hidden=64, head_bottleneck=16, n_local_crops=2, local_size=16,
                 teacher_temp_warmup_steps=0),
    "mae_text": dict(UNET, embed_dim=32, text_width=32, text_vocab=256, mask_cube=4),
}
CONTRASTIVE = ("byol", "simclr", "swin_multitask", "dino", "mae_text")
META = {"structure": ["cfos_neuron", "blood_vessel", "cfos_neuron", "cell_nuclei"],
        "spacing_um": [(6.0, 1.625, 1.625), "3,1.625,1.625", None, (5.0, 0.54, 0.54)],
        "stain": ["c-Fos", "CD31", "c-Fos", None]}



def synthetic_patches(b=4, s=32, seed=1) -> torch.Tensor:
    """Normalised patches with a few Gaussian blobs each (spot-like LSM stand-in)."""
    g = torch.Generator().manual_seed(seed)
    zz, yy, xx = torch.meshgrid(*[torch.arange(s, dtype=torch.float32)] * 3, indexing="ij")
    x = torch.zeros(b, 1, s, s, s)
    for i in range(b):
        for _ in range(6):
            c = torch.rand(3, generator=g) * s
            r = 2 + torch.rand(1, generator=g) * 4
            x[i, 0] += torch.exp(-((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) / (2 * r**2))
    x = x + 0.05 * torch.randn(x.shape, generator=g)
    return (x - x.mean()) / x.std()


def _run(name, steps, cfg=None, ema=True, lr=1e-3, fixed_views=True):
    torch.manual_seed(0)
    st = build_strategy(name, cfg or TINY[name])
    opt = torch.optim.AdamW(st.trainable_parameters(), lr=lr, weight_decay=0.0)
    batch = synthetic_patches()
    losses, logs = [], {}
    st.train()
    for step in range(steps):
        if fixed_views:
            st._gen = None  # same masks/views every step: a fixed objective
        loss, logs = st.loss(batch, step, META)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if ema:
            st.after_step(step)
        losses.append(float(loss.detach()))
    return st, losses, logs


def test_registry_lists_every_strategy_with_defaults():
    assert available() == sorted(["mae", "byol", "simclr", "swin_multitask", "dino", "mae_text"])
    for name in available():
        cls = get_strategy(name)
        assert cls.name == name
        for key in ("backbone", "patch_size", "batch_size", "lr", "weight_decay", "warmup_steps", "seed"):
            assert key in cls.defaults, (name, key)
        M.net_config(M.split_net_config(cls.defaults)[0])  # the default network config is valid
    with pytest.raises(KeyError, match="available"):
        get_strategy("nope")


@pytest.mark.parametrize("name", sorted(TINY))
def test_loss_decreases_and_weights_transfer(name):
    cfg = TINY[name]
    if name == "dino":
        # a moving teacher and centre change the target; hold them to test that the student learns
        st, losses, logs = _run(name, 6, {**cfg, "center_momentum": 1.0}, ema=False)
    else:
        st, losses, logs = _run(name, 6)
    first, last = sum(losses[:2]) / 2, sum(losses[-2:]) / 2
    print(f"{name}: first {first:.4f} last {last:.4f} ({100 * (first - last) / first:.1f} % lower)")
    assert all(torch.isfinite(torch.tensor(losses)))
    assert last < 0.95 * first, losses
    if name in CONTRASTIVE:  # embeddings stay spread across the batch (no collapse)
        print(f"{name}: embedding std {logs['emb_std']:.3f}")
        assert logs["emb_std"] > 0.05, logs

    exported = st.export_weights()
    net = M.build_segmentation_net(M.split_net_config(cfg)[0])
    own = net.state_dict()
    for k, v in exported.items():
        assert k in own and own[k].shape == v.shape, k
    enc = tuple(M.encoder_prefixes(cfg["backbone"], cfg))
    assert any(k.startswith(enc) for k in exported)
    assert M.load_pretrained(net, exported) == len(exported) > 0
    for k, v in exported.items():
        assert torch.equal(net.state_dict()[k], v)


def test_dino_with_moving_teacher_does_not_collapse():
    _, losses, logs = _run("dino", 6, fixed_views=False)
    print(f"dino (EMA teacher, centring): embedding std {logs['emb_std']:.3f}, kl {logs['dino_kl']:.3f}")
    assert logs["emb_std"] > 0.05 and all(torch.isfinite(torch.tensor(losses))), logs


def test_pretraining_changes_what_is_exported_and_ema_lags():
    st = build_strategy("byol", TINY["byol"])
    enc0 = {k: v.clone() for k, v in st.export_weights().items()}
    opt = torch.optim.AdamW(st.trainable_parameters(), lr=1e-2)
    loss, _ = st.loss(synthetic_patches(), 0)
    loss.backward()
    opt.step()
    st.after_step(0)
    enc1 = st.export_weights()
    assert any(not torch.equal(enc0[k], enc1[k]) for k in enc0)
    k = next(k for k in enc1 if k.startswith("down_1.") and k.endswith("conv.weight"))
    t = st.target_net.state_dict()[k]
    assert not torch.equal(t, enc1[k]) and not torch.equal(t, enc0[k])  # EMA between old and new
    # decoder is outside the pretext task and outside the optimiser
    assert all(not p.requires_grad for n, p in st.encoder_net.named_parameters() if n.startswith("upcat"))


def test_same_seed_same_loss():
    torch.manual_seed(3)
    a = build_strategy("mae", TINY["mae"])
    torch.manual_seed(3)
    b = build_strategy("mae", TINY["mae"])
    x = synthetic_patches()
    assert torch.equal(a.loss(x, 0)[0], b.loss(x, 0)[0])


def test_swinunetr_multitask_exports_swinvit():
    cfg = dict(backbone="swinunetr", patch_size=[64, 64, 64], feature_size=12, depths=[1, 1, 1, 1],
               num_heads=[1, 1, 2, 2], window_size=4, embed_dim=16, mask_cube=16)
    st = build_strategy("swin_multitask", cfg)
    x = torch.nn.functional.interpolate(synthetic_patches(2), size=(64, 64, 64))
    loss, logs = st.loss(x, 0, {"structure": ["microglia", None]})
    loss.backward()
    assert torch.isfinite(loss) and "class" in logs
    exported = st.export_weights()
    assert exported and all(k.startswith("swinViT.") for k in exported)
    assert M.load_pretrained(M.build_segmentation_net(M.split_net_config(cfg)[0]), exported) == len(exported)


def test_mae_text_captions_from_metadata():
    from selma3d.strategies.mae_text import caption

    c0 = caption(META, 0)
    assert "c-fos stain" in c0.lower() and "cfos neuron (isolated sparse)" in c0 and "z 6 y 1.625 x 1.625 um" in c0
    assert "z 3 y 1.625" in caption(META, 1)
    assert "unknown stain" in caption(META, 3) and "unknown structure" in caption({}, 0)
    st = build_strategy("mae_text", TINY["mae_text"])
    ids = st.text_encoder.tokenize([c0, caption(META, 1)], "cpu")
    assert ids.shape == (2, 32) and (ids[0] != ids[1]).any()


def test_dino_requires_vit():
    from selma3d.core.errors import InputError

    with pytest.raises(InputError, match="vit"):
        build_strategy("dino", dict(UNET))


def test_views_are_seeded_and_shape_preserving():
    from selma3d.augment import views as augment

    x = synthetic_patches(2)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    v1, v2 = augment.augment_view(x, None, g1), augment.augment_view(x, None, g2)
    assert torch.equal(v1, v2) and v1.shape == x.shape and not torch.equal(v1, x)
    m = augment.cube_mask((2, 32, 32, 32), 0.5, 8, torch.Generator().manual_seed(0))
    assert m.shape == (2, 1, 32, 32, 32) and abs(float(m.float().mean()) - 0.5) < 1e-6
    blurred = augment.gaussian_blur(x, torch.tensor([0.0, 1.0]))
    assert torch.allclose(blurred[0], x[0], atol=1e-6) and blurred[1].std() < x[1].std()
