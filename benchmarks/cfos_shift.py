"""Where the c-Fos gap comes from: the unseen brain, or the method?

real_selma trains c-Fos on brain 695 and scores brain 753, where the UNet stays near 40 % Dice
(the recipe issue's target is 60 %). This benchmark trains the same network with the same
recipe, steps and seed (``config/real_selma.yaml`` with only c-Fos cases, strategies
``scratch`` and ``threshold``) two ways and scores both on every patch of brain 753:

* ``across``: train on brain 695 (8 patches), what real_selma does: one run, tested on 753_0-7;
* ``within``: train on four patches of brain 753 and test on its other four, two folds
  (753_0-3 -> 753_4-7 and back), so each 753 patch is scored once by a net that saw its brain.

Each run selects its checkpoint, threshold and minimum size on its own training cases (the
val split repeats them): no run sees the patches it is scored on, and none is calibrated on
brain 753 unless it trained on it. Per variant and test case: Dice (the workflow's
leaderboard, protocol selma3d2026), the predicted components that touch a true cell (TP) and
those that do not (FP), the true cells missed, and the Dice an oracle reaches by deleting every
FP component of the same mask (what detection alone could win; the rest is the masks'
extent). Read from the ``infer`` rule's masks. One more row, fixed beforehand and fitted on
nothing: the UNet's mask keeping only the components the classical threshold also marks
("scratch gated by threshold": the net's extent, the classical detector's say on what is a cell).

    python benchmarks/cfos_shift.py                 # about 20 CPU-minutes on 2 cores
    python benchmarks/cfos_shift.py --steps 100     # quicker, noisier
    python benchmarks/cfos_shift.py --variants across --steps 1500 --name cfos_shift_steps1500
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import load_average, machine, write_results

def cases(brain: int, ks) -> list[str]:
    return [f"cfos_neuron_{brain}_{k}" for k in ks]


SCORED = cases(753, range(8))
#: variant -> folds, each (train = val cases, test cases)
VARIANTS = {
    "across": [(cases(695, range(8)), SCORED)],
    "within": [(cases(753, range(4)), cases(753, range(4, 8))), (cases(753, range(4, 8)), cases(753, range(4)))],
}
LABELS = {"across": "brain 695 (all 8)", "within": "brain 753 (the other 4)"}


def variant_manifest(source: Path, train: list[str], test: list[str], out: Path) -> Path:
    """The c-Fos rows of ``source``: ``train`` as train and val, ``test`` as test (absolute paths)."""
    from selma3d.data.manifest import read_manifest

    rows = read_manifest(source)
    rows = rows[(rows.structure == "cfos_neuron") & (rows.split != "test")]
    parts = []
    for split, names in (("train", train), ("val", train), ("test", test)):
        part = rows[rows.case.isin(names)].drop_duplicates(["case", "role"]).copy()
        missing = sorted(set(names) - set(part.case))
        if missing:
            sys.exit(f"{source}: expected the c-Fos cases {missing}, found none")
        part["split"] = split
        parts.append(part)
    pd.concat(parts).to_csv(out, index=False)
    return out


def component_counts(pred: np.ndarray, truth: np.ndarray) -> dict:
    """TP / FP predicted components, missed true cells, Dice, and Dice without the FP components."""
    import cc3d

    from selma3d.evaluation.metrics import dice_2026 as dice

    lab = cc3d.connected_components(pred.astype(np.uint8), connectivity=26)
    hit = np.unique(lab[truth & (lab > 0)])
    kept = np.isin(lab, hit) & (lab > 0)
    cells = cc3d.connected_components(truth.astype(np.uint8), connectivity=26)
    found = np.unique(cells[pred & (cells > 0)])

    return {"tp_components": int(len(hit)), "fp_components": int(lab.max()) - int(len(hit)),
            "cells": int(cells.max()), "cells_missed": int(cells.max()) - int(len(found)),
            "dice_recomputed": dice(pred, truth), "dice_without_fp": dice(kept, truth)}


#: the UNet's mask keeping only its components that the classical threshold also marks
GATED = "scratch gated by threshold"


def gate(net_mask: np.ndarray, classical_mask: np.ndarray) -> np.ndarray:
    """The 26-connected components of ``net_mask`` that overlap ``classical_mask``, whole."""
    import cc3d

    lab = cc3d.connected_components(net_mask.astype(np.uint8), connectivity=26)
    keep = np.unique(lab[classical_mask & (lab > 0)])
    return np.isin(lab, keep) & (lab > 0)


def run(name: str, train: list[str], test: list[str], args, workdir: Path) -> pd.DataFrame:
    from selma3d import io
    from selma3d.data.manifest import read_manifest

    out = workdir / name
    manifest = variant_manifest(REPO / "config" / "manifests" / "real_selma.csv", train, test,
                                workdir / f"{name}.csv")
    override = {
        "results_dir": str(out),
        "dataset": {"manifest": str(manifest)},
        "pretrain": {"strategies": []},
        "finetune": {"strategies": ["scratch", "threshold"], "seeds": [args.seed], "steps": args.steps,
                     "val_every": max(1, args.steps // 5)},
        "infer": {"mirror_axes": list(args.mirror_axes)},
        "evaluate": {"protocols": ["selma3d2026"], "workers": 1},
    }
    cfg = workdir / f"{name}.yaml"
    cfg.write_text(yaml.safe_dump(override))
    cmd = [sys.executable, "-m", "snakemake", "leaderboard", "--nolock", "--cores", str(args.cores),
           "--configfile", str(REPO / "config" / "real_selma.yaml"), str(cfg)]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        sys.exit(f"variant {name} failed:\n{res.stderr[-4000:]}")
    board = pd.read_csv(out / "leaderboard" / "cases.csv", dtype={"budget": str})
    board = board[board.case.isin(test)][["strategy", "case", "dice"]]
    if sorted(set(board.case)) != sorted(test):
        sys.exit(f"variant {name}: the leaderboard scores {sorted(set(board.case))}, expected {sorted(test)}")
    truth = {r.case: r.path for r in read_manifest(manifest).itertuples() if r.role == "label" and r.split == "test"}
    rows, masks_of, truths = [], {}, {}
    for r in board.itertuples():
        masks = list((out / "predictions" / r.strategy).rglob(f"{r.case}.nii.gz"))
        if len(masks) != 1:
            sys.exit(f"variant {name}: expected one predicted mask of {r.case} by {r.strategy}, found {masks}")
        pred = np.asarray(io.read_volume(masks[0]).data) > 0
        if r.case not in truths:
            truths[r.case] = np.asarray(io.read_volume(truth[r.case]).data) > 0
        gt = truths[r.case]
        masks_of[r.strategy, r.case] = pred
        rows.append({"variant": name.split("_fold")[0], "run": name, "strategy": r.strategy, "case": r.case, "dice": float(r.dice),
                     **component_counts(pred, gt)})
    for case in test:  # a rule fixed beforehand, nothing fitted on the scored brain
        gated = gate(masks_of["scratch", case], masks_of["threshold", case])
        counts = component_counts(gated, truths[case])
        rows.append({"variant": name.split("_fold")[0], "run": name, "strategy": GATED, "case": case,
                     "dice": counts["dice_recomputed"], **counts})
    job_s = sum(float(pd.read_csv(f, sep="\t")["s"].sum()) for f in (out / "benchmarks").rglob("*.tsv"))
    print(f"{name}: {job_s / 60:.1f} job-min", flush=True)
    frame = pd.DataFrame(rows)
    frame["job_s"] = job_s / len(test)  # per test case, so a variant's sum is its job time
    return frame


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mirror-axes", type=int, nargs="*", default=[])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--name", default="cfos_shift", help="results file stem: benchmarks/results/<name>_<date>.*")
    ap.add_argument("--keep", type=Path, help="keep the runs here (default: a temporary folder)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="selma3d_cfos_shift_") as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        table = pd.concat([run(f"{v}_fold{i}", train, test, args, workdir) for v in args.variants
                           for i, (train, test) in enumerate(VARIANTS[v])], ignore_index=True)
    bad = table[(table.dice - table.dice_recomputed).abs() > 1e-6]
    if not bad.empty:
        sys.exit(f"the masks read back do not give the leaderboard's Dice:\n{bad}")
    summary = table.groupby(["variant", "strategy"], sort=False).agg(
        dice=("dice", "mean"), dice_without_fp=("dice_without_fp", "mean"), tp=("tp_components", "sum"),
        fp=("fp_components", "sum"), cells=("cells", "sum"), missed=("cells_missed", "sum"),
        job_s=("job_s", "sum")).reset_index()
    lines = [f"# c-Fos: the unseen brain against the method ({pd.Timestamp.now():%Y-%m-%d}, {machine()})", "",
             f"config/real_selma.yaml (recipe as shipped), c-Fos cases only, {args.steps} optimizer steps, "
             f"seed {args.seed}, mirror axes {args.mirror_axes}; scored: every patch of brain 753, each by a "
             "run that never saw it; checkpoint, threshold and minimum size selected on each run's own training "
             f"cases; load average at the end {load_average()}. Dice in %, mean over the 8 cases; components "
             "summed over them; job minutes summed over a variant's runs (folds).", "",
             "| train on | strategy | Dice | Dice without FP components | TP components | FP components "
             "| true cells | cells missed | job min |", "|---|---|---|---|---|---|---|---|---|"]
    for r in summary.itertuples():
        lines.append(f"| {LABELS[r.variant]} | {r.strategy} | {100 * r.dice:.1f} | {100 * r.dice_without_fp:.1f} | "
                     f"{r.tp} | {r.fp} | {r.cells} | {r.missed} | {r.job_s / 60:.1f} |")
    short = [c.rsplit("_", 2)[-2] + "_" + c.rsplit("_", 1)[-1] for c in SCORED]
    lines += ["", "per case (Dice in %):", "", "| train on | strategy | " + " | ".join(short) + " |",
              "|---|---|" + "---|" * len(SCORED)]
    for (variant, strategy), part in table.groupby(["variant", "strategy"], sort=False):
        d = part.set_index("case").dice
        lines.append(f"| {LABELS[variant]} | {strategy} | " + " | ".join(f"{100 * d[c]:.1f}" for c in SCORED) + " |")
    print("\n".join(lines))
    write_results(args.name, {"machine": machine(), "args": {k: v for k, v in vars(args).items() if k != "keep"},
                                 "cases": table.to_dict("records"), "summary": summary.to_dict("records")}, lines)


if __name__ == "__main__":
    main()
