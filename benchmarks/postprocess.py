"""Does a peak (hysteresis) filter, calibrated on validation, remove the UNet's false c-Fos cells on an unseen brain?

The c-Fos UNet trained on brain 695 fires on hundreds of faint specks of brain 753
(``benchmarks/cfos_shift.py``). Its true cells reach a confident peak, most false components
do not. This benchmark takes finetuned models that never saw brain 753 and compares the
post-processing search of the ``finetune`` rule (``infer.postprocess``: threshold × minimum
component size) with the same search plus the peak grid (``infer.postprocess.peaks``: keep a
component only if its highest probability exceeds the peak), each calibrated three ways:

* ``brain 695``: on the training brain's 8 patches (what ``cfos_shift.py`` allows), scored on
  all 8 patches of brain 753;
* ``other half of 753``: on four patches of brain 753, scored on its other four, both ways (an
  unseen brain's validation patches calibrating its test patches, as real_selma's val split
  calibrates the test brains of a challenge);
* ``all of 753 (in-sample)``: on the 8 scored patches themselves (what real_selma's val = test
  split reports; an upper bound, not a result).

The classical ``threshold`` strategy (``selma3d.training.classical.fit``: per-case percentile or
Otsu threshold and minimum size) is fitted on the same cases, so each protocol ranks the nets
against the classical detector calibrated the same way.

Probabilities come from the library's path (the model's normalisation, Gaussian sliding window,
``--mirror-axes``); grids are the workflow schema's. Models: ``finetune/scratch/full/*/model.pt``
of ``python benchmarks/cfos_shift.py --variants across --seed S --keep DIR``::

    python benchmarks/postprocess.py --models DIR0/across_fold0/finetune/scratch/full/ball_s0/model.pt ...
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import load_average, machine, write_results
from cfos_shift import component_counts

REAL = REPO.parent / "shared" / "data" / "real"
SEARCHES = ("threshold × min size", "threshold × min size × peak")
CLASSICAL = "classical threshold (no net)"
PROTOCOLS = ("brain 695", "other half of 753", "all of 753 (in-sample)")


def read_brain(brain: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(raw image, truth) of the 8 c-Fos patches of ``brain``."""
    from selma3d import io

    return [(np.asarray(io.read_volume(REAL / f"cfos_brain{brain}/raw/patchvolume_{brain}_{k}.nii.gz").data,
                        np.float32),
             np.asarray(io.read_volume(REAL / f"cfos_brain{brain}/gt/patchvolume_{brain}_{k}.nii.gz").data) > 0)
            for k in range(8)]


