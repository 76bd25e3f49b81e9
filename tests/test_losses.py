"""Segmentation losses: MONAI parity, ignore masks, blob loss by hand, clDice behaviour."""

from __future__ import annotations

import math

import pytest
import torch

from selma3d.training.losses import LOSSES, BlobLoss, build_loss, label_components



def _logit(p):
    p = torch.as_tensor(p, dtype=torch.float32)
    return torch.log(p / (1 - p))


def _random_case(seed=0, shape=(2, 1, 12, 12, 12)):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=g) * 2
    target = torch.zeros(shape)
    target[:, :, 2:6, 2:6, 2:6] = 1
    target[0, :, 8:10, 3:11, 6:7] = 1
    target[1, :, 9:11, 9:11, 9:11] = 1
    return logits, target


def test_dice_ce_matches_monai_without_ignore():
    from monai.losses import DiceCELoss

    logits, target = _random_case()
    ours = build_loss("dice_ce")(logits, target)
    ref = DiceCELoss(sigmoid=True)(logits, target)
    assert torch.allclose(ours, ref, atol=1e-6), (float(ours), float(ref))


@pytest.mark.parametrize("name", LOSSES)
def test_ignored_voxels_do_not_change_loss(name):
    logits, target = _random_case(1)
    ignore = torch.zeros_like(target, dtype=torch.bool)
    ignore[:, :, :, :, 7:] = True  # right part unannotated; cuts through a blob
    loss = build_loss(name)
    base = loss(logits, target, ignore)
    g = torch.Generator().manual_seed(5)
    logits2 = torch.where(ignore, torch.randn(logits.shape, generator=g) * 5, logits)
    target2 = torch.where(ignore, (torch.rand(target.shape, generator=g) > 0.5).float(), target)
    assert torch.allclose(loss(logits2, target2, ignore), base, atol=1e-6)
    # ... while the same change without the mask does change it
    assert not torch.allclose(loss(logits2, target2), loss(logits, target), atol=1e-4)
    assert torch.isfinite(base)


@pytest.mark.parametrize("name", LOSSES)
def test_losses_have_gradients_and_prefer_the_truth(name):
    _, target = _random_case(2)
    loss = build_loss(name)
    good = (target * 2 - 1) * 6
    bad = -good
    lg = good.clone().requires_grad_(True)
    val = loss(lg, target)
    val.backward()
    assert lg.grad is not None and torch.isfinite(lg.grad).all()
    assert float(loss(good, target)) < float(loss(bad, target))


def test_blob_loss_two_blob_example_by_hand():
    target = torch.tensor([1, 1, 0, 0, 0, 1, 0, 0], dtype=torch.float32).view(1, 1, 1, 1, 8)
    p = torch.tensor([0.9, 0.8, 0.1, 0.2, 0.1, 0.3, 0.1, 0.5])
    logits = _logit(p).view(1, 1, 1, 1, 8)
    # blob A = voxels {0,1}: S=1.7, N=2; blob B = {5}: S=0.3, N=1; background mass 1.0
    a = 1 - (2 * 1.7) / (1.7 + 1.0 + 2)
    b = 1 - (2 * 0.3) / (0.3 + 1.0 + 1)
    expected_blob = (a + b) / 2
    bl = BlobLoss(alpha=0.0, beta=1.0, smooth_nr=0.0, smooth_dr=0.0)
    assert math.isclose(float(bl(logits, target)), expected_blob, rel_tol=1e-5)
    # and the definition with MONAI's DiceLoss on the masked prediction per component
    from monai.losses import DiceLoss

    labels, counts = label_components(target)
    assert counts == [2]
    ref = []
    for k in (1, 2):
        keep = ((labels == k) | (labels == 0)).float().unsqueeze(1)
        ref.append(float(DiceLoss(smooth_nr=0, smooth_dr=0)(p.view(1, 1, 1, 1, 8) * keep, (labels == k).float().unsqueeze(1))))
    assert math.isclose(float(bl(logits, target)), sum(ref) / 2, rel_tol=1e-5)
    # total = alpha * global + beta * blob
    full = BlobLoss(alpha=2.0, beta=1.0)
    glob = build_loss("dice_ce")(logits, target)
    assert math.isclose(float(full(logits, target)), float(2 * glob + full.blob_term(logits, target)), rel_tol=1e-6)


def test_blob_loss_punishes_missing_a_small_blob_more():
    target = torch.zeros(1, 1, 12, 12, 12)
    target[0, 0, 1:6, 1:6, 1:6] = 1  # large blob, 125 voxels
    target[0, 0, 9:10, 9:11, 9:10] = 1  # small blob, 2 voxels
    miss_small = (target * 2 - 1) * 8
    miss_small[0, 0, 9:10, 9:11, 9:10] = -8
    miss_large_part = (target * 2 - 1) * 8
    miss_large_part[0, 0, 1, 1, 1:3] = -8  # the same 2 voxels' worth, inside the large blob
    bl = build_loss("blob")
    l_small, l_large = float(bl(miss_small, target)), float(bl(miss_large_part, target))
    assert l_small > l_large + 0.3, (l_small, l_large)
    # the global Dice+CE alone barely tells them apart
    dc = build_loss("dice_ce")
    assert abs(float(dc(miss_small, target)) - float(dc(miss_large_part, target))) < 0.01


def test_blob_loss_without_components_is_global_only():
    logits = torch.randn(2, 1, 8, 8, 8)
    target = torch.zeros_like(logits)
    bl = BlobLoss(alpha=2.0, beta=1.0)
    assert math.isclose(float(bl(logits, target)), float(2 * build_loss("dice_ce")(logits, target)), rel_tol=1e-6)


def test_cldice_prefers_connected_tube():
    target = torch.zeros(1, 1, 16, 16, 16)
    target[0, 0, 6:9, 6:9, 1:15] = 1  # a tube along x
    whole = (target * 2 - 1) * 8
    broken = whole.clone()
    broken[0, 0, :, :, 7:9] = -8  # cut through
    loss = build_loss("cldice", alpha=1.0)  # clDice term only
    assert float(loss(whole, target)) < float(loss(broken, target))
    assert float(loss(whole, target)) < 0.05


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="expected logits and target"):
        build_loss("dice_ce")(torch.zeros(1, 1, 4, 4, 4), torch.zeros(1, 1, 4, 4, 5))
    with pytest.raises(KeyError, match="available"):
        build_loss("nope")
