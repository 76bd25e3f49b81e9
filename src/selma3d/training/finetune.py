"""Supervised finetuning on a label budget: sample crops, train, validate, keep the best.

One joint foreground model is trained for all structures (SELMA3D's setting); the loss may
differ per structure category. Model selection uses the validation split only. The recipe
(``finetune.recipe``: ``nnunet`` or ``legacy``) is resolved by :mod:`selma3d.training.recipe`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from selma3d import io
from selma3d.core.schema import schema_default
from selma3d.core.atomic import atomic_path
from selma3d.core.labels import binarize_label
from selma3d.core.overlap import dice
from selma3d.data.manifest import annotated_pairs, label_rule, parse_spacing, read_manifest
from selma3d.preprocess.normalize import normalize
from selma3d.training.sampling import crop_case, step_rng
from selma3d.training.runtime import autocast, pick_device, seed_everything

log = logging.getLogger(__name__)


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


def normalize_image(data: np.ndarray, method: str, stats: dict | None = None) -> np.ndarray:
    """A model's input normalisation: ``method`` per case, or, for a training plan's ``zscore``
    (``stats``: the plan's foreground ``mean``, ``std``, ``p0_5``, ``p99_5``), clipping and
    z-scoring with those global statistics (:func:`selma3d.training.plan.apply_normalization`)."""
    if stats and method == "zscore":
        from selma3d.training.plan import apply_normalization

        return apply_normalization(data, {"normalization": method, "intensity": stats})
    return normalize(data, method)


def load_case(row: pd.Series, normalization: str, ignore_label: int | None = None,
              background_values: tuple[int, ...] = (0,), stats: dict | None = None) -> Case:
    """Read, check and normalise one image/label pair from a manifest row (the row's own
    ``ignore_label``/``background_values``/``annotated_z`` win over the arguments)."""
    img = io.read_volume(row["image"])
    lab = io.read_volume(row["label"])
    if img.data.shape != lab.data.shape:
        raise io.InputError(row["label"], f"label shape {img.data.shape} like its image {row['image']}",
                            f"{lab.data.shape}")
    data = np.asarray(img.data, dtype=np.float32)
    if not np.isfinite(data).all():
        raise io.InputError(row["image"], "finite intensities", "NaN or inf values")
    fg, ignore = binarize_label(lab.data, *label_rule(row, ignore_label, background_values))
    spacing = parse_spacing(row.get("spacing_um", ""), str(row["image"]))
    return Case(row["case"], row["structure"], row["category"], normalize_image(data, normalization, stats), fg,
                ignore, img.affine, spacing)


def sample_crop(case: Case, size: tuple[int, int, int], rng: np.random.Generator, fg_prob: float):
    """A crop of ``size`` (padded if the case is smaller), centred on foreground with ``fg_prob``,
    then the legacy recipe's random flips and intensity jitter."""
    x, y, ign = crop_case(case, size, rng, fg_prob)
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


class ParallelWindows(torch.nn.Module):
    """``net`` on a batch of windows split over ``streams`` CPU threads (call it with torch at
    one thread, :func:`window_streams`): small 3D windows scale far worse over torch's intra-op
    threads than over whole windows, and collapse when the cores are shared with other work.
    Each window's result is what ``net`` alone gives it (up to the kernel a batch size picks)."""

    def __init__(self, net: torch.nn.Module, streams: int):
        from concurrent.futures import ThreadPoolExecutor

        super().__init__()
        self.net, self.streams = net, int(streams)
        # one pool for every call: threads started per call cost about as much as the
        # forward passes of small windows (benchmarks/inference.py)
        self._pool = ThreadPoolExecutor(self.streams, thread_name_prefix="selma3d-window")

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # grad mode is per thread: the caller's does not reach the workers
            return self.net(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # at least two windows a stream: torch's CPU convolution leaves oneDNN for its im2col
        # kernel on a batch of one small-channel 3D input, several times slower a window
        # (benchmarks/window_batch.py)
        n = min(self.streams, x.shape[0] // 2)
        if n <= 1:
            return self.net(x)
        return torch.cat(list(self._pool.map(self._run, torch.tensor_split(x, n))))

    def close(self) -> None:
        """Stop the stream threads (:func:`window_streams` does on exit)."""
        self._pool.shutdown(wait=True)


@contextlib.contextmanager
def window_streams(net: torch.nn.Module, device) -> Iterator[torch.nn.Module]:
    """On CPU with torch at N > 1 threads: ``net`` as N one-thread streams over the windows of a
    batch (:class:`ParallelWindows`; torch at one thread meanwhile); else ``net`` itself."""
    n = torch.get_num_threads()
    if torch.device(device).type != "cpu" or n <= 1:
        yield net
        return
    torch.set_num_threads(1)
    streams = ParallelWindows(net, n)
    try:
        yield streams
    finally:
        streams.close()
        torch.set_num_threads(n)


def predict_probability(net, image: np.ndarray, roi_size, device, overlap: float = schema_default("infer.overlap"),
                        sw_batch_size: int = schema_default("infer.sw_batch_size"),
                        blend: str = schema_default("infer.blend"), precision: str = "auto") -> np.ndarray:
    """Foreground probability of a whole (normalised) patch by MONAI sliding-window inference
    (``torch.inference_mode``; ``benchmarks/patch_inference.py`` times it on real patches)."""
    from monai.inferers import sliding_window_inference

    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None].to(device)
    with torch.inference_mode(), autocast(device, precision), window_streams(net, device) as model:
        logits = sliding_window_inference(x, roi_size, sw_batch_size, model, overlap=overlap, mode=blend,
                                          padding_mode="reflect" if min(image.shape) > 1 else "constant")
    return torch.sigmoid(logits.float())[0, 0].cpu().numpy()


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
             pretrained: str | Path | None = None, seed: int = 0, scratch_net: dict | None = None,
             plan: str | Path | dict | None = None) -> dict:
    """Train the segmentation net on the cases in ``split_csv``; validate on the val split.

    Args:
        manifest: the dataset's local manifest (train/val rows are read from it).
        split_csv: the label budget's cases (from :func:`selma3d.data.splits.draw_budget`).
        model_cfg: the ``model`` block (network config, ``selma3d.nets.spec.net_config``); when
            ``pretrained`` is given, the network pretraining built (stored with the weights) is
            trained instead, so names and shapes match.
        settings: the ``finetune`` block (recipe, steps, batch_size, optimizer, lr, loss,
            normalize, val_every, ...); keys left out take the config schema's defaults.
        mode: ``full``, ``frozen`` or ``adapter``.
        scratch_net: for ``scratch_<s>`` runs, ``{"strategy": s, "block": <s's config block>}``:
            train ``s``'s network, randomly initialised, instead of ``model_cfg``'s.
        plan: the training plan (``plan.json`` path or dict, :mod:`selma3d.training.plan`),
            applied by the ``nnunet`` recipe (:func:`selma3d.training.recipe.resolve_recipe`).
    Returns:
        summary dict (best validation Dice and step, tensors loaded).
    """
    from selma3d.training.losses import build_loss
    from selma3d.nets.models import apply_finetune_mode, build_segmentation_net, load_pretrained
    from selma3d.training import recipe as R

    device = pick_device()
    seed_everything(seed)
    settings = finetune_settings(settings)
    rec = R.resolve_recipe(settings, plan)
    legacy = rec["recipe"] == "legacy"
    norm, norm_stats = rec["normalize"], rec["normalize_stats"]
    from selma3d.training.plan import structure_normalization

    def case_norm(row) -> str:
        return structure_normalization(rec, row.get("structure"))

    ignore_label = settings["ignore_label"]
    bg_values = tuple(settings["background_values"])
    split = pd.read_csv(split_csv, dtype=str, keep_default_na=False)
    cases = [load_case(r, case_norm(r), ignore_label, bg_values, norm_stats) for _, r in split.iterrows()]
    table = read_manifest(manifest)
    val_pairs = annotated_pairs(table, "val")
    if val_pairs.empty:
        log.warning("no val split in %s: selecting the checkpoint on the training cases", manifest)
        val_cases = cases
    else:
        val_cases = [load_case(r, case_norm(r), ignore_label, bg_values, norm_stats) for _, r in val_pairs.iterrows()]

    cfg = scratch_model_config(model_cfg, scratch_net)
    loaded = 0
    if pretrained:
        payload = torch.load(pretrained, map_location="cpu", weights_only=False)
        cfg = stored_network(payload)
        pre_norm = payload.get("normalize", "percentile")  # files of earlier versions: percentile
        pre = {"normalize": pre_norm, "normalize_by_structure": {}} if isinstance(pre_norm, str) else {
            "normalize": pre_norm.get("*", "percentile"), "normalize_by_structure": pre_norm}
        differ = sorted({c.structure for c in cases if structure_normalization(pre, c.structure)
                         != structure_normalization(rec, c.structure)})
        if differ:
            log.warning("pretraining normalised %s differently from finetuning (%s vs %s): set pretrain.normalize "
                        "(plan: as finetuning)", ", ".join(differ), pre_norm, rec["normalize_by_structure"] or norm)
    cfg, plan_batch = R.plan_network(rec, cfg, trains_model_block=not pretrained and not scratch_net)
    cfg = R.with_deep_supervision(cfg, rec)
    net = build_segmentation_net(cfg)
    if pretrained:
        loaded = load_pretrained(net, payload["weights"], source=str(pretrained),
                                 min_share=settings["min_loaded_share"])
        log.info("loaded %d pretrained tensors from %s (%s)", loaded, pretrained, payload["strategy"])
    net = apply_finetune_mode(net, mode, cfg["backbone"]) or net
    net.to(device)
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = R.build_optimizer(params, rec)
    losses_cfg = dict(settings["loss"])
    default_loss = losses_cfg.pop("default")
    # sorted: the losses are summed in this order, which must not follow the per-process string hash
    loss_fns = {name: build_loss(name) for name in sorted({default_loss, *losses_cfg.values()})}
    loss_fns = R.deep_supervision_losses(loss_fns, net)
    roi = tuple(int(s) for s in cfg["patch_size"])
    steps, bs = int(settings["steps"]), plan_batch or rec["batch_size"]
    val_every = int(settings["val_every"])
    fg_prob = rec["foreground_oversample"]
    precision = settings["precision"]
    val_overlap = float(settings["val_overlap"])
    batches = None if legacy else R.AugmentedBatches(cases, roi, bs, seed, fg_prob, rec["augmentation"])

    log.info("finetuning %s mode on %d cases (%s), val %d cases, %d steps, device %s, recipe %s (%s lr %g%s)",
             mode, len(cases), ", ".join(sorted({c.structure for c in cases})), len(val_cases), steps, device,
             rec["recipe"], rec["optimizer"], rec["lr"],
             "" if legacy else f", normalisation {rec['normalize_by_structure'] or norm}")
    rows, best = [], {"dice": -1.0, "step": -1, "state": None}
    t0 = time.perf_counter()
    for step in range(steps):
        net.train()  # frozen encoders stay in eval mode (apply_finetune_mode patches train())
        if legacy:
            x, y, ign, cats = _batch(cases, roi, bs, seed, step, fg_prob, device)
        else:
            x, y, ign, cats = batches.tensors(step, device)
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
        row = {"step": step, "loss": float(total.detach())}
        if not legacy:
            if rec["grad_clip"] is not None:
                torch.nn.utils.clip_grad_norm_(params, rec["grad_clip"])
            row["lr"] = rec["lr"] * R.lr_factor(step, steps, rec["warmup_steps"])
            for group in optimizer.param_groups:
                group["lr"] = row["lr"]
        optimizer.step()
        if (step + 1) % val_every == 0 or step + 1 == steps:
            net.eval()
            scores = [dice(predict_probability(net, c.image, roi, device, overlap=val_overlap,
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
                    "normalize_by_structure": rec["normalize_by_structure"],
                    "normalize_stats": norm_stats, "recipe": rec["recipe"], "ignore_label": ignore_label,
                    "background_values": bg_values, **summary}, tmp)
    with atomic_path(curve_out) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)
    return summary


def load_model(path: str | Path, device=None):
    """A finetuned network (eval mode) and its saved settings; an ensemble file
    (:mod:`selma3d.training.ensemble`) gives a :class:`~selma3d.nets.ensemble.ProbabilityEnsemble`."""
    from selma3d.nets.models import apply_finetune_mode, build_segmentation_net
    from selma3d.training import classical

    if classical.is_params_file(path):
        raise io.InputError(path, "a finetuned network (model.pt of a network strategy)",
                            "the classical threshold baseline's parameters (strategy 'threshold'): "
                            "use selma3d.training.classical.predict")
    payload = torch.load(path, map_location="cpu", weights_only=False)
    payload["config"] = stored_network(payload)

    def build(state_dict) -> torch.nn.Module:
        net = build_segmentation_net(payload["config"])
        if payload.get("mode") == "adapter":  # adapters add tensors the plain net lacks
            apply_finetune_mode(net, "adapter", payload["config"]["backbone"])
        net.load_state_dict(state_dict)
        return net

    from selma3d.nets.ensemble import MEMBERS_KEY, ProbabilityEnsemble, is_ensemble

    if is_ensemble(payload):  # the seeds' mean probability
        net = ProbabilityEnsemble([build(sd) for sd in payload[MEMBERS_KEY]])
    else:
        net = build(payload["state_dict"])
    net.to(device or pick_device()).eval()
    return net, payload
