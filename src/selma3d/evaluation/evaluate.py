"""Score prediction files against ground truth under a SELMA3D protocol (``selma3d evaluate``).

Predictions and ground truth are matched by case name (``selma3d.io.case_name``); a trailing
``_0000`` on the ground-truth side (the nnU-Net channel suffix of SELMA3D image names) is
tolerated. Structure and category come from the file-name prefix or a ``--categories`` CSV.

Policy for unmatched files:

* a ground-truth case without a prediction is an error naming the case, unless
  ``missing="empty"``, which scores it against an all-background prediction (what a challenge
  submission that skipped a case would get);
* a prediction without ground truth is *warned about and skipped*: extra files in an output
  folder (logs, probability maps) are common, and any naming mistake that matters also shows
  up as a missing prediction, which is an error.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from selma3d.core.schema import schema_default
from selma3d.core.atomic import atomic_path
from selma3d.core.errors import InputError
from selma3d.io import MHA_SUFFIXES, NIFTI_SUFFIXES, TIFF_SUFFIXES, case_name, read_volume
from selma3d.core.labels import binarize_label
from selma3d.evaluation.metrics import METRIC_COLUMNS, PROTOCOLS, case_metrics
from selma3d.core.structures import category_of, structure_from_name

log = logging.getLogger(__name__)

COLUMNS = ("case", "structure", "category") + METRIC_COLUMNS
GT_SUFFIX = "_0000"
UNKNOWN = "unknown"
MISSING_POLICIES = ("error", "empty")


def strip_gt_suffix(name: str) -> str:
    """Case name of a ground-truth file: ``x_0000`` -> ``x``."""
    return name[: -len(GT_SUFFIX)] if name.endswith(GT_SUFFIX) else name


def list_cases(folder: str | Path, gt_side: bool = False) -> dict[str, Path]:
    """Case name -> image file in ``folder`` (NIfTI, MHA/NRRD, TIFF); duplicates are an error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "a folder of .nii/.nii.gz/.mha/.tif files", "no such folder")
    out: dict[str, Path] = {}
    suffixes = NIFTI_SUFFIXES + MHA_SUFFIXES + TIFF_SUFFIXES
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.is_file() or not p.name.lower().endswith(suffixes):
            continue
        name = case_name(p)
        if gt_side:
            name = strip_gt_suffix(name)
        if name in out:
            raise InputError(folder, "one file per case", f"{out[name].name} and {p.name} both name case {name!r}")
        out[name] = p
    return out


def read_categories(path: str | Path) -> dict[str, tuple[str, str]]:
    """``case,structure,category`` CSV -> {case: (structure, category)}."""
    from selma3d.core.structures import CATEGORIES

    path = Path(path)
    try:
        df = pd.read_csv(path, dtype=str)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise InputError(path, "a CSV with columns case,structure,category", f"{type(exc).__name__}: {exc}") from exc
    missing = {"case", "structure", "category"} - set(df.columns)
    if missing:
        raise InputError(path, "columns case,structure,category", f"columns {list(df.columns)}")
    bad = sorted(set(df["category"]) - set(CATEGORIES))
    if bad:
        raise InputError(path, f"categories from {CATEGORIES}", f"{bad}")
    if df["case"].duplicated().any():
        raise InputError(path, "one row per case", f"duplicated {sorted(df.loc[df['case'].duplicated(), 'case'])}")
    return {strip_gt_suffix(r.case): (r.structure, r.category) for r in df.itertuples()}


def structure_and_category(case: str, categories: dict[str, tuple[str, str]] | None = None) -> tuple[str, str]:
    """From the categories table if it lists the case, else from the file-name prefix."""
    if categories and case in categories:
        return categories[case]
    structure = structure_from_name(case)
    if structure is None:
        return UNKNOWN, UNKNOWN
    return structure, category_of(structure)


def ground_truth_mask(gt: np.ndarray, ignore_label: int | None = None, background_values: tuple[int, ...] = (0,),
                      annotated_z=None) -> tuple[np.ndarray, np.ndarray | None]:
    """The ground truth as the metrics see it, and the mask of unannotated voxels.

    With the defaults the label volume is returned as is, so the official rule (every value
    > 0 is foreground) applies unchanged. Otherwise :func:`selma3d.core.labels.binarize_label`
    decides: ``background_values`` are background, ``ignore_label`` marks voxels nobody
    annotated (excluded from every metric), every other value is foreground; ``annotated_z``
    leaves only those z planes annotated.
    """
    if ignore_label is None and tuple(background_values) == (0,) and annotated_z is None:
        return gt, None
    return binarize_label(gt, ignore_label, tuple(background_values), annotated_z)


