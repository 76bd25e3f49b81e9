"""The finetuning recipes: ``nnunet`` (the default) and ``legacy`` (the loop before it).

:func:`resolve_recipe` turns the ``finetune`` config block (and, for ``nnunet``, the training
plan of :mod:`selma3d.training.plan`) into the settings :func:`selma3d.training.finetune.finetune`
runs with. Every value comes from the config (whose schema holds the defaults); nothing here
invents one. What the recipes differ in:

=================  =====================================  =======================================
                   ``nnunet``                             ``legacy``
=================  =====================================  =======================================
optimizer          ``finetune.optimizer`` or ``sgd``      ``finetune.optimizer`` or ``adamw``
                   (Nesterov, momentum ``sgd.momentum``)
lr / weight decay  ``finetune.lr`` / ``weight_decay``, or the optimizer's block (``sgd``, ``adamw``)
schedule           linear warm-up over ``warmup_steps``,  constant
                   then poly ``(1 - step/steps)^0.9``
gradient clipping  norm ``grad_clip`` (null: none)        none
augmentation       :mod:`selma3d.augment.pipeline` with   flips + intensity jitter
                   ``finetune.augmentation``, per sample  (``finetune.sample_crop``)
                   seeded by (seed, step, sample)
foreground crops   per structure (the plan's, else        ``foreground_oversample``
                   ``foreground_oversample``)
deep supervision   ``dynunet`` with ``deep_supervision``  as the network config says
plan               with a plan: its normalisation,        ignored
                   oversampling and, for a ``dynunet``
                   scratch run, patch, topology, batch
=================  =====================================  =======================================

Batches of both recipes are pure functions of (seed, step): :class:`AugmentedBatches` for
``nnunet``, ``selma3d.training.finetune._batch`` for ``legacy``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from selma3d.core.errors import InputError
from selma3d.training.sampling import crop_case, step_rng

log = logging.getLogger(__name__)

RECIPES = ("nnunet", "legacy")
#: the optimizer each recipe runs when ``finetune.optimizer`` is null
RECIPE_OPTIMIZER = {"nnunet": "sgd", "legacy": "adamw"}
OPTIMIZERS = ("sgd", "adamw")
POLY_EXPONENT = 0.9  # nnU-Net's


def _need(settings: dict[str, Any], *keys: str) -> None:
    missing = [k for k in keys if k not in settings]
    if missing:
        raise InputError(None, "finetune settings with every key of the config schema's finetune block "
                               "(the workflow passes them with defaults filled in)", f"missing {missing}")


def optimizer_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """Optimizer name, lr, weight decay (and SGD momentum, Nesterov) of a ``finetune`` block.

    ``optimizer`` null: the recipe's; ``lr`` / ``weight_decay`` null: the optimizer's block.
    """
    _need(settings, "recipe", "optimizer", "lr", "weight_decay")
    recipe = settings["recipe"]
    if recipe not in RECIPES:
        raise InputError(None, f"finetune.recipe one of {list(RECIPES)}", repr(recipe))
    name = settings["optimizer"] or RECIPE_OPTIMIZER[recipe]
    if name not in OPTIMIZERS:
        raise InputError(None, f"finetune.optimizer one of {list(OPTIMIZERS)} or null", repr(name))
    _need(settings, name)
    block = dict(settings[name])
    out = {"optimizer": name,
           "lr": float(settings["lr"] if settings["lr"] is not None else block["lr"]),
           "weight_decay": float(settings["weight_decay"] if settings["weight_decay"] is not None
                                 else block["weight_decay"])}
    if name == "sgd":
        out.update(momentum=float(block["momentum"]), nesterov=bool(block["nesterov"]))
    return out


def build_optimizer(params, opt: dict[str, Any]) -> torch.optim.Optimizer:
    """The optimizer of :func:`optimizer_settings` over ``params``."""
    if opt["optimizer"] == "adamw":
        return torch.optim.AdamW(params, lr=opt["lr"], weight_decay=opt["weight_decay"])
    momentum = opt["momentum"]
    return torch.optim.SGD(params, lr=opt["lr"], momentum=momentum, nesterov=opt["nesterov"] and momentum > 0,
                           weight_decay=opt["weight_decay"])


def lr_factor(step: int, steps: int, warmup_steps: int) -> float:
    """nnunet schedule: ``min(1, (step + 1) / warmup_steps) * (1 - step / steps) ** 0.9``."""
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    return warm * max(0.0, 1.0 - step / max(1, steps)) ** POLY_EXPONENT


def resolve_recipe(settings: dict[str, Any], plan: dict[str, Any] | str | Path | None = None) -> dict[str, Any]:
    """Everything the training loop needs from the ``finetune`` block and the plan.

    Returns ``recipe``, the :func:`optimizer_settings`, ``warmup_steps``, ``grad_clip`` (None for
    legacy), ``deep_supervision``, ``augmentation``, ``normalize`` (a method name; the one for
    structures ``normalize_by_structure`` does not name, e.g. unseen ones),
    ``normalize_by_structure`` (the plan's per-structure methods, else empty),
    ``normalize_stats`` (the plan's global foreground statistics for its ``zscore``, else None),
    ``foreground_oversample`` (legacy: one float; nnunet: ``{structure: share}`` plus
    ``"*"`` for the rest), ``batch_size`` and ``plan`` (the plan dict applied, or None).
    """
    _need(settings, "recipe", "normalize", "foreground_oversample", "batch_size")
    recipe = settings["recipe"]
    if settings["normalize"] == "plan" and plan is None:
        raise InputError(None, "a training plan for finetune.normalize plan (the plan rule's plan.json)", "none")
    if plan is not None and not isinstance(plan, dict):
        from selma3d.training.plan import read_plan

        plan = read_plan(plan)
    out = {"recipe": recipe, **optimizer_settings(settings), "normalize": settings["normalize"],
           "normalize_by_structure": {}, "normalize_stats": None, "batch_size": int(settings["batch_size"]),
           "plan": None}
    if recipe == "legacy":
        if settings["normalize"] == "plan":  # the plan's normalisation only: legacy uses nothing else of it
            out["normalize"] = plan["normalization"]
            out["normalize_by_structure"] = dict(plan.get("normalization_by_structure") or {})
        elif plan is not None:
            log.info("finetune.recipe legacy: the training plan is not used")
        out.update(warmup_steps=0, grad_clip=None, deep_supervision=None, augmentation=None,
                   foreground_oversample=float(settings["foreground_oversample"]))
        return out
    _need(settings, "warmup_steps", "grad_clip", "deep_supervision", "augmentation")
    fg = {"*": float(settings["foreground_oversample"])}
    if plan is not None:
        out["plan"] = plan
        out["normalize"] = plan["normalization"]
        out["normalize_by_structure"] = dict(plan.get("normalization_by_structure") or {})
        if plan["normalization"] == "zscore" and plan.get("intensity"):
            out["normalize_stats"] = dict(plan["intensity"])
        fg.update({str(k): float(v) for k, v in (plan.get("foreground_oversample") or {}).items()})
    clip = settings["grad_clip"]
    out.update(warmup_steps=int(settings["warmup_steps"]), grad_clip=None if clip is None else float(clip),
               deep_supervision=bool(settings["deep_supervision"]),
               augmentation=dict(settings["augmentation"] or {}), foreground_oversample=fg)
    return out


def plan_network(recipe: dict[str, Any], cfg: dict[str, Any], trains_model_block: bool) -> tuple[dict, int | None]:
    """(network config, batch size or None) with the plan applied: a run that trains the
    ``model`` block's net (``scratch``) on the ``dynunet`` backbone takes the plan's patch size,
    topology and batch size; every other net keeps its architecture (pretrained weights and
    ``scratch_<s>`` must match their strategy's net)."""
    plan = recipe.get("plan")
    if plan is None or not trains_model_block or cfg.get("backbone") != "dynunet":
        return cfg, None
    net = {k: v for k, v in plan["network"].items() if k != "backbone"}
    log.info("plan: dynunet patch %s, strides %s, batch %s", net.get("patch_size"), net.get("strides"),
             plan.get("batch_size"))
    return {**cfg, **net}, int(plan["batch_size"])


def with_deep_supervision(cfg: dict[str, Any], recipe: dict[str, Any]) -> dict[str, Any]:
    """The nnunet recipe decides whether a ``dynunet`` trains its deep-supervision heads."""
    if recipe["recipe"] == "nnunet" and cfg.get("backbone") == "dynunet":
        return {**cfg, "deep_supervision": bool(recipe["deep_supervision"])}
    return cfg


def deep_supervision_losses(loss_fns: dict[str, Any], net) -> dict[str, Any]:
    """Wrap each loss in :class:`~selma3d.training.deep_supervision.DeepSupervisionLoss` when
    the network returns a deep-supervision stack in train mode; else return them unchanged."""
    cfg = getattr(net, "selma3d_cfg", {}) or {}
    if cfg.get("backbone") != "dynunet" or not cfg.get("deep_supervision"):
        return loss_fns
    from selma3d.nets.dynunet import head_factors
    from selma3d.training.deep_supervision import DeepSupervisionLoss

    factors = head_factors(cfg)
    return {name: DeepSupervisionLoss(fn, factors=factors) for name, fn in loss_fns.items()}


class AugmentedBatches:
    """nnunet training batches: crops of uniformly drawn cases, centred on foreground with the
    case's structure's share, then augmented (:func:`selma3d.augment.pipeline.build_augmentation`
    for the case's spacing), each sample reseeded from (seed, step): batch ``t`` is the same
    whatever ran before it.
    """

    def __init__(self, cases: Sequence, size: Sequence[int], batch_size: int, seed: int,
                 foreground_oversample: dict[str, float] | float, augmentation: dict[str, Any] | None):
        self.cases, self.size = list(cases), tuple(int(s) for s in size)
        self.batch_size, self.seed = int(batch_size), int(seed)
        fg = foreground_oversample
        self.fg = dict(fg) if isinstance(fg, dict) else {"*": float(fg)}
        self.augmentation = dict(augmentation or {})
        self._augmenters: dict[tuple, Any] = {}

    def foreground_share(self, structure: str) -> float:
        return float(self.fg.get(structure, self.fg["*"]))

    def _augmenter(self, spacing):
        from selma3d.augment.pipeline import build_augmentation

        key = tuple(float(s) for s in spacing)
        if key not in self._augmenters:
            self._augmenters[key] = build_augmentation(self.augmentation, key, seed=0)
        return self._augmenters[key]

    def numpy(self, step: int):
        """(x, y, ignore, categories) of step ``step``: arrays (B, 1, z, y, x) and a list."""
        rng = step_rng(self.seed, step, stream=2)
        picks = rng.integers(0, len(self.cases), size=self.batch_size)
        xs, ys, igns, cats = [], [], [], []
        for i in picks:
            case = self.cases[int(i)]
            x, y, ign = crop_case(case, self.size, rng, self.foreground_share(case.structure))
            aug = self._augmenter(case.spacing).set_random_state(int(rng.integers(0, 2**31 - 1)))
            x, y, ign = aug(np.ascontiguousarray(x), np.ascontiguousarray(y), np.ascontiguousarray(ign))
            xs.append(x), ys.append(y), igns.append(ign), cats.append(case.category)
        return (np.stack(xs)[:, None].astype(np.float32), np.stack(ys)[:, None].astype(np.float32),
                np.stack(igns)[:, None].astype(bool), cats)

    def tensors(self, step: int, device):
        x, y, ign, cats = self.numpy(step)
        to = lambda a, dt: torch.from_numpy(a).to(device=device, dtype=dt)  # noqa: E731
        return to(x, torch.float32), to(y, torch.float32), to(ign, torch.bool), cats
