"""Device, precision and seeding: the same code on CPU and CUDA, reproducible on CPU."""

from __future__ import annotations

import contextlib
import logging
import os
import random

import numpy as np
import torch

log = logging.getLogger(__name__)


def pick_device() -> torch.device:
    """CUDA when present, else CPU (set SELMA3D_DEVICE to force one)."""
    forced = os.environ.get("SELMA3D_DEVICE")
    if forced:
        return torch.device(forced)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch Generator for data sampling."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    return torch.Generator().manual_seed(seed)


def autocast(device: torch.device, precision: str = "auto"):
    """bf16 autocast on CUDA ("auto" or "bf16"), plain fp32 elsewhere."""
    if device.type == "cuda" and precision in ("auto", "bf16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def configure_threads() -> None:
    """Use the cores Snakemake granted (its job sets OMP_NUM_THREADS), else torch's default."""
    n = os.environ.get("OMP_NUM_THREADS")
    if n and n.isdigit() and int(n) > 0:
        torch.set_num_threads(int(n))
