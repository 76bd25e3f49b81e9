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


def probability(net, image: np.ndarray, roi, device, overlap: float = 0.5, sw_batch_size: int = 4,
                blend: str = "gaussian", mirror_axes: tuple[int, ...] | None = None) -> np.ndarray:
    """Foreground probability of a normalised patch: sliding window, mirrored over
    ``mirror_axes`` when given (:func:`selma3d.inference.tta.predict_with_tta`)."""
    if mirror_axes:
        from selma3d.inference.tta import predict_with_tta

        return predict_with_tta(net, image, roi, device, overlap=overlap, mirror_axes=tuple(mirror_axes),
                                sw_batch_size=sw_batch_size, blend=blend)
    from selma3d.training.finetune import predict_probability

    return predict_probability(net, image, roi, device, overlap=overlap, sw_batch_size=sw_batch_size, blend=blend)


def stored_postprocess(stored: dict | None, row, threshold: float, min_component_size: int) -> tuple[float, int]:
    """(threshold, min size) for a manifest row: the value calibrated for its structure (or
    category, as ``stored["per"]`` says; :func:`selma3d.inference.calibrate.calibrate`), else
    the given defaults."""
    if stored:
        key = str(row[stored["per"]]) if stored["per"] in row else None
        chosen = stored["values"].get(key)
        if chosen is not None:
            return float(chosen["threshold"]), int(chosen["min_size"])
    return float(threshold), int(min_component_size)


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
    category's) values; ``threshold`` and ``min_component_size`` apply to the others. A
    ``threshold`` strategy's parameters file is applied by :func:`infer_classical`.
    """
    from selma3d.training import classical
    from selma3d.training.finetune import load_model, normalize_image

    if classical.is_params_file(model_path):
        return infer_classical(model_path, manifest, out_dir, split=split, progress=progress)
    device = pick_device()
    net, payload = load_model(model_path, device)
    roi = tuple(int(s) for s in payload["config"]["patch_size"])  # the network config load_model resolved
    stored = payload.get("postprocess") if use_stored_postprocess else None
    if stored:
        log.info("post-processing calibrated on %s per %s: %s", stored.get("split", "val"), stored["per"],
                 {k: (v["threshold"], v["min_size"]) for k, v in stored["values"].items()})
    images = _images(manifest, split)
    written = []
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        for _, row in tqdm(list(images.iterrows()), desc="infer", disable=not progress):
            vol, data = _read_image(row)
            norm = normalize_image(data, payload.get("normalize", "percentile"), payload.get("normalize_stats"))
            prob = probability(net, norm, roi, device, overlap, sw_batch_size, blend, mirror_axes)
            thr, min_size = stored_postprocess(stored, row, threshold, min_component_size)
            mask = remove_small_components(prob > thr, min_size).astype(np.uint8)
            io.write_nifti(tmp / f"{row.case}.nii.gz", mask, vol.spacing, affine=vol.affine)
            written.append(Path(out_dir) / f"{row.case}.nii.gz")
            log.info("%s: %d foreground voxels of %d", row.case, int(mask.sum()), mask.size)
    return written
