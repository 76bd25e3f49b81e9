"""Training state saved atomically and restored exactly (model, optimiser, RNGs, step)."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_path

log = logging.getLogger(__name__)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, step: int, **objects) -> None:
    """Save ``state_dict()`` of each object (model, optimizer, scheduler ...) plus RNG states."""
    payload = {"step": step, "rng": rng_state()}
    for name, obj in objects.items():
        payload[name] = obj.state_dict() if hasattr(obj, "state_dict") else obj
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    log.info("checkpoint at step %d -> %s", step, path)


def load_checkpoint(path: str | Path, **objects) -> int:
    """Restore objects and RNG states from ``path``; returns the step to continue from (0 if none)."""
    path = Path(path)
    if not path.exists():
        return 0
    payload = torch.load(path, map_location="cpu", weights_only=False)
    for name, obj in objects.items():
        if name in payload and hasattr(obj, "load_state_dict"):
            obj.load_state_dict(payload[name])
    set_rng_state(payload["rng"])
    log.info("resumed from %s at step %d", path, payload["step"])
    return int(payload["step"])
