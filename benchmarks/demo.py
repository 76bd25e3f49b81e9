"""`make demo`'s main job timed: the workflow on the embedded synthetic dataset, from nothing.

Runs ``snakemake all --profile profiles/local`` on ``config/config.yaml`` (the demo) into a fresh
results folder, timing the wall clock, and sums Snakemake's per-job benchmark files by rule to
show where the time goes (job seconds and CPU seconds). With ``--ref REV`` it first runs the same
demo from a clean checkout of the git revision REV (a temporary worktree), so the ratio compares
two runs on the same machine under the same load. Writes ``benchmarks/results/demo_<date>.{json,md}``.

    python benchmarks/demo.py                 # this checkout only
    python benchmarks/demo.py --ref HEAD~5    # against an earlier revision, same machine
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import load_average, machine


def run_demo(checkout: Path, results: Path, cores: int) -> dict:
    """One demo run from ``checkout`` into ``results``; returns wall seconds and per-rule sums."""
    cmd = [sys.executable, "-m", "snakemake", "all", "--profile", "profiles/local", "--cores", str(cores),
           "--nolock", "--config", f"results_dir={results}"]
    env = {**os.environ, "PYTHONPATH": f"{checkout / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=checkout, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"demo in {checkout.name} failed:\n{res.stderr[-4000:]}")
    rows = []
    for tsv in (results / "benchmarks").rglob("*.tsv"):
        d = pd.read_csv(tsv, sep="\t")
        rule = tsv.relative_to(results / "benchmarks").parts[0].removesuffix(".tsv")
        rows.append({"rule": rule, "s": float(d["s"].sum()), "cpu_s": float(d["cpu_time"].sum())})
    per_rule = pd.DataFrame(rows).groupby("rule").agg(jobs=("s", "size"), s=("s", "sum"), cpu_s=("cpu_s", "sum"))
    per_rule = per_rule.sort_values("s", ascending=False)
    return {"wall_s": round(wall, 1), "jobs": int(per_rule["jobs"].sum()),
            "per_rule": per_rule.round(1).reset_index().to_dict("records")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ref", help="git revision to time first, from a clean temporary worktree")
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    runs = {}
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="selma3d_demo_") as tmp:
        tmp = Path(tmp)
        if args.ref:
            ref = tmp / "ref"
            subprocess.run(["git", "worktree", "add", "--detach", str(ref), args.ref], cwd=REPO, check=True,
                           capture_output=True)
            try:
                runs["reference"] = run_demo(ref, tmp / "ref_results", args.cores)
            finally:
                subprocess.run(["git", "worktree", "remove", "--force", str(ref)], cwd=REPO, check=False)
        runs["this"] = run_demo(REPO, tmp / "results", args.cores)
    stamp = datetime.date.today().isoformat()
    where = machine()
    this = runs["this"]
    ratio = f"{runs['reference']['wall_s'] / this['wall_s']:.2f}×" if "reference" in runs else "–"
    lines = [f"# `make demo` main job ({stamp}, {where})", "",
             f"load average before: {load_before}; after: {load_average()}", "",
             "| run | wall | jobs |", "|---|---|---|"]
    lines += [f"| {name} | {r['wall_s'] / 60:.1f} min | {r['jobs']} |" for name, r in runs.items()]
    if args.ref:
        lines += ["", f"reference: revision {args.ref}; speed-up {ratio}"]
    lines += ["", "| rule | jobs | job s | CPU s |", "|---|---|---|---|"]
    lines += [f"| {r['rule']} | {r['jobs']} | {r['s']:.0f} | {r['cpu_s']:.0f} |" for r in this["per_rule"]]
    readme = [{"path": f"`make demo` main job ({this['jobs']} jobs, 2 cores)" if args.cores == 2 else
               f"`make demo` main job ({this['jobs']} jobs, {args.cores} cores)",
               "measured": f"{this['wall_s'] / 60:.1f} min",
               "reference": f"{runs['reference']['wall_s'] / 60:.1f} min ({args.ref})" if args.ref else "–",
               "ratio": ratio, "goal": "≤ 8 min"}]
    out = REPO / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"demo_{stamp}.md").write_text("\n".join(lines) + "\n")
    (out / f"demo_{stamp}.json").write_text(json.dumps(
        {"date": stamp, "machine": where, "load_before": load_before, "ref": args.ref, "runs": runs,
         "readme": readme}, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
