"""The README's measured sections, regenerated from the files the measurements wrote.

A section is the text between ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->`` in
README.md; nothing between the markers is typed by hand. Sources:

- ``recipe`` / ``recipe_synthetic`` / ``recipe_ensemble`` / ``recipe_optimizer``: the newest
  ``benchmarks/results/recipe[_synthetic|_ensemble|_optimizer]_<date>.md`` (``benchmarks/recipe.py``
  on real_selma / on the synthetic SSL benchmark / each seed against the ensemble of the seeds /
  the nnunet recipe with AdamW against legacy);
- ``cfos_shift``: the newest ``benchmarks/results/cfos_shift_<date>.md`` (``benchmarks/cfos_shift.py``:
  c-Fos trained on the other brain against on the scored brain), its tables as written;
- ``recipe_peaks``: the newest ``benchmarks/results/recipe_peaks_<date>.md`` (``benchmarks/recipe.py
  --name recipe_peaks``: the legacy rows again with today's defaults, the peak axis included);
- ``recipe_defaults``: the newest ``benchmarks/results/recipe_defaults_<date>.md`` (the same with
  every inference default: overlap 0.25, test-time mirroring, the peak axis);
- ``overlap``: the newest ``benchmarks/results/overlap_<date>.md`` (``benchmarks/overlap.py``: test
  patches at overlap 0.5 and 0.25, Dice and time), as written;
- ``postprocess``: the newest ``benchmarks/results/postprocess_<date>.md`` (``benchmarks/postprocess.py``:
  the peak filter's search against the plain one, calibrated on each brain), as written;
- ``ssl_real``: ``docs/studies/real_selma_ssl/`` (per-case scores, the label-efficiency figure and
  the run's date, machine and job times), copied from a workflow run's results folder by
  ``--study``;
- ``scaling_synthetic``, ``scaling_real``: ``docs/studies/ssl_scaling/`` and
  ``docs/studies/real_selma_scaling/`` (the pretraining-data scaling table and figure of a run,
  copied by ``--study`` like ``ssl_real``);
- ``performance``: the newest ``benchmarks/results/<benchmark>_<date>.json`` of each benchmark in
  ``PERFORMANCE``, read into rows (path, measured, reference in the same run, ratio, goal).

    python benchmarks/readme.py            # rewrite the sections in README.md
    python benchmarks/readme.py --check    # exit 1 when README.md is out of date (tests run this)
    python benchmarks/readme.py --study real_selma_ssl results/real_selma_ssl \\
        --configfile config/real_selma.yaml config/studies/real_selma_ssl.yaml      # copy a run, then rewrite
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import re
import shutil
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
STUDIES = REPO / "docs" / "studies"
MARK = re.compile(r"(<!-- generated:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /generated:(?P=name) -->)", re.DOTALL)


def newest(prefix: str, suffix: str) -> Path | None:
    """The newest ``<prefix>_<YYYY-MM-DD><suffix>`` under benchmarks/results (dates sort as text)."""
    found = sorted(RESULTS.glob(f"{prefix}_[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]{suffix}"))
    return found[-1] if found else None


def rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def recipe_section(name: str = "recipe") -> str:
    src = newest(name, ".md")
    if src is None:
        return "_No recipe benchmark has been run yet (`python benchmarks/recipe.py`)._\n"
    lines = src.read_text().splitlines()
    table = [ln for ln in lines if ln.startswith("|")]
    notes = [ln for ln in lines[1:] if ln and not ln.startswith("|")]
    return "\n".join([f"From [{rel(src)}]({rel(src)}) — {lines[0].lstrip('# ')}:", "", *table, "",
                      *(f"_{n}_" for n in notes)]) + "\n"


def _mean_std(values: pd.Series) -> str:
    std = values.std() if len(values) > 1 else float("nan")
    return f"{100 * values.mean():.1f}" + (f" ± {100 * std:.1f}" if pd.notna(std) else "")


def ssl_table(cases: pd.DataFrame) -> list[str]:
    """Dice per structure (mean ± std over seeds of each seed's case mean), rows strategy × budget,
    then each strategy's mean difference to scratch at the same budget and seed."""
    cases = cases[cases["protocol"] == max(cases["protocol"].unique())]
    per_seed = cases.groupby(["strategy", "budget", "seed", "structure"])["dice"].mean().unstack("structure")
    per_seed["mean"] = per_seed.mean(axis=1)
    structures = [c for c in per_seed.columns if c != "mean"]
    budgets = sorted(per_seed.index.get_level_values("budget").unique(), key=lambda b: (b == "all", str(b).zfill(6)))
    order = ["scratch", "threshold"] + sorted(set(per_seed.index.get_level_values("strategy")) - {"scratch", "threshold"})
    lines = ["| strategy | budget | seeds | " + " | ".join(structures) + " | mean | Δ mean vs scratch (seeds better) |",
             "|---|---|---|" + "---|" * (len(structures) + 2)]
    for strategy in order:
        for budget in budgets:
            if (strategy, budget) not in per_seed.droplevel("seed").index:
                continue
            rows = per_seed.xs((strategy, budget), level=("strategy", "budget"))
            cells = [_mean_std(rows[s].dropna()) for s in structures] + [_mean_std(rows["mean"])]
            delta = "–"
            if strategy != "scratch" and ("scratch", budget) in per_seed.droplevel("seed").index:
                base = per_seed.xs(("scratch", budget), level=("strategy", "budget"))["mean"]
                diff = (rows["mean"] - base).dropna()
                if len(diff):
                    delta = f"{100 * diff.mean():+.1f} ({int((diff > 0).sum())} of {len(diff)})"
            lines.append(f"| {strategy} | {budget} | {len(rows)} | " + " | ".join(cells) + f" | {delta} |")
    return lines


def result_section(name: str) -> str:
    """The newest ``<name>_<date>.md`` as written (headline turned into a sourced sentence)."""
    src = newest(name, ".md")
    if src is None:
        return f"_Not measured yet (`python benchmarks/{name}.py`)._\n"
    lines = src.read_text().splitlines()
    return "\n".join([f"From [{rel(src)}]({rel(src)}) — {lines[0].lstrip('# ')}:", *lines[1:]]).rstrip() + "\n"


def ssl_real_section(name: str = "real_selma_ssl") -> str:
    folder = STUDIES / name
    if not (folder / "cases.csv").exists():
        return f"_Not run yet: `python benchmarks/readme.py --study {name} RESULTS_DIR` copies a finished run._\n"
    meta = json.loads((folder / "meta.json").read_text())
    cases = pd.read_csv(folder / "cases.csv", dtype={"budget": str})
    head = (f"{run_caption(meta)}; validation Dice in % (validation = the scored split), "
            f"mean ± std over seeds of each seed's mean over the cases; Δ: the strategy's mean minus "
            f"scratch's, same budget and seed. {job_times(meta)}" + (f" {meta['note']}" if meta.get("note") else ""))
    lines = [head, "", *ssl_table(cases), ""]
    if (folder / "dice_vs_budget.png").exists() and cases["budget"].nunique() > 1:
        lines += [f"![Validation Dice vs label budget, real data]({rel(folder / 'dice_vs_budget.png')})", ""]
    return "\n".join(lines)


def run_caption(meta: dict) -> str:
    """Which configs ran, when and on what machine."""
    return (f"Generated from the workflow run of {', '.join(f'`{c}`' for c in meta['configfiles'])} on "
            f"{meta['date']} ({meta['machine']})")


def job_times(meta: dict) -> str:
    """The run's job time in all and its four most expensive rules (Snakemake's benchmark files)."""
    top = sorted(meta["job_s"].items(), key=lambda kv: -kv[1])[:4]
    return (f"Jobs took {sum(meta['job_s'].values()) / 60:.0f} CPU-job-minutes in all "
            f"({', '.join(f'{k} {v / 60:.0f}' for k, v in top)}).")


def scaling_section(name: str) -> str:
    """A pretraining-data scaling study: the workflow's tables/scaling.md and its figure."""
    folder = STUDIES / name
    if not (folder / "scaling.md").exists():
        return f"_Not run yet: `python benchmarks/readme.py --study {name} RESULTS_DIR` copies a finished run._\n"
    meta = json.loads((folder / "meta.json").read_text())
    body = [ln for ln in (folder / "scaling.md").read_text().splitlines() if not ln.startswith("# ")]
    lines = [f"{run_caption(meta)}. {job_times(meta)}", *body]
    if (folder / "pretrain_scaling.png").exists():
        alt = f"Test Dice vs unannotated patches seen in pretraining ({name}, {meta['date']}, {meta['machine']})"
        lines += ["", f"![{alt}]({rel(folder / 'pretrain_scaling.png')})", ""]
    return "\n".join(lines)


def _preprocess_rows(d: dict) -> list[dict]:
    rows = [r for r in d["rows"] if "error" not in r]
    out = []
    for size in dict.fromkeys(r["size"] for r in rows):
        here = {r["kind"]: r for r in rows if r["size"] == size}
        new, ref = here.get("rules"), here.get(d.get("reference", "staged"))
        if new is None:
            continue
        gbs = new["raw_bytes"] / new["times"]["total"] / 1e9
        out.append({"path": f"streaming preprocessing, rules' path ({new['raw_bytes'] / 2**30:.1f} GiB TIFF series "
                            f"→ pyramid → patches)",
                    "measured": f"{gbs:.2f} GB/s, RSS {new['peak_rss_gib']:.2f} GiB"
                                + ("" if new.get("same_as_reference") is not False else " (outputs DIFFER)"),
                    "reference": "–" if ref is None else
                                 f"{ref['raw_bytes'] / ref['times']['total'] / 1e9:.2f} GB/s (previous staged path)",
                    "ratio": "–" if ref is None else f"{ref['times']['total'] / new['times']['total']:.2f}×",
                    "goal": "≥ 0.65 GB/s, RSS ≤ 2 GiB"})
    return out


def _inference_rows(d: dict) -> list[dict]:
    shape = "×".join(map(str, d["small_shape"]))
    return [{"path": f"whole-volume prediction vs MONAI sliding window ({shape}, roi {d['args']['roi']}³, "
                     f"{d['args']['threads']} threads, load average {d.get('load_average', '?').split()[0]})",
             "measured": f"{d['blockwise']['seconds']:.1f} s (max prob. diff {d['max_abs_prob_diff']:.0e})",
             "reference": f"{d['monai']['seconds']:.1f} s (MONAI `sliding_window_inference`)",
             "ratio": f"{d['ratio']:.2f}×", "goal": "≥ 1.5×, same output, memory bounded by the block"}]


def _row(path: str, measured: str, reference: str = "–", ratio: str = "–", goal: str = "–") -> dict:
    """One row of the performance table."""
    return {"path": path, "measured": measured, "reference": reference, "ratio": ratio, "goal": goal}


def _patch_rows(d: dict) -> list[dict]:
    out = [{"path": f"test-patch inference, 100³ real c-Fos patch, {d['model']}, overlap {d['overlap']}, "
                    f"{d['threads']} thread, load average {d.get('load_average', '?').split()[0]}",
            "measured": f"{d['segment_case_s_per_patch']:.1f} s/patch"
                        + (" (identical output)" if d["equal_output"] else " (output DIFFERS)"),
            "reference": f"{d['reference_s_per_patch']:.1f} s/patch (MONAI sliding window, as before)",
            "ratio": f"{d['ratio']:.2f}×", "goal": "≤ 3 s/patch"}]
    bound = d.get("compute_bound")
    if bound:  # can the goal be met at equal output on this machine at all?
        out.append(_row(f"… the work of one patch on that grid: {bound['gflop_per_patch']:.0f} GFLOP (3 s/patch needs "
                        f"{bound['gflops_needed_for_3s']:.0f} GFLOP/s)",
                        f"{bound['achieved_gflops']:.0f} GFLOP/s achieved",
                        f"{bound['matmul_gflops']:.0f} GFLOP/s (fp32 matrix multiply, {d['threads']} thread: "
                        f"{bound['seconds_at_matmul_rate']:.1f} s/patch at best)",
                        f"{bound['achieved_gflops'] / bound['matmul_gflops']:.2f} of it"))
    grids = pd.DataFrame(d.get("grids") or [])
    if not grids.empty and "dice_vs_truth_stored_postprocess" in grids:
        grids["size"] = grids.roi.map(lambda r: r[0])
        mean = grids.groupby(["size", "overlap"], sort=False)[["seconds", "dice_vs_truth_stored_postprocess"]].mean()
        mean = mean.reset_index()
        ref = mean.iloc[0]
        # the fastest other overlap at the model's window (what infer.overlap sets) whose Dice against
        # the truth is no worse than the reference grid's
        other = mean.iloc[1:][mean.iloc[1:]["size"] == ref["size"]]
        ok = other[(other.dice_vs_truth_stored_postprocess >= ref.dice_vs_truth_stored_postprocess - 1e-9)
                   & (other.seconds < ref.seconds)]
        if not ok.empty:
            r = ok.loc[ok.seconds.idxmin()]
            out.append({"path": f"… the fastest window overlap at no lower Dice vs truth: {int(r['size'])}³, overlap "
                                f"{r.overlap:g} (infer.overlap; not the same output)",
                        "measured": f"{r.seconds:.1f} s/patch, Dice {100 * r.dice_vs_truth_stored_postprocess:.1f} %",
                        "reference": f"{ref.seconds:.1f} s/patch, Dice {100 * ref.dice_vs_truth_stored_postprocess:.1f} % "
                                     f"(overlap {d['overlap']:g})",
                        "ratio": f"{ref.seconds / r.seconds:.2f}×", "goal": "≤ 3 s/patch"})
    if d.get("tta"):
        out.append(_row("… with test-time mirroring (8 flips)", f"{d['tta']['seconds']:.0f} s/patch"))
    return out


def _metrics_rows(d: dict) -> list[dict]:
    out = []
    for r in d["rows"]:
        if r["metric"].startswith("FULL case_metrics") and r["case"].startswith("vessel"):
            threads = "2 threads" if r["metric"].endswith("2 threads") else "1 thread"
            out.append({"path": f"official metrics, all columns, {r['case'].replace('_', ' ')}³, {r['protocol']}, "
                                f"{threads}",
                        "measured": f"{r['ours_s']:.2f} s" + (" (identical numbers)" if r["same"] else " (DIFFER)"),
                        "reference": f"{r['ref_s']:.2f} s (the official evaluators' code)",
                        "ratio": f"{r['ratio']:.1f}×", "goal": "≥ 5×, identical numbers"})
    return out


def _loader_rows(d: dict) -> list[dict]:
    rows = {r["stage"]: r for r in d["rows"]}
    out = []
    for stage, label in (("pretrain: loader total", "pretraining loader (zarr read, crop, normalise, collate)"),
                         ("finetune: total", "finetuning loader (crop, nnU-Net augmentation, collate)")):
        if stage in rows:
            r = rows[stage]
            out.append({"path": f"{label}, 96³, one CPU worker", "measured": f"{r['patches_per_s']:.1f} patches/s",
                        "reference": f"{r['ref_patches_per_s']:.1f} patches/s (path before)",
                        "ratio": f"{r['ratio']:.2f}×", "goal": "≥ 25 patches/s per worker"})
    return out


#: README rows of each benchmark's result file, in the order of the performance table
def _overlap_rows(d: dict) -> list[dict]:
    """infer.overlap's default against nnU-Net's on the validation cases, over the models (seeds),
    and test-time mirroring at the default where the run measured it."""
    rows = pd.DataFrame(d["rows"])
    per_model = rows.groupby(["grid", "model"]).dice_calibrated.mean().groupby("grid").agg(["mean", "std"])
    sec = {str(k): v for k, v in d["seconds_per_patch"].items()}
    ours, ref, mirrored = "0.25", "0.5", "0.25 + mirror"
    if ours not in sec or ref not in sec:
        return []
    n_models = rows.model.nunique()
    n_cases = int(rows[rows.grid == ours].groupby("model").cases.sum().iloc[0])

    def dice(g):
        return f"Dice {per_model.loc[g, 'mean']:.1f} ± {per_model.loc[g, 'std']:.1f} %"

    out = [_row(f"test patches at infer.overlap {ours} (default) vs {ref} (nnU-Net's), {n_cases} real validation "
                f"cases x {n_models} seeds, calibrated, {d['args']['threads']} threads",
                f"{sec[ours]:.2f} s/patch, {dice(ours)}", f"{sec[ref]:.2f} s/patch, {dice(ref)}",
                f"{sec[ref] / sec[ours]:.2f}×", "≤ 3 s/patch (not the same output: fewer windows)")]
    if mirrored in sec:
        out.append(_row(f"… at overlap {ours} with test-time mirroring (8 flips), same cases and seeds",
                        f"{sec[mirrored]:.2f} s/patch, {dice(mirrored)}", f"{sec[ours]:.2f} s/patch, {dice(ours)}",
                        f"{sec[ours] / sec[mirrored]:.2f}×"))
    return out


PERFORMANCE = {"preprocess": _preprocess_rows, "inference": _inference_rows, "patch_inference": _patch_rows,
               "overlap": _overlap_rows, "metrics": _metrics_rows, "loader": _loader_rows, "demo": lambda d: d["readme"]}


def performance_section() -> str:
    rows = []
    for name, extract in PERFORMANCE.items():
        path = newest(name, ".json")
        if path is None:
            rows.append(f"| `benchmarks/{name}.py` | not run yet | – | – | – | – |")
            continue
        data = json.loads(path.read_text())
        for row in extract(data):
            rows.append(f"| {row['path']} | {row['measured']} | {row.get('reference', '–')} | "
                        f"{row.get('ratio', '–')} | {row.get('goal', '–')} | "
                        f"[{data.get('date', '?')}, {data.get('machine', '?')}]({rel(path)}) |")
    return "\n".join(["| path | measured | reference (same run) | ratio | goal | result file |",
                      "|---|---|---|---|---|---|", *rows]) + "\n"


SECTIONS = {"recipe": recipe_section, "recipe_synthetic": lambda: recipe_section("recipe_synthetic"),
            "recipe_ensemble": lambda: recipe_section("recipe_ensemble"),
            "recipe_optimizer": lambda: recipe_section("recipe_optimizer"),
            "recipe_peaks": lambda: recipe_section("recipe_peaks"),
            "recipe_defaults": lambda: recipe_section("recipe_defaults"),
            "overlap": lambda: result_section("overlap"),
            "cfos_shift": lambda: result_section("cfos_shift"),
            "postprocess": lambda: result_section("postprocess"),
            "ssl_real": ssl_real_section, "performance": performance_section,
            "scaling_synthetic": lambda: scaling_section("ssl_scaling"),
            "scaling_real": lambda: scaling_section("real_selma_scaling")}


def render(text: str) -> str:
    def fill(m: re.Match) -> str:
        name = m.group("name")
        if name not in SECTIONS:
            sys.exit(f"README.md: unknown generated section {name!r} (known: {', '.join(SECTIONS)})")
        return m.group(1) + SECTIONS[name]() + m.group(4)

    return MARK.sub(fill, text)


def copy_study(name: str, results: Path, configfiles: list[str], note: str = "") -> None:
    """Copy a finished run's per-case scores, label-efficiency figure and (a scaling study) scaling
    table and figure into docs/studies/NAME."""
    cases = results / "leaderboard" / "cases.csv"
    if not cases.exists():
        sys.exit(f"{cases}: expected the leaderboard's per-case table of a finished run; not found")
    out = STUDIES / name
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cases, out / "cases.csv")
    for made in (results / "figures" / "dice_vs_budget.png", results / "figures" / "pretrain_scaling.png",
                 results / "tables" / "scaling.md", results / "tables" / "scaling.csv"):
        if made.exists():
            shutil.copyfile(made, out / made.name)
    job_s: dict[str, float] = {}
    for tsv in (results / "benchmarks").rglob("*.tsv"):
        rule = tsv.relative_to(results / "benchmarks").parts[0].removesuffix(".tsv")
        job_s[rule] = job_s.get(rule, 0.0) + float(pd.read_csv(tsv, sep="\t")["s"].sum())
    meta = {"date": datetime.date.today().isoformat(),
            "machine": f"{platform.node() or 'unknown'} ({platform.machine()}, CPU)",
            "configfiles": configfiles, "job_s": {k: round(v, 1) for k, v in job_s.items()}}
    if note:
        meta["note"] = note
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="exit 1 when README.md is not what the files generate")
    ap.add_argument("--study", nargs=2, metavar=("NAME", "RESULTS_DIR"))
    ap.add_argument("--configfile", nargs="+", default=[], help="with --study: the config files of the run")
    ap.add_argument("--note", default="", help="with --study: how the run differed from its config files")
    args = ap.parse_args()
    if args.study:
        copy_study(args.study[0], Path(args.study[1]), args.configfile, args.note)
    readme = REPO / "README.md"
    text = readme.read_text()
    new = render(text)
    if args.check:
        if new != text:
            sys.exit("README.md is out of date with benchmarks/results and docs/studies: run python benchmarks/readme.py")
        print("README.md: generated sections up to date")
        return
    readme.write_text(new)
    print(f"README.md: {len(MARK.findall(new))} generated sections written")


if __name__ == "__main__":
    main()
