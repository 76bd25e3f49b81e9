"""nnU-Net-grade recipe pieces: dynunet topology, deep supervision, augmentation, TTA,
post-processing search, classical baseline and the dataset fingerprint / plan."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import blob_volume

from selma3d import io
from selma3d.nets import dynunet as D
from selma3d.nets import models as M
from selma3d.training.deep_supervision import DeepSupervisionLoss, downsample_target, head_weights, unstack_heads
from selma3d.training.losses import build_loss

TINY_DYN = dict(backbone="dynunet", patch_size=[16, 32, 32], spacing=[2.0, 1.0, 1.0], base_filters=4, max_filters=16)


# ---------------------------------------------------------------------------------------------
# dynunet topology and backbone


def test_topology_isotropic_by_hand():
    t = D.topology([64, 64, 64], [1.0, 1.0, 1.0])
    assert t["strides"] == [[1, 1, 1]] + [[2, 2, 2]] * 4  # 64 -> 4: four poolings, stop at 4
    assert t["kernel_size"] == [[3, 3, 3]] * 5
    assert t["divisor"] == [16, 16, 16] and t["patch_size"] == [64, 64, 64]
    t = D.topology([128, 128, 128], [1.0, 1.0, 1.0])
    assert len(t["strides"]) == 6 and t["num_pool"] == [5, 5, 5]  # 5 poolings cap (6 stages)
    assert D.topology([36, 36, 36], [1, 1, 1])["patch_size"] == [40, 40, 40]  # 3 poolings: multiples of 8


def test_topology_anisotropic_by_hand():
    # z spacing 4x the in-plane one: y/x are pooled twice before z joins; z starts with 1-wide kernels
    t = D.topology([32, 128, 128], [4.0, 1.0, 1.0])
    assert t["strides"] == [[1, 1, 1], [1, 2, 2], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]]
    assert t["kernel_size"] == [[1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]]
    assert t["divisor"] == [8, 32, 32]
    # light-sheet 6 x 1.62 x 1.62 µm: one in-plane pooling first (ratio 3.7), then all axes
    t = D.topology([56, 96, 96], [6.0, 1.62, 1.62])
    assert t["strides"] == [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]]
    assert t["kernel_size"][0] == [1, 3, 3] and t["kernel_size"][1] == [3, 3, 3]
    assert D.default_filters(7) == [32, 64, 128, 256, 320, 320, 320]


def test_dynunet_backbone_builds_and_exposes_its_encoder():
    net = M.build_segmentation_net(TINY_DYN)
    c = net.selma3d_cfg
    assert c["strides"] == [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]] and c["filters"] == [4, 8, 16, 16]
    assert M.net_config(c)["strides"] == c["strides"]  # the resolved config rebuilds the same net
    prefixes = tuple(M.encoder_prefixes("dynunet", c))
    enc_modules = [net.input_block, *net.downsamples, net.bottleneck]
    enc_ids = {id(p) for m in enc_modules for p in m.parameters()}
    named = dict(net.named_parameters())  # canonical (first) names
    assert {id(p) for k, p in named.items() if k.startswith(prefixes)} == enc_ids
    assert 0 < len(enc_ids) < len(named)
    out_pref = tuple(M.output_prefixes("dynunet", c))
    assert all(not k.startswith(out_pref) for k in named if k.startswith(prefixes))
    x = torch.randn(2, 1, 16, 32, 32)
    net.eval()
    with torch.no_grad():
        y = net(x)
        feat = M.encode(net, x)
        y2, feat2 = M.forward_with_bottleneck(net, x)
    assert y.shape == (2, 1, 16, 32, 32)
    assert feat.shape == (2, M.encoder_channels(TINY_DYN), 4, 4, 4) and torch.allclose(feat, feat2)
    assert torch.allclose(y, y2) and M.encoder_stride(TINY_DYN) == 8
    with pytest.raises(Exception, match="divisible"):
        M.build_segmentation_net({**TINY_DYN, "patch_size": [16, 32, 36]})
    # frozen finetuning freezes exactly the encoder
    M.apply_finetune_mode(net, "frozen", "dynunet")
    assert {id(p) for p in net.parameters() if not p.requires_grad} == enc_ids


def test_dynunet_deep_supervision_stack_and_heads():
    cfg = {**TINY_DYN, "deep_supervision": True, "deep_supr_num": 2}
    net = M.build_segmentation_net(cfg)
    x = torch.randn(1, 1, 16, 32, 32)
    net.train()
    stack = net(x)
    assert stack.shape == (1, 3, 1, 16, 32, 32)
    factors = D.head_factors(net.selma3d_cfg)
    assert factors == [[1, 1, 1], [1, 2, 2], [2, 4, 4]]
    heads = unstack_heads(stack, factors)
    assert torch.equal(heads[0], stack[:, 0])
    for h, native in zip(heads[1:], net.heads):  # exact recovery of the native-resolution heads
        assert torch.equal(h, native)
    net.eval()
    assert net(x).shape == (1, 1, 16, 32, 32)


@pytest.mark.parametrize("name", ["mae", "mae_text", "byol", "simclr"])
def test_ssl_strategies_pretrain_the_dynunet_encoder(name):
    from selma3d.strategies import build_strategy

    extra = {"mae": dict(mask_cube=4), "mae_text": dict(embed_dim=16, text_width=16, text_vocab=64, mask_cube=4),
             "byol": dict(proj_hidden=16, proj_dim=8), "simclr": dict(proj_hidden=16, proj_dim=8)}[name]
    cfg = {**TINY_DYN, "deep_supervision": True, **extra}  # pretext tasks ignore the heads
    torch.manual_seed(0)
    st = build_strategy(name, cfg)
    opt = torch.optim.SGD(st.trainable_parameters(), lr=1e-3)
    batch = torch.randn(2, 1, 16, 32, 32)
    meta = {"structure": ["cfos_neuron", "blood_vessel"], "spacing_um": [None, None], "stain": [None, None]}
    st.train()
    loss, _ = st.loss(batch, 0, meta)
    assert torch.isfinite(loss)
    loss.backward()
    opt.step()
    weights = st.export_weights()
    target = M.build_segmentation_net({**TINY_DYN, "deep_supervision": True})
    assert M.load_pretrained(target, weights) > 0  # strict: every encoder tensor transferred
    enc = tuple(M.encoder_prefixes("dynunet"))
    sd = target.state_dict()
    for k, v in weights.items():
        if k.startswith(enc):
            assert torch.equal(sd[k], v)
    assert not any(k.startswith(tuple(M.output_prefixes("dynunet"))) for k in weights)


# ---------------------------------------------------------------------------------------------
# deep-supervision loss


def _blocky(shape_coarse, factor, gen, binary=False):
    v = torch.rand(1, 1, *shape_coarse, generator=gen)
    v = (v > 0.6).float() if binary else v * 6 - 3
    for ax, f in zip((2, 3, 4), factor):
        v = v.repeat_interleave(f, dim=ax)
    return v


def test_deep_supervision_loss_equals_plain_loss_when_heads_agree():
    g = torch.Generator().manual_seed(0)
    base = build_loss("dice_ce")
    factors = [[1, 1, 1], [1, 2, 2], [2, 4, 4]]
    logits = _blocky((4, 4, 4), (2, 4, 4), g)  # constant on the coarsest blocks
    target = _blocky((4, 4, 4), (2, 4, 4), g, binary=True)
    ignore = _blocky((4, 4, 4), (2, 4, 4), g, binary=True).bool() & (target == 0)
    stack = torch.stack([logits] * 3, dim=1)
    plain = base(logits, target, ignore)
    ds = DeepSupervisionLoss(base, factors)
    assert torch.allclose(ds(stack, target, ignore), plain, rtol=1e-4)
    # upsampled mode: identical heads against the full target give the plain loss
    up = DeepSupervisionLoss(base, mode="upsampled")
    assert torch.allclose(up(stack, target, ignore), plain, rtol=1e-6)
    # eval mode (one output): the plain loss
    assert torch.equal(ds(logits, target, ignore), plain)


def test_deep_supervision_weights_are_normalised_halvings():
    assert np.allclose(head_weights(3), [4 / 7, 2 / 7, 1 / 7])
    g = torch.Generator().manual_seed(1)
    base = build_loss("dice_ce")
    target = (torch.rand(1, 1, 8, 8, 8, generator=g) > 0.7).float()
    heads = [torch.randn(1, 1, 8, 8, 8, generator=g) for _ in range(3)]
    got = DeepSupervisionLoss(base, mode="upsampled")(torch.stack(heads, 1), target)
    want = sum(w * base(h, target) for w, h in zip(head_weights(3), heads))
    assert torch.allclose(got, want, rtol=1e-6)
    custom = DeepSupervisionLoss(base, mode="upsampled", weights=[2, 0, 0])(torch.stack(heads, 1), target)
    assert torch.allclose(custom, base(heads[0], target), rtol=1e-6)


def test_downsample_target_respects_the_ignore_mask():
    t = torch.zeros(1, 1, 2, 2, 4)
    ign = torch.zeros_like(t, dtype=torch.bool)
    t[..., 0:2] = torch.tensor([1.0, 0.0])  # first block: half foreground
    ign[..., 1] = True  # ... but the background half is not annotated
    ign[..., 2:] = True  # second block: nothing annotated
    out, oign = downsample_target(t, ign, (2, 2, 2), "area")
    assert out.flatten().tolist() == [1.0, 0.0] and oign.flatten().tolist() == [False, True]
    out, _ = downsample_target(t, None, (2, 2, 2), "area")
    assert out.flatten().tolist() == [0.0, 0.0]  # half is not a majority
    out, _ = downsample_target(t, None, (2, 2, 2), "max")
    assert out.flatten().tolist() == [1.0, 0.0]


# ---------------------------------------------------------------------------------------------
# augmentation

ALL_ON = {"p_rotation": 1.0, "p_scaling": 1.0, "p_noise": 1.0, "p_blur": 1.0, "p_brightness": 1.0,
          "p_contrast": 1.0, "p_lowres": 1.0, "p_gamma": 1.0, "p_gamma_inverted": 1.0}


def _aug_case(seed=0):
    rng = np.random.default_rng(seed)
    img = rng.normal(size=(1, 12, 24, 24)).astype(np.float32)
    lab = np.zeros((12, 24, 24), np.uint8)
    lab[3:8, 5:15, 6:14] = 1
    return img, lab


def test_augmentation_is_seeded_and_keeps_shapes_and_binary_labels():
    from selma3d.augment.pipeline import DEFAULTS, build_augmentation

    assert DEFAULTS["p_rotation"] == 0.2 and DEFAULTS["p_mirror"] == 0.5 and DEFAULTS["p_elastic"] == 0.0
    img, lab = _aug_case()
    a1 = build_augmentation(ALL_ON, (1, 1, 1), seed=3)(img, lab)
    a2 = build_augmentation(ALL_ON, (1, 1, 1), seed=3)(img, lab)
    b = build_augmentation(ALL_ON, (1, 1, 1), seed=4)(img, lab)
    assert np.array_equal(a1[0], a2[0]) and np.array_equal(a1[1], a2[1])
    assert not np.array_equal(a1[0], b[0])
    for im, lb in (a1, b):
        assert im.shape == img.shape and im.dtype == np.float32 and lb.shape == lab.shape and lb.dtype == np.uint8
        assert set(np.unique(lb)) <= {0, 1} and lb.sum() > 0
    # default probabilities, many draws: reseeding reproduces, labels stay binary, torch in -> torch out
    aug = build_augmentation({"p_elastic": 0.5}, (6.0, 1.62, 1.62), seed=0)
    assert aug.config["rotate_outofplane_deg"] == 5.0  # anisotropic: small out-of-plane rotations
    timg, tlab = torch.from_numpy(img), torch.from_numpy(lab.astype(np.float32))
    outs = [aug(timg, tlab) for _ in range(3)]
    aug.set_random_state(0)
    again = aug(timg, tlab)
    assert torch.equal(outs[0][0], again[0]) and torch.equal(outs[0][1], again[1])
    for im, lb in outs:
        assert isinstance(im, torch.Tensor) and im.shape == timg.shape
        assert set(lb.unique().tolist()) <= {0.0, 1.0}


def test_augmentation_marks_padded_voxels_ignored():
    from selma3d.augment.pipeline import build_augmentation

    img, lab = _aug_case()
    cfg = {"p_scaling": 1.0, "scale_range": (1.4, 1.4), "p_mirror": 0.0, "p_noise": 0.0, "p_blur": 0.0,
           "p_lowres": 0.0, "p_gamma": 0.0, "p_gamma_inverted": 0.0, "p_brightness": 0.0, "p_contrast": 0.0,
           "label_padding": "ignore", "ignore_value": 255}
    aug = build_augmentation(cfg, None, seed=0)
    im, lb, ign = aug(img, lab, np.zeros(lab.shape, bool))
    assert ign.any() and not ign.all()  # zoomed out: the border comes from outside the crop
    assert set(np.unique(lb)) <= {0, 1, 255} and np.array_equal(lb == 255, ign)
    assert ign[0, 0, 0] and not ign[6, 12, 12]
    bg = build_augmentation({**cfg, "label_padding": "background", "ignore_value": None}, None, seed=0)(img, lab)
    assert set(np.unique(bg[1])) <= {0, 1}
    with pytest.raises(Exception, match="unknown"):
        build_augmentation({"p_rotaton": 0.1})


# ---------------------------------------------------------------------------------------------
# test-time mirroring


def _asym_net():
    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, 1, 3, padding=1)
    with torch.no_grad():
        net.weight.copy_(torch.arange(27, dtype=torch.float32).reshape(1, 1, 3, 3, 3) / 27 - 0.3)
        net.bias.fill_(0.1)
    return net.eval()


def test_tta_equals_the_average_of_flipped_predictions():
    from monai.inferers import sliding_window_inference

    from selma3d.inference.tta import flip_combinations, predict_with_tta
    from selma3d.training.finetune import predict_probability

    net = _asym_net()
    rng = np.random.default_rng(0)
    image = rng.normal(size=(16, 20, 24)).astype(np.float32)
    roi = (8, 10, 12)  # the window grid tiles the volume evenly: mirror-symmetric
    combos = flip_combinations((0, 1, 2))
    assert len(combos) == 8 and combos[0] == ()
    x = torch.from_numpy(image)[None, None]
    manual = []
    with torch.no_grad():
        for combo in combos:
            dims = [a + 2 for a in combo]
            xi = torch.flip(x, dims) if dims else x
            p = sliding_window_inference(xi, roi, 4, lambda t: torch.sigmoid(net(t)), overlap=0.5, mode="gaussian")
            manual.append((torch.flip(p, dims) if dims else p)[0, 0].numpy())
    manual = np.mean(manual, axis=0)
    tta = predict_with_tta(net, image, roi, "cpu", overlap=0.5, mirror_axes=(0, 1, 2))
    assert tta.shape == image.shape and np.allclose(tta, manual, atol=1e-5)
    plain = predict_probability(net, image, roi, torch.device("cpu"), overlap=0.5)
    assert np.abs(tta - plain).max() > 1e-2  # the kernel is not symmetric: flips matter
    same = predict_with_tta(net, image, roi, "cpu", overlap=0.5, mirror_axes=(), average="logits")
    assert np.allclose(same, plain, atol=1e-6)
    one_axis = predict_with_tta(net, image, roi, "cpu", overlap=0.5, mirror_axes=(2,))
    assert not np.allclose(one_axis, tta, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# post-processing search


def _pp_case(shift):
    gt = np.zeros((24, 24, 24), bool)
    prob = np.full(gt.shape, 0.02, np.float32)
    for c in ((5 + shift, 5, 5), (15, 14 + shift, 12)):
        sl = tuple(slice(a, a + 3) for a in c)
        gt[sl] = True
        prob[sl] = 0.7
        halo = tuple(slice(a - 1, a + 4) for a in c)
        prob[halo] = np.maximum(prob[halo], 0.55)  # a halo a threshold of 0.55 or more removes
        prob[sl] = 0.7
    prob[20, 2, 2:4] = 0.9  # confident two-voxel specks: only a min size > 2 removes them
    prob[2, 20 - shift, 20:22] = 0.9
    return prob, gt


def test_threshold_and_min_size_selection_finds_the_known_best():
    from selma3d.inference.postprocess import apply_postprocess, select_per_structure, select_threshold_and_min_size
    from selma3d.training.threshold_search import best_on_grid

    cases = [_pp_case(0), _pp_case(2)]
    probs, gts = [c[0] for c in cases], [c[1] for c in cases]
    best = select_threshold_and_min_size(probs, gts)
    # perfect for thresholds 0.55..0.65 and min sizes 3..24: lowest min size, threshold closest to 0.5
    assert best["threshold"] == 0.55 and best["min_size"] == 3
    assert best["score"] == 1.0 and best["default_score"] < 1.0
    for p, g in cases:
        assert np.array_equal(apply_postprocess(p, best["threshold"], best["min_size"]).astype(bool), g)
    # the ignore mask: specks in unannotated voxels no longer count, so no removal is needed
    ign = [np.zeros(g.shape, bool) for g in gts]
    for i in ign:
        i[20, 2, 2:4] = True
        i[2, 18:21, 20:22] = True
    assert select_threshold_and_min_size(probs, gts, ign)["min_size"] == 0
    per = select_per_structure(probs, gts, ["a", "b"])
    assert set(per) == {"a", "b"} and per["a"]["min_size"] == 3
    # tie-breaking: equal scores -> lower min size, then threshold nearest 0.5, then the lower one
    table = np.ones((3, 2, 1))
    assert best_on_grid(table, [0.4, 0.6, 0.5], [4, 2]) == {"threshold": 0.5, "min_size": 2, "score": 1.0,
                                                             "per_case": [1.0]}
    assert best_on_grid(table[:2], [0.6, 0.4], [4, 2])["threshold"] == 0.4


def _reference_peak_filter(prob, threshold, min_size, peak):
    """Plain scipy: 26-connected components of prob > threshold, each kept when it has at least
    ``min_size`` voxels and its highest probability exceeds ``peak``."""
    from scipy import ndimage

    labels, n = ndimage.label(prob > threshold, structure=np.ones((3, 3, 3), bool))
    keep = np.zeros(n + 1, bool)
    for i in range(1, n + 1):
        comp = labels == i
        keep[i] = comp.sum() >= min_size and prob[comp].max() > peak
    return keep[labels]


def test_peak_filter_equals_a_plain_reference_and_the_grid_equals_applying_it():
    """Hysteresis as post-processing: apply_postprocess equals a scipy reference for every
    (threshold, min size, peak), and every cell of the search's Dice grid equals the Dice of the
    applied mask (annotated voxels only), so the search picks what infer then applies."""
    from scipy import ndimage

    from selma3d.inference.postprocess import apply_postprocess, select_threshold_and_min_size
    from selma3d.training.threshold_search import dice_grid

    rng = np.random.default_rng(3)
    probs, gts, igs = [], [], []
    for _ in range(3):
        p = ndimage.gaussian_filter(rng.random((18, 20, 22)), 1.2)
        p = (p - p.min()) / (p.max() - p.min())
        probs.append(p.astype(np.float32))
        gts.append(ndimage.gaussian_filter(rng.random(p.shape), 1.5) > 0.52)
        igs.append(rng.random(p.shape) < 0.1)
    thresholds, min_sizes, peaks = [0.5, 0.6, 0.7], [0, 3, 20], [0.0, 0.65, 0.8, 0.9]
    table = dice_grid(probs, gts, igs, thresholds, min_sizes, peaks)
    assert table.shape == (3, 4, 3, 3)
    assert np.array_equal(table[:, 0], dice_grid(probs, gts, igs, thresholds, min_sizes))  # peak 0: no filter
    changed = 0
    for t, thr in enumerate(thresholds):
        for k, peak in enumerate(peaks):
            for j, m in enumerate(min_sizes):
                for c, (p, g, ig) in enumerate(zip(probs, gts, igs)):
                    mask = apply_postprocess(p, thr, m, peak).astype(bool)
                    assert np.array_equal(mask, _reference_peak_filter(p, thr, m, peak))
                    inter, size = (mask & g & ~ig).sum(), (mask & ~ig).sum() + (g & ~ig).sum()
                    assert table[t, k, j, c] == pytest.approx(2 * inter / size if size else 1.0, abs=1e-12)
                    changed += not np.array_equal(mask, apply_postprocess(p, thr, m))
    assert changed  # the peaks do remove components here
    best = select_threshold_and_min_size(probs, gts, igs, thresholds=thresholds, min_sizes=min_sizes, peaks=peaks)
    flat = table.mean(axis=3)
    assert best["score"] == pytest.approx(flat.max()) and best["peak"] in peaks
    # a peak grid of 0 alone: no filter
    assert select_threshold_and_min_size(probs, gts, igs, thresholds=thresholds, min_sizes=min_sizes,
                                         peaks=[0.0])["peak"] == 0.0


def test_peak_search_removes_faint_specks_and_prefers_no_filter_on_ties():
    """Confident cells and faint false components of the same size: only a peak removes the
    specks; where the filter changes nothing, the search keeps peak 0."""
    from selma3d.inference.postprocess import select_threshold_and_min_size
    from selma3d.training.threshold_search import best_on_grid

    prob, gt = np.zeros((24, 24, 24), np.float32), np.zeros((24, 24, 24), bool)
    for c in [(2, 2, 2), (2, 12, 12), (12, 2, 18)]:
        sl = tuple(slice(a, a + 4) for a in c)
        prob[sl], gt[sl] = 0.8, True
        prob[c[0] + 1, c[1] + 1, c[2] + 1] = 0.99
    prob[18:22, 18:22, 2:6] = 0.8  # as large and as bright at the threshold, never confident
    best = select_threshold_and_min_size([prob], [gt], thresholds=[0.5, 0.9], min_sizes=[0, 8], peaks=[0.0, 0.95])
    assert (best["threshold"], best["min_size"], best["peak"], best["score"]) == (0.5, 0, 0.95, 1.0)
    table = np.ones((1, 2, 1, 1))
    assert best_on_grid(table, [0.5], [0], peaks=[0.9, 0.0])["peak"] == 0.0


# ---------------------------------------------------------------------------------------------
# classical baseline


def _blob_volume(seed, gain, offset, n=8, shape=(32, 32, 32)):
    return blob_volume(seed, gain, offset, n=n, shape=shape, margin=4)


def test_classical_threshold_fits_per_case_and_beats_a_raw_global_threshold(tmp_path):
    from selma3d.training import classical
    from selma3d.training.threshold_search import best_on_grid, dice_grid

    train = [_blob_volume(0, 100, 200), _blob_volume(1, 300, 600), _blob_volume(2, 60, 100)]
    test_img, test_gt = _blob_volume(3, 900, 50)  # a much brighter, different brain
    params = classical.fit([t[0] for t in train], [t[1] for t in train], ["cfos_neuron"] * 3)
    p = params["structures"]["cfos_neuron"]
    assert p["method"] in classical.METHODS and p["train_dice"] > 0.6 and set(p["candidates"]) == set(classical.METHODS)
    path = classical.save_params(tmp_path / "classical.json", params)
    loaded = classical.load_params(path)
    assert loaded == params

    def dice(a, b):
        return 2 * (a & b).sum() / (a.sum() + b.sum())

    fitted = classical.predict(test_img, loaded, "cfos_neuron").astype(bool)
    assert fitted.shape == test_gt.shape
    # naive: the best single raw-intensity threshold on the training cases
    thr = list(np.linspace(100, 1000, 91))
    naive = best_on_grid(dice_grid([t[0] for t in train], [t[1] for t in train], None, thr, [0]), thr, [0])
    naive_dice = dice(test_img > naive["threshold"], test_gt)
    assert dice(fitted, test_gt) > 0.6 and dice(fitted, test_gt) > naive_dice + 0.1
    assert dice(fitted, test_gt) >= dice(test_img > test_img.mean(), test_gt)


# ---------------------------------------------------------------------------------------------
# fingerprint and plan


def _write_case(folder, name, shape, spacing, gain, seed):
    img, gt = _blob_volume(seed, gain, 100.0 * gain / 100, n=6, shape=shape)
    io.write_nifti(folder / f"{name}.nii.gz", img, spacing)
    io.write_nifti(folder / f"{name}_label.nii.gz", gt.astype(np.uint8), spacing)


def test_plan_on_small_synthetic_volumes(tmp_path):
    from selma3d.data.manifest import annotated_pairs, read_manifest
    from selma3d.training import plan as P

    spacing = (4.0, 1.0, 1.0)
    rows = []
    for i, (shape, gain) in enumerate([((24, 64, 64), 100), ((20, 56, 72), 110), ((24, 64, 64), 95)]):
        _write_case(tmp_path, f"c{i}", shape, spacing, gain, i)
        for role, suffix in (("image", ""), ("label", "_label")):
            rows.append({"case": f"c{i}", "role": role, "split": "train", "structure": "cfos_neuron",
                         "spacing_um": "4,1,1", "path": f"c{i}{suffix}.nii.gz"})
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    pairs = annotated_pairs(read_manifest(tmp_path / "manifest.csv"), "train")
    fp = P.fingerprint(pairs)
    assert fp["spacing"] == [4.0, 1.0, 1.0] and fp["median_shape"] == [24.0, 64.0, 64.0]
    assert fp["structures"]["cfos_neuron"]["component_sizes"]["median"] > 5
    assert 0 < fp["structures"]["cfos_neuron"]["fg_fraction_mean"] < 0.1
    plan = P.make_plan(fp, {"base_filters": 4, "max_filters": 16})
    ps, net = plan["patch_size"], plan["network"]
    div = D.topology(ps, spacing)["divisor"]
    assert all(p % d == 0 for p, d in zip(ps, div)) and ps == [24, 64, 64]
    assert net["strides"][1] == [1, 2, 2] and net["kernel_size"][0] == [1, 3, 3]  # anisotropy-aware
    assert plan["normalization"] == "zscore" and plan["batch_size"] >= 2  # similar brightness: global z-score
    assert plan["normalization_by_structure"] == {"cfos_neuron": "zscore"}  # local only replaces percentile
    assert plan["foreground_oversample"] == {"cfos_neuron": 0.33} and plan["structures"] == ["cfos_neuron"]
    small = P.make_plan(fp, {"max_patch_voxels": 16 * 32 * 32, "foreground_oversample": {"cfos_neuron": 0.5}})
    assert np.prod(small["patch_size"]) <= 16 * 32 * 32 and small["foreground_oversample"]["cfos_neuron"] == 0.5
    path = P.write_plan(tmp_path / "plan.json", plan)
    assert P.read_plan(path) == plan
    built = M.build_segmentation_net(plan["network"])
    assert built.selma3d_cfg["strides"] == net["strides"]
    x = P.apply_normalization(io.read_volume(tmp_path / "c0.nii.gz").data, plan)
    assert x.dtype == np.float32 and abs(float(x.mean())) < 5
    # a brighter brain: per-case percentile scaling
    _write_case(tmp_path, "c9", (24, 64, 64), spacing, 1000, 9)
    bright = list(pairs.to_dict("records")) + [{"case": "c9", "structure": "cfos_neuron", "spacing_um": "4,1,1",
                                                "image": str(tmp_path / "c9.nii.gz"),
                                                "label": str(tmp_path / "c9_label.nii.gz")}]
    assert P.make_plan(P.fingerprint(bright))["normalization"] == "percentile"


def test_plan_on_real_cfos_brain(real_data):
    from selma3d.training import plan as P

    root = real_data / "cfos_brain695"
    images = sorted((root / "raw").glob("*.nii.gz"))
    assert images
    pairs = pd.DataFrame([{"case": p.name.split(".")[0], "structure": "cfos_neuron", "spacing_um": "",
                           "image": str(p), "label": str(root / "gt" / p.name)} for p in images])
    fp = P.fingerprint(pairs)
    assert fp["n_cases"] == len(images) and fp["median_shape"] == [100.0, 100.0, 100.0]
    it = fp["intensity"]
    assert it["p0_5"] < it["mean"] < it["p99_5"] and it["std"] > 0
    s = fp["structures"]["cfos_neuron"]
    assert 0 < s["fg_fraction_mean"] < 0.01 and s["component_sizes"]["max"] > 1
    plan = P.make_plan(fp)
    assert plan["patch_size"] == [96, 96, 96]  # fits the 100³ patches, multiple of the stride 16
    assert plan["network"]["strides"] == [[1, 1, 1]] + [[2, 2, 2]] * 4
    assert plan["normalization"] == "percentile"  # background levels differ several-fold between patches
    # c-Fos cells (95th percentile bounding box 5 x 8 x 10 voxels) fit the local-contrast window
    assert all(e <= w for e, w in zip(s["component_extent_p95"], (5, 15, 15)))
    assert plan["normalization_by_structure"] == {"cfos_neuron": "percentile"}  # local_contrast off by default
    local = P.make_plan(fp, {"local_contrast": True})
    assert local["normalization_by_structure"] == {"cfos_neuron": "local"}
    assert "local contrast for cfos_neuron" in local["normalization_reason"]
    assert P.make_plan(fp, {"normalization": "zscore"})["normalization_by_structure"] == {"cfos_neuron": "zscore"}


def test_scaling_per_axis_changes_the_voxel_shape_and_is_off_by_default():
    """p_scale_per_axis 1: each axis draws its own factor (a box changes its aspect ratio); 0
    (nnU-Net's default): one factor, and the random stream is the one without the option."""
    from selma3d.augment.pipeline import DEFAULTS, build_augmentation

    assert DEFAULTS["p_scale_per_axis"] == 0.0
    img = np.zeros((1, 32, 32, 32), np.float32)
    lab = np.zeros((32, 32, 32), np.uint8)
    lab[12:20, 12:20, 12:20] = 1
    off = {k: 0.0 for k in DEFAULTS if k.startswith("p_")}
    cfg = {**off, "p_scaling": 1.0, "scale_range": (0.6, 1.7)}

    def extents(lb):
        idx = np.nonzero(lb)
        return np.array([i.max() - i.min() + 1 for i in idx])

    ratios_sync, ratios_axis = [], []
    for seed in range(6):
        e = extents(build_augmentation(cfg, None, seed=seed)(img, lab)[1])
        ratios_sync.append(e.max() / e.min())
        e = extents(build_augmentation({**cfg, "p_scale_per_axis": 1.0}, None, seed=seed)(img, lab)[1])
        ratios_axis.append(e.max() / e.min())
    assert max(ratios_sync) <= 1.25  # a cube stays a cube (nearest rounding aside)
    assert max(ratios_axis) > 1.3    # the axes scaled differently
    a = build_augmentation({**cfg, "p_scale_per_axis": 1.0}, None, seed=4)(img, lab)
    b = build_augmentation({**cfg, "p_scale_per_axis": 1.0}, None, seed=4)(img, lab)
    assert np.array_equal(a[1], b[1]) and np.array_equal(a[0], b[0])


def test_local_contrast_is_invariant_to_specimen_brightness_and_flags_small_bright_objects():
    from selma3d.preprocess.normalize import local_contrast, percentile_scale

    rng = np.random.default_rng(0)
    bg = rng.normal(1000, 30, size=(20, 48, 48)).astype(np.float32)
    bg += np.linspace(0, 2000, 48, dtype=np.float32)[None, None, :]  # an autofluorescence gradient
    img = bg.copy()
    img[8:11, 10:14, 10:14] *= 3.0   # a cell three times its surroundings, on the dim side
    img[8:11, 30:34, 38:42] *= 3.0   # and one on the bright side
    out = local_contrast(img)
    assert out.dtype == np.float32 and out.shape == img.shape
    cells = (out[9, 12, 12], out[9, 32, 40])
    assert all(abs(c - np.log(3.0)) < 0.25 for c in cells)  # the same contrast on both sides
    assert abs(np.median(out)) < 0.1                       # background at ~0
    np.testing.assert_allclose(local_contrast(img * 7.0 + 6.0), out, atol=0.01)  # brightness-invariant
    # per-case percentiles move with a few saturated voxels; the local ratio does not (away from them)
    hot = img.copy()
    hot[0, :4, :8] = 65535
    assert np.abs(percentile_scale(hot) - percentile_scale(img))[5:, 20:, 20:].max() > 0.1
    np.testing.assert_array_equal(local_contrast(hot)[5:, 20:, 20:], out[5:, 20:, 20:])


def test_local_contrast_anchors_the_background_of_real_cfos_patches_of_two_brains(real_data):
    """On the real c-Fos patches (brains 695 and 753), per-case percentile scaling puts the
    background anywhere from about -0.9 (a patch mostly outside the tissue) to 0 (a dense one),
    and the annotated cells of one patch below the background of another; local_contrast keeps
    the background of every patch near 0 and the cells above it."""
    from selma3d.preprocess.normalize import local_contrast, percentile_scale

    bg_pct, bg_local, cells_local = [], [], []
    for brain in ("695", "753"):
        for image in sorted((real_data / f"cfos_brain{brain}" / "raw").glob("*.nii.gz")):
            x = io.read_volume(image).data.astype(np.float32)
            fg = io.read_volume(real_data / f"cfos_brain{brain}" / "gt" / image.name).data > 0
            p, loc = percentile_scale(x), local_contrast(x)
            bg_pct.append(float(np.median(p)))
            bg_local.append(float(np.median(loc)))
            cells_local.append(float(loc[fg].mean()))
    assert len(bg_pct) == 16
    assert max(bg_pct) - min(bg_pct) > 0.8
    assert max(bg_local) - min(bg_local) < 0.1 and all(0 <= b < 0.2 for b in bg_local)
    assert min(cells_local) > max(bg_local) + 0.05


def test_segment_case_normalises_each_structure_as_the_model_was_trained():
    """A model whose plan normalised c-Fos locally and the rest per-case: segment_case gives
    c-Fos images the local contrast and an unseen structure the default."""
    from selma3d.inference.patches import probability, segment_case
    from selma3d.preprocess.normalize import local_contrast, percentile_scale
    from selma3d.training.plan import structure_normalization

    net = _asym_net()
    payload = {"config": {"patch_size": [8, 10, 12]}, "normalize": "percentile",
               "normalize_by_structure": {"cfos_neuron": "local"}}
    assert structure_normalization(payload, "cfos_neuron") == "local"
    assert structure_normalization(payload, "microglia") == structure_normalization(payload, None) == "percentile"
    rng = np.random.default_rng(1)
    image = rng.gamma(2.0, 200.0, size=(16, 20, 24)).astype(np.float32)
    settings = {"overlap": 0.25, "sw_batch_size": 2, "blend": "gaussian", "threshold": 0.5, "min_component_size": 0,
                "mirror_axes": []}
    for structure, norm in (("cfos_neuron", local_contrast), ("microglia", percentile_scale)):
        want = probability(net, norm(image), (8, 10, 12), torch.device("cpu"), 0.25, 2, "gaussian", []) > 0.5
        got = segment_case(net, payload, image, settings, structure=structure)
        assert np.array_equal(got.astype(bool), want), structure
    a = segment_case(net, payload, image, settings, structure="cfos_neuron")
    b = segment_case(net, payload, image, settings, structure="microglia")
    assert not np.array_equal(a, b)


def test_real_cfos_cells_change_voxel_shape_between_brains(real_data):
    """The specimen shift p_scale_per_axis simulates: the median bounding box (z, y, x) of the
    annotated cells is 3 x 5 x 5 voxels in brain 695 and 4 x 3 x 4 in brain 753."""
    import cc3d

    medians = {}
    for brain in ("695", "753"):
        boxes = []
        for label in sorted((real_data / f"cfos_brain{brain}" / "gt").glob("*.nii.gz")):
            fg = (io.read_volume(label).data > 0).astype(np.uint8)
            stats = cc3d.statistics(cc3d.connected_components(fg))
            boxes += [[s.stop - s.start for s in b] for b in stats["bounding_boxes"][1:] if b is not None]
        medians[brain] = np.median(np.array(boxes), axis=0).tolist()
    assert medians == {"695": [3.0, 5.0, 5.0], "753": [4.0, 3.0, 4.0]}
