"""Classical baseline: a per-structure intensity threshold fitted on the training cases.

Two methods, both per-case so that brightness differences between brains cancel out:

- ``percentile``: the case is scaled by ``selma3d.preprocess.normalize.percentile_scale``
  (percentiles ``low``..``high`` to [-1, 1], clipped) and thresholded at one global value;
- ``otsu``: the case's own Otsu threshold (``skimage.filters.threshold_otsu``) times a factor
  (raw intensities are expected non-negative, as light-sheet counts are).

Either is followed by the removal of 26-connected components under ``min_size`` voxels.
:func:`fit` tries, for every structure, both methods over their parameter grids
(:data:`GRID`) and keeps the one of highest mean Dice on that structure's training cases
(ties: ``percentile`` first, then the lower ``min_size``). Pass **raw** intensities: each
method normalises by itself.

Usage::

    from selma3d.training import classical
    params = classical.fit(images, labels, structures, ignores)      # or fit_pairs(pairs_df)
    classical.save_params("classical.json", params)
    mask = classical.predict(image, classical.load_params("classical.json"), structure="cfos_neuron")

Parameters JSON: ``{"version": 1, "structures": {<structure>: {"method", "threshold",
"min_size", "low", "high" (percentile only), "train_dice", "candidates": {method: best mean Dice}}}}``.

As the workflow's finetuning strategy ``threshold`` (:func:`fit_budget`), the file takes the
place of ``model.pt``: it adds ``"kind": "classical_threshold"`` and a pooled entry ``"*"``
(fitted on every training case) that :func:`predict` uses for structures not trained on.
``selma3d.inference.patches.infer_test_split`` recognises it (:func:`is_params_file`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from selma3d.core.atomic import atomic_path
from selma3d.preprocess.normalize import percentile_scale
from selma3d.training.threshold_search import best_on_grid, dice_grid

log = logging.getLogger(__name__)

#: ``kind`` of a parameters file written by :func:`fit_budget` (the ``threshold`` strategy's model)
KIND = "classical_threshold"
#: structure key of the parameters fitted on all training cases (for structures not trained on)
POOLED = "*"

METHODS = ("percentile", "otsu")

#: parameter grids searched by :func:`fit`
GRID: dict[str, Any] = {
    "percentile_low": 0.05,
    "percentile_high": (99.0, 99.5, 99.9, 99.95),
    "percentile_thresholds": tuple(round(v, 3) for v in np.arange(-0.8, 0.999, 0.02)),
    "otsu_factors": (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0),
    "min_sizes": (0, 2, 3, 5, 8, 12, 16, 24, 32, 64),
}


def otsu_threshold(image: np.ndarray) -> float:
    """Otsu's threshold of a volume (256 bins); the mean for a constant one."""
    from skimage.filters import threshold_otsu

    x = np.asarray(image, dtype=np.float32)
    if float(x.min()) == float(x.max()):
        return float(x.min())
    return float(threshold_otsu(x, nbins=256))


def score_map(image: np.ndarray, method: str, params: dict[str, Any]) -> np.ndarray:
    """The per-case score whose ``> params["threshold"]`` is the mask (before component removal)."""
    x = np.asarray(image, dtype=np.float32)
    if method == "percentile":
        return percentile_scale(x, float(params.get("low", GRID["percentile_low"])), float(params["high"]))
    if method == "otsu":
        t = otsu_threshold(x)
        if t <= 0:  # non-positive Otsu level (not raw counts): the factor scales the offset from it
            return x - t + 1.0
        return x / np.float32(t)
    raise ValueError(f"classical method one of {list(METHODS)}, found {method!r}")


