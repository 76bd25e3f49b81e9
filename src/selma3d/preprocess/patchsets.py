"""Patch sets: datasets whose unannotated data already come as patch files.

SELMA3D 2026 Task 1 hands out about 35,050 prepared 300³ patches instead of whole brains, and
a 2025 cutter run leaves a folder of 300³ NIfTI patches per volume. Ingesting and downsampling
each patch as if it were a brain would make one job (and one store) per file. Instead, every
patch file of one structure is collected into ONE chunked zarr array plus an index CSV in
exactly :mod:`selma3d.preprocess.patchify`'s output format, so pretraining reads both kinds alike.

Filtering is patchify's: a cube is kept when :func:`~selma3d.preprocess.patchify.foreground_fraction`
reaches ``min_foreground``; of the rejected cubes a seeded ``background_share`` is kept too
(:func:`~selma3d.preprocess.patchify.sample_background`). With ``patch_size`` set, each file is cut into
a centred grid of cubes of that size (the margins of files that are not a multiple are
dropped); without it every file is one cube and all files must share a shape.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd

from selma3d.core.schema import schema_default
from selma3d.core.atomic import atomic_path
from selma3d.core.errors import InputError
from selma3d.core.text import format_spacing
from selma3d.io import (MHA_SUFFIXES, NIFTI_SUFFIXES, TIFF_SUFFIXES, ArrayReader, case_name, natural_key,
                 open_reader)
from selma3d.preprocess.patchify import INDEX_COLUMNS, foreground_fraction, resolve_threshold, sample_background
from selma3d.io.omezarr import ChunkIO, blosc_codec, write_block, zarr_workers

log = logging.getLogger(__name__)

PATCH_SUFFIXES = NIFTI_SUFFIXES + MHA_SUFFIXES + TIFF_SUFFIXES
#: files sampled (evenly spaced) to estimate an "otsu" or "pNN" threshold, and voxels per file
THRESHOLD_FILES = 64
THRESHOLD_VOXELS = 1 << 16


def list_patch_files(path: str | Path) -> list[Path]:
    """A patch file as is, or the patch files (NIfTI, MHA/NRRD, TIFF) in a folder, in natural
    order (``p_2`` before ``p_10``). A folder without any is an error naming it."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "a patch file or a folder of patch files", "nothing at that path")
    if path.is_file():
        return [path]
    files = sorted((p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
                    and p.name.lower().endswith(PATCH_SUFFIXES)), key=lambda p: natural_key(p.name))
    if not files:
        raise InputError(path, f"patch files ({', '.join(PATCH_SUFFIXES)})", "a folder without any")
    return files


def manifest_patch_files(manifest: str | Path, structure: str) -> tuple[list[Path], list[dict]]:
    """The unannotated patch files of one structure in a manifest, with their index metadata.

    A row's ``path`` is one patch file or a folder of them (Task 1 ships one folder per
    structure; listing 35,050 rows is possible but not needed). ``volume`` in the index is the
    file's case name, prefixed with the row's case when the row names a folder; a row's
    ``caption`` (optional manifest column) goes to each of its files.
    """
    from selma3d.data.manifest import read_manifest

    df = read_manifest(manifest)
    rows = df[(df.role == "unannotated") & (df.structure == structure)]
    if rows.empty:
        known = sorted(df[df.role == "unannotated"].structure.unique())
        raise InputError(manifest, f"unannotated rows of structure {structure!r} (known: {known})", "none")
    files: list[Path] = []
    meta: list[dict] = []
    for row in rows.itertuples():
        folder = Path(row.path).is_dir()
        for f in list_patch_files(row.path):
            files.append(f)
            meta.append({"volume": f"{row.case}/{case_name(f)}" if folder else row.case,
                         "structure": row.structure, "category": row.category,
                         "spacing_um": row.spacing_um, "caption": str(getattr(row, "caption", "") or "")})
    return files, meta


def _tile_starts(shape: Sequence[int], size: Sequence[int]) -> list[tuple[int, int, int]]:
    """Corners of a centred grid of ``size`` cubes inside ``shape`` (row-major order)."""
    axes = []
    for n, p in zip(shape, size):
        k = n // p
        off = (n - k * p) // 2
        axes.append([off + i * p for i in range(k)])
    return [(z, y, x) for z in axes[0] for y in axes[1] for x in axes[2]]


def _scan(files: Sequence[Path]) -> tuple[list[tuple[int, int, int]], list[np.dtype], list[tuple]]:
    """Shape, dtype and spacing of every file from its header (no voxel data read)."""
    shapes, dtypes, spacings = [], [], []
    for f in files:
        reader = open_reader(f)
        try:
            shapes.append(tuple(int(s) for s in reader.shape))
            dtypes.append(np.dtype(reader.dtype))
            spacings.append(tuple(reader.spacing))
        finally:
            reader.close()
    return shapes, dtypes, spacings


