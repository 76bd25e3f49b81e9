"""The pretraining loop shared by every SSL strategy: sample, loss, step, log, checkpoint."""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from selma3d import strategies
from selma3d.core.schema import schema_default
from selma3d.core.atomic import atomic_path
from selma3d.strategies import resolve_strategy_config  # noqa: F401  (the rule script imports it here)
from selma3d.training.checkpoint import load_checkpoint, run_key, save_checkpoint
from selma3d.training.sampling import PatchSampleDataset, StepBatchSampler, collate, read_patch_index
from selma3d.training.runtime import autocast, pick_device, seed_everything

log = logging.getLogger(__name__)


def warmup_cosine(optimizer, warmup: int, total: int):
    """Linear warmup, then cosine decay to zero (the schedule the teams used)."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def pretrain(strategy: str, config: dict[str, Any], patch_indexes: list[str | Path], weights_out: str | Path,
             curve_out: str | Path, steps: int, batch_size: int, seed: int = schema_default("seed"),
             num_workers: int = schema_default("pretrain.num_workers"),
             log_every: int = schema_default("pretrain.log_every"), checkpoint_dir: str | Path | None = None,
             checkpoint_every: int = schema_default("pretrain.checkpoint_every"),
             precision: str = schema_default("pretrain.precision"), extra_meta: dict | None = None,
             gpus: int = schema_default("pretrain.gpus"), shards: int | None = schema_default("pretrain.shards"),
             channels_last: bool = schema_default("pretrain.channels_last"),
             compile: bool = schema_default("pretrain.compile"),
             pin_memory: bool | None = schema_default("pretrain.pin_memory"),
             normalization: str | dict[str, str] = schema_default("pretrain.normalize"),
             find_unused_parameters: bool = True, ddp_log_dir: str | Path | None = None) -> Path:
    """Pretrain one strategy on patchify's output and export its encoder weights.

    Args:
        strategy: registry name (``selma3d.strategies.available()``).
        config: strategy settings (:func:`selma3d.strategies.resolve_strategy_config`); the
            strategy fills in its team defaults, and the patch size, lr, weight decay and
            warmup are read from the result (``Strategy.config``, ``Strategy.net_config``).
        seed, num_workers, log_every, checkpoint_every, precision, gpus, shards, channels_last,
        compile, pin_memory: default to the config schema's (``selma3d.config.schema_default``).
        patch_indexes: patchify index CSVs (their stores sit beside them).
        weights_out: ``{"strategy", "config", "weights"}`` written here atomically.
        curve_out: CSV of step, loss and the strategy's loss components.
        batch_size: the global batch of a step (over all GPUs and shards).
        checkpoint_dir: where the resumable state lives (outside the rule's outputs);
            a rerun continues from it and ends with the same weights as an uninterrupted run.
        gpus: data-parallel processes; > 1 re-launches this call under torchrun (DDP).
        shards: the global batch is cut into this many shards (default ``gpus``), each with
            its own seeded randomness (masks, augmentations) and batch statistics; shards are
            spread over the GPUs and accumulated within one. The weights depend on
            ``shards``, not on ``gpus``.
        channels_last, compile: CUDA speed-ups (``channels_last_3d`` memory format,
            ``torch.compile`` of the loss); off by default, harmless on CPU.
        pin_memory: pinned host buffers for the loader (default: on with CUDA).
    """
    from selma3d.training import distributed

    if gpus > 1 and not distributed.in_launched_worker():
        call = {k: v for k, v in locals().items() if k not in ("distributed",)}
        call.update(weights_out=str(weights_out), curve_out=str(curve_out),
                    patch_indexes=[str(p) for p in patch_indexes])
        distributed.launch(call, gpus, ddp_log_dir)
        return Path(weights_out)

    device = pick_device()
    info = distributed.setup(device.type)
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    n_shards, accum = distributed.plan_shards(batch_size, info.world_size, shards)
    micro = batch_size // n_shards
    seed_everything(seed)
    model = strategies.build_strategy(strategy, config).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    params = model.trainable_parameters()
    settings = model.config  # the team defaults filled in
    optimizer = torch.optim.AdamW(params, lr=float(settings["lr"]), weight_decay=float(settings["weight_decay"]))
    scheduler = warmup_cosine(optimizer, int(settings["warmup_steps"]), steps)

    index = read_patch_index(patch_indexes)
    patch_size = tuple(model.net_config["patch_size"])  # the size the network was built for
    dataset = PatchSampleDataset(index, patch_size, normalization)
    ckpt = Path(checkpoint_dir) / "last.pt" if checkpoint_dir else None
    key = run_key(strategy=strategy, config=config, steps=steps, batch_size=batch_size, seed=seed,
                  shards=shards, indexes=sorted(Path(p).name for p in patch_indexes), normalization=normalization)
    start = load_checkpoint(ckpt, key, model=model, optimizer=optimizer, scheduler=scheduler) if ckpt else 0
    curve_rows = _read_curve(Path(checkpoint_dir) / "curve.csv") if ckpt and start else []
    curve_rows = [r for r in curve_rows if r["step"] < start]
    sampler = StepBatchSampler(len(dataset), batch_size, seed, start, steps)
    if info.enabled:
        sampler = distributed.RankBatchSampler(sampler, info.rank, info.world_size)
    # Determinism with workers: every crop is a pure function of the (row, seed) item the
    # sampler hands out, so which worker loads it does not matter.
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, collate_fn=collate,
                        pin_memory=device.type == "cuda" if pin_memory is None else bool(pin_memory),
                        persistent_workers=False, worker_init_fn=_worker_init if num_workers else None,
                        prefetch_factor=4 if num_workers else None)

    step_fn: torch.nn.Module = _LossModule(model)
    ddp = None
    if info.enabled:
        ddp = torch.nn.parallel.DistributedDataParallel(
            step_fn, device_ids=[info.local_rank] if device.type == "cuda" else None,
            find_unused_parameters=find_unused_parameters)
        step_fn = ddp
    if compile:
        step_fn = torch.compile(step_fn)
    if info.is_main:
        log.info("pretraining %s on %d patches from %d volumes, steps %d..%d, global batch %d in %d shards "
                 "(%d ranks x %d micro-batches of %d), device %s, precision %s", strategy, len(index),
                 index["volume"].nunique() if "volume" in index else -1, start, steps, batch_size, n_shards,
                 info.world_size, accum, micro, device, precision)

    stop = _StopSignal()
    model.train()
    t0, seen, t_log, seen_log = time.perf_counter(), 0, time.perf_counter(), 0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for step, (x, meta) in enumerate(loader, start=start):
        for key, value in (extra_meta or {}).items():
            meta.setdefault(key, [value] * x.shape[0])
        optimizer.zero_grad(set_to_none=True)
        total, parts_sum = 0.0, {}
        for k in range(accum):
            xk = x[k * micro:(k + 1) * micro].to(device, non_blocking=True)
            if channels_last:
                xk = xk.contiguous(memory_format=torch.channels_last_3d)
            meta_k = {key: v[k * micro:(k + 1) * micro] for key, v in meta.items()}
            _reseed(model, distributed.shard_seed(seed, step, info.rank * accum + k), device)
            sync = ddp.no_sync() if ddp is not None and k < accum - 1 else contextlib.nullcontext()
            with sync:
                with autocast(device, precision):
                    loss, parts = step_fn(xk, step, meta_k)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"{strategy}: loss became {loss.item()} at step {step}")
                (loss / accum).backward()
            total += float(loss.detach()) / accum
            for key, v in parts.items():
                parts_sum[key] = parts_sum.get(key, 0.0) + float(v) / accum
        optimizer.step()
        scheduler.step()
        model.after_step(step)
        seen += batch_size
        keys = sorted(parts_sum)
        stats = distributed.all_mean(torch.tensor([total] + [parts_sum[k] for k in keys] + [float(stop.signum)],
                                                  dtype=torch.float64, device=device), info).tolist()
        stop_now = stats.pop() > 0  # any rank was told to stop (SLURM preemption / time limit)
        curve_rows.append({"step": step, "loss": stats[0], "lr": scheduler.get_last_lr()[0],
                           **dict(zip(keys, stats[1:]))})
        if info.is_main and ((step + 1) % log_every == 0 or step + 1 == steps):
            now = time.perf_counter()
            rate = (seen - seen_log) / max(1e-9, now - t_log)
            t_log, seen_log = now, seen
            mem = (f", peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"
                   if device.type == "cuda" else "")
            log.info("step %d/%d loss %.4f (%.1f samples/s%s)", step + 1, steps, stats[0], rate, mem)
        if ckpt and info.is_main and ((step + 1) % checkpoint_every == 0 or stop_now) and step + 1 < steps:
            _write_curve(Path(checkpoint_dir) / "curve.csv", curve_rows)
            save_checkpoint(ckpt, step + 1, key, model=model, optimizer=optimizer, scheduler=scheduler)
        if stop_now and step + 1 < steps:
            log.warning("stopping on a signal after step %d; a rerun resumes from %s", step + 1, ckpt)
            stop.restore()
            distributed.teardown()
            raise SystemExit(128 + (stop.signum or signal.SIGTERM))
    stop.restore()
    elapsed = time.perf_counter() - t0
    if info.is_main:
        log.info("trained %d steps in %.1f s: %.2f samples/s overall", steps - start, elapsed,
                 seen / max(1e-9, elapsed))
        if device.type == "cuda":
            log.info("peak GPU memory %.2f GiB", torch.cuda.max_memory_allocated(device) / 2**30)

    if info.is_main:
        weights = {k: v.detach().cpu() for k, v in model.export_weights().items()}
        if not weights:
            raise RuntimeError(f"strategy {strategy!r} exported no encoder weights")
        with atomic_path(weights_out) as tmp:
            torch.save({"strategy": strategy, "config": config, "net": model.net_config, "weights": weights, "steps": steps,
                        "shards": n_shards, "batch_size": batch_size, "seed": seed, "normalize": normalization}, tmp)
        _write_curve(curve_out, curve_rows)
        log.info("exported %d encoder tensors to %s", len(weights), weights_out)
    distributed.barrier(info)
    distributed.teardown()
    return Path(weights_out)


class _StopSignal:
    """Remembers SIGTERM/SIGUSR1 (what SLURM sends before preempting or at the time limit) so
    the loop can finish its step, checkpoint and exit instead of dying mid-step."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self):
        self.signum = 0
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, _frame) -> None:
        self.signum = int(signum)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


