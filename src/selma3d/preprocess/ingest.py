"""Ingest: any supported large input -> one canonical OME-Zarr image, streamed slab by slab.

Whole-brain light-sheet volumes (TIFF slice folders of 10-100s of GiB) never fit in memory.
Ingest reads them in chunk-aligned (z, y) blocks through :func:`selma3d.io.open_reader`
(TIFF slices read by a thread pool straight from the file), writes a chunked, Blosc-compressed
zarr v3 array with the voxel size in its NGFF metadata, and does so atomically: the store is
built under a temporary name and renamed only when complete, after every slice header was
validated up front.
"""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np

from selma3d.core.schema import schema_default
from selma3d.core.atomic import atomic_path
from selma3d.io import case_name, open_reader
from selma3d.io.omezarr import ChunkIO, create_ome_zarr, write_block, zarr_workers
from selma3d.preprocess.blocks import DEFAULT_BLOCK_BYTES, lcm, plan_blocks, prefetch, progress_bar
from selma3d.preprocess.pyramid import PyramidBuilder


def ingest_volume(source, out_zarr: str | Path, spacing: Sequence[float] | None = None,
                  chunks: Sequence[int] = (64, 256, 256), workers: int = schema_default("preprocess.workers"),
                  progress: bool = True,
                  compressor: str = "lz4", clevel: int = 1, max_block_bytes: int = DEFAULT_BLOCK_BYTES,
                  ngff_version: str = "0.5", pyramid: str | Path | None = None,
                  target_spacing_um: Sequence[float] | None = None,
                  levels: int = schema_default("preprocess.pyramid_levels"),
                  method: str = "auto") -> Path:
    """Stream ``source`` into a canonical one-level OME-Zarr image at ``out_zarr``.

    Args:
        source: TIFF slice folder, multi-page TIFF, NIfTI, MHA, zarr store, array or reader.
        out_zarr: the store to write (``*.zarr``); replaced atomically when complete.
        spacing: voxel size (z, y, x) µm; required in practice for TIFF, which carries none.
        chunks: zarr chunk shape (z, y, x); ingest holds one chunk-deep slab band at a time.
        workers: threads reading TIFF slices and compressing chunks.
        compressor, clevel: Blosc codec (``lz4`` level 1 keeps up with the disk on one core).
        max_block_bytes: upper bound on one block read (when the reader allows y-bands).
        pyramid: also write the downsampled OME-Zarr pyramid here in the same pass (what
            :func:`selma3d.preprocess.pyramid.downsample_volume` would write from ``out_zarr``, without
            reading and decompressing the full-resolution copy again).
        target_spacing_um, levels, method: the pyramid's level 0 spacing, depth and method.

    Returns:
        The path of the store. Its attributes carry ``selma3d.source`` and the spacing source.

    Raises:
        InputError: unreadable, truncated, inconsistent or non-finite input (before anything
            complete-looking is written).
    """
    out_zarr = Path(out_zarr)
    reader = open_reader(source, spacing=spacing, workers=workers)
    try:
        if reader.spacing_source == "default":
            warnings.warn(f"{reader.path}: no voxel size in the file and none given; assuming (1, 1, 1) µm",
                          stacklevel=2)
        Z, Y, X = reader.shape
        chunks = tuple(max(1, min(int(c), s)) for c, s in zip(chunks, reader.shape))
        attrs = {"selma3d": {"stage": "ingest", "source": Path(str(reader.path)).name if reader.path else None,
                             "shape": list(reader.shape), "dtype": str(np.dtype(reader.dtype)),
                             "spacing_um": list(reader.spacing), "spacing_source": reader.spacing_source}}
        name = case_name(out_zarr)
        builder = None
        if pyramid is not None:
            if target_spacing_um is None:
                raise ValueError("ingest_volume: pyramid needs target_spacing_um")
            builder = PyramidBuilder(pyramid, reader.shape, reader.dtype, reader.spacing, target_spacing_um,
                                     levels, workers, method, ngff_version=ngff_version,
                                     source_name=attrs["selma3d"]["source"])
        align = builder.align if builder is not None else (1, 1)  # the pyramid's factor grid
        blocks = plan_blocks(reader, lcm(chunks[0], align[0]), max_block_bytes,
                             row_step=lcm(lcm(chunks[1], align[1]), reader.row_chunk))
        try:
            with atomic_path(out_zarr) as tmp, zarr_workers(workers), \
                    ThreadPoolExecutor(1, thread_name_prefix="ingest-read") as pool, \
                    progress_bar(reader.nbytes, f"ingest {name}", progress) as bar:
                (arr,) = create_ome_zarr(tmp, [reader.shape], reader.dtype, chunks, [reader.spacing], None,
                                         name=name, compressor=compressor, clevel=clevel,
                                         ngff_version=ngff_version, attributes=attrs)
                fast = ChunkIO.for_array(arr, workers)
                try:
                    for (z0, z1, y0, y1), data in prefetch(reader, blocks, pool):
                        write_block(arr, fast, (z0, y0, 0), data)
                        if builder is not None:
                            builder.push(z0, z1, y0, y1, data)
                        bar.update(data.nbytes)
                finally:
                    if fast is not None:
                        fast.close()
                if builder is not None:
                    builder.finish()
                    builder = None
        except BaseException as exc:
            if builder is not None:
                builder.abort(exc)
            raise
    finally:
        if reader is not source:
            reader.close()
    return out_zarr