def _read(path: Path) -> np.ndarray:
    reader = open_reader(path)
    try:
        return reader.read_slab(0, reader.shape[0])
    finally:
        reader.close()


def _read_ahead(files: Sequence[Path], order: Sequence[int], workers: int) -> Iterator[tuple[int, np.ndarray]]:
    """(file number, data) in ``order``, decoding up to ``workers`` files ahead in threads
    (gzip and zlib release the GIL) while holding at most ``2 * workers`` in memory."""
    window = max(1, 2 * workers)
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="selma3d-patchset") as pool:
        pending = []
        for i in order:
            pending.append((i, pool.submit(_read, files[i])))
            if len(pending) >= window:
                j, fut = pending.pop(0)
                yield j, fut.result()
        for j, fut in pending:
            yield j, fut.result()


def _threshold(files: Sequence[Path], shapes, spec, seed: int) -> float:
    """Resolve ``spec`` with patchify's :func:`resolve_threshold` over a voxel sample of up to
    :data:`THRESHOLD_FILES` evenly spaced files (one set-wide threshold, as patchify uses one
    per volume: a per-file Otsu would call the noise of an empty patch foreground)."""
    if isinstance(spec, (int, float, np.integer, np.floating)) and not isinstance(spec, bool):
        return float(spec)
    try:
        return float(str(spec).strip())
    except ValueError:
        pass
    picks = np.unique(np.linspace(0, len(files) - 1, min(len(files), THRESHOLD_FILES)).round().astype(int))
    m = min(THRESHOLD_VOXELS, min(int(np.prod(shapes[i])) for i in picks))
    rng = np.random.default_rng([seed, 1])
    sample = np.stack([_read(files[i]).ravel()[rng.integers(0, int(np.prod(shapes[i])), m)] for i in picks])
    return resolve_threshold(ArrayReader(sample[:, None, :]), spec, max_planes=len(picks))


