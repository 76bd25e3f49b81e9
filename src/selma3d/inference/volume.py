"""Whole-brain segmentation: block-wise sliding-window inference from disk to an OME-Zarr.

A whole light-sheet brain (10-100s of GiB) does not fit in memory, let alone on a GPU, so the
volume is cut into output blocks. The sliding-window grid is MONAI's grid over the *whole*
volume (same windows, same Gaussian importance map); a block is predicted from every window
of that grid that touches it, read with the halo those windows need. Each output voxel
therefore gets exactly the windows and weights a global ``sliding_window_inference`` would
give it, so the result equals the global one up to float rounding, while memory stays at
one block plus halo (windows on a block border are computed once per block they touch).

Intensities are normalised once per volume (percentiles or mean/std from a subsample of
planes), never per block, so block borders do not show. The output is an OME-Zarr image
(NGFF multiscales, napari opens it) with a mask (uint8 0/1) or a probability (float16 or
uint8 scaled to 0-255), plus downsampled pyramid levels.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import math
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from selma3d.core.schema import schema_default
from selma3d.core.atomic import atomic_path
from selma3d.io import VolumeReader, open_reader
from selma3d.training.finetune import window_streams
from selma3d.training.runtime import autocast, pick_device

log = logging.getLogger(__name__)


# -- global window grid -------------------------------------------------------------------

def scan_interval(size: int, roi: int, overlap: float) -> int:
    """MONAI's step between windows along one axis (``_get_scan_interval``)."""
    if roi == size:
        return roi
    return max(1, int(roi * (1 - overlap)))


def window_starts(size: int, roi: int, overlap: float) -> np.ndarray:
    """Window starts along one axis of a (padded) size, as MONAI's ``dense_patch_slices``."""
    step = scan_interval(size, roi, overlap)
    count = next((d + 1 for d in range(math.ceil(size / step)) if d * step + roi >= size), 1)
    return np.array([i * step - max(i * step + roi - size, 0) for i in range(count)], dtype=np.int64)


