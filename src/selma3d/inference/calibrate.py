"""Post-processing calibrated on validation: a threshold and a minimum component size per
structure (or category), stored in the finetuned model.

The ``finetune`` rule calls :func:`calibrate` after training (``infer.postprocess.
select_on_validation``): it predicts every annotated case of the val split exactly as ``infer``
will (the model's normalisation, sliding window with ``infer.overlap``, ``sw_batch_size``,
``blend`` and test-time mirroring over ``infer.mirror_axes``), searches
``infer.postprocess.thresholds`` × ``peaks`` × ``min_sizes`` for the best mean Dice per group
(:func:`selma3d.inference.postprocess.select_per_structure`) and writes, atomically, into
``model.pt``::

    {"postprocess": {"per": "structure", "split": "val", "mirror_axes": [0, 1, 2],
                     "values": {<structure>: {"threshold", "min_size", "peak", "score",
                                              "default_score", "n_cases"}}}}

:func:`selma3d.inference.patches.infer_test_split` applies a group's values to the test cases of
that group and ``infer.threshold`` / ``min_component_size`` to the rest.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from selma3d import io
from selma3d.core.atomic import atomic_path
from selma3d.core.labels import binarize_label
from selma3d.data.manifest import annotated_pairs, label_rule, read_manifest
from selma3d.training.runtime import pick_device

log = logging.getLogger(__name__)

GROUPINGS = ("structure", "category")


def annotated_cases(manifest: str | Path, split: str, payload: dict) -> list[dict[str, Any]]:
    """The annotated cases of ``split``, as the model sees them: per case (sorted by name) its
    manifest row, the image under the model's normalisation for its structure (``image``), and
    its truth (``label``, bool) and unannotated voxels (``ignore``, or None) by the row's rule."""
    from selma3d.training.finetune import normalize_image
    from selma3d.training.plan import structure_normalization

    out = []
    for _, row in annotated_pairs(read_manifest(manifest), split).sort_values("case").iterrows():
        data = np.asarray(io.read_volume(row["image"]).data, dtype=np.float32)
        image = normalize_image(data, structure_normalization(payload, row.get("structure")),
                                payload.get("normalize_stats"))
        rule = label_rule(row, payload.get("ignore_label"), tuple(payload.get("background_values", (0,))))
        fg, ign = binarize_label(io.read_volume(row["label"]).data, *rule)  # the row's own rule wins
        out.append({"row": row, "image": image, "label": fg.astype(bool), "ignore": ign})
    return out


def calibrate(model_path: str | Path, manifest: str | Path, settings: dict[str, Any], split: str = "val") -> dict:
    """Choose and store the post-processing of ``model_path`` on the ``split`` cases.

    Args:
        model_path: a finetuned ``model.pt`` (rewritten in place, atomically).
        manifest: the dataset's local manifest.
        settings: the ``infer`` config block: ``overlap``, ``sw_batch_size``, ``blend``,
            ``mirror_axes`` and ``postprocess`` (``per``, ``thresholds``, ``min_sizes``, ``peaks``).
        split: the cases to calibrate on.
    Returns:
        what was stored under ``postprocess`` (empty when the manifest has no such cases:
        then nothing is stored and infer uses its fixed threshold).
    """
    from selma3d.inference.patches import probability
    from selma3d.inference.postprocess import select_per_structure
    from selma3d.training.finetune import load_model

    pp = settings["postprocess"]
    per = pp["per"]
    if per not in GROUPINGS:
        raise io.InputError(None, f"infer.postprocess.per one of {list(GROUPINGS)}", repr(per))
    device = pick_device()
    net, payload = load_model(model_path, device)
    cases = annotated_cases(manifest, split, payload)
    if not cases:
        log.warning("no annotated %s cases in %s: post-processing not calibrated (infer uses its fixed threshold)",
                    split, manifest)
        return {}
    roi = tuple(int(s) for s in payload["config"]["patch_size"])
    mirror = tuple(int(a) for a in settings["mirror_axes"])
    probs = [probability(net, c["image"], roi, device, float(settings["overlap"]), int(settings["sw_batch_size"]),
                         settings["blend"], mirror) for c in cases]
    labels, ignores = [c["label"] for c in cases], [c["ignore"] for c in cases]
    groups = [str(c["row"][per]) for c in cases]
    chosen = select_per_structure(probs, labels, groups, ignores, thresholds=pp["thresholds"],
                                  min_sizes=pp["min_sizes"], peaks=pp["peaks"])
    values = {g: {"threshold": r["threshold"], "min_size": r["min_size"], "peak": r["peak"], "score": r["score"],
                  "default_score": r["default_score"], "n_cases": len(r["per_case"])} for g, r in chosen.items()}
    stored = {"per": per, "split": split, "mirror_axes": list(mirror), "values": values}
    raw = torch.load(model_path, map_location="cpu", weights_only=False)
    raw["postprocess"] = stored
    with atomic_path(model_path) as tmp:
        torch.save(raw, tmp)
    for g, v in values.items():
        log.info("calibrated %s %s on %d %s cases: threshold %.2f, min size %d, peak %g, Dice %.4f (0.5 / none: %.4f)",
                 per, g, v["n_cases"], split, v["threshold"], v["min_size"], v["peak"], v["score"], v["default_score"])
    return stored