def collect_patch_files(files: Sequence[str | Path], out_zarr: str | Path, index_csv: str | Path,
                        patch_size: int | Sequence[int] | None = schema_default("preprocess.patchset_patch_size"),
                        min_foreground: float = schema_default("preprocess.min_foreground"),
                        intensity_threshold: float | str = schema_default("preprocess.intensity_threshold"),
                        background_share: float = schema_default("preprocess.background_share"),
                        seed: int = schema_default("seed"), meta_rows: Sequence[dict] | None = None,
                        workers: int = schema_default("preprocess.workers"),
                        progress: bool = True, compressor: str = "zstd", clevel: int = 3) -> pd.DataFrame:
    """Filter patch files into one zarr store (N, pz, py, px) plus patchify's index CSV.

    Args:
        files: patch files (NIfTI, MHA/NRRD, TIFF), read through :mod:`selma3d.io`.
        out_zarr, index_csv: the store and its index; the index is written last, so a present
            index marks a complete store.
        patch_size: cube edge (one int or (z, y, x)): each file is cut into a centred grid of
            such cubes. None: every file is one cube, and all files must share a shape.
        min_foreground, intensity_threshold, background_share, seed: as in
            :func:`selma3d.preprocess.patchify.patchify_volume`; an ``"otsu"``/``"pNN"`` threshold is
            estimated once for the whole set.
        meta_rows: per file, ``volume``, ``structure``, ``category``, ``spacing_um`` for the
            index (defaults: the file's case name, empty, empty, the file's voxel size), and an
            optional ``caption`` (a ``caption`` column is added when any file has one).
        workers: threads decoding files and compressing chunks.

    Returns:
        The index (columns :data:`selma3d.preprocess.patchify.INDEX_COLUMNS`): foreground cubes first in
        file order, then the sampled background ones; ``z, y, x`` are the cube's corner in its
        file, ``level`` is 0.

    Raises:
        InputError: naming the file, before anything is written, for an unreadable file, a
            file smaller than ``patch_size`` or (without ``patch_size``) a shape unlike the first.
    """
    import zarr
    from tqdm.auto import tqdm

    files = [Path(f) for f in files]
    out_zarr, index_csv = Path(out_zarr), Path(index_csv)
    if not files:
        raise InputError(out_zarr, "at least one patch file to collect", "an empty list")
    if meta_rows is not None and len(meta_rows) != len(files):
        raise ValueError(f"meta_rows: expected one per file ({len(files)}), found {len(meta_rows)}")
    if not 0 <= background_share <= 1:
        raise ValueError(f"background_share: expected a fraction in [0, 1], found {background_share}")
    meta = [dict(m) for m in meta_rows] if meta_rows is not None else [{} for _ in files]

    shapes, dtypes, spacings = _scan(files)
    if patch_size is None:
        size = shapes[0]
        for f, s in zip(files, shapes):
            if s != size:
                raise InputError(f, f"shape {size} like {files[0].name} (or set patch_size to cut cubes)",
                                 f"shape {s}")
    else:
        size = (int(patch_size),) * 3 if np.isscalar(patch_size) else tuple(int(v) for v in patch_size)
        if len(size) != 3 or min(size) < 1:
            raise ValueError(f"patch_size: expected a positive int or three (z, y, x), found {patch_size!r}")
        for f, s in zip(files, shapes):
            if any(n < p for n, p in zip(s, size)):
                raise InputError(f, f"a patch at least {size} voxels (z, y, x)", f"shape {s}")
    tiles = [_tile_starts(s, size) for s in shapes]
    dtype = np.result_type(*dtypes)
    threshold = _threshold(files, shapes, intensity_threshold, seed)
    pz, py, px = size
    n_grid = sum(len(t) for t in tiles)
    attrs = {"selma3d": {"stage": "patchset", "files": len(files), "patch_size": list(size),
                         "threshold": threshold, "threshold_spec": str(intensity_threshold),
                         "min_foreground": min_foreground, "background_share": background_share,
                         "seed": seed, "axes": ["patch", "z", "y", "x"]}}
    fg_rows: list[tuple] = []
    rejected: list[tuple] = []
    with atomic_path(out_zarr) as tmp, zarr_workers(workers), \
            tqdm(total=len(files), unit="file", desc=f"patchset {out_zarr.name}", disable=not progress,
                 leave=False) as bar:
        arr = zarr.create_array(str(tmp), shape=(n_grid, pz, py, px), chunks=(1, pz, py, px), dtype=dtype,
                                fill_value=0, compressors=blosc_codec(compressor, clevel),
                                dimension_names=("patch", "z", "y", "x"), attributes=attrs)
        fast = ChunkIO.for_array(arr, workers)
        try:
            n = 0
            for i, data in _read_ahead(files, range(len(files)), workers):
                keep = []
                for z0, y0, x0 in tiles[i]:
                    cube = data[z0:z0 + pz, y0:y0 + py, x0:x0 + px]
                    frac = foreground_fraction(cube, threshold)
                    if frac >= min_foreground:
                        keep.append(cube)
                        fg_rows.append((i, z0, y0, x0, frac))
                    else:
                        rejected.append((i, z0, y0, x0, frac))
                if keep:
                    write_block(arr, fast, (n, 0, 0, 0), np.stack(keep).astype(dtype, copy=False))
                    n += len(keep)
                bar.update()
                del data
            chosen = [rejected[k] for k in sample_background(len(rejected), background_share, seed)]
            by_file: dict[int, list[tuple]] = defaultdict(list)
            for r in chosen:
                by_file[r[0]].append(r)
            bg_rows: list[tuple] = []
            for i, data in _read_ahead(files, sorted(by_file), workers):  # second pass: chosen files only
                cubes = [data[z0:z0 + pz, y0:y0 + py, x0:x0 + px] for _, z0, y0, x0, _ in by_file[i]]
                write_block(arr, fast, (n, 0, 0, 0), np.stack(cubes).astype(dtype, copy=False))
                n += len(cubes)
                bg_rows.extend(by_file[i])
        finally:
            if fast is not None:
                fast.close()
        arr.resize((n, pz, py, px))
        store_rel = os.path.relpath(out_zarr.resolve(), index_csv.resolve().parent)
        records = []
        for (i, z0, y0, x0, frac), background in [(r, False) for r in fg_rows] + [(r, True) for r in bg_rows]:
            m = meta[i]
            spacing = m.get("spacing_um") or format_spacing(spacings[i])
            records.append({"volume": m.get("volume") or case_name(files[i]), "structure": m.get("structure", ""),
                            "category": m.get("category", ""), "spacing_um": spacing, "patch": len(records),
                            "z": z0, "y": y0, "x": x0, "foreground_fraction": frac, "background": background,
                            "store": store_rel, "level": 0, "caption": m.get("caption") or ""})
        captions = any(m.get("caption") for m in meta)
        df = pd.DataFrame(records, columns=INDEX_COLUMNS + (["caption"] if captions else []))
    with atomic_path(index_csv) as tmp_csv:  # written last: the index marks a complete store
        df.to_csv(tmp_csv, index=False)
    df.attrs.update(threshold=threshold, grid=n_grid, rejected=len(rejected), files=len(files))
    log.info("%s: %d file(s), %d cube(s): %d kept as foreground, %d of %d rejected kept as background "
             "(threshold %g)", out_zarr, len(files), n_grid, len(fg_rows), len(bg_rows), len(rejected), threshold)
    return df