@dataclass(frozen=True)
class Grid:
    """The global window grid of a volume: padding (volumes smaller than the window) and starts."""

    shape: tuple[int, int, int]
    roi: tuple[int, int, int]
    pad_before: tuple[int, int, int]
    starts: tuple[np.ndarray, np.ndarray, np.ndarray]

    @classmethod
    def build(cls, shape: Sequence[int], roi: Sequence[int], overlap: float) -> "Grid":
        shape, roi = tuple(int(s) for s in shape), tuple(int(r) for r in roi)
        padded = [max(s, r) for s, r in zip(shape, roi)]
        pad_before = tuple((p - s) // 2 for p, s in zip(padded, shape))  # MONAI pads half before
        starts = tuple(window_starts(p, r, overlap) for p, r in zip(padded, roi))
        return cls(shape, roi, pad_before, starts)

    @property
    def n_windows(self) -> int:
        return int(np.prod([len(s) for s in self.starts]))

    def touching(self, axis: int, lo: int, hi: int) -> np.ndarray:
        """Starts (padded coordinates) of windows overlapping [lo, hi) (original coordinates)."""
        s, r, p = self.starts[axis], self.roi[axis], self.pad_before[axis]
        return s[(s < hi + p) & (s + r > lo + p)]


def iter_blocks(shape: Sequence[int], block: int):
    """Output blocks ``((z0, z1), (y0, y1), (x0, x1))`` in raster order."""
    ranges = [[(a, min(a + block, n)) for a in range(0, n, block)] for n in shape]
    return itertools.product(*ranges)


# -- normalisation --------------------------------------------------------------------------

@dataclass(frozen=True)
class Normalizer:
    """Volume-wide intensity mapping (the finetuned model's ``normalize`` setting)."""

    method: str
    a: float  # percentile: low value; zscore: mean
    b: float  # percentile: high value; zscore: std
    clip: tuple[float, float] | None = None  # zscore: clip to this range first (a training plan's global z-score)

    @property
    def halo(self) -> tuple[int, int, int] | None:
        """Voxels of context each side a local method needs to map a region exactly as it
        maps the whole volume (None: a voxel-wise mapping)."""
        if self.method != "local":
            return None
        from selma3d.preprocess.normalize import local_contrast_reach

        return local_contrast_reach()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if self.method == "local":
            from selma3d.preprocess.normalize import local_contrast

            return local_contrast(x)
        if self.method == "percentile":
            lo, hi = np.float32(self.a), np.float32(self.b)
            if hi <= lo:
                return np.zeros_like(x)
            return np.clip((x - lo) / (hi - lo) * np.float32(2.0) - np.float32(1.0), -1.0, 1.0).astype(np.float32)
        if self.b <= 0:
            return np.zeros_like(x)
        if self.clip is not None:
            x = np.clip(x, np.float32(self.clip[0]), np.float32(self.clip[1]))
        return ((x - np.float32(self.a)) / np.float32(self.b)).astype(np.float32)


def sample_intensities(reader: VolumeReader, max_voxels: int = 2**24) -> np.ndarray:
    """All voxels of a small volume; else a regular subsample of evenly spaced planes.

    Planes are read one at a time, so memory stays at one plane whatever the volume.
    """
    Z, Y, X = reader.shape
    total = Z * Y * X
    if total <= max_voxels:
        return np.concatenate([reader.read_block(z, min(Z, z + 16)).ravel() for z in range(0, Z, 16)])
    n_planes = min(Z, 64)
    per_plane = max(1, max_voxels // n_planes)
    stride = max(1, int(math.ceil(math.sqrt(Y * X / per_plane))))
    planes = np.unique(np.linspace(0, Z - 1, n_planes).round().astype(int))
    return np.concatenate([reader.read_block(int(z), int(z) + 1)[0, ::stride, ::stride].ravel() for z in planes])


def volume_normalizer(reader: VolumeReader, method: str = "percentile", max_voxels: int = 2**24,
                      low: float = 0.05, high: float = 99.95) -> Normalizer:
    """Normalisation statistics of the whole volume (exact for volumes up to ``max_voxels``)."""
    sample = sample_intensities(reader, max_voxels).astype(np.float32)
    if method == "percentile":
        lo, hi = np.percentile(sample, [low, high])
        return Normalizer("percentile", float(np.float32(lo)), float(np.float32(hi)))
    if method == "zscore":
        return Normalizer("zscore", float(sample.mean()), float(sample.std()))
    if method == "local":  # no volume statistics: each voxel against its own neighbourhood
        return Normalizer("local", 0.0, 0.0)
    raise ValueError(f"unknown normalisation {method!r}; choose percentile, zscore or local")


# -- block-wise inference -------------------------------------------------------------------

class SpillStore:
    """Partial sums a block's windows add to blocks not yet predicted, kept until those run.

    Keyed by the receiving block's low corner; every spill starts at that corner. In memory
    when ``folder`` is None, else one ``.npy`` file per spill there (memory stays at one block
    whatever the volume's cross-section).
    """

    def __init__(self, folder: str | Path | None = None):
        self.folder = Path(folder) if folder is not None else None
        self.held: dict[tuple[int, ...], list[np.ndarray]] = {}
        self.count = 0

    def put(self, key: tuple[int, ...], arr: np.ndarray) -> None:
        if self.folder is None:
            self.held.setdefault(key, []).append(arr)
            return
        self.count += 1
        name = "_".join(map(str, key)) + f"_{self.count}.npy"
        self.held.setdefault(key, []).append(self.folder / name)
        np.save(self.folder / name, arr)

    def take(self, key: tuple[int, ...]) -> list[np.ndarray]:
        out = []
        for item in self.held.pop(key, []):
            if isinstance(item, Path):
                out.append(np.load(item))
                item.unlink()
            else:
                out.append(item)
        return out


class BlockPredictor:
    """Blended logits of output blocks from the global window grid, each window computed once.

    A window belongs to the block holding its first voxel inside the volume, so it reaches only
    into that block and blocks after it in raster order. Predicting a block runs the windows it
    owns, adds what earlier blocks' windows spilled into it (:class:`SpillStore`) and keeps what
    its own windows add to later blocks; blocks must therefore be predicted in raster order
    (:func:`iter_blocks`). The result equals MONAI's global sliding window up to the order of
    float additions.
    """

    def __init__(self, net: torch.nn.Module, grid: Grid, device: torch.device, batch: int = 8,
                 blend: str = "gaussian", precision: str = "auto", block: int = schema_default("segment.block"),
                 spill: SpillStore | None = None):
        from monai.data.utils import compute_importance_map

        self.net, self.grid, self.device, self.batch, self.precision = net, grid, device, int(batch), precision
        self.block, self.spill = int(block), spill or SpillStore()
        self.weight = compute_importance_map(grid.roi, mode=blend, sigma_scale=0.125, device=device,
                                             dtype=torch.float32)
        self.windows = 0

    def owned(self, block) -> list[np.ndarray]:
        """Per axis, the starts (padded coordinates) of the windows the block owns."""
        out = []
        for axis, (lo, hi) in enumerate(block):
            s, p = self.grid.starts[axis], self.grid.pad_before[axis]
            first = np.maximum(s - p, 0)
            out.append(s[(first >= lo) & (first < hi)])
        return out

    def region(self, block) -> tuple[tuple[int, int], ...] | None:
        """Padded-coordinate box of the block's own windows (what must be read); None if none."""
        owned = self.owned(block)
        if any(len(s) == 0 for s in owned):
            return None
        return tuple((int(s[0]), int(s[-1]) + r) for s, r in zip(owned, self.grid.roi))

    def read_region(self, reader: VolumeReader, box, normalizer: Callable) -> np.ndarray | None:
        """Normalised input of a padded-coordinate box; outside the volume is 0 (MONAI's pad)."""
        if box is None:
            return None
        src, dst = [], []
        for (a, b), p, n in zip(box, self.grid.pad_before, self.grid.shape):
            o0, o1 = max(0, a - p), min(n, b - p)
            src.append((o0, o1))
            dst.append(slice(o0 + p - a, o1 + p - a))
        out = np.zeros([b - a for a, b in box], dtype=np.float32)
        halo = getattr(normalizer, "halo", None)
        if halo is None:
            data = reader.read_block(src[0][0], src[0][1], src[1][0], src[1][1], src[2][0], src[2][1])
            out[tuple(dst)] = normalizer(data)
            return out
        # a local mapping: read the context around the box too; at the volume's faces mirror the
        # volume (as the whole-volume filter does), then keep the box: equal to normalising the
        # whole volume and cutting the box out
        wide = [(max(0, o0 - h), min(n, o1 + h)) for (o0, o1), h, n in zip(src, halo, self.grid.shape)]
        data = reader.read_block(wide[0][0], wide[0][1], wide[1][0], wide[1][1], wide[2][0], wide[2][1])
        pad = [(h - (o0 - w0), h - (w1 - o1)) for (o0, o1), (w0, w1), h in zip(src, wide, halo)]
        # numpy's reflect is scipy's mirror extension (repeated for pads longer than the axis)
        data = np.pad(np.asarray(data, dtype=np.float32), pad, mode="reflect")
        inner = tuple(slice(h, h + (o1 - o0)) for (o0, o1), h in zip(src, halo))
        out[tuple(dst)] = normalizer(data)[inner]
        return out

    @torch.inference_mode()
    def logits(self, block, box, region: np.ndarray | None) -> torch.Tensor:
        """(z, y, x) blended logits of the block (float32, on the device)."""
        g = self.grid
        lo = [b[0] for b in block]
        top = [b[1] for b in block]
        if box is not None:  # the block's windows reach up to here (original coordinates)
            top = [max(t, min(n, bx[1] - p)) for t, bx, p, n in zip(top, box, g.pad_before, g.shape)]
        shape = [t - a for a, t in zip(lo, top)]
        acc = torch.zeros([2, *shape], dtype=torch.float32, device=self.device)  # weighted sum, weights
        if box is not None:
            x = torch.from_numpy(region).to(self.device, non_blocking=True)
            origin = [a + p for a, p in zip(lo, g.pad_before)]  # accumulator start, padded coordinates
            windows = list(itertools.product(*self.owned(block)))
            self.windows += len(windows)
            with window_streams(self.net, self.device) as net:  # one set of stream threads per block
                for i in range(0, len(windows), self.batch):
                    chunk = windows[i:i + self.batch]
                    crops = torch.stack([x[s[0] - box[0][0]:s[0] - box[0][0] + g.roi[0],
                                           s[1] - box[1][0]:s[1] - box[1][0] + g.roi[1],
                                           s[2] - box[2][0]:s[2] - box[2][0] + g.roi[2]] for s in chunk])[:, None]
                    with autocast(self.device, self.precision):
                        out = net(crops)
                    out = out.float()[:, 0] * self.weight
                    for s, o in zip(chunk, out):
                        # the window's part inside the volume, in window and accumulator coordinates
                        w_sl, a_sl = [], []
                        for a in range(3):
                            a0 = max(int(s[a]), origin[a])
                            a1 = min(int(s[a]) + g.roi[a], origin[a] + shape[a])
                            w_sl.append(slice(a0 - int(s[a]), a1 - int(s[a])))
                            a_sl.append(slice(a0 - origin[a], a1 - origin[a]))
                        acc[(0, *a_sl)] += o[tuple(w_sl)]
                        acc[(1, *a_sl)] += self.weight[tuple(w_sl)]
        for part in self.spill.take(tuple(lo)):
            acc[(slice(None), *(slice(0, n) for n in part.shape[1:]))] += torch.from_numpy(part).to(self.device)
        ranges = [range(0, n, self.block) for n in shape]
        for k in itertools.product(*ranges):
            if any(k):  # what the block's windows add to later blocks
                sl = tuple(slice(a, min(a + self.block, n)) for a, n in zip(k, shape))
                self.spill.put(tuple(a + b for a, b in zip(lo, k)), acc[(slice(None), *sl)].cpu().numpy())
        size = [hi - a for a, (_, hi) in zip(lo, block)]
        head = acc[(slice(None), *(slice(0, n) for n in size))]
        return head[0] / head[1]


#: planes per slab of the component pass (memory: about 9 bytes per voxel of a slab)
COMPONENT_SLAB = 32


def downsample2(block: np.ndarray, how: str) -> np.ndarray:
    """Halve each axis (odd ends padded by edge): ``max`` for masks, ``mean`` for probabilities."""
    pad = [(0, s % 2) for s in block.shape]
    if any(p[1] for p in pad):
        block = np.pad(block, pad, mode="edge")
    z, y, x = (s // 2 for s in block.shape)
    v = block.reshape(z, 2, y, 2, x, 2)
    if how == "max":
        return v.max(axis=(1, 3, 5))
    out = v.astype(np.float32).mean(axis=(1, 3, 5))
    return np.round(out).astype(block.dtype) if block.dtype == np.uint8 else out.astype(block.dtype)


def predict_volume(net: torch.nn.Module, source, output: str | Path, roi: Sequence[int], *,
                   normalization: str | Normalizer = schema_default("finetune.normalize"),
                   overlap: float = schema_default("segment.overlap"), block: int = schema_default("segment.block"),
                   batch: int = schema_default("segment.batch"),
                   probability: bool = schema_default("segment.probability"),
                   threshold: float = schema_default("segment.threshold"),
                   min_size: int = schema_default("segment.min_component_size"), peak: float = 0.0,
                   prob_dtype: str = schema_default("segment.prob_dtype"), levels: int = schema_default("segment.levels"),
                   blend: str = schema_default("infer.blend"), device: torch.device | None = None,
                   precision: str = schema_default("segment.precision"), spacing=None,
                   chunks: int = 64, ngff_version: str = "0.5", sample_voxels: int = 2**24,
                   attributes: dict | None = None, progress: bool = False) -> Path:
    """Segment a volume block by block into an OME-Zarr image (written atomically).

    Args:
        net: a network returning the foreground logit (one channel), in eval mode.
        source: a path :func:`selma3d.io.open_reader` opens (zarr/OME-Zarr, TIFF folder or
            stack, NIfTI, MHA) or a :class:`~selma3d.io.VolumeReader`.
        roi: the sliding window (the model's patch size).
        normalization: ``percentile``/``zscore`` (statistics from the whole volume) or a
            ready :class:`Normalizer`.
        block: output block side (rounded up to a multiple of ``2**levels``); memory is about
            (block + 2 roi)^3 floats.
        probability: write the probability instead of the mask ``prob > threshold``.
        min_size, peak: for a mask, drop the 26-connected components of fewer than ``min_size``
            voxels or with no voxel of probability above ``peak`` (a model's calibrated
            post-processing, :func:`selma3d.inference.patches.case_postprocess`), exactly as
            on a whole array: the probability goes to a float32 store beside the output first,
            then :func:`selma3d.inference.components.filter_components` writes the mask slab by slab.
        prob_dtype: ``float16`` or ``uint8`` (probability x 255, rounded).
        levels: extra pyramid levels, each halving every axis (max for masks, mean otherwise).
    """
    reader = open_reader(source, spacing=spacing)
    device = device or pick_device()
    factor = 2 ** int(levels)
    block = int(math.ceil(int(block) / factor) * factor)
    grid = Grid.build(reader.shape, roi, overlap)
    norm = normalization if isinstance(normalization, Normalizer) else volume_normalizer(
        reader, normalization, sample_voxels)
    predictor = BlockPredictor(net, grid, device, batch, blend, precision, block)
    if probability:
        dtype = np.dtype(prob_dtype)
        if dtype not in (np.dtype("float16"), np.dtype("uint8")):
            raise ValueError(f"prob_dtype: expected float16 or uint8, found {prob_dtype!r}")
    else:
        dtype = np.dtype("uint8")
    shapes = [tuple(math.ceil(s / 2**lv) for s in reader.shape) for lv in range(levels + 1)]
    sp = tuple(float(s) for s in reader.spacing)
    shift = tuple(getattr(reader, "translation", (0.0, 0.0, 0.0)))
    scales = [tuple(s * 2**lv for s in sp) for lv in range(levels + 1)]
    translations = [tuple(t + s * (2**lv - 1) / 2 for s, t in zip(sp, shift)) for lv in range(levels + 1)]
    kind = "probability" if probability else "mask"
    filtered = not probability and (int(min_size) > 1 or float(peak) > float(threshold))
    meta = {"selma3d": {"kind": kind, "threshold": None if probability else float(threshold),
                        "min_component_size": None if probability else int(min_size),
                        "peak": None if probability else float(peak),
                        "scale": 255 if (probability and dtype == np.uint8) else 1,
                        "roi": list(grid.roi), "overlap": overlap, "blend": blend,
                        "normalization": {"method": norm.method, "a": norm.a, "b": norm.b},
                        "source": str(reader.path) if reader.path else None, **(attributes or {})}}
    how = "mean" if probability else "max"
    blocks = list(iter_blocks(reader.shape, block))
    log.info("predicting %s %s (%d voxels) in %d blocks of %d^3, %d windows of %s in the global grid, "
             "device %s", kind, reader.shape, int(np.prod(reader.shape)), len(blocks), block, grid.n_windows,
             grid.roi, device)
    t0 = time.perf_counter()

    def load(b):
        box = predictor.region(b)
        return box, predictor.read_region(reader, box, norm)

    def to_output(logits: torch.Tensor) -> np.ndarray:
        prob = torch.sigmoid(logits)
        if filtered:  # the probability, for the component pass
            return prob.cpu().numpy()
        if not probability:
            return (prob > threshold).to(torch.uint8).cpu().numpy()
        if dtype == np.uint8:
            return torch.round(prob * 255).to(torch.uint8).cpu().numpy()
        return prob.to(torch.float16).cpu().numpy()

    with atomic_path(output) as tmp, tempfile.TemporaryDirectory(prefix=f".{tmp.name}.spill-",
                                                                  dir=tmp.parent) as spill:
        from selma3d.io.omezarr import create_ome_zarr

        predictor.spill = SpillStore(spill)  # partial sums for later blocks wait on disk, not in memory

        arrays = create_ome_zarr(tmp, shapes, dtype, (chunks,) * 3, scales, translations,
                                 name=Path(output).name, ngff_version=ngff_version, method=how,
                                 method_metadata={"description": f"2x2x2 {how} per level"}, attributes=meta)

        def write(b, data, arrays=arrays):
            for lv, arr in enumerate(arrays):
                if lv:
                    data = downsample2(data, how)
                z0, y0, x0 = (lo // 2**lv for lo, _ in b)
                arr[z0:z0 + data.shape[0], y0:y0 + data.shape[1], x0:x0 + data.shape[2]] = data

        prob_store = None
        if filtered:
            (prob_store,) = create_ome_zarr(Path(spill) / "probability.ome.zarr", shapes[:1], np.float32,
                                            (chunks,) * 3, scales[:1])
        with ThreadPoolExecutor(1) as reads, ThreadPoolExecutor(1) as writes:
            pending = reads.submit(load, blocks[0])
            written = None
            for i, b in enumerate(blocks):
                box, region = pending.result()
                if i + 1 < len(blocks):  # read the next block while this one runs on the device
                    pending = reads.submit(load, blocks[i + 1])
                out = to_output(predictor.logits(b, box, region))
                if written is not None:
                    written.result()
                written = writes.submit(write, b, out, [prob_store] if filtered else arrays)
                if progress or (i + 1) % max(1, len(blocks) // 10) == 0:
                    log.info("block %d/%d, %.3g voxels/s", i + 1, len(blocks),
                             sum(np.prod([hi - lo for lo, hi in bb]) for bb in blocks[:i + 1])
                             / max(1e-9, time.perf_counter() - t0))
            if written is not None:
                written.result()
        if filtered:
            from selma3d.inference.components import filter_components

            Y, X = reader.shape[1:]
            slab = factor * math.ceil(COMPONENT_SLAB / factor)  # pyramid levels halve whole slabs
            stats = filter_components(lambda z0, z1: prob_store[z0:z1], reader.shape,
                                      lambda z0, m: write(((z0, z0 + len(m)), (0, Y), (0, X)), m),
                                      threshold, min_size, peak, slab=slab, progress=progress)
            log.info("components: %d found, %d kept (min size %d, peak %g)", stats["components"], stats["kept"],
                     int(min_size), float(peak))
    reader.close()
    elapsed = time.perf_counter() - t0
    log.info("wrote %s: %.1f s, %.3g voxels/s, %d windows (the grid has %d)", output, elapsed,
             np.prod(reader.shape) / max(1e-9, elapsed), predictor.windows, grid.n_windows)
    return Path(output)


def stored_postprocess(payload: dict, structure: str | None, threshold: float, min_size: int,
                       use_stored: bool = schema_default("segment.use_stored_postprocess")) -> tuple[float, int, float]:
    """(threshold, min component size, peak) of a whole volume showing ``structure``: what the
    model calibrated on validation for it (or its category), as for a test patch
    (:func:`selma3d.inference.patches.case_postprocess`); else ``threshold`` and ``min_size``, no peak."""
    from selma3d.inference.patches import calibrated_values, case_postprocess

    settings = {"threshold": threshold, "min_component_size": min_size, "use_stored_postprocess": use_stored}
    stored = (payload.get("postprocess") or {}).get("values") or {}
    if use_stored and stored and calibrated_values(payload, structure) is None:
        log.warning("the model holds post-processing calibrated for %s, not for structure %r: threshold %g, "
                    "minimum component size %d (segment.structures names a volume's structure)",
                    sorted(stored), structure, threshold, min_size)
    return case_postprocess(payload, settings, structure)


def predict_from_checkpoint(model: str | Path, source, output: str | Path, device: torch.device | None = None,
                            structure: str | None = None,
                            use_stored_postprocess: bool = schema_default("segment.use_stored_postprocess"),
                            **kwargs) -> Path:
    """Load a finetuned model (``finetune.py``'s ``model.pt``) and run :func:`predict_volume`
    with its patch size and normalisation (that of ``structure`` when the model normalised
    structures differently, else its default) and, for a mask, the post-processing it
    calibrated for ``structure`` (:func:`stored_postprocess`)."""
    from selma3d.training.finetune import load_model

    device = device or pick_device()
    net, payload = load_model(model, device)
    if not kwargs.get("probability", schema_default("segment.probability")):
        thr, min_size, peak = stored_postprocess(
            payload, structure, kwargs.get("threshold", schema_default("segment.threshold")),
            kwargs.get("min_size", schema_default("segment.min_component_size")), use_stored_postprocess)
        log.info("mask: probability > %g, components of at least %d voxels%s", thr, min_size,
                 f" with a voxel above {peak:g}" if peak > thr else "")
        kwargs.update(threshold=thr, min_size=min_size, peak=peak)
    roi = [int(s) for s in payload["config"]["patch_size"]]  # the network config load_model resolved
    roi = roi * 3 if len(roi) == 1 else roi
    from selma3d.training.plan import structure_normalization

    method = structure_normalization(payload, structure)
    by = payload.get("normalize_by_structure") or {}
    if len(set(by.values()) | {payload["normalize"]}) > 1:
        log.info("model normalises per structure %s; %s uses %s", by, structure or "an unnamed structure", method)
    stats = payload.get("normalize_stats")
    if stats and method == "zscore":  # a training plan's global foreground statistics
        kwargs.setdefault("normalization", Normalizer("zscore", float(stats["mean"]), float(stats["std"]) or 1.0,
                                                      (float(stats["p0_5"]), float(stats["p99_5"]))))
    kwargs.setdefault("normalization", method)
    attrs = {"model": str(model), "model_config": {k: v for k, v in payload["config"].items()
                                                  if isinstance(v, (int, float, str, list, bool))}}
    return predict_volume(net, source, output, roi, device=device, attributes=attrs, **kwargs)


# -- CLI ------------------------------------------------------------------------------------

def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="finetuned model.pt (from the finetune rule)")
    parser.add_argument("--input", required=True,
                        help="volume: (OME-)Zarr, TIFF slice folder, multi-page TIFF, NIfTI or MHA")
    parser.add_argument("--output", required=True, help="output OME-Zarr (e.g. brain_pred.ome.zarr)")
    parser.add_argument("--block", type=int, default=256, help="output block side in voxels (default 256)")
    parser.add_argument("--overlap", type=float, default=0.25, help="window overlap in [0, 1) (default 0.25)")
    parser.add_argument("--batch", type=int, default=8, help="windows per forward pass (default 8)")
    parser.add_argument("--probability", action="store_true", help="write the probability, not the mask")
    parser.add_argument("--prob-dtype", choices=["float16", "uint8"], default="float16",
                        help="probability storage: float16 or uint8 scaled to 0-255")
    parser.add_argument("--threshold", type=float, default=schema_default("segment.threshold"),
                        help="mask = probability > threshold, where the model holds no calibrated value for "
                             "--structure (default %(default)s)")
    parser.add_argument("--min-component-size", type=int, default=schema_default("segment.min_component_size"),
                        help="drop mask components of fewer voxels, where the model holds no calibrated value "
                             "for --structure (default %(default)s)")
    parser.add_argument("--no-stored-postprocess", action="store_true",
                        help="ignore the threshold, component size and peak the model calibrated on validation")
    parser.add_argument("--levels", type=int, default=2, help="downsampled pyramid levels (default 2)")
    parser.add_argument("--blend", choices=["gaussian", "constant"], default="gaussian")
    parser.add_argument("--spacing", type=float, nargs=3, metavar=("Z", "Y", "X"),
                        help="voxel size in µm, overriding the file's")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                        help="auto: bf16 autocast on CUDA, fp32 on CPU")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: CUDA when present)")
    parser.add_argument("--structure", help="the structure the volume shows (e.g. cfos_neuron): the model's "
                                            "normalisation and calibrated post-processing for it (default: its "
                                            "default normalisation, --threshold and --min-component-size)")
    parser.add_argument("--ngff-version", choices=["0.4", "0.5"], default="0.5")


def run(args: argparse.Namespace) -> int:
    from selma3d.core.logs import setup_logging
    from selma3d.training.runtime import configure_threads

    setup_logging()
    configure_threads()
    if not 0 <= args.overlap < 1:
        raise SystemExit(f"--overlap: expected a value in [0, 1), found {args.overlap}")
    device = torch.device(args.device) if args.device else None
    predict_from_checkpoint(args.model, args.input, args.output, device=device, overlap=args.overlap,
                            block=args.block, batch=args.batch, probability=args.probability,
                            prob_dtype=args.prob_dtype, threshold=args.threshold,
                            min_size=args.min_component_size,
                            use_stored_postprocess=not args.no_stored_postprocess, levels=args.levels,
                            blend=args.blend, spacing=args.spacing, precision=args.precision,
                            ngff_version=args.ngff_version, structure=args.structure)
    return 0
