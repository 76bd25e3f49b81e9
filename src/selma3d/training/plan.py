"""nnU-Net-like dataset fingerprint and training plan.

Usage::

    from selma3d.data.manifest import annotated_pairs, read_manifest
    from selma3d.training import plan as P
    fp = P.fingerprint(annotated_pairs(read_manifest("manifest.csv"), "train"))
    plan = P.make_plan(fp, {"max_patch_voxels": 96**3})
    P.write_plan("plan.json", plan); plan = P.read_plan("plan.json")
    net = selma3d.nets.models.build_segmentation_net(plan["network"])    # a dynunet
    x = P.apply_normalization(raw_image, plan)

:func:`fingerprint` reads every annotated image/label pair (``selma3d.io.read_volume``) and
records per case the shape, spacing (the manifest's ``spacing_um`` when given, else the file's),
image percentiles (0.5, 50, 99.5), foreground intensity statistics (mean, std, 0.5/50/99.5
percentiles, from up to ``samples_per_case`` seeded foreground voxels, nnU-Net's 10 000),
foreground fraction of the annotated voxels and the sizes of the 26-connected foreground
components; then aggregates: median spacing and shape, pooled foreground intensities, the
between-case variation of the intensity percentiles (max/min ratio over cases), and per
structure the foreground fraction and component sizes.

:func:`make_plan` turns it into a JSON-serialisable plan:

- ``patch_size``: a spacing-aware cube of ``max_patch_voxels`` (default 128³) clipped to the
  median shape, sides multiples of the network's per-axis total stride (rounded down when
  rounding up would exceed the median shape), shrunk along the axis largest relative to the
  median shape until within the voxel budget (nnU-Net's loop);
- ``network``: the ``dynunet`` config (kernels and strides from
  :func:`selma3d.nets.dynunet.topology`, filters 32..320, deep supervision on);
- ``batch_size``: 2 at the voxel budget, more for smaller patches (proportionally), capped so a
  batch covers at most ``max_dataset_coverage`` (5 %) of the dataset's voxels, at least 2;
- ``normalization``: ``percentile`` (per-case robust scaling,
  ``selma3d.preprocess.normalize.percentile_scale``) when a per-case intensity percentile varies
  by more than ``variation_threshold`` (2x) between cases, else ``zscore`` — applied with the
  global foreground statistics (clip to the foreground's 0.5-99.5 percentiles, subtract its
  mean, divide by its std: nnU-Net's CT scheme) by :func:`apply_normalization`;
- ``foreground_oversample``: per structure (default 0.33, nnU-Net's);
- ``structures``.

Every default is an ``overrides`` key (:data:`PLAN_DEFAULTS`).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from selma3d.core.atomic import atomic_path
from selma3d.core.errors import InputError

log = logging.getLogger(__name__)

PLAN_VERSION = 1

#: make_plan settings (override any of them)
PLAN_DEFAULTS: dict[str, Any] = {
    "max_patch_voxels": 128**3,
    "min_patch_side": 16,
    "patch_size": None,  # fix the patch instead of deriving it
    "spacing": None,  # override the fingerprint's median spacing
    "min_batch_size": 2,
    "max_batch_size": None,
    "max_dataset_coverage": 0.05,
    "foreground_oversample": 0.33,  # float, or {structure: float}
    "normalization": "auto",  # auto, percentile, zscore or local
    "variation_threshold": 2.0,
    "local_contrast": False,  # auto: local contrast for structures of small objects (see _structure_normalization)
    "max_pool": 5,
    "min_feature_map": 4,
    "base_filters": 32,
    "max_filters": 320,
    "deep_supervision": True,
    "deep_supr_num": 2,
}

VARIATION_STATS = ("image_p50", "image_p99_5", "fg_p50")


def _rows(pairs) -> list[dict]:
    if hasattr(pairs, "iterrows"):
        return [dict(r) for _, r in pairs.iterrows()]
    return [dict(r) for r in pairs]


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return [_jsonable(v) for v in x.tolist()]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return v if math.isfinite(v) else None
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def _pct(x: np.ndarray, qs: Iterable[float]) -> list[float | None]:
    qs = list(qs)
    return [float(v) for v in np.percentile(x, qs)] if x.size else [None] * len(qs)


def _case_stats(row: dict, index: int, ignore_label, background_values, samples_per_case: int, seed: int,
                max_image_voxels: int) -> tuple[dict, np.ndarray]:
    import cc3d

    from selma3d import io
    from selma3d.core.labels import binarize_label
    from selma3d.data.manifest import parse_spacing

    img = io.read_volume(row["image"])
    lab = io.read_volume(row["label"])
    if img.data.shape != lab.data.shape:
        raise InputError(row["label"], f"label shape {img.data.shape} like its image {row['image']}",
                         f"{lab.data.shape}")
    data = np.asarray(img.data, dtype=np.float32)
    if not np.isfinite(data).all():
        raise InputError(row["image"], "finite intensities", "NaN or inf values")
    sp_text = row.get("spacing_um", "")
    spacing = (parse_spacing(sp_text, str(row["image"])) if sp_text is not None and str(sp_text).strip()
               and not (isinstance(sp_text, float) and math.isnan(sp_text)) else tuple(img.spacing))
    from selma3d.data.manifest import label_rule

    # the row's own label rule (manifest columns ignore_label, background_values, annotated_z) wins,
    # as in finetuning: a partially annotated volume is fingerprinted on its annotated voxels only
    fg, ignore = binarize_label(lab.data, *label_rule(row, ignore_label, background_values))
    fg = fg.astype(bool)
    annotated = data.size - (0 if ignore is None else int(ignore.sum()))
    flat = data.ravel()
    step = max(1, flat.size // max_image_voxels)
    p_img = _pct(flat[::step], (0.5, 50, 99.5))
    vals = data[fg]
    rng = np.random.default_rng([seed, index])
    sample = vals if vals.size <= samples_per_case else rng.choice(vals, samples_per_case, replace=False)
    p_fg = _pct(vals, (0.5, 50, 99.5))
    n_comp = 0
    sizes = np.zeros(0, dtype=np.int64)
    extents = np.zeros((0, 3), dtype=np.int64)
    if fg.any():
        labels, n_comp = cc3d.connected_components(fg.astype(np.uint8), connectivity=26, return_N=True)
        sizes = np.bincount(labels.ravel())[1:]
        boxes = cc3d.statistics(labels)["bounding_boxes"][1:]
        extents = np.array([[sl.stop - sl.start for sl in box] for box in boxes if box is not None],
                           dtype=np.int64).reshape(-1, 3)
    stats = {
        "case": str(row.get("case", Path(str(row["image"])).name)),
        "structure": str(row.get("structure", "foreground")),
        "shape": [int(s) for s in data.shape],
        "spacing": [float(s) for s in spacing],
        "image_p0_5": p_img[0], "image_p50": p_img[1], "image_p99_5": p_img[2],
        "fg_voxels": int(fg.sum()),
        "annotated_voxels": int(annotated),
        "fg_fraction": float(fg.sum() / annotated) if annotated else 0.0,
        "fg_mean": float(vals.mean()) if vals.size else None,
        "fg_std": float(vals.std()) if vals.size else None,
        "fg_p0_5": p_fg[0], "fg_p50": p_fg[1], "fg_p99_5": p_fg[2],
        "n_components": int(n_comp),
        "component_sizes": _size_summary(sizes),
        "_sizes": sizes,
        "_extents": extents,
    }
    return stats, sample.astype(np.float32)


def _size_summary(sizes: np.ndarray) -> dict:
    if not len(sizes):
        return {"min": None, "p5": None, "median": None, "p95": None, "max": None}
    p5, med, p95 = np.percentile(sizes, [5, 50, 95])
    return {"min": int(sizes.min()), "p5": float(p5), "median": float(med), "p95": float(p95), "max": int(sizes.max())}


def _variation(values: list) -> float | None:
    """max/min over cases of a positive statistic; None when not computable (non-positive values)."""
    v = [x for x in values if x is not None]
    if len(v) < 2:
        return 1.0
    if min(v) <= 0:
        return None
    return float(max(v) / min(v))


def fingerprint(pairs, ignore_label: int | None = None, background_values: tuple[int, ...] = (0,),
                samples_per_case: int = 10000, seed: int = 0, max_image_voxels: int = 2**24) -> dict[str, Any]:
    """Dataset fingerprint of annotated pairs (see the module docstring).

    Args:
        pairs: ``selma3d.data.manifest.annotated_pairs`` output (a DataFrame with ``image``,
            ``label``, ``structure``, ``case``, ``spacing_um``) or a list of such dicts.
        ignore_label, background_values: label conventions (``selma3d.core.labels.binarize_label``).
        samples_per_case: foreground voxels sampled per case for the pooled statistics.
        seed: sampling seed (the fingerprint is deterministic).
        max_image_voxels: image percentiles use a regular subsample of at most this many voxels.
    """
    rows = _rows(pairs)
    if not rows:
        raise InputError(None, "at least one annotated image/label pair", "none")
    cases, samples = [], []
    for i, row in enumerate(rows):
        st, smp = _case_stats(row, i, ignore_label, background_values, int(samples_per_case), int(seed),
                              int(max_image_voxels))
        cases.append(st)
        samples.append(smp)
    pooled = np.concatenate(samples) if samples else np.zeros(0, np.float32)
    spacing = np.median(np.array([c["spacing"] for c in cases]), axis=0)
    median_shape = np.median(np.array([c["shape"] for c in cases]), axis=0)
    intensity = None
    if pooled.size:
        p05, p50, p995 = np.percentile(pooled, [0.5, 50, 99.5])
        intensity = {"mean": float(pooled.mean()), "std": float(pooled.std()), "p0_5": float(p05),
                     "median": float(p50), "p99_5": float(p995), "n_samples": int(pooled.size)}
    variation = {k: _variation([c[k] for c in cases]) for k in VARIATION_STATS}
    structures = {}
    for s in sorted({c["structure"] for c in cases}):
        sub = [c for c in cases if c["structure"] == s]
        sizes = np.concatenate([c["_sizes"] for c in sub]) if sub else np.zeros(0)
        extents = np.concatenate([c["_extents"] for c in sub]) if sub else np.zeros((0, 3))
        structures[s] = {
            "n_cases": len(sub),
            "fg_fraction_mean": float(np.mean([c["fg_fraction"] for c in sub])),
            "fg_fraction_min": float(np.min([c["fg_fraction"] for c in sub])),
            "fg_fraction_max": float(np.max([c["fg_fraction"] for c in sub])),
            "components_per_case": float(np.mean([c["n_components"] for c in sub])),
            "component_sizes": _size_summary(sizes.astype(np.int64)),
            # per axis, the 95th percentile of the components' bounding-box sides (voxels)
            "component_extent_p95": ([float(v) for v in np.percentile(extents, 95, axis=0)] if len(extents)
                                     else None),
        }
    for c in cases:
        del c["_sizes"], c["_extents"]
    return _jsonable({
        "version": PLAN_VERSION,
        "n_cases": len(cases),
        "spacing": spacing,
        "median_shape": median_shape,
        "shapes": [c["shape"] for c in cases],
        "intensity": intensity,
        "percentile_variation": variation,
        "structures": structures,
        "cases": cases,
    })


def _fit_patch(spacing, median_shape, o: dict) -> tuple[list[int], dict]:
    from selma3d.nets.topology import topology

    budget = int(o["max_patch_voxels"])
    mfm, mp = int(o["min_feature_map"]), int(o["max_pool"])
    median_shape = [max(1, int(round(m))) for m in median_shape]
    if o["patch_size"] is not None:
        ps = [int(p) for p in (o["patch_size"] if not isinstance(o["patch_size"], (int, float))
                               else [o["patch_size"]] * 3)]
        topo = topology(ps, spacing, mfm, mp)
        return topo["patch_size"], topo
    inv = 1.0 / np.asarray(spacing, dtype=np.float64)
    cube = inv * (budget / np.prod(inv)) ** (1.0 / 3.0)
    ps = [max(int(o["min_patch_side"]), int(min(round(c), m))) for c, m in zip(cube, median_shape)]
    for _ in range(200):
        topo = topology(ps, spacing, mfm, mp)
        div = topo["divisor"]
        new = []
        for p, d, m in zip(ps, div, median_shape):
            up = int(math.ceil(p / d) * d)
            down = (p // d) * d
            new.append(down if (up > m and down >= max(d, int(o["min_patch_side"]))) else up)
        if math.prod(new) <= budget:
            if new == ps:
                break
            ps = new
            continue
        ratios = [p / m for p, m in zip(new, median_shape)]
        axis = int(np.argmax(ratios))
        new[axis] = max(div[axis], new[axis] - div[axis])
        ps = new
    topo = topology(ps, spacing, mfm, mp)
    return topo["patch_size"], topo


def make_plan(fp: dict[str, Any], overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """A training plan from a :func:`fingerprint` (see the module docstring)."""
    from selma3d.nets.topology import default_filters

    o = {**PLAN_DEFAULTS, **(overrides or {})}
    unknown = sorted(set(o) - set(PLAN_DEFAULTS))
    if unknown:
        raise InputError(None, f"plan overrides among {sorted(PLAN_DEFAULTS)}", f"unknown {unknown}")
    spacing = [float(s) for s in (o["spacing"] or fp["spacing"])]
    median_shape = [float(s) for s in fp["median_shape"]]
    patch, topo = _fit_patch(spacing, median_shape, o)
    n_stages = len(topo["strides"])
    if n_stages < 3:
        raise InputError(None, "a patch allowing at least 2 down-samplings (dynunet)",
                         f"patch {patch} at spacing {spacing}: raise min_patch_side or patch_size")
    filters = default_filters(n_stages, int(o["base_filters"]), int(o["max_filters"]))
    dsn = max(1, min(int(o["deep_supr_num"]), n_stages - 2))
    network = {
        "backbone": "dynunet", "patch_size": patch, "spacing": spacing,
        "kernel_size": topo["kernel_size"], "strides": topo["strides"], "filters": filters,
        "deep_supervision": bool(o["deep_supervision"]), "deep_supr_num": dsn,
        "max_pool": int(o["max_pool"]), "min_feature_map": int(o["min_feature_map"]),
    }
    voxels = math.prod(patch)
    bs = int(math.floor(2 * int(o["max_patch_voxels"]) / voxels))
    total = sum(math.prod(s) for s in fp["shapes"])
    bs = min(bs, int(math.floor(float(o["max_dataset_coverage"]) * total / voxels)))
    if o["max_batch_size"] is not None:
        bs = min(bs, int(o["max_batch_size"]))
    bs = max(int(o["min_batch_size"]), bs)

    variation = fp.get("percentile_variation") or {}
    worst = None if any(v is None for v in variation.values()) else max(variation.values(), default=1.0)
    norm = o["normalization"]
    if norm == "auto":
        thr = float(o["variation_threshold"])
        if worst is None or worst > thr:
            norm = "percentile"
            how = "(non-positive values)" if worst is None else f"{worst:.2f}x"
            reason = f"per-case intensity percentiles vary {how} between cases (> {thr:g}x): per-case robust scaling"
        elif fp.get("intensity") is None:
            norm, reason = "percentile", "no foreground voxels for global statistics"
        else:
            norm = "zscore"
            reason = f"per-case intensity percentiles vary {worst:.2f}x (<= {thr:g}x): global foreground z-score"
    elif norm in ("percentile", "zscore", "local"):
        reason = "set by overrides"
    else:
        raise InputError(None, "normalization auto, percentile, zscore or local", repr(norm))
    structures = sorted(fp["structures"])
    by_structure, why = _structure_normalization(fp, structures, norm, o)
    if why:
        reason += "; " + why
    fo = o["foreground_oversample"]
    fg_over = {s: float(fo.get(s, PLAN_DEFAULTS["foreground_oversample"]) if isinstance(fo, dict) else fo)
               for s in structures}
    return _jsonable({
        "version": PLAN_VERSION,
        "spacing": spacing,
        "median_shape": median_shape,
        "patch_size": patch,
        "batch_size": bs,
        "network": network,
        "normalization": norm,
        "normalization_by_structure": by_structure,
        "normalization_reason": reason,
        "intensity": fp.get("intensity"),
        "percentile_variation": variation,
        "foreground_oversample": fg_over,
        "structures": structures,
        "settings": {k: v for k, v in o.items()},
    })


def _structure_normalization(fp: dict, structures: list[str], norm: str, o: dict) -> tuple[dict, str]:
    """Per structure: ``local`` where ``auto`` chose per-case ``percentile`` scaling (intensities
    not comparable between cases) and the structure's objects fit inside the local-contrast
    window (the 95th percentile of their bounding-box sides, per axis, at most the window's:
    the opening then removes them and estimates the background around them); else ``norm``."""
    if o["normalization"] != "auto" or norm != "percentile" or not o["local_contrast"]:
        return {s: norm for s in structures}, ""
    from selma3d.preprocess.normalize import LOCAL_WINDOW

    out, small = {}, []
    for s in structures:
        ext = fp["structures"][s].get("component_extent_p95")
        fits = ext is not None and all(e <= w for e, w in zip(ext, LOCAL_WINDOW))
        out[s] = "local" if fits else norm
        if fits:
            small.append(s)
    why = (f"local contrast for {', '.join(small)} (objects within the {'x'.join(map(str, LOCAL_WINDOW))} "
           "background window)") if small else ""
    return out, why


def structure_normalization(settings: dict, structure: str | None) -> str:
    """The normalisation of a case of ``structure`` under a model's or recipe's settings:
    ``normalize_by_structure[structure]`` when given, else ``normalize`` (unseen structures)."""
    by = settings.get("normalize_by_structure") or {}
    return by.get(structure, settings["normalize"]) if structure is not None else settings["normalize"]


def plan_normalization(plan: dict[str, Any]) -> dict[str, str]:
    """A plan's normalisation as ``{structure: method, "*": the default}`` (``pretrain.normalize: plan``)."""
    return {"*": plan["normalization"], **dict(plan.get("normalization_by_structure") or {})}


