"""Supervised finetuning on a label budget: sample crops, train, validate, keep the best.

One joint foreground model is trained for all structures (SELMA3D's setting); the loss may
differ per structure category. Model selection uses the validation split only.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from selma3d import io
from selma3d.config import schema_default
from selma3d.core.atomic import atomic_path
from selma3d.core.labels import binarize_label
from selma3d.data.manifest import annotated_pairs, parse_spacing, read_manifest
from selma3d.preprocess.normalize import normalize
from selma3d.training.sampling import step_rng
from selma3d.training.runtime import autocast, pick_device, seed_everything

log = logging.getLogger(__name__)


def draw_budget(pairs: pd.DataFrame, budget: int | str, seed: int) -> pd.DataFrame:
    """Pick ``budget`` training cases per structure (stratified, reproducible by seed).

    ``"all"`` keeps every case. A structure with fewer cases than the budget keeps all of them.
    """
    if str(budget) == "all":
        return pairs.sort_values("case").reset_index(drop=True)
    budget = int(budget)
    if budget < 1:
        raise ValueError(f"label budget must be >= 1 or 'all', got {budget}")
    rng = np.random.default_rng([seed, budget])
    chosen = []
    for structure in sorted(pairs["structure"].unique()):
        group = pairs[pairs["structure"] == structure].sort_values("case")
        take = rng.permutation(len(group))[: min(budget, len(group))]
        chosen.append(group.iloc[np.sort(take)])
    return pd.concat(chosen, ignore_index=True)


@dataclass
class Case:
    """An annotated patch in memory: normalised image, foreground mask, ignore mask."""

    name: str
    structure: str
    category: str
    image: np.ndarray
    label: np.ndarray
    ignore: np.ndarray | None
    affine: np.ndarray | None = None
    spacing: tuple = (1.0, 1.0, 1.0)


def load_case(row: pd.Series, normalization: str, ignore_label: int | None = None,
              background_values: tuple[int, ...] = (0,)) -> Case:
    """Read, check and normalise one image/label pair from a manifest row."""
    img = io.read_volume(row["image"])
    lab = io.read_volume(row["label"])
    if img.data.shape != lab.data.shape:
        raise io.InputError(row["label"], f"label shape {img.data.shape} like its image {row['image']}",
                            f"{lab.data.shape}")
    data = np.asarray(img.data, dtype=np.float32)
    if not np.isfinite(data).all():
        raise io.InputError(row["image"], "finite intensities", "NaN or inf values")
    fg, ignore = binarize_label(lab.data, ignore_label, background_values)
    spacing = parse_spacing(row.get("spacing_um", ""), str(row["image"]))
    return Case(row["case"], row["structure"], row["category"], normalize(data, normalization), fg, ignore,
                img.affine, spacing)


def sample_crop(case: Case, size: tuple[int, int, int], rng: np.random.Generator, fg_prob: float):
    """A crop of ``size`` (padded if the case is smaller), centred on foreground with ``fg_prob``."""
    shape = case.image.shape
    pad = [(0, max(0, s - d)) for s, d in zip(size, shape)]
    image, label = case.image, case.label
    ignore = case.ignore if case.ignore is not None else np.zeros(shape, bool)
    if any(p[1] for p in pad):
        image = np.pad(image, pad, mode="constant", constant_values=float(image.min()))
        label = np.pad(label, pad)
        ignore = np.pad(ignore, pad, constant_values=True)
        shape = image.shape
    starts = [int(rng.integers(0, d - s + 1)) for s, d in zip(size, shape)]
    if rng.random() < fg_prob:
        fg = np.flatnonzero(label)
        if fg.size:
            centre = np.unravel_index(fg[rng.integers(0, fg.size)], shape)
            starts = [int(np.clip(c - s // 2, 0, d - s)) for c, s, d in zip(centre, size, shape)]
    sl = tuple(slice(a, a + s) for a, s in zip(starts, size))
    x, y, ign = image[sl], label[sl], ignore[sl]
    for axis in range(3):  # flips: light-sheet patches have no preferred direction in-plane or in z
        if rng.random() < 0.5:
            x, y, ign = np.flip(x, axis), np.flip(y, axis), np.flip(ign, axis)
    x = x * float(rng.uniform(0.9, 1.1)) + float(rng.uniform(-0.1, 0.1))
    return np.ascontiguousarray(x), np.ascontiguousarray(y), np.ascontiguousarray(ign)


def _batch(cases: list[Case], size, batch_size: int, seed: int, step: int, fg_prob: float, device):
    rng = step_rng(seed, step, stream=1)
    picks = rng.integers(0, len(cases), size=batch_size)
    xs, ys, igns, cats = [], [], [], []
    for i in picks:
        x, y, ign = sample_crop(cases[int(i)], size, rng, fg_prob)
        xs.append(x), ys.append(y), igns.append(ign), cats.append(cases[int(i)].category)
    to = lambda a, dt: torch.from_numpy(np.stack(a)[:, None]).to(device=device, dtype=dt)  # noqa: E731
    return to(xs, torch.float32), to(ys, torch.float32), to(igns, torch.bool), cats


def predict_probability(net, image: np.ndarray, roi_size, device, overlap: float = 0.5,
                        sw_batch_size: int = 4, blend: str = "gaussian", precision: str = "auto") -> np.ndarray:
    """Foreground probability of a whole (normalised) patch by MONAI sliding-window inference."""
    from monai.inferers import sliding_window_inference

    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None].to(device)
    with torch.no_grad(), autocast(device, precision):
        logits = sliding_window_inference(x, roi_size, sw_batch_size, net, overlap=overlap, mode=blend,
                                          padding_mode="reflect" if min(image.shape) > 1 else "constant")
    return torch.sigmoid(logits.float())[0, 0].cpu().numpy()


def dice_score(pred: np.ndarray, gt: np.ndarray, ignore: np.ndarray | None = None) -> float:
    """Dice on annotated voxels (1.0 when both are empty, as SELMA3D 2024 scores it)."""
    if ignore is not None:
        pred, gt = pred & ~ignore, gt & ~ignore
    denom = int(pred.sum()) + int(gt.sum())
    return 1.0 if denom == 0 else 2.0 * int((pred & gt).sum()) / denom


def scratch_model_config(model_cfg: dict[str, Any], scratch_net: dict | None = None) -> dict[str, Any]:
    """The net a run without pretraining trains: ``model_cfg``'s, or that of an SSL strategy.

    ``scratch_net`` names the strategy and its config block; its settings resolve exactly as
    in pretraining (:func:`selma3d.training.runplan.strategy_net`), so ``scratch_<s>`` and ``<s>``
    finetune the same architecture and patch size. Returns the complete network config.
    """
    from selma3d.training.runplan import SCRATCH, SCRATCH_PREFIX, strategy_net

    if not scratch_net:
        return strategy_net(SCRATCH, model_cfg)
    name = scratch_net["strategy"]
    return strategy_net(SCRATCH_PREFIX + name, model_cfg, {name: scratch_net.get("block") or {}})


def finetune_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The ``finetune`` block with every key left out at the config schema's default."""
    merged = {**schema_default("finetune"), **settings}
    merged["loss"] = {**schema_default("finetune.loss"), **(merged.get("loss") or {})}
    return merged


