"""The finetuning recipe on real data: nnU-Net-style (``finetune.recipe: nnunet``) against the
previous one (``legacy``), and both against the classical ``threshold`` strategy.

Runs the workflow on ``config/real_selma.yaml`` (train: c-Fos brain 695 + SELMA3D plaque,
nucleus, vessel patches + TRAILMAP axon planes 17/48; validation = the scored split: brain 753
+ the SELMA3D val patches + axon plane 77), or on ``--configfile``, once per recipe with every
seed (the seeds share the data preparation), with ``scratch`` (the same UNet, same number of
optimizer steps) and ``threshold``, no SSL. Both recipes get the same
inference settings (overlap, mirroring, threshold selection on validation) unless
``--legacy-inference`` gives legacy the old fixed 0.5 threshold without mirroring. Writes the
per-structure Dice / clDice / PQ table (mean ± std over seeds) and job times to
``benchmarks/results/<name>_<date>.{json,md}`` (``--name``, default ``recipe``).

    python benchmarks/recipe.py --seeds 0 1 2            # about 12 CPU-min per recipe and seed
    python benchmarks/recipe.py --seeds 0 --steps 100    # quicker, noisier
    # each seed alone and the ensemble of the seeds (finetune.ensemble)
    python benchmarks/recipe.py --variants legacy@finetune.ensemble=true --steps 300 --mirror-axes
    # the synthetic SSL benchmark, whose test split holds a structure never trained on (microglia)
    python benchmarks/recipe.py --configfile config/ssl_benchmark.yaml --name recipe_synthetic
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]


def parse_variant(variant: str) -> tuple[str, str, dict]:
    """``recipe[:optimizer][@key=value,...]`` -> (recipe, optimizer or "", nested config override).

    Keys are dotted config paths (``plan.normalize=percentile``,
    ``finetune.augmentation.p_scale_per_axis=0``); values are read as YAML."""
    head, _, extra = variant.partition("@")
    recipe, _, optimizer = head.partition(":")
    override: dict = {}
    for item in filter(None, extra.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            sys.exit(f"variant {variant!r}: expected key=value after '@', found {item!r}")
        node = override
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return recipe, optimizer, override


def merge(base: dict, extra: dict) -> dict:
    """``base`` with ``extra`` merged in, blocks recursively."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def slug(variant: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in variant)


