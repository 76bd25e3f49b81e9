"""Patchify: cut a (downsampled) volume into pretraining cubes, keeping the informative ones.

Cubes are cut on a regular grid, streaming one row of patches along z at a time. A cube is
kept when the fraction of its voxels above an intensity threshold reaches ``min_foreground``
(Tonyxu's SELMA3D recipe: >10 % of voxels > 500 a.u.); of the rejected cubes a seeded random
``background_share`` is kept too (SELMA3D 2026 keeps about 5 % background), so the model
still sees empty tissue.

Output: one chunked zarr array (N, pz, py, px) in the volume's dtype, one chunk per patch
(many small files are a cluster's enemy), plus an index CSV. Foreground patches come first in
grid order, then the sampled background ones, which are read back from the source in a short
second pass once the number of rejected cubes (hence the exact sample size) is known.
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from selma3d.core.schema import schema_default
from selma3d.core.atomic import atomic_path
from selma3d.core.errors import InputError
from selma3d.core.text import format_spacing
from selma3d.io import VolumeReader, case_name, open_reader
from selma3d.io.omezarr import ChunkIO, create_patch_array, open_patch_array, write_block, zarr_workers
from selma3d.preprocess.blocks import progress_bar

INDEX_COLUMNS = ["volume", "structure", "category", "spacing_um", "patch", "z", "y", "x",
                 "foreground_fraction", "background", "store", "level"]


def resolve_threshold(reader: VolumeReader, spec, max_planes: int = 64) -> float:
    """A numeric intensity threshold from ``spec``.

    ``spec`` is a number (a.u.), ``"otsu"``, or a percentile as ``"p99"`` /
    ``"percentile:99.5"``. Otsu and percentiles are estimated from up to ``max_planes`` evenly
    spaced z-planes (a histogram, never the whole volume in memory).
    """
    if isinstance(spec, (int, float, np.integer, np.floating)) and not isinstance(spec, bool):
        return float(spec)
    text = str(spec).strip().lower()
    try:
        return float(text)
    except ValueError:
        pass
    pct = None
    if text.startswith("percentile:"):
        pct = text.split(":", 1)[1]
    elif text.startswith("p") and text[1:].replace(".", "", 1).isdigit():
        pct = text[1:]
    if text != "otsu" and pct is None:
        raise ValueError(f"intensity_threshold: expected a number, 'otsu', 'pNN' or 'percentile:NN', found {spec!r}")
    Z = reader.shape[0]
    zs = np.unique(np.linspace(0, Z - 1, min(Z, max_planes)).round().astype(int))
    sample = np.concatenate([reader.read_slab(int(z), int(z) + 1).ravel() for z in zs])
    if pct is not None:
        q = float(pct)
        if not 0 <= q <= 100:
            raise ValueError(f"intensity_threshold: percentile must be in [0, 100], found {q}")
        return float(np.percentile(sample, q))
    from skimage.filters import threshold_otsu

    return float(threshold_otsu(sample))


def foreground_fraction(cube: np.ndarray, threshold: float) -> float:
    """Fraction of a cube's voxels above ``threshold``: a cube is kept when this reaches
    ``min_foreground``. A boolean cube is taken as already thresholded."""
    above = cube if cube.dtype == bool else cube > threshold
    return float(np.count_nonzero(above)) / above.size if above.size else 0.0


def sample_background(n_rejected: int, background_share: float, seed: int) -> np.ndarray:
    """Sorted indices of the rejected cubes kept as background: ``background_share`` of them
    (rounded half up), drawn without replacement from ``seed``."""
    if not 0 <= background_share <= 1:
        raise ValueError(f"background_share: expected a fraction in [0, 1], found {background_share}")
    rng = np.random.default_rng(seed)
    n_bg = int(math.floor(background_share * n_rejected + 0.5))
    return np.sort(rng.choice(n_rejected, size=n_bg, replace=False)) if n_bg else np.zeros(0, int)


def _grid(n: int, p: int, stride: int) -> list[int]:
    return list(range(0, n - p + 1, stride)) if n >= p else []


def patchify_volume(in_store, out_zarr: str | Path, index_csv: str | Path,
                    patch_size: int | Sequence[int] = schema_default("preprocess.patch_size"),
                    level: int = schema_default("preprocess.level"),
                    min_foreground: float = schema_default("preprocess.min_foreground"),
                    intensity_threshold: float | str = schema_default("preprocess.intensity_threshold"),
                    background_share: float = schema_default("preprocess.background_share"),
                    seed: int = schema_default("seed"), meta: dict | None = None,
                    stride: int | Sequence[int] | None = None, progress: bool = True,
                    workers: int = schema_default("preprocess.workers"), compressor: str = "zstd",
                    clevel: int = 1) -> pd.DataFrame:
    """Cut ``in_store`` (level ``level`` of an OME-Zarr, or any readable volume) into cubes.

    Args:
        patch_size: cube edge (z, y, x) in voxels of that level, or one int for all.
        min_foreground: keep a cube when the fraction of voxels > threshold is >= this.
        intensity_threshold: number (a.u.), ``"otsu"`` or ``"pNN"`` (see :func:`resolve_threshold`).
        background_share: fraction of the rejected cubes kept as background (seeded).
        seed: seeds the background sample.
        meta: ``volume``, ``structure``, ``category``, ``spacing_um`` for the index (defaults:
            the store's name, empty, empty, the level's spacing); a non-empty ``caption`` adds
            a ``caption`` column.
        stride: grid step (default: the patch size, i.e. non-overlapping).
        workers, compressor, clevel: zarr writing (zstd level 1: as small as level 3 on
            these patches and about 3x faster to write).

    Returns:
        The index (also written to ``index_csv``): one row per stored patch, ``patch`` being
        its row in ``out_zarr``; ``store`` is the store's path relative to the CSV's folder.
    """
    out_zarr, index_csv = Path(out_zarr), Path(index_csv)
    size = _triple(patch_size, "patch_size")
    step = _triple(stride if stride is not None else size, "stride")
    if not 0 <= background_share <= 1:
        raise ValueError(f"background_share: expected a fraction in [0, 1], found {background_share}")
    reader = open_reader(in_store, level=level)
    try:
        return _patchify(reader, out_zarr, index_csv, size, step, level, min_foreground, intensity_threshold,
                         background_share, seed, dict(meta or {}), progress, workers, compressor, clevel)
    finally:
        if reader is not in_store:
            reader.close()


def _triple(value, name: str) -> tuple[int, int, int]:
    t = (int(value),) * 3 if np.isscalar(value) else tuple(int(v) for v in value)
    if len(t) != 3 or min(t) < 1:
        raise ValueError(f"{name}: expected a positive int or three (z, y, x), found {value!r}")
    return t


def _patchify(reader, out_zarr, index_csv, size, step, level, min_foreground, intensity_threshold,
              background_share, seed, meta, progress, workers, compressor, clevel) -> pd.DataFrame:
    pz, py, px = size
    Z, Y, X = reader.shape
    zs, ys, xs = _grid(Z, pz, step[0]), _grid(Y, py, step[1]), _grid(X, px, step[2])
    n_grid = len(zs) * len(ys) * len(xs)
    if n_grid == 0:
        raise InputError(reader.path, f"a volume at least {size} voxels (z, y, x) at level {level}",
                         f"shape {reader.shape}")
    threshold = resolve_threshold(reader, intensity_threshold)
    volume = meta.get("volume") or (case_name(reader.path) if reader.path else "volume")
    spacing = meta.get("spacing_um") or format_spacing(reader.spacing)
    if not isinstance(spacing, str):
        spacing = format_spacing(spacing)
    fg_rows, rejected = [], []
    attrs = {"selma3d": {"stage": "patchify", "source": Path(str(reader.path)).name if reader.path else None,
                         "level": level, "patch_size": list(size), "stride": list(step),
                         "threshold": threshold, "threshold_spec": str(intensity_threshold),
                         "min_foreground": min_foreground, "background_share": background_share, "seed": seed,
                         "spacing_um": list(reader.spacing), "axes": ["patch", "z", "y", "x"]}}
    with atomic_path(out_zarr) as tmp, zarr_workers(workers), \
            progress_bar(len(zs) * pz * Y * X * np.dtype(reader.dtype).itemsize, f"patchify {volume}", progress) as bar:
        arr = create_patch_array(tmp, n_grid, size, reader.dtype, compressor=compressor, clevel=clevel,
                                 attributes=attrs)
        fast = ChunkIO.for_array(arr, workers)
        try:
            n = 0
            for z0 in zs:
                slab = reader.read_slab(z0, z0 + pz)
                bar.update(slab.nbytes)
                keep = []
                for y0 in ys:
                    # one threshold pass per band of cubes, then a count per cube
                    band = slab[:, y0:y0 + py] > threshold
                    for x0 in xs:
                        frac = foreground_fraction(band[:, :, x0:x0 + px], threshold)
                        if frac >= min_foreground:
                            keep.append((y0, x0))
                            fg_rows.append((z0, y0, x0, frac))
                        else:
                            rejected.append((z0, y0, x0, frac))
                if keep:
                    cubes = np.stack([slab[:, y0:y0 + py, x0:x0 + px] for y0, x0 in keep])
                    write_block(arr, fast, (n, 0, 0, 0), cubes)
                    n += len(keep)
                del slab
            chosen = sample_background(len(rejected), background_share, seed)
            bg_rows = [rejected[i] for i in chosen]
            for start in range(0, len(bg_rows), 64):
                batch = bg_rows[start:start + 64]
                cubes = np.stack([reader.read_block(z0, z0 + pz, y0, y0 + py, x0, x0 + px) for z0, y0, x0, _ in batch])
                write_block(arr, fast, (n, 0, 0, 0), cubes)
                n += len(batch)
        finally:
            if fast is not None:
                fast.close()
        arr.resize((n, pz, py, px))
        rows = [(z0, y0, x0, f, False) for z0, y0, x0, f in fg_rows] + [(z0, y0, x0, f, True) for z0, y0, x0, f in bg_rows]
        df = pd.DataFrame(rows, columns=["z", "y", "x", "foreground_fraction", "background"])
        df.insert(0, "patch", np.arange(len(df)))
        df.insert(0, "spacing_um", spacing)
        df.insert(0, "category", meta.get("category", ""))
        df.insert(0, "structure", meta.get("structure", ""))
        df.insert(0, "volume", volume)
        df["store"] = os.path.relpath(out_zarr.resolve(), index_csv.resolve().parent)
        df["level"] = level
        df = df[INDEX_COLUMNS]
        if meta.get("caption"):  # free text describing the volume (image-text pretraining)
            df["caption"] = str(meta["caption"])
    with atomic_path(index_csv) as tmp_csv:  # written last: the index marks a complete store
        df.to_csv(tmp_csv, index=False)
    df.attrs.update(threshold=threshold, grid=n_grid, rejected=len(rejected))
    return df


# --------------------------------------------------------------------------------------------
# Reading patches back (the pretraining data loader)


def load_patch_index(paths: str | Path | Sequence[str | Path]) -> pd.DataFrame:
    """Concatenate index CSVs; ``store`` becomes an absolute path so rows stand alone."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    frames = []
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise InputError(p, "a patch index CSV", "nothing at that path")
        df = pd.read_csv(p, dtype={"volume": str, "structure": str, "category": str, "spacing_um": str},
                         keep_default_na=False)
        missing = [c for c in INDEX_COLUMNS if c not in df.columns]
        if missing:
            raise InputError(p, f"columns {INDEX_COLUMNS}", f"missing {missing}")
        df["store"] = [str((p.resolve().parent / s).resolve()) for s in df["store"]]
        df["background"] = df["background"].astype(str).str.lower().isin(["true", "1"])
        frames.append(df)
    if not frames:
        return pd.DataFrame(columns=INDEX_COLUMNS)
    return pd.concat(frames, ignore_index=True)


@functools.lru_cache(maxsize=64)
def _open_patches(store: str):
    return open_patch_array(store)


def read_patch(store_path: str | Path, i: int) -> np.ndarray:
    """Patch ``i`` (its ``patch`` index) of a store as a (pz, py, px) array."""
    arr = _open_patches(str(Path(store_path).resolve()))
    if not 0 <= int(i) < arr.shape[0]:
        raise IndexError(f"{store_path}: patch {i} out of range 0..{arr.shape[0] - 1}")
    return np.asarray(arr[int(i)])


class PatchDataset:
    """Map-style dataset over patch indices: ``ds[k]`` is the k-th row's cube (numpy), so it
    plugs into ``torch.utils.data.DataLoader`` or MONAI transforms without copying files."""

    def __init__(self, index: pd.DataFrame | str | Path | Sequence[str | Path], transform=None):
        self.index = index.reset_index(drop=True) if isinstance(index, pd.DataFrame) else load_patch_index(index)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, k: int):
        row = self.index.iloc[int(k)]
        patch = read_patch(row["store"], int(row["patch"]))
        return self.transform(patch) if self.transform is not None else patch