def stored_network(payload: dict[str, Any]) -> dict[str, Any]:
    """The network config saved beside weights (``encoder.pt``, ``model.pt``).

    Runs of this version save it whole (``net``, or ``config`` of ``model.pt``); older ones saved
    a whole strategy config, whose keys the network does not read are dropped here.
    """
    from selma3d.nets.spec import applicable, net_config, split_net_config

    if payload.get("net"):
        return net_config(payload["net"])
    return net_config(applicable(split_net_config(payload["config"])[0]))


def finetune(manifest: str | Path, split_csv: str | Path, model_cfg: dict[str, Any], settings: dict[str, Any],
             model_out: str | Path, curve_out: str | Path, mode: str = "full",
             pretrained: str | Path | None = None, seed: int = 0, scratch_net: dict | None = None) -> dict:
    """Train the segmentation net on the cases in ``split_csv``; validate on the val split.

    Args:
        manifest: the dataset's local manifest (train/val rows are read from it).
        split_csv: the label budget's cases (from :func:`draw_budget`).
        model_cfg: the ``model`` block (network config, ``selma3d.nets.spec.net_config``); when
            ``pretrained`` is given, the network pretraining built (stored with the weights) is
            trained instead, so names and shapes match.
        settings: the ``finetune`` block (steps, batch_size, lr, loss, normalize, val_every, ...);
            keys left out take the config schema's defaults.
        mode: ``full``, ``frozen`` or ``adapter``.
        scratch_net: for ``scratch_<s>`` runs, ``{"strategy": s, "block": <s's config block>}``:
            train ``s``'s network, randomly initialised, instead of ``model_cfg``'s.
    Returns:
        summary dict (best validation Dice and step, tensors loaded).
    """
    from selma3d.training.losses import build_loss
    from selma3d.nets.models import apply_finetune_mode, build_segmentation_net, load_pretrained

    device = pick_device()
    seed_everything(seed)
    settings = finetune_settings(settings)
    norm = settings["normalize"]
    ignore_label = settings["ignore_label"]
    bg_values = tuple(settings["background_values"])
    split = pd.read_csv(split_csv, dtype=str, keep_default_na=False)
    cases = [load_case(r, norm, ignore_label, bg_values) for _, r in split.iterrows()]
    table = read_manifest(manifest)
    val_pairs = annotated_pairs(table, "val")
    if val_pairs.empty:
        log.warning("no val split in %s: selecting the checkpoint on the training cases", manifest)
        val_cases = cases
    else:
        val_cases = [load_case(r, norm, ignore_label, bg_values) for _, r in val_pairs.iterrows()]

    cfg = scratch_model_config(model_cfg, scratch_net)
    loaded = 0
    if pretrained:
        payload = torch.load(pretrained, map_location="cpu", weights_only=False)
        cfg = stored_network(payload)
    net = build_segmentation_net(cfg)
    if pretrained:
        loaded = load_pretrained(net, payload["weights"])
        log.info("loaded %d pretrained tensors from %s (%s)", loaded, pretrained, payload["strategy"])
    net = apply_finetune_mode(net, mode, cfg["backbone"]) or net
    net.to(device)
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=float(settings["lr"]), weight_decay=float(settings["weight_decay"]))
    losses_cfg = dict(settings["loss"])
    default_loss = losses_cfg.pop("default")
    loss_fns = {name: build_loss(name) for name in {default_loss, *losses_cfg.values()}}
    roi = tuple(int(s) for s in cfg["patch_size"])
    steps, bs = int(settings["steps"]), int(settings["batch_size"])
    val_every = int(settings["val_every"])
    fg_prob = float(settings["foreground_oversample"])
    precision = settings["precision"]
    val_overlap = float(settings["val_overlap"])

    log.info("finetuning %s mode on %d cases (%s), val %d cases, %d steps, device %s", mode, len(cases),
             ", ".join(sorted({c.structure for c in cases})), len(val_cases), steps, device)
    rows, best = [], {"dice": -1.0, "step": -1, "state": None}
    t0 = time.perf_counter()
    for step in range(steps):
        net.train()  # frozen encoders stay in eval mode (apply_finetune_mode patches train())
        x, y, ign, cats = _batch(cases, roi, bs, seed, step, fg_prob, device)
        with autocast(device, precision):
            logits = net(x)
        logits = logits.float()
        total = 0.0
        for name in loss_fns:
            sel = [i for i, c in enumerate(cats) if losses_cfg.get(c, default_loss) == name]
            if sel:
                total = total + loss_fns[name](logits[sel], y[sel], ignore=ign[sel]) * len(sel) / len(cats)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        row = {"step": step, "loss": float(total.detach())}
        if (step + 1) % val_every == 0 or step + 1 == steps:
            net.eval()
            scores = [dice_score(predict_probability(net, c.image, roi, device, overlap=val_overlap,
                                                     precision=precision) > 0.5,
                                 c.label.astype(bool), c.ignore) for c in val_cases]
            row["val_dice"] = float(np.mean(scores))
            if row["val_dice"] > best["dice"]:
                best = {"dice": row["val_dice"], "step": step,
                        "state": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}}
            log.info("step %d/%d loss %.4f val Dice %.4f (best %.4f at %d), %.1f s", step + 1, steps, row["loss"],
                     row["val_dice"], best["dice"], best["step"] + 1, time.perf_counter() - t0)
        rows.append(row)

    summary = {"best_val_dice": best["dice"], "best_step": best["step"], "pretrained_tensors": loaded}
    with atomic_path(model_out) as tmp:
        torch.save({"config": cfg, "state_dict": best["state"], "mode": mode, "normalize": norm,
                    "ignore_label": ignore_label, "background_values": bg_values, **summary}, tmp)
    with atomic_path(curve_out) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)
    return summary


def load_model(path: str | Path, device=None):
    """A finetuned network (eval mode) and its saved settings."""
    from selma3d.nets.models import apply_finetune_mode, build_segmentation_net

    payload = torch.load(path, map_location="cpu", weights_only=False)
    payload["config"] = stored_network(payload)
    net = build_segmentation_net(payload["config"])
    if payload.get("mode") == "adapter":  # adapters add tensors the plain net lacks
        apply_finetune_mode(net, "adapter", payload["config"]["backbone"])
    net.load_state_dict(payload["state_dict"])
    net.to(device or pick_device()).eval()
    return net, payload