def fit(images: Sequence[np.ndarray], labels: Sequence[np.ndarray], structures: Sequence[str] | None = None,
        ignores: Sequence[np.ndarray | None] | None = None, methods: Sequence[str] = METHODS,
        grid: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fit the method and parameters per structure on training cases (raw images, binary labels).

    Returns the parameter dict described in the module docstring (JSON-serialisable).
    """
    g = {**GRID, **(grid or {})}
    n = len(images)
    if n == 0 or len(labels) != n:
        raise ValueError(f"classical fit: {n} images and {len(labels)} labels")
    structures = list(structures) if structures is not None else ["foreground"] * n
    ignores = list(ignores) if ignores is not None else [None] * n
    if len(structures) != n or len(ignores) != n:
        raise ValueError("classical fit: structures/ignores must have one entry per image")
    min_sizes = [int(m) for m in g["min_sizes"]]
    out: dict[str, Any] = {"version": 1, "structures": {}}
    for s in sorted(set(structures)):
        idx = [i for i in range(n) if structures[i] == s]
        labs = [np.asarray(labels[i]) for i in idx]
        igs = [ignores[i] for i in idx]
        candidates = []  # (-score, method rank, min_size, result)
        best_by_method: dict[str, float] = {}
        for rank, method in enumerate(methods):
            if method == "percentile":
                settings = [{"low": float(g["percentile_low"]), "high": float(h)} for h in g["percentile_high"]]
                thresholds, prefer = [float(t) for t in g["percentile_thresholds"]], 0.5
            elif method == "otsu":
                settings, thresholds, prefer = [{}], [float(f) for f in g["otsu_factors"]], 1.0
            else:
                raise ValueError(f"classical method one of {list(METHODS)}, found {method!r}")
            for k, st in enumerate(settings):
                scores = [score_map(images[i], method, st) for i in idx]
                res = best_on_grid(dice_grid(scores, labs, igs, thresholds, min_sizes), thresholds, min_sizes,
                                   prefer_threshold=prefer)
                best_by_method[method] = max(best_by_method.get(method, -1.0), res["score"])
                candidates.append((-res["score"], rank, res["min_size"], k,
                                   {"method": method, **st, "threshold": res["threshold"],
                                    "min_size": res["min_size"], "train_dice": res["score"]}))
        chosen = min(candidates, key=lambda c: c[:4])[4]
        chosen["candidates"] = best_by_method
        chosen["n_cases"] = len(idx)
        out["structures"][s] = chosen
        log.info("classical %s: %s (threshold %g, min size %d), train Dice %.4f over %d cases", s, chosen["method"],
                 chosen["threshold"], chosen["min_size"], chosen["train_dice"], len(idx))
    return out


def fit_pairs(pairs, ignore_label: int | None = None, background_values: tuple[int, ...] = (0,),
              **kwargs) -> dict[str, Any]:
    """:func:`fit` on the rows of ``selma3d.data.manifest.annotated_pairs`` (read with selma3d.io)."""
    from selma3d import io
    from selma3d.core.labels import binarize_label

    images, labels, ignores, structures = [], [], [], []
    for _, row in pairs.iterrows():
        images.append(np.asarray(io.read_volume(row["image"]).data, dtype=np.float32))
        fg, ign = binarize_label(io.read_volume(row["label"]).data, ignore_label, background_values)
        labels.append(fg), ignores.append(ign), structures.append(row["structure"])
    return fit(images, labels, structures, ignores, **kwargs)


def _structure_params(params: dict[str, Any], structure: str | None) -> dict[str, Any]:
    if "structures" not in params:
        return params  # already one structure's entry
    table = params["structures"]
    if structure is None:
        if len(table) != 1:
            raise ValueError(f"classical predict: name a structure among {sorted(table)}")
        return next(iter(table.values()))
    if structure not in table and POOLED in table:
        return table[POOLED]
    if structure not in table:
        raise KeyError(f"classical predict: no parameters for structure {structure!r} (have {sorted(table)})")
    return table[structure]


def predict(image: np.ndarray, params: dict[str, Any], structure: str | None = None) -> np.ndarray:
    """Binary uint8 mask of a raw (z, y, x) image with fitted parameters (whole file or one entry)."""
    import cc3d

    p = _structure_params(params, structure)
    mask = score_map(image, p["method"], p) > float(p["threshold"])
    m = int(p.get("min_size", 0))
    if m > 1 and mask.any():
        mask = cc3d.dust(mask.astype(np.uint8), threshold=m, connectivity=26, in_place=False) > 0
    return mask.astype(np.uint8)


def save_params(path: str | Path, params: dict[str, Any]) -> Path:
    """Write fitted parameters as JSON (atomically)."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(params, indent=2, sort_keys=True))
    return Path(path)


def load_params(path: str | Path) -> dict[str, Any]:
    """Read parameters written by :func:`save_params`."""
    return json.loads(Path(path).read_text())


def is_params_file(path: str | Path) -> bool:
    """Whether ``path`` holds classical parameters (JSON) rather than a torch checkpoint."""
    with open(path, "rb") as fh:
        head = fh.read(64).lstrip()
    return head.startswith(b"{")


def fit_budget(split_csv: str | Path, manifest: str | Path, model_out: str | Path, curve_out: str | Path,
               ignore_label: int | None = None, background_values: tuple[int, ...] = (0,)) -> dict[str, Any]:
    """The ``threshold`` strategy's "finetuning": :func:`fit` on a label budget's cases.

    Fits per structure and pooled (:data:`POOLED`), scores the fit on the manifest's val split
    (mean Dice, annotated voxels only) and writes the parameters to ``model_out`` (JSON, the
    place of ``model.pt``) and a one-row ``train_log.csv`` (step 0, no loss, val_dice).
    Returns a summary.
    """
    import pandas as pd

    from selma3d import io
    from selma3d.core.labels import binarize_label
    from selma3d.core.overlap import dice
    from selma3d.data.manifest import annotated_pairs, read_manifest

    def read(pairs):
        images, labels, ignores, structures = [], [], [], []
        for _, row in pairs.iterrows():
            images.append(np.asarray(io.read_volume(row["image"]).data, dtype=np.float32))
            fg, ign = binarize_label(io.read_volume(row["label"]).data, ignore_label, background_values)
            labels.append(fg), ignores.append(ign), structures.append(str(row["structure"]))
        return images, labels, ignores, structures

    split = pd.read_csv(split_csv, dtype=str, keep_default_na=False)
    if split.empty:
        raise ValueError(f"{split_csv}: no training cases to fit the threshold baseline on")
    images, labels, ignores, structures = read(split)
    params = fit(images, labels, structures, ignores)
    params["structures"][POOLED] = fit(images, labels, [POOLED] * len(images), ignores)["structures"][POOLED]
    params["kind"] = KIND
    params["ignore_label"], params["background_values"] = ignore_label, list(background_values)
    val = annotated_pairs(read_manifest(manifest), "val")
    val_dice = float("nan")
    if not val.empty:
        v_images, v_labels, v_ignores, v_structures = read(val)
        scores = [dice(predict(im, params, s).astype(bool), lab.astype(bool), ig)
                  for im, lab, ig, s in zip(v_images, v_labels, v_ignores, v_structures)]
        val_dice = float(np.mean(scores))
    params["val_dice"] = val_dice
    save_params(model_out, params)
    with atomic_path(curve_out) as tmp:
        pd.DataFrame([{"step": 0, "loss": float("nan"), "val_dice": val_dice}]).to_csv(tmp, index=False)
    summary = {"best_val_dice": val_dice, "structures": sorted(params["structures"]), "train_cases": len(images)}
    log.info("threshold baseline on %d cases: val Dice %.4f", len(images), val_dice)
    return summary