def apply_normalization(image: np.ndarray, plan: dict[str, Any]) -> np.ndarray:
    """Normalise a raw image as the plan says: ``percentile`` per case, ``zscore`` with the
    plan's global foreground statistics (clip to p0.5..p99.5, z-score)."""
    from selma3d.preprocess.normalize import normalize

    x = np.asarray(image, dtype=np.float32)
    if plan["normalization"] == "zscore" and plan.get("intensity"):
        it = plan["intensity"]
        std = float(it["std"]) or 1.0
        return ((np.clip(x, it["p0_5"], it["p99_5"]) - np.float32(it["mean"])) / np.float32(std)).astype(np.float32)
    return normalize(x, plan["normalization"])


def write_plan(path: str | Path, plan: dict[str, Any]) -> Path:
    """Write a plan (or fingerprint) as JSON, atomically."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(_jsonable(plan), indent=2, sort_keys=True))
    return Path(path)


def read_plan(path: str | Path) -> dict[str, Any]:
    """Read a plan written by :func:`write_plan`."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "a plan JSON file", "nothing at that path")
    plan = json.loads(path.read_text())
    if plan.get("version") != PLAN_VERSION:
        raise InputError(path, f"plan version {PLAN_VERSION}", repr(plan.get("version")))
    return plan


