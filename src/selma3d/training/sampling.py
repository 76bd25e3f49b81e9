"""Training samples for pretraining: patches from patchify's stores, cropped and normalised.

Sampling is a pure function of (seed, step): the batch of step t is the same whether a run
went straight through or resumed from a checkpoint, which is what makes resume exact.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from selma3d.preprocess.normalize import normalize


def step_rng(seed: int, step: int, stream: int = 0) -> np.random.Generator:
    """An independent generator for one (seed, step) pair."""
    return np.random.default_rng([seed, step, stream])


def read_patch_index(paths: list[str | Path]) -> pd.DataFrame:
    """Every patch that pretraining may sample: patchify's index tables, checked non-empty."""
    from selma3d.preprocess.patchify import load_patch_index

    index = load_patch_index(list(paths))
    if index.empty:
        raise ValueError(f"patch indexes {list(map(str, paths))} hold no patches: lower "
                         "preprocess.min_foreground or the intensity threshold")
    return index


def random_crop(patch: np.ndarray, size: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """A random crop of ``size``; axes shorter than ``size`` are zero-padded (edge mode)."""
    pad = [(0, max(0, s - d)) for s, d in zip(size, patch.shape)]
    if any(p[1] for p in pad):
        patch = np.pad(patch, pad, mode="reflect" if min(patch.shape) > 1 else "edge")
    starts = [int(rng.integers(0, d - s + 1)) for s, d in zip(size, patch.shape)]
    return patch[tuple(slice(a, a + s) for a, s in zip(starts, size))]


def crop_case(case, size: tuple[int, int, int], rng: np.random.Generator, fg_prob: float):
    """(image, label, ignore) crops of ``size`` from an annotated case (``.image``, ``.label``,
    ``.ignore``: ``selma3d.training.finetune.Case``), padded when the case is smaller (image with
    its minimum, label 0, ignore True), centred on a foreground voxel with probability ``fg_prob``.

    Draws, in order: the three start offsets, the foreground coin, the foreground voxel.
    """
    shape = case.image.shape
    pad = [(0, max(0, s - d)) for s, d in zip(size, shape)]
    image, label = case.image, case.label
    ignore = case.ignore if case.ignore is not None else np.zeros(shape, bool)
    if any(p[1] for p in pad):
        image = np.pad(image, pad, mode="constant", constant_values=float(image.min()))
        label = np.pad(label, pad)
        ignore = np.pad(ignore, pad, constant_values=True)
        shape = image.shape
    starts = [int(rng.integers(0, d - s + 1)) for s, d in zip(size, shape)]
    if rng.random() < fg_prob:
        fg = np.flatnonzero(label)
        if fg.size:
            centre = np.unravel_index(fg[rng.integers(0, fg.size)], shape)
            starts = [int(np.clip(c - s // 2, 0, d - s)) for c, s, d in zip(centre, size, shape)]
    sl = tuple(slice(a, a + s) for a, s in zip(starts, size))
    return image[sl], label[sl], ignore[sl]


def sample_tensor(patch: np.ndarray, size: tuple[int, int, int], normalization: str, seed: int) -> torch.Tensor:
    """The (1, D, H, W) float32 training sample of ``patch``: a random crop (seeded), normalised."""
    crop = random_crop(patch, size, np.random.default_rng(seed))
    return torch.from_numpy(normalize(crop, normalization)[None].copy())


class PatchSampleDataset(Dataset):
    """Items are (row, seed) pairs -> a normalised (1, D, H, W) crop plus metadata.

    ``normalization``: one method, or ``{structure: method, "*": default}`` (the training plan's,
    :func:`selma3d.training.plan.plan_normalization`) chosen by each row's ``structure``."""

    def __init__(self, index: pd.DataFrame, crop_size: tuple[int, int, int],
                 normalization: str | dict[str, str] = "percentile"):
        self.index = index.reset_index(drop=True)
        self.crop_size = tuple(int(s) for s in crop_size)
        self.normalization = normalization
        self._arrays: dict[str, object] = {}

    def __len__(self) -> int:
        return len(self.index)

    def _array(self, store: str):
        import zarr

        if store not in self._arrays:
            self._arrays[store] = zarr.open_array(store, mode="r")
        return self._arrays[store]

    def __getitem__(self, item: tuple[int, int]):
        row_id, seed = item
        row = self.index.iloc[row_id]
        patch = np.asarray(self._array(row["store"])[int(row["patch"])])
        norm = self.normalization
        if isinstance(norm, dict):
            norm = norm.get(str(row.get("structure", "")), norm["*"])
        x = sample_tensor(patch, self.crop_size, norm, seed)
        meta = {k: str(row[k]) for k in ("volume", "structure", "category", "spacing_um") if k in row}
        if "caption" in row:  # free-text caption of the patch's source file (may be empty)
            meta["caption"] = row["caption"] if isinstance(row["caption"], str) else ""
        return x, meta


class StepBatchSampler(torch.utils.data.Sampler):
    """Yields, for steps start..steps-1, the batch [(row, crop_seed), ...] of that step."""

    def __init__(self, n_rows: int, batch_size: int, seed: int, start: int, steps: int):
        self.n_rows, self.batch_size, self.seed = n_rows, batch_size, seed
        self.start, self.steps = start, steps

    def __len__(self) -> int:
        return max(0, self.steps - self.start)

    def __iter__(self):
        for step in range(self.start, self.steps):
            rng = step_rng(self.seed, step)
            rows = rng.integers(0, self.n_rows, size=self.batch_size)
            seeds = rng.integers(0, 2**31 - 1, size=self.batch_size)
            yield [(int(r), int(s)) for r, s in zip(rows, seeds)]


def collate(items):
    xs, metas = zip(*items)
    keys = metas[0].keys()
    return torch.stack(xs), {k: [m[k] for m in metas] for k in keys}
