"""Inference over test patches: sliding window (with test-time mirroring), threshold and
small-component removal (the per-structure values calibrated on validation when the model
stores them), NIfTI out. The ``threshold`` strategy's classical parameters are applied as is."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from selma3d import io
from selma3d.core.schema import schema_default
from selma3d.core.atomic import atomic_path
from selma3d.data.manifest import read_manifest
from selma3d.training.runtime import pick_device

log = logging.getLogger(__name__)


def remove_small_components(mask: np.ndarray, min_size: int) -> np.ndarray:
    """Drop 26-connected components smaller than ``min_size`` voxels (BioAI used 5)."""
    if min_size <= 1 or not mask.any():
        return mask
    import cc3d

    return cc3d.dust(mask.astype(np.uint8), threshold=min_size, connectivity=26, in_place=False).astype(mask.dtype)


def keep_peaked_components(mask: np.ndarray, score: np.ndarray, peak: float) -> np.ndarray:
    """The 26-connected components of ``mask`` holding a voxel of ``score > peak``, whole
    (hysteresis); ``mask`` itself when no voxel of it scores at or below ``peak``."""
    mask = np.asarray(mask, bool)
    seeds = np.asarray(score) > float(peak)
    if not mask.any() or not (mask & ~seeds).any():
        return mask
    import cc3d

    labels = cc3d.connected_components(mask.astype(np.uint8), connectivity=26)
    kept = np.zeros(int(labels.max()) + 1, dtype=bool)
    kept[labels[seeds & mask]] = True
    kept[0] = False
    return kept[labels]


def probability(net, image: np.ndarray, roi, device, overlap: float = schema_default("infer.overlap"),
                sw_batch_size: int = schema_default("infer.sw_batch_size"),
                blend: str = schema_default("infer.blend"), mirror_axes: tuple[int, ...] | None = None) -> np.ndarray:
    """Foreground probability of a normalised patch: sliding window, mirrored over
    ``mirror_axes`` when given (:func:`selma3d.inference.tta.predict_with_tta`)."""
    if mirror_axes:
        from selma3d.inference.tta import predict_with_tta

        return predict_with_tta(net, image, roi, device, overlap=overlap, mirror_axes=tuple(mirror_axes),
                                sw_batch_size=sw_batch_size, blend=blend)
    from selma3d.training.finetune import predict_probability

    return predict_probability(net, image, roi, device, overlap=overlap, sw_batch_size=sw_batch_size, blend=blend)


def _images(manifest, split: str):
    table = read_manifest(manifest)
    images = table[(table.split == split) & (table.role == "image")].sort_values("case")
    if images.empty:
        raise io.InputError(manifest, f"image rows with split {split!r}", "none")
    return images


def _read_image(row) -> tuple[object, np.ndarray]:
    vol = io.read_volume(row.path)
    data = np.asarray(vol.data, dtype=np.float32)
    if not np.isfinite(data).all():
        raise io.InputError(row.path, "finite intensities", "NaN or inf values")
    return vol, data


def infer_classical(params_path: str | Path, manifest: str | Path, out_dir: str | Path, split: str = "test",
                    progress: bool = True) -> list[Path]:
    """:func:`infer_test_split` for the ``threshold`` strategy: its per-structure classical
    threshold (:func:`selma3d.training.classical.predict`; the pooled fit for a structure it was
    not fitted on) on the raw intensities."""
    from selma3d.training import classical

    params = classical.load_params(params_path)
    images = _images(manifest, split)
    written = []
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        for _, row in tqdm(list(images.iterrows()), desc="infer", disable=not progress):
            vol, data = _read_image(row)
            mask = classical.predict(data, params, str(row.structure))
            io.write_nifti(tmp / f"{row.case}.nii.gz", mask, vol.spacing, affine=vol.affine)
            written.append(Path(out_dir) / f"{row.case}.nii.gz")
            log.info("%s: %d foreground voxels of %d (classical threshold)", row.case, int(mask.sum()), mask.size)
    return written


def infer_test_split(model_path: str | Path, manifest: str | Path, out_dir: str | Path,
                     overlap: float = schema_default("infer.overlap"),
                     threshold: float = schema_default("infer.threshold"),
                     sw_batch_size: int = schema_default("infer.sw_batch_size"),
                     blend: str = schema_default("infer.blend"),
                     min_component_size: int = schema_default("infer.min_component_size"), split: str = "test",
                     progress: bool = True,
                     mirror_axes: tuple[int, ...] | None = None, use_stored_postprocess: bool = True) -> list[Path]:
    """Segment every image of ``split`` and write ``<case>.nii.gz`` masks (uint8) into ``out_dir``.

    Predictions keep the input's geometry (its affine for NIfTI inputs, its spacing otherwise),
    so the official evaluators and viewers overlay them on the raw data. The folder appears
    only when every case is written. ``mirror_axes`` (e.g. ``(0, 1, 2)``) turns on test-time
    mirroring (:func:`selma3d.inference.tta.predict_with_tta`). A model calibrated on validation
    (``postprocess`` in ``model.pt``) thresholds and cleans each case with its structure's (or
    category's) values (threshold, minimum size, peak); ``threshold`` and ``min_component_size`` apply to the others. A
    ``threshold`` strategy's parameters file is applied by :func:`infer_classical`.
    """
    from selma3d.training import classical
    from selma3d.training.finetune import load_model

    if classical.is_params_file(model_path):
        return infer_classical(model_path, manifest, out_dir, split=split, progress=progress)
    net, payload = load_model(model_path, pick_device())
    settings = {"overlap": overlap, "threshold": threshold, "sw_batch_size": sw_batch_size, "blend": blend,
                "min_component_size": min_component_size, "mirror_axes": mirror_axes,
                "use_stored_postprocess": use_stored_postprocess}
    stored = payload.get("postprocess") if use_stored_postprocess else None
    if stored:
        log.info("post-processing calibrated on %s per %s: %s", stored.get("split", "val"), stored["per"],
                 {k: (v["threshold"], v["min_size"], v.get("peak", 0.0)) for k, v in stored["values"].items()})
    images = _images(manifest, split)
    written = []
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        for _, row in tqdm(list(images.iterrows()), desc="infer", disable=not progress):
            vol = io.read_volume(row.path)
            mask = segment_case(net, payload, vol.data, settings, structure=str(row.structure), source=row.path)
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


def case_postprocess(payload: dict, settings: dict, structure: str | None = None) -> tuple[float, int, float]:
    """(threshold, min component size, peak) for one case.

    A model calibrated on validation (:func:`selma3d.inference.calibrate.calibrate`) stores
    ``payload["postprocess"] = {"per": "structure" | "category", "values": {key: {"threshold": t,
    "min_size": m, "peak": p}, ...}}``; a case whose structure (or its category) was calibrated uses
    those values (``peak`` 0, no peak filter, for models calibrated before it existed), any other
    case (unknown or unseen structure, or ``use_stored_postprocess`` false) the ``infer`` settings
    ``threshold`` and ``min_component_size`` and no peak filter.
    """
    chosen = calibrated_values(payload, structure) if settings.get("use_stored_postprocess", True) else None
    if chosen:
        return float(chosen["threshold"]), int(chosen["min_size"]), float(chosen.get("peak", 0.0))
    return float(settings["threshold"]), int(settings["min_component_size"]), 0.0


def calibrated_values(payload: dict, structure: str | None) -> dict | None:
    """The post-processing the model calibrated for ``structure`` (or its category, as the model
    grouped them), or None where it calibrated none for it."""
    stored = payload.get("postprocess")
    if not stored or not isinstance(structure, str):
        return None
    key = structure
    if stored.get("per", "structure") == "category":
        from selma3d.core.structures import category_of

        try:
            key = category_of(structure)
        except (KeyError, ValueError):
            return None
    return stored.get("values", {}).get(key) or None


def segment_case(net, payload: dict, image: np.ndarray, settings: dict, structure: str | None = None,
                 source: str | Path | None = None) -> np.ndarray:
    """Binary uint8 mask (z, y, x) of one image: the model's normalisation, sliding-window
    probabilities (mirrored over ``settings["mirror_axes"]`` when set), threshold, removal of
    small components and of components without a voxel above the peak (:func:`case_postprocess`).

    Args:
        net, payload: from :func:`selma3d.training.finetune.load_model` (the net on its device).
        image: (z, y, x) raw intensities.
        settings: the ``infer`` config block (:data:`CASE_SETTINGS`, optionally ``mirror_axes``).
        structure: canonical structure of the case, for per-structure post-processing.
        source: the image's file, named in errors.
    Raises:
        InputError: the image is not 3D or holds NaN/inf.
    """
    from selma3d.training.finetune import normalize_image
    from selma3d.training.plan import structure_normalization

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
    roi = tuple(int(r) for r in payload["config"]["patch_size"])
    norm = normalize_image(data, structure_normalization(payload, structure), payload.get("normalize_stats"))
    prob = probability(net, norm, roi, device, float(s["overlap"]), int(s["sw_batch_size"]), s["blend"],
                       s.get("mirror_axes"))
    threshold, min_size, peak = case_postprocess(payload, s, structure)
    return remove_small_components(keep_peaked_components(prob > threshold, prob, peak), min_size).astype(np.uint8)
