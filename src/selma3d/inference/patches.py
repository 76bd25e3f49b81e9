"""Inference over test patches: sliding window, threshold, small-component removal, NIfTI out."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from selma3d import io
from selma3d.core.atomic import atomic_path
from selma3d.data.manifest import read_manifest
from selma3d.preprocess.normalize import normalize
from selma3d.training.runtime import pick_device

log = logging.getLogger(__name__)


def remove_small_components(mask: np.ndarray, min_size: int) -> np.ndarray:
    """Drop 26-connected components smaller than ``min_size`` voxels (BioAI used 5)."""
    if min_size <= 1 or not mask.any():
        return mask
    import cc3d

    return cc3d.dust(mask.astype(np.uint8), threshold=min_size, connectivity=26, in_place=False).astype(mask.dtype)


def infer_test_split(model_path: str | Path, manifest: str | Path, out_dir: str | Path, overlap: float = 0.5,
                     threshold: float = 0.5, sw_batch_size: int = 4, blend: str = "gaussian",
                     min_component_size: int = 0, split: str = "test", progress: bool = True,
                     mirror_axes: tuple[int, ...] | None = None) -> list[Path]:
    """Segment every image of ``split`` and write ``<case>.nii.gz`` masks (uint8) into ``out_dir``.

    Predictions keep the input's geometry (its affine for NIfTI inputs, its spacing otherwise),
    so the official evaluators and viewers overlay them on the raw data. The folder appears
    only when every case is written. ``mirror_axes`` (e.g. ``(0, 1, 2)``) turns on test-time
    mirroring (:func:`selma3d.inference.tta.predict_with_tta`).
    """
    from selma3d.training.finetune import load_model

    net, payload = load_model(model_path, pick_device())
    settings = {"overlap": overlap, "threshold": threshold, "sw_batch_size": sw_batch_size, "blend": blend,
                "min_component_size": min_component_size, "mirror_axes": mirror_axes}
    table = read_manifest(manifest)
    images = table[(table.split == split) & (table.role == "image")].sort_values("case")
    if images.empty:
        raise io.InputError(manifest, f"image rows with split {split!r}", "none")
    written = []
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        for _, row in tqdm(list(images.iterrows()), desc="infer", disable=not progress):
            vol = io.read_volume(row.path)
            mask = segment_case(net, payload, vol.data, settings, structure=row.get("structure"), source=row.path)
            io.write_nifti(tmp / f"{row.case}.nii.gz", mask, vol.spacing, affine=vol.affine)
            written.append(Path(out_dir) / f"{row.case}.nii.gz")
            log.info("%s: %d foreground voxels of %d", row.case, int(mask.sum()), mask.size)
    return written


# ------------------------------------------------------------------ one case (pipeline = container)
# segment_case is the one per-case code path: infer_test_split above calls it for every test
# patch, and the exported challenge container (selma3d.inference.algorithm) calls it per
# /invoke, so a submission predicts exactly what the leaderboard scored.

#: the ``infer`` settings segment_case needs (the workflow schema holds their defaults);
#: ``mirror_axes`` (test-time mirroring) is optional
CASE_SETTINGS = ("overlap", "threshold", "sw_batch_size", "blend", "min_component_size")


def case_postprocess(payload: dict, settings: dict, structure: str | None = None) -> tuple[float, int]:
    """(threshold, min component size) for one case.

    A model tuned per structure stores ``payload["postprocess"] = {structure: {"threshold": t,
    "min_size": m}, ...}`` (``min_component_size`` is accepted for ``min_size``); a case of such a
    structure uses those values, any other case (unknown or unseen structure) the ``infer``
    settings ``threshold`` and ``min_component_size``.
    """
    threshold, min_size = float(settings["threshold"]), int(settings["min_component_size"])
    tuned = (payload.get("postprocess") or {}).get(structure) if isinstance(structure, str) else None
    if isinstance(tuned, dict):
        threshold = float(tuned.get("threshold", threshold))
        min_size = int(tuned.get("min_size", tuned.get("min_component_size", min_size)))
    return threshold, min_size


def segment_case(net, payload: dict, image: np.ndarray, settings: dict, structure: str | None = None,
                 source: str | Path | None = None) -> np.ndarray:
    """Binary uint8 mask (z, y, x) of one image: the model's normalisation, sliding-window
    probabilities (mirrored over ``settings["mirror_axes"]`` when set), threshold and removal of
    small components (:func:`case_postprocess`).

    Args:
        net, payload: from :func:`selma3d.training.finetune.load_model` (the net on its device).
        image: (z, y, x) raw intensities.
        settings: the ``infer`` config block (:data:`CASE_SETTINGS`, optionally ``mirror_axes``).
        structure: canonical structure of the case, for per-structure post-processing.
        source: the image's file, named in errors.
    Raises:
        InputError: the image is not 3D or holds NaN/inf.
    """
    from selma3d.training.finetune import predict_probability

    missing = [k for k in CASE_SETTINGS if k not in settings]
    if missing:
        raise ValueError(f"segment_case: infer settings lack {missing} (have {sorted(settings)})")
    s = settings
    data = np.asarray(image, dtype=np.float32)
    if data.ndim != 3:
        raise io.InputError(source, "a 3D (z, y, x) image", f"a {data.ndim}D array of shape {data.shape}")
    if not np.isfinite(data).all():
        raise io.InputError(source, "finite intensities", "NaN or inf values")
    device = next(net.parameters()).device
    roi = tuple(int(r) for r in payload["config"].get("patch_size", (96, 96, 96)))
    norm = normalize(data, payload.get("normalize", "percentile"))
    common = dict(overlap=float(s["overlap"]), sw_batch_size=int(s["sw_batch_size"]), blend=s["blend"])
    if s.get("mirror_axes"):
        from selma3d.inference.tta import predict_with_tta

        prob = predict_with_tta(net, norm, roi, device, mirror_axes=tuple(s["mirror_axes"]), **common)
    else:
        prob = predict_probability(net, norm, roi, device, **common)
    threshold, min_size = case_postprocess(payload, s, structure)
    return remove_small_components(prob > threshold, min_size).astype(np.uint8)