def _evaluate_one(job: tuple) -> dict:
    case, pred_path, gt_path, protocol, ignore_label, background_values, annotated_z, threads = job
    gt = read_volume(gt_path).data
    if pred_path is None:
        pred = np.zeros(gt.shape, dtype=bool)
    else:
        pred = read_volume(pred_path).data
        if pred.shape != gt.shape:
            raise InputError(pred_path, f"shape {gt.shape} of ground truth {Path(gt_path).name} (case {case})",
                             f"shape {pred.shape}")
    gt, ignore = ground_truth_mask(gt, ignore_label, background_values, annotated_z)
    return case_metrics(pred, gt, protocol, ignore=ignore, case=case, threads=threads)


def evaluate_pairs(pairs: list[tuple[str, Path | None, Path]], protocol: str,
                   categories: dict[str, tuple[str, str]] | None = None, workers: int = 1,
                   ignore_label: int | None = None, missing: str = "error",
                   progress: bool = True, background_values: tuple[int, ...] = (0,),
                   label_rules: dict[str, tuple] | None = None) -> pd.DataFrame:
    """One row per (case, prediction, ground truth) with every metric of ``protocol``.

    A prediction path that is None or does not exist is an error naming the case unless
    ``missing="empty"``. ``ignore_label``: ground-truth voxels with this value are excluded from
    every metric (partial annotation); ``background_values``: ground-truth values meaning
    background (see :func:`ground_truth_mask`); ``label_rules``: per case, its own
    ``(ignore_label, background_values, annotated_z)`` (a manifest's label columns, see
    :func:`selma3d.data.manifest.label_rule`). Cases are scored in parallel processes when
    ``workers > 1``; rows keep the input order. Workers left over when there are fewer cases
    than workers (a whole brain, say) thin each case's skeletons beside its other metrics
    (``case_metrics(threads=...)``).
    """
    from tqdm.auto import tqdm

    if protocol not in PROTOCOLS:
        raise InputError(None, f"protocol in {PROTOCOLS}", repr(protocol))
    if missing not in MISSING_POLICIES:
        raise InputError(None, f"missing policy in {MISSING_POLICIES}", repr(missing))
    jobs = []
    for case, pred, gt in pairs:
        if pred is not None and not Path(pred).exists():
            pred = None
        if pred is None and missing == "error":
            raise InputError(gt, f"a prediction for case {case!r}", "none (use missing='empty' to score it as empty)")
        ign, bg, planes = (label_rules or {}).get(case, (ignore_label, background_values, None))
        jobs.append((case, None if pred is None else Path(pred), Path(gt), protocol, ign,
                     tuple(int(v) for v in bg), planes))
    threads = max(1, workers // max(1, len(jobs)))
    jobs = [(*job, threads) for job in jobs]
    seen = set()
    for case, *_ in jobs:
        if case in seen:
            raise InputError(None, "unique case names", f"case {case!r} twice")
        seen.add(case)
    bar = tqdm(total=len(jobs), desc=f"evaluate {protocol}", unit="case", disable=not progress)
    results: list[dict] = []
    try:
        if workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                results.append(_evaluate_one(job))
                bar.update()
        else:
            with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
                for res in pool.map(_evaluate_one, jobs):
                    results.append(res)
                    bar.update()
    finally:
        bar.close()
    rows = []
    for (case, *_), res in zip(jobs, results):
        structure, category = structure_and_category(case, categories)
        rows.append({"case": case, "structure": structure, "category": category, **res})
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    for col in ("betti0_error", "betti1_error"):
        df[col] = df[col].astype("int64")
    return df


def pair_dirs(pred_dir: str | Path, gt_dir: str | Path, missing: str = "error") -> list[tuple[str, Path | None, Path]]:
    """(case, prediction or None, ground truth) for every ground-truth case, sorted by case.

    Predictions without ground truth are warned about and left out.
    """
    preds = list_cases(pred_dir)
    gts = list_cases(gt_dir, gt_side=True)
    if not gts:
        raise InputError(gt_dir, "at least one ground-truth image", "none")
    # a prediction may itself carry the _0000 suffix when it was named after the image
    renamed: dict[str, Path] = {}
    for k, v in preds.items():
        key = k if k in gts else strip_gt_suffix(k)
        if key in renamed:
            raise InputError(pred_dir, "one prediction per case", f"{renamed[key].name} and {v.name} both name case {key!r}")
        renamed[key] = v
    preds = renamed
    extra = sorted(set(preds) - set(gts))
    if extra:
        warnings.warn(f"{pred_dir}: {len(extra)} prediction(s) without ground truth skipped: {extra[:10]}",
                      stacklevel=2)
    absent = sorted(set(gts) - set(preds))
    if absent and missing == "error":
        raise InputError(pred_dir, f"a prediction for every ground-truth case in {gt_dir}",
                         f"{len(absent)} missing: {absent[:10]}")
    return [(c, preds.get(c), gts[c]) for c in sorted(gts)]


def evaluate_dirs(pred_dir: str | Path, gt_dir: str | Path, protocol: str,
                  categories: dict[str, tuple[str, str]] | str | Path | None = None, workers: int = 1,
                  ignore_label: int | None = None, missing: str = "error", progress: bool = True,
                  background_values: tuple[int, ...] = (0,)) -> pd.DataFrame:
    """Score every ground-truth case in ``gt_dir`` against the same-named file in ``pred_dir``."""
    if categories is not None and not isinstance(categories, dict):
        categories = read_categories(categories)
    pairs = pair_dirs(pred_dir, gt_dir, missing=missing)
    return evaluate_pairs(pairs, protocol, categories=categories, workers=workers,
                          ignore_label=ignore_label, missing=missing, progress=progress,
                          background_values=background_values)


def write_cases(df: pd.DataFrame, path: str | Path) -> Path:
    """Per-case CSV, atomically (NaN written as empty fields)."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.10g")
    return Path(path)


def _json_safe(obj):
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if math.isnan(float(obj)) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def write_json(obj: dict, path: str | Path) -> Path:
    """JSON with NaN as null, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_json_safe(obj), indent=2) + "\n")
    return Path(path)