def run(variant: str, seeds: list[int], args, workdir: Path) -> tuple[pd.DataFrame, float]:
    """One workflow run for every seed: ``variant`` is a recipe (``legacy``, ``nnunet``),
    ``recipe:optimizer``, either with ``@key=value,...`` config overrides (:func:`parse_variant`).
    The seeds share the run's data preparation."""
    recipe, optimizer, extra = parse_variant(variant)
    out = workdir / slug(variant)
    override = {
        "results_dir": str(out),
        "pretrain": {"strategies": []},
        "finetune": {"strategies": ["scratch", "threshold"], "seeds": list(seeds), "recipe": recipe,
                     "budgets": list(args.budgets), "steps": args.steps, "val_every": max(1, args.steps // 5)},
        "infer": {"overlap": args.overlap, "mirror_axes": list(args.mirror_axes)},
        "evaluate": {"protocols": ["selma3d2026"], "workers": 1},
    }
    if optimizer:
        override["finetune"]["optimizer"] = optimizer
    if recipe == "legacy" and args.legacy_inference:
        override["infer"].update({"mirror_axes": [], "postprocess": {"select_on_validation": False}})
    override = merge(override, extra)
    cfg = workdir / f"{slug(variant)}.yaml"
    cfg.write_text(yaml.safe_dump(override))
    cmd = [sys.executable, "-m", "snakemake", "all", "--nolock", "--cores", str(args.cores), "--configfile",
           str(REPO / args.configfile), str(cfg)]
    if args.keep:  # a complete kept run is reused: only missing or older outputs rerun
        cmd += ["--rerun-triggers", "mtime", "--rerun-incomplete"]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        sys.exit(f"{variant} seeds {seeds} failed:\n{res.stderr[-4000:]}")
    # job seconds from Snakemake's benchmark files: right also when a kept run is reused
    wall = sum(float(pd.read_csv(f, sep="\t")["s"].sum()) for f in (out / "benchmarks").rglob("*.tsv"))
    cases = pd.read_csv(out / "leaderboard" / "cases.csv", dtype={"budget": str})
    cases["recipe"] = variant
    return cases, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=["legacy", "nnunet"],
                    help="recipes, recipe:optimizer (e.g. nnunet:adamw: the nnunet recipe with AdamW), either "
                         "with @key=value,... config overrides (e.g. nnunet@plan.normalize=percentile)")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--overlap", type=float, default=0.25)
    ap.add_argument("--mirror-axes", type=int, nargs="*", default=[0, 1, 2])
    ap.add_argument("--legacy-inference", action="store_true")
    ap.add_argument("--configfile", default="config/real_selma.yaml",
                    help="the workflow config the recipes run on (repository-relative)")
    ap.add_argument("--budgets", nargs="+", default=["all"], help="label budgets (per structure) to train at")
    ap.add_argument("--name", default="recipe", help="results file stem: benchmarks/results/<name>_<date>.*")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--keep", type=Path, help="keep the runs' results here (default: a temporary folder); runs "
                                              "already complete there are reused (Snakemake's mtime rerun trigger "
                                              "only), so variants can be added to an earlier invocation")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="selma3d_recipe_") as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        frames, walls = [], {}
        for variant in args.variants:
            cases, walls[variant] = run(variant, args.seeds, args, workdir)
            frames.append(cases)
            print(f"{variant} seeds {args.seeds}: {walls[variant] / 60:.1f} job-min", flush=True)
    cases = pd.concat(frames, ignore_index=True)
    cases["method"] = cases.apply(
        lambda r: "threshold" if r.strategy == "threshold"
        else f"scratch ({r.recipe}){', ensemble of the seeds' if str(r['mode']).endswith('+ens') else ''}", axis=1)
    cases = cases[~((cases.strategy == "threshold") & (cases.recipe != args.variants[0]))]  # one threshold fit per seed
    metrics = [m for m in ("dice", "cldice", "pq") if m in cases]
    per_seed = cases.groupby(["method", "budget", "structure", "seed"])[metrics].mean()
    table = per_seed.groupby(["method", "budget", "structure"]).agg(["mean", "std"])
    stamp = datetime.date.today().isoformat()
    machine = f"{platform.node() or 'unknown'} ({platform.machine()}, {platform.processor() or 'cpu'}, {args.cores} cores)"
    lines = [f"# Finetuning recipe on {Path(args.configfile).stem}: scored split ({stamp}, {machine})", "",
             (f"variants {args.variants}, seeds {args.seeds}, budgets {args.budgets}, {args.steps} optimizer steps, "
              f"infer overlap {args.overlap}, mirror axes {args.mirror_axes}; mean ± std over seeds of the "
              "per-structure mean"), "",
             "| method | budget | structure | " + " | ".join(metrics) + " |", "|---|---|---|" + "---|" * len(metrics)]
    for (method, budget, structure), row in table.iterrows():
        cells = [f"{100 * row[(m, 'mean')]:.1f} ± {100 * (row[(m, 'std')] if row[(m, 'std')] == row[(m, 'std')] else 0):.1f}"
                 for m in metrics]
        lines.append(f"| {method} | {budget} | {structure} | " + " | ".join(cells) + " |")
    lines += ["", "job time per variant, all seeds (sum of its Snakemake benchmark files): "
              + ", ".join(f"{k} {v / 60:.1f} min" for k, v in walls.items())]
    out = REPO / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}_{stamp}.md").write_text("\n".join(lines) + "\n")
    (out / f"{args.name}_{stamp}.json").write_text(json.dumps({
        "date": stamp, "machine": machine, "args": {k: v for k, v in vars(args).items() if k != "keep"},  # no machine paths in results
        "job_s": walls, "cases": cases.drop(columns=[c for c in cases if c.startswith("Unnamed")]).to_dict("records"),
    }, indent=1, default=str))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