def predict(model: Path, cases, mirror_axes: tuple[int, ...]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(probability, truth) of each (raw image, truth) of ``cases``, as ``infer`` predicts them."""
    import torch

    from selma3d.inference.patches import probability
    from selma3d.training.finetune import load_model, normalize_image
    from selma3d.training.plan import structure_normalization

    net, payload = load_model(model, torch.device("cpu"))
    roi = tuple(int(s) for s in payload["config"]["patch_size"])
    method = structure_normalization(payload, "cfos_neuron")
    return [(probability(net, normalize_image(image, method, payload.get("normalize_stats")), roi,
                         torch.device("cpu"), mirror_axes=mirror_axes), truth) for image, truth in cases]


def classical_rows(fit, scored) -> tuple[dict, list[dict]]:
    """The classical detector fitted on ``fit`` (raw image, truth) pairs and scored on ``scored``."""
    from selma3d.training import classical

    params = classical.fit([i for i, _ in fit], [t for _, t in fit])
    chosen = params["structures"]["foreground"]
    rows = [component_counts(classical.predict(i, params).astype(bool), t) for i, t in scored]
    return {"threshold": chosen["threshold"], "min_size": chosen["min_size"], "peak": None,
            "score": chosen["train_dice"], "method": chosen["method"]}, rows


def protocols(train, val) -> dict:
    """protocol -> folds, each (cases to calibrate on, indices of brain 753's scored cases)."""
    return {PROTOCOLS[0]: [(train, range(8))], PROTOCOLS[1]: [(val[:4], range(4, 8)), (val[4:], range(4))],
            PROTOCOLS[2]: [(val, range(8))]}


def calibrate_and_score(fit, scored, grids: dict, peaks) -> tuple[dict, list[dict]]:
    """The search's choice on ``fit`` and, per case of ``scored``, Dice and component counts."""
    from selma3d.inference.postprocess import apply_postprocess, select_threshold_and_min_size

    best = select_threshold_and_min_size([p for p, _ in fit], [t for _, t in fit], thresholds=grids["thresholds"],
                                         min_sizes=grids["min_sizes"], peaks=peaks)
    rows = [component_counts(apply_postprocess(p, best["threshold"], best["min_size"], best["peak"]).astype(bool), t)
            for p, t in scored]
    return best, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=Path, nargs="+", required=True,
                    help="finetuned c-Fos model.pt files that never saw brain 753 (one per seed)")
    ap.add_argument("--mirror-axes", type=int, nargs="*", default=[])
    ap.add_argument("--name", default="postprocess", help="results file stem: benchmarks/results/<name>_<date>.*")
    args = ap.parse_args()
    from selma3d.core.schema import schema_default

    grids = schema_default("infer.postprocess")
    searches = {SEARCHES[0]: [0.0], SEARCHES[1]: grids["peaks"]}
    missing = [str(m) for m in args.models if not m.is_file()]
    if missing:
        sys.exit(f"{', '.join(missing)}: expected finetuned model.pt files, found no such file")
    raw_train, raw_val = read_brain(695), read_brain(753)
    rows, chosen, fixed = [], [], []  # fixed: the classical detector's rows, the same for every net
    for protocol, folds in protocols(raw_train, raw_val).items():
        for fit, scored in folds:
            best, counts = classical_rows(fit, [raw_val[k] for k in scored])
            chosen.append({"model": None, "protocol": protocol, "search": CLASSICAL, **best})
            fixed += [{"protocol": protocol, "search": CLASSICAL, "case": k, **c} for k, c in zip(scored, counts)]
    print("classical threshold: done", flush=True)
    for m, model in enumerate(args.models):
        train, val = predict(model, raw_train, tuple(args.mirror_axes)), predict(model, raw_val, tuple(args.mirror_axes))
        rows += [{"model": m, **r} for r in fixed]
        for protocol, folds in protocols(train, val).items():
            for search, peaks in searches.items():
                for fit, scored in folds:
                    best, counts = calibrate_and_score(fit, [val[k] for k in scored], grids, peaks)
                    chosen.append({"model": m, "protocol": protocol, "search": search,
                                   **{k: best[k] for k in ("threshold", "min_size", "peak", "score")}})
                    rows += [{"model": m, "protocol": protocol, "search": search, "case": k, **c}
                             for k, c in zip(scored, counts)]
        print(f"model {m}: done", flush=True)
    table = pd.DataFrame(rows)
    table["order"] = table.protocol.map(PROTOCOLS.index)
    table = table.sort_values(["order", "model"], kind="stable")
    per_model = table.groupby(["protocol", "search", "model"], sort=False).agg(
        dice=("dice_recomputed", "mean"), fp=("fp_components", "sum"), missed=("cells_missed", "sum"),
        cells=("cells", "sum")).reset_index()
    summary = per_model.groupby(["protocol", "search"], sort=False).agg(
        dice=("dice", "mean"), dice_std=("dice", "std"), fp=("fp", "mean"), missed=("missed", "mean"),
        cells=("cells", "first")).reset_index()
    n = len(args.models)
    lines = [f"# c-Fos post-processing on the unseen brain: peak filter or not ({pd.Timestamp.now():%Y-%m-%d}, "
             f"{machine()})", "",
             f"{n} model(s) trained on brain 695 only (`benchmarks/cfos_shift.py --variants across`, one per seed), "
             f"mirror axes {args.mirror_axes}; grids of the workflow schema (`infer.postprocess`: "
             f"{len(grids['thresholds'])} thresholds × {len(grids['min_sizes'])} minimum sizes, peaks "
             f"{grids['peaks']}); load average at the end {load_average()}. Dice in % (mean over the scored "
             "patches of brain 753, then over models ± std); false components and missed cells per model "
             "(summed over the scored patches).", "",
             "| calibrated on | search | Dice | FP components | cells missed | true cells |", "|---|---|---|---|---|---|"]
    for r in summary.itertuples():
        std = f" ± {100 * r.dice_std:.1f}" if n > 1 else ""
        lines.append(f"| {r.protocol} | {r.search} | {100 * r.dice:.1f}{std} | {r.fp:.0f} | {r.missed:.0f} | "
                     f"{r.cells} |")
    lines += ["", "per model (Dice in %):", "", "| calibrated on | search | " +
              " | ".join(f"model {m}" for m in range(n)) + " |", "|---|---|" + "---|" * n]
    for (protocol, search), part in per_model.groupby(["protocol", "search"], sort=False):
        lines.append(f"| {protocol} | {search} | " + " | ".join(f"{100 * d:.1f}" for d in part.dice) + " |")
    lines += ["", "chosen (threshold, min size, peak) per model and fold; the classical detector's (method, "
              "threshold, min size) per fold:", ""]
    picks = pd.DataFrame(chosen)
    picks["order"] = picks.protocol.map(PROTOCOLS.index)
    for (protocol, search), part in picks.sort_values("order", kind="stable").groupby(["protocol", "search"],
                                                                                      sort=False):
        lines.append(f"- {protocol}, {search}: " + "; ".join(
            f"({r.method}, {r.threshold:g}, {r.min_size})" if search == CLASSICAL else
            f"({r.threshold:g}, {r.min_size}, {r.peak:g})" for r in part.itertuples()))
    print("\n".join(lines))
    write_results(args.name, {"machine": machine(), "args": {"models": n, "mirror_axes": args.mirror_axes},
                              "grids": grids, "chosen": chosen, "cases": rows,
                              "summary": summary.to_dict("records")}, lines)


if __name__ == "__main__":
    main()