def evaluate_manifest_split(pred_dir: str | Path, manifest: str | Path, protocol: str, out_cases: str | Path,
                            workers: int = schema_default("evaluate.workers"),
                            ignore_label: int | None = schema_default("finetune.ignore_label"), split: str = "test",
                            missing: str = "error",
                            background_values: tuple[int, ...] = tuple(schema_default("finetune.background_values")),
                            ) -> pd.DataFrame:
    """Score ``<case>.*`` predictions in ``pred_dir`` against a manifest split's labels; write the CSV.

    Structure and category come from the manifest rows, so file names need no prefix.
    ``ignore_label``/``background_values`` say how to read partially annotated labels (the
    same settings finetuning used; see :func:`ground_truth_mask`); a label row's own columns
    win (:func:`selma3d.data.manifest.label_rule`).
    """
    from selma3d.data.manifest import annotated_pairs, label_rule, read_manifest

    pairs_df = annotated_pairs(read_manifest(manifest), split)
    if pairs_df.empty:
        raise InputError(manifest, f"annotated image/label rows in split {split!r}", "none")
    preds = list_cases(pred_dir)
    categories = {r.case: (str(r.structure), str(r.category)) for r in pairs_df.itertuples()}
    extra = sorted(set(preds) - set(categories))
    if extra:
        warnings.warn(f"{pred_dir}: {len(extra)} prediction(s) not in split {split!r} skipped: {extra[:10]}",
                      stacklevel=2)
    pairs = [(r.case, preds.get(r.case), Path(r.label)) for r in pairs_df.itertuples()]
    rules = {r.case: label_rule(r, ignore_label, background_values) for _, r in pairs_df.iterrows()}
    df = evaluate_pairs(pairs, protocol, categories=categories, workers=workers, ignore_label=ignore_label,
                        missing=missing, progress=False, background_values=background_values, label_rules=rules)
    write_cases(df, out_cases)
    return df


# ------------------------------------------------------------------------------- CLI


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pred", required=True, type=Path, help="folder of predicted masks")
    parser.add_argument("--gt", required=True, type=Path, help="folder of ground-truth masks")
    parser.add_argument("--protocol", required=True, choices=PROTOCOLS)
    parser.add_argument("--out", required=True, type=Path, help="per-case CSV to write")
    parser.add_argument("--summary", type=Path, help="JSON with the protocol's aggregates")
    parser.add_argument("--categories", type=Path, help="CSV case,structure,category overriding file-name prefixes")
    parser.add_argument("--missing", choices=MISSING_POLICIES, default="error",
                        help="what to do with a ground-truth case that has no prediction (default: error)")
    parser.add_argument("--workers", type=int, default=1,
                        help="parallel processes over cases; with fewer cases than workers, threads within a case "
                             "(default 1)")
    parser.add_argument("--ignore-label", type=int, default=None,
                        help="ground-truth value marking unannotated voxels, excluded from all metrics")
    parser.add_argument("--background-values", type=int, nargs="+", default=[0], metavar="V",
                        help="ground-truth values meaning background (default 0); others but the "
                             "ignore label are foreground")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    from selma3d.evaluation.leaderboard import summarize

    df = evaluate_dirs(args.pred, args.gt, args.protocol, categories=args.categories, workers=args.workers,
                       ignore_label=args.ignore_label, missing=args.missing, progress=not args.no_progress,
                       background_values=tuple(args.background_values))
    write_cases(df, args.out)
    if args.summary is not None:
        write_json(summarize(df, args.protocol), args.summary)
    log.info("scored %d cases -> %s", len(df), args.out)
    return 0
