"""Training state saved atomically and restored exactly (model, optimiser, RNGs, step)."""

from __future__ import annotations

import hashlib
import json
import logging
import random
from pathlib import Path

import numpy as np
import torch

from selma3d.core.atomic import atomic_path

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


def run_key(**settings) -> str:
    """A fingerprint of what a run trains (config, steps, batch, seed ...), stored in its checkpoints."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def save_checkpoint(path: str | Path, step: int, key: str | None = None, **objects) -> None:
    """Save ``state_dict()`` of each object (model, optimizer, scheduler ...), RNG states and the run's key."""
    payload = {"step": step, "rng": rng_state(), "run_key": key}
    for name, obj in objects.items():
        payload[name] = obj.state_dict() if hasattr(obj, "state_dict") else obj
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    log.info("checkpoint at step %d -> %s", step, path)


def load_checkpoint(path: str | Path, key: str | None = None, **objects) -> int:
    """Restore objects and RNG states from ``path``; returns the step to continue from.

    0 when there is no checkpoint, or when it was written by a run with another ``key`` (the
    config changed since): resuming it would silently mix two runs, so it is ignored.
    """
    path = Path(path)
    if not path.exists():
        return 0
    payload = torch.load(path, map_location="cpu", weights_only=False)
    if payload.get("run_key") != key:
        log.warning("ignoring %s: written by another run (settings changed since); starting at step 0", path)
        return 0
    for name, obj in objects.items():
        if name in payload and hasattr(obj, "load_state_dict"):
            obj.load_state_dict(payload[name])
    set_rng_state(payload["rng"])
    log.info("resumed from %s at step %d", path, payload["step"])
    return int(payload["step"])
