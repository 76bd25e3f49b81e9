"""Sliding-window overlap of the test patches: Dice against the truth and seconds per patch.

``infer.overlap`` sets how many windows a patch costs (32³ windows on a 100³ patch: 216 at
0.5, nnU-Net's, against 64 at 0.25). Whether the cheaper grid loses accuracy is a question for
the validation data, over seeds and structures, not one patch: for every finetuned model given,
every annotated case of ``--split`` and every overlap, the foreground probability exactly as
``infer`` computes it (the model's normalisation, Gaussian blending, window batch
``infer.sw_batch_size``, no mirroring unless ``--mirror``), then per structure

- Dice at the fixed threshold 0.5, no post-processing (annotated voxels only, as calibration
  scores);
- Dice after the post-processing search of calibration (threshold x peak x minimum component
  size, :func:`selma3d.inference.postprocess.select_per_structure`) on the same cases, each
  overlap calibrated on its own probabilities (in-sample: real_selma's validation split is its
  test split, so both overlaps are equally optimistic);

as mean ± std over the models (seeds), and the seconds per patch of each overlap (mean over
all cases and models, the grids alternating case by case). ``--mirror`` adds the last overlap
with test-time mirroring over all three axes (8 flips, ``infer.mirror_axes``' default), so
what mirroring buys on these cases is measured at the same time.

    python benchmarks/overlap.py --models RUN/finetune/scratch/full/ball_s{0,1,2}/model.pt [--mirror]

Writes ``benchmarks/results/overlap_<date>.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import load_average, machine, write_results


def main(argv: list[str] | None = None) -> int:
    from selma3d.core.schema import schema_default

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", required=True, help="finetuned model.pt files (one per seed)")
    p.add_argument("--manifest", default=str(REPO / "config" / "manifests" / "real_selma.csv"))
    p.add_argument("--split", default="test", help="annotated cases to score (real_selma: test = validation)")
    p.add_argument("--overlaps", type=float, nargs="+", default=[0.5, 0.25])
    p.add_argument("--mirror", action="store_true", help="also the last overlap with 8-flip mirroring")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-write", action="store_true", help="print only")
    args = p.parse_args(argv)

    import torch

    from selma3d.inference.calibrate import annotated_cases
    from selma3d.inference.patches import probability
    from selma3d.inference.postprocess import select_per_structure
    from selma3d.training.finetune import load_model

    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    batch, blend = int(schema_default("infer.sw_batch_size")), schema_default("infer.blend")
    grids_pp = {k: schema_default(f"infer.postprocess.{k}") for k in ("thresholds", "min_sizes", "peaks")}
    grids = [(f"{o:g}", o, ()) for o in args.overlaps]
    if args.mirror:
        grids.append((f"{args.overlaps[-1]:g} + mirror", args.overlaps[-1], (0, 1, 2)))
    rows, seconds = [], {g[0]: [] for g in grids}
    for m, model in enumerate(args.models):
        net, payload = load_model(model, device)
        roi = tuple(int(s) for s in payload["config"]["patch_size"])
        cases = annotated_cases(args.manifest, args.split, payload)
        if not cases:
            raise SystemExit(f"{args.manifest}: no annotated {args.split!r} cases")
        probs = {g[0]: [] for g in grids}
        for case in cases:
            for label, o, mirror in grids:
                t0 = time.perf_counter()
                probs[label].append(probability(net, case["image"], roi, device, o, batch, blend, mirror))
                seconds[label].append(time.perf_counter() - t0)
        structures = [str(c["row"]["structure"]) for c in cases]
        labels = [c["label"] for c in cases]
        ignores = [c["ignore"] for c in cases]
        for label, o, mirror in grids:
            chosen = select_per_structure(probs[label], labels, structures, ignores, **grids_pp)
            for s, r in chosen.items():
                rows.append({"model": m, "grid": label, "overlap": o, "mirror": bool(mirror), "structure": s,
                             "dice_fixed": 100 * r["default_score"],
                             "dice_calibrated": 100 * r["score"], "threshold": r["threshold"],
                             "min_size": r["min_size"], "peak": r["peak"], "cases": len(r["per_case"])})
        print(f"model {m + 1}/{len(args.models)} done: {len(cases)} cases")
    df = pd.DataFrame(rows)

    def pm(x):
        return f"{x.mean():.1f} ± {x.std(ddof=0):.1f}"

    table = df.groupby(["structure", "grid"], sort=False).agg(dice_fixed=("dice_fixed", pm),
                                                     dice_calibrated=("dice_calibrated", pm),
                                                     cases=("cases", "first")).reset_index()
    mean = df.groupby(["grid", "model"])[["dice_fixed", "dice_calibrated"]].mean().groupby("grid").agg(
        ["mean", "std"])
    where = machine("cpu", args.threads)
    s_per = {label: float(np.mean(v)) for label, v in seconds.items()}
    lines = [f"# Test-patch window overlap: Dice and time ({time.strftime('%Y-%m-%d')}, {where})", "",
             (f"{len(args.models)} models (seeds), split {args.split!r} of {Path(args.manifest).name}, window "
              f"{'x'.join(map(str, roi))}, batch {batch}, {blend} blending, {args.threads} threads, "
              f"{'mirroring (8 flips) only on the + mirror grid' if args.mirror else 'no mirroring'}; "
              f"load average {load_average()}; Dice in %, mean ± std over the models"), "",
             "| structure | overlap | cases | Dice at 0.5 | Dice calibrated (in-sample) |", "|---|---|---|---|---|"]
    table = table.sort_values("structure", kind="stable")
    lines += [f"| {r.structure} | {r.grid} | {r.cases} | {r.dice_fixed} | {r.dice_calibrated} |"
              for r in table.itertuples()]
    lines += ["", "| overlap | mean of structures, Dice at 0.5 | … calibrated | seconds per patch |", "|---|---|---|---|"]
    for label, _, _ in grids:
        f, c = mean.loc[label, "dice_fixed"], mean.loc[label, "dice_calibrated"]
        lines.append(f"| {label} | {f['mean']:.1f} ± {f['std']:.1f} | {c['mean']:.1f} ± {c['std']:.1f} | "
                     f"{s_per[label]:.2f} |")
    base = grids[0][0]
    lines += [""] + [f"time ratio overlap {base} / {label} = {s_per[base] / s_per[label]:.2f}x"
                     for label, _, _ in grids[1:]]
    print("\n".join(lines))
    if not args.no_write:
        write_results("overlap", {"machine": where, "load_average": load_average(),
                                  "args": {k: v for k, v in vars(args).items() if k != "no_write"} | {
                                      "models": [Path(m).parent.name for m in args.models]},
                                  "seconds_per_patch": s_per,
                                  "rows": rows}, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
