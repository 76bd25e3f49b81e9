"""Combine finetuned models (the seeds of one run) into one ensemble ``model.pt``.

The members must be the same network normalised the same way (a run's seeds are): the file
keeps one ``config`` and normalisation, and every member's weights under ``members``.
:func:`selma3d.training.finetune.load_model` builds it as a
:class:`selma3d.nets.ensemble.ProbabilityEnsemble`, so calibration on validation
(:func:`selma3d.inference.calibrate.calibrate`), ``infer``, whole-volume ``predict`` and the
exported algorithm run it like any single model. ``selma3d ensemble MODEL... --out FILE`` on the
command line.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from selma3d.core.atomic import atomic_path
from selma3d.core.errors import InputError
from selma3d.nets.ensemble import MEMBERS_KEY, is_ensemble

log = logging.getLogger(__name__)

#: what every member must share: the network, and how it reads an image
SHARED_KEYS = ("config", "mode", "normalize", "normalize_by_structure", "normalize_stats", "recipe",
               "ignore_label", "background_values")


def combine(model_paths: Sequence[str | Path], out: str | Path, names: Sequence[str] | None = None) -> dict:
    """Write the ensemble of ``model_paths`` to ``out`` (atomically).

    Args:
        model_paths: finetuned ``model.pt`` files (single models, not ensembles or the
            classical baseline), at least one.
        out: the ensemble's ``model.pt``.
        names: a label per member (default: the member files' folder names, e.g. ``ball_s0``).
    Returns:
        the summary stored in the file: ``ensemble_of`` (member names) and each member's
        ``best_val_dice``.
    Raises:
        InputError: a member is not a finetuned network, or differs from the first in a
            :data:`SHARED_KEYS` entry (named with both values).
    """
    from selma3d.training import classical
    from selma3d.training.finetune import stored_network

    paths = [Path(p) for p in model_paths]
    if not paths:
        raise InputError(out, "at least one member model for the ensemble", "none")
    names = list(names) if names is not None else [p.parent.name for p in paths]
    if len(names) != len(paths):
        raise ValueError(f"{len(names)} names for {len(paths)} ensemble members")
    payloads = []
    for path in paths:
        if classical.is_params_file(path):
            raise InputError(path, "a finetuned network (model.pt of a network strategy)",
                             "the classical threshold baseline's parameters")
        payload = torch.load(path, map_location="cpu", weights_only=False)
        if is_ensemble(payload):
            raise InputError(path, "a single finetuned model", f"an ensemble of {payload.get('ensemble_of')}")
        if payload.get("state_dict") is None:
            raise InputError(path, "a finetuned model with weights (state_dict)", "none stored")
        payload["config"] = stored_network(payload)
        payloads.append(payload)
    first = payloads[0]
    for path, payload in zip(paths[1:], payloads[1:]):
        for key in SHARED_KEYS:
            if payload.get(key) != first.get(key):
                raise InputError(path, f"{key} {first.get(key)!r} like the first member {paths[0]}",
                                 repr(payload.get(key)))
    summary = {"ensemble_of": names, "member_val_dice": [p.get("best_val_dice") for p in payloads]}
    stored = {k: first.get(k) for k in SHARED_KEYS} | summary | {
        MEMBERS_KEY: [p["state_dict"] for p in payloads], "state_dict": None}
    with atomic_path(out) as tmp:
        torch.save(stored, tmp)
    log.info("ensemble of %d models (%s) written to %s", len(paths), ", ".join(names), out)
    return summary


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Average several finetuned models (e.g. the seeds of one run) into one model.pt: "
                          "the mean of their foreground probabilities. Calibrate it on validation with "
                          "the workflow (finetune.ensemble) or use it as is with `selma3d predict`.")
    parser.add_argument("models", nargs="+", help="finetuned model.pt files of the same network")
    parser.add_argument("--out", required=True, help="the ensemble model.pt to write")


def run(args: argparse.Namespace) -> int:
    from selma3d.core.logs import setup_logging

    setup_logging()  # the command's own log on stderr (not a handler left by whatever ran before)
    summary = combine(args.models, args.out)
    print(f"ensemble of {len(summary['ensemble_of'])} models written to {args.out}")
    return 0