class _LossModule(torch.nn.Module):
    """``forward`` = the strategy's loss, so DDP and torch.compile see one module call."""

    def __init__(self, strategy: torch.nn.Module):
        super().__init__()
        self.strategy = strategy

    def forward(self, x: torch.Tensor, step: int, meta: dict):
        return self.strategy.loss(x, step, meta)


def _reseed(strategy: torch.nn.Module, seed: int, device: torch.device) -> None:
    """Seed every source of randomness a strategy may draw from, per (step, shard).

    Masks and augmentations then depend only on the step and the shard, not on what ran
    before: a resumed run draws what the uninterrupted one drew, and N GPUs draw what N
    shards on one GPU draw.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if callable(getattr(strategy, "reseed", None)):
        strategy.reseed(seed)
    elif hasattr(strategy, "_gen"):  # StrategyBase keeps a lazily created torch.Generator
        gen = torch.Generator(device=device)
        gen.manual_seed(seed)
        strategy._gen = gen


def _worker_init(_worker_id: int) -> None:
    """Loader workers decode and crop; one thread each keeps them from fighting the trainer."""
    torch.set_num_threads(1)


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


def _worker(argv: list[str]) -> int:
    """Entry of one data-parallel process started by :func:`selma3d.training.distributed.launch`."""
    from selma3d.core.logs import setup_logging

    setup_logging()
    kwargs = torch.load(argv[0], weights_only=False)
    pretrain(**kwargs)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(_worker(sys.argv[1:]))
