"""Inference over test patches: sliding window, threshold, small-component removal, NIfTI out."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from selma3d import io
from selma3d.config import schema_default
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


def infer_test_split(model_path: str | Path, manifest: str | Path, out_dir: str | Path,
                     overlap: float = schema_default("infer.overlap"),
                     threshold: float = schema_default("infer.threshold"),
                     sw_batch_size: int = schema_default("infer.sw_batch_size"),
                     blend: str = schema_default("infer.blend"),
                     min_component_size: int = schema_default("infer.min_component_size"), split: str = "test",
                     progress: bool = True) -> list[Path]:
    """Segment every image of ``split`` and write ``<case>.nii.gz`` masks (uint8) into ``out_dir``.

    Predictions keep the input's geometry (its affine for NIfTI inputs, its spacing otherwise),
    so the official evaluators and viewers overlay them on the raw data. The folder appears
    only when every case is written.
    """
    from selma3d.training.finetune import load_model, predict_probability

    device = pick_device()
    net, payload = load_model(model_path, device)
    roi = tuple(int(s) for s in payload["config"]["patch_size"])  # the network config load_model resolved
    table = read_manifest(manifest)
    images = table[(table.split == split) & (table.role == "image")].sort_values("case")
    if images.empty:
        raise io.InputError(manifest, f"image rows with split {split!r}", "none")
    written = []
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        for _, row in tqdm(list(images.iterrows()), desc="infer", disable=not progress):
            vol = io.read_volume(row.path)
            data = np.asarray(vol.data, dtype=np.float32)
            if not np.isfinite(data).all():
                raise io.InputError(row.path, "finite intensities", "NaN or inf values")
            prob = predict_probability(net, normalize(data, payload["normalize"]), roi, device,
                                       overlap=overlap, sw_batch_size=sw_batch_size, blend=blend)
            mask = remove_small_components(prob > threshold, min_component_size).astype(np.uint8)
            io.write_nifti(tmp / f"{row.case}.nii.gz", mask, vol.spacing, affine=vol.affine)
            written.append(Path(out_dir) / f"{row.case}.nii.gz")
            log.info("%s: %d foreground voxels of %d", row.case, int(mask.sum()), mask.size)
    return written