#: config names (the schema's ``plan`` block) that differ from :data:`PLAN_DEFAULTS`'
CONFIG_NAMES = {"normalize": "normalization"}
#: ``plan`` block keys that are not :func:`make_plan` settings
NOT_SETTINGS = ("enabled", "batch_size")


def plan_dataset(manifest: str | Path, plan_out: str | Path, fingerprint_out: str | Path | None,
                 settings: dict[str, Any], ignore_label: int | None = None,
                 background_values: tuple[int, ...] = (0,), seed: int = 0, split: str = "train") -> dict[str, Any]:
    """The ``plan`` rule: fingerprint the manifest's ``split`` pairs, plan, write both as JSON.

    ``settings`` is the config's ``plan`` block (``enabled`` is ignored here; ``normalize`` is
    :func:`make_plan`'s ``normalization``; ``batch_size``, when not null, replaces the derived
    batch size); every other key is a :func:`make_plan` override.
    """
    from selma3d.data.manifest import annotated_pairs, read_manifest

    pairs = annotated_pairs(read_manifest(manifest), split)
    if pairs.empty:
        raise InputError(manifest, f"annotated image/label rows with split {split!r} to plan from", "none")
    overrides = {CONFIG_NAMES.get(k, k): v for k, v in settings.items() if k not in NOT_SETTINGS}
    if overrides.get("foreground_oversample", 0) is None:  # null: make_plan's default
        del overrides["foreground_oversample"]
    fp = fingerprint(pairs, ignore_label, tuple(background_values), seed=seed)
    plan = make_plan(fp, overrides)
    if settings.get("batch_size") is not None:
        plan["batch_size"] = int(settings["batch_size"])
    plan["source"] = {"manifest": str(manifest), "split": split, "n_cases": fp["n_cases"]}
    if fingerprint_out is not None:
        write_plan(fingerprint_out, fp)
    write_plan(plan_out, plan)
    log.info("plan from %d %s cases: patch %s, batch %d, normalisation %s (%s)", fp["n_cases"], split,
             plan["patch_size"], plan["batch_size"], plan["normalization"], plan["normalization_reason"])
    return plan
