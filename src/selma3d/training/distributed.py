"""Data-parallel pretraining on several GPUs of one node (DDP), launched from inside a job.

A Snakemake job is one process; ``pretrain(..., gpus=N)`` with N > 1 re-launches the same call
under ``torch.distributed.run`` (torchrun, standalone rendezvous: one node, N processes) and
waits for it. Each rank reads torchrun's environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``), takes its slice of the step's global batch and averages gradients with the
others (NCCL on CUDA, gloo on CPU, which is what the CPU tests use).

Results do not depend on the number of GPUs: the global batch is cut into ``shards`` (default:
the number of GPUs); each shard gets its own seeded randomness and batch statistics, shards
are spread over the ranks and the rest is gradient accumulation. ``shards: 4`` therefore
trains the same weights on 1, 2 or 4 GPUs (up to float summation order).
"""

from __future__ import annotations

import datetime
import logging
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job: rank among ``world_size``, GPU ``local_rank``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_info() -> DistInfo:
    """The torchrun environment of this process (rank 0 of 1 outside torchrun)."""
    return DistInfo(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                    int(os.environ.get("LOCAL_RANK", 0)))


def in_launched_worker() -> bool:
    """True inside a process started by torchrun."""
    return "TORCHELASTIC_RUN_ID" in os.environ or int(os.environ.get("WORLD_SIZE", 1)) > 1


def setup(device_type: str) -> DistInfo:
    """Join the process group torchrun prepared (no-op for a single process)."""
    info = env_info()
    if info.enabled and not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
        log.info("rank %d/%d joined the %s process group", info.rank, info.world_size, backend)
    return info


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_mean(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean of a tensor over the ranks (returned unchanged for one process)."""
    if not info.enabled:
        return values
    out = values.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / info.world_size


def plan_shards(batch_size: int, world_size: int, shards: int | None) -> tuple[int, int]:
    """(shards, micro-batches per rank) for a global batch; raises a clear error if uneven."""
    shards = int(shards or world_size)
    if shards % world_size:
        raise ValueError(f"pretrain.shards ({shards}) must be a multiple of pretrain.gpus ({world_size})")
    if batch_size % shards:
        raise ValueError(f"pretrain batch_size ({batch_size}) must be divisible by the number of shards "
                         f"({shards}; pretrain.shards, default pretrain.gpus)")
    return shards, shards // world_size


def shard_seed(seed: int, step: int, shard: int) -> int:
    """A seed for one shard of one step: independent of how many GPUs there are."""
    return int(np.random.SeedSequence([int(seed), int(step), int(shard), 0x5E1]).generate_state(1)[0])


class RankBatchSampler(torch.utils.data.Sampler):
    """This rank's contiguous slice of every global batch a step batch sampler yields."""

    def __init__(self, sampler, rank: int, world_size: int):
        self.sampler, self.rank, self.world_size = sampler, rank, world_size

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[list]:
        for batch in self.sampler:
            n = len(batch) // self.world_size
            yield batch[self.rank * n:(self.rank + 1) * n]


def launch(kwargs: dict[str, Any], nprocs: int, log_dir: str | Path | None = None) -> None:
    """Run ``selma3d.training.pretrain.pretrain(**kwargs)`` in ``nprocs`` torchrun processes and wait.

    The call's arguments travel in a temporary file; the workers' output goes to this
    process's stdout/stderr (the rule's log) and, per rank, under ``log_dir`` if given.
    """
    env = dict(os.environ)
    env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # one node: loopback is always there
    total = env.get("OMP_NUM_THREADS", "")
    total = int(total) if total.isdigit() and int(total) > 0 else (os.cpu_count() or 1)
    env["OMP_NUM_THREADS"] = str(max(1, total // nprocs))  # torchrun would otherwise force 1
    src = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    with tempfile.TemporaryDirectory(prefix="selma3d_ddp_") as tmp:
        payload = Path(tmp) / "call.pt"
        torch.save(kwargs, payload)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nprocs}",
               "--max-restarts=0"]
        if log_dir:
            Path(log_dir).mkdir(parents=True, exist_ok=True)
            cmd += [f"--log-dir={log_dir}", "--tee=3"]
        cmd += ["-m", "selma3d.training.pretrain", str(payload)]
        log.info("launching %d data-parallel processes: %s", nprocs, " ".join(cmd))
        res = subprocess.run(cmd, env=env)
        if res.returncode != 0:
            raise RuntimeError(f"distributed pretraining failed (torchrun exit status {res.returncode}); "
                               "see the rank logs above")
