"""The pretraining loop shared by every SSL strategy: sample, loss, step, log, checkpoint."""

from __future__ import annotations

import csv
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from . import ssl
from .atomic import atomic_path
from .checkpoint import load_checkpoint, save_checkpoint
from .patches import PatchSampleDataset, StepBatchSampler, collate, read_patch_index
from .runtime import autocast, pick_device, seed_everything

log = logging.getLogger(__name__)


def resolve_strategy_config(name: str, model: dict, block: dict) -> dict:
    """Strategy settings: the model block, then the team's defaults, then the config block."""
    cls = ssl.get_strategy(name)
    return {**model, **getattr(cls, "defaults", {}), **(block or {})}


def warmup_cosine(optimizer, warmup: int, total: int):
    """Linear warmup, then cosine decay to zero (the schedule the teams used)."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def pretrain(strategy: str, config: dict[str, Any], patch_indexes: list[str | Path], weights_out: str | Path,
             curve_out: str | Path, steps: int, batch_size: int, seed: int = 0, num_workers: int = 0,
             log_every: int = 10, checkpoint_dir: str | Path | None = None, checkpoint_every: int = 500,
             precision: str = "auto", extra_meta: dict | None = None) -> Path:
    """Pretrain one strategy on patchify's output and export its encoder weights.

    Args:
        strategy: registry name (``selma3d.ssl.available()``).
        config: resolved strategy settings (see :func:`resolve_strategy_config`).
        patch_indexes: patchify index CSVs (their stores sit beside them).
        weights_out: ``{"strategy", "config", "weights"}`` written here atomically.
        curve_out: CSV of step, loss and the strategy's loss components.
        checkpoint_dir: where the resumable state lives (outside the rule's outputs);
            a rerun continues from it.
    """
    device = pick_device()
    seed_everything(seed)
    model = ssl.build_strategy(strategy, config).to(device)
    params = model.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=float(config.get("lr", 1e-4)),
                                  weight_decay=float(config.get("weight_decay", 1e-5)))
    scheduler = warmup_cosine(optimizer, int(config.get("warmup_steps", min(100, steps // 10))), steps)

    index = read_patch_index(patch_indexes)
    patch_size = tuple(config.get("patch_size", (96, 96, 96)))
    dataset = PatchSampleDataset(index, patch_size, config.get("normalize", "percentile"))
    ckpt = Path(checkpoint_dir) / "last.pt" if checkpoint_dir else None
    start = load_checkpoint(ckpt, model=model, optimizer=optimizer, scheduler=scheduler) if ckpt else 0
    curve_rows = _read_curve(Path(checkpoint_dir) / "curve.csv") if ckpt and start else []
    sampler = StepBatchSampler(len(dataset), batch_size, seed, start, steps)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, collate_fn=collate,
                        pin_memory=device.type == "cuda", persistent_workers=False)
    log.info("pretraining %s on %d patches from %d volumes, steps %d..%d, batch %d, device %s",
             strategy, len(index), index["volume"].nunique() if "volume" in index else -1,
             start, steps, batch_size, device)

    model.train()
    t0, seen = time.perf_counter(), 0
    step = start
    for step, (x, meta) in enumerate(loader, start=start):
        x = x.to(device, non_blocking=True)
        for key, value in (extra_meta or {}).items():
            meta.setdefault(key, [value] * x.shape[0])
        with autocast(device, precision):
            loss, parts = model.loss(x, step, meta)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{strategy}: loss became {loss.item()} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        model.after_step(step)
        seen += x.shape[0]
        curve_rows.append({"step": step, "loss": float(loss.detach()), "lr": scheduler.get_last_lr()[0],
                           **{k: float(v) for k, v in parts.items()}})
        if (step + 1) % log_every == 0 or step + 1 == steps:
            rate = seen / max(1e-9, time.perf_counter() - t0)
            log.info("step %d/%d loss %.4f (%.1f samples/s)", step + 1, steps, curve_rows[-1]["loss"], rate)
        if ckpt and (step + 1) % checkpoint_every == 0 and step + 1 < steps:
            _write_curve(Path(checkpoint_dir) / "curve.csv", curve_rows)
            save_checkpoint(ckpt, step + 1, model=model, optimizer=optimizer, scheduler=scheduler)
    if device.type == "cuda":
        log.info("peak GPU memory %.2f GiB", torch.cuda.max_memory_allocated() / 2**30)

    weights = {k: v.detach().cpu() for k, v in model.export_weights().items()}
    if not weights:
        raise RuntimeError(f"strategy {strategy!r} exported no encoder weights")
    with atomic_path(weights_out) as tmp:
        torch.save({"strategy": strategy, "config": config, "weights": weights, "steps": steps}, tmp)
    _write_curve(curve_out, curve_rows)
    log.info("exported %d encoder tensors to %s", len(weights), weights_out)
    return Path(weights_out)


def _write_curve(path: str | Path, rows: list[dict]) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)


def _read_curve(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return [{k: float(v) if k != "step" else int(v) for k, v in r.items() if v != ""} for r in csv.DictReader(fh)]
