"""Pretraining-data scaling (SELMA3D 2026 Task 2): test Dice vs the unannotated patches seen.

Each pretrained finetuning run carries the data variant its encoder was pretrained on in its
strategy (``mae@f0.25``: a nested quarter of the patches, ``selma3d.training.runplan``). Per
test category (unseen structures in panels of their own), a run's score is the mean over the
category's test cases of one seed; the curve is the mean over seeds with the seeds' standard
deviation as a band, against the number of distinct unannotated patches in the run's
pretraining subset (``pretrain_data/patches<tag>.csv``), with the same finetuning without
pretraining (``scratch`` or ``scratch_<strategy>``) as a horizontal line.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from selma3d.core.atomic import atomic_path
from selma3d.core.errors import InputError
from selma3d.reporting.style import (
    default_protocol,
    group_order,
    metric_label,
    metric_scale,
    no_data_figure,
    panel_group,
    pyplot,
    save_figure,
    strategy_colours,
    strategy_order,
)
from selma3d.reporting.tables import DEFAULT_UNSEEN, budget_order, read_cases
from selma3d.training.runplan import baseline_for, pretrain_data, split_run_strategy

SUBSET_PREFIX = "patches"
SCALING_COLUMNS = [
    "protocol", "budget", "panel", "strategy", "source", "mode", "pretrain_fraction", "patches", "pretrain_steps",
    "samples_seen", "metric", "mean", "std", "n_seeds", "baseline", "baseline_mean", "baseline_std", "delta",
]


def subset_sizes(index_csvs: Sequence[str | Path]) -> dict[str, int]:
    """Data tag -> patches in its pretraining subset, from ``pretrain_data/patches<tag>.csv``."""
    sizes = {}
    for path in map(Path, index_csvs):
        if not path.name.startswith(SUBSET_PREFIX) or path.suffix != ".csv":
            raise InputError(path, f"a pretraining subset index {SUBSET_PREFIX}<tag>.csv", path.name)
        sizes[path.stem[len(SUBSET_PREFIX):]] = len(pd.read_csv(path, usecols=["patch"]))
    return sizes


def _per_seed(df: pd.DataFrame, metric: str) -> pd.Series:
    return df.groupby("seed")[metric].mean().dropna()


def scaling_table(cases: pd.DataFrame, patches: Mapping[str, int], protocol: str | None = None,
                  budget: str | None = None, runs: Mapping[str, Mapping] | None = None, metric: str = "dice",
                  unseen=DEFAULT_UNSEEN) -> pd.DataFrame:
    """One row per pretrained run (strategy, data variant, mode) × test panel at ``budget``
    (default the largest): the metric's mean and std over seeds (each seed: the mean over the
    panel's cases), the patches of the variant's subset (``patches``: tag -> count), its
    pretraining steps and samples seen (``runs``: run strategy -> ``{"steps", "batch_size"}``),
    and the same finetuning without SSL (``baseline_for``; mode ``full`` when the baseline was
    not run in the run's mode) with ``delta`` = run − baseline."""
    protocol = default_protocol(cases, protocol)
    df = cases[cases["protocol"] == protocol] if "protocol" in cases.columns else cases
    df = df.assign(budget=df["budget"].astype(str))
    if df.empty:
        return pd.DataFrame(columns=SCALING_COLUMNS)
    budget = str(budget) if budget is not None else budget_order(df["budget"])[-1]
    df = df[df["budget"] == budget]
    df = df.assign(panel=[panel_group(s, c, unseen) for s, c in zip(df["structure"], df["category"])])
    present = {split_run_strategy(s)[0] for s in df["strategy"]}
    rows = []
    for (label, mode, panel), sub in df.groupby(["strategy", "mode", "panel"], sort=True):
        data = pretrain_data(label)
        if data is None:
            continue
        strategy, tag = split_run_strategy(label)
        ref = baseline_for(strategy, present)
        base_runs = df[(df["strategy"] == ref) & (df["panel"] == panel)]
        base_modes = set(base_runs["mode"])
        base = base_runs[base_runs["mode"] == (mode if mode in base_modes else "full")]
        seeds, base_seeds = _per_seed(sub, metric), _per_seed(base, metric)
        mean = float(seeds.mean()) if len(seeds) else math.nan
        b_mean = float(base_seeds.mean()) if len(base_seeds) else math.nan
        run = dict((runs or {}).get(label) or {})
        steps = run.get("steps")
        seen = steps * run["batch_size"] if steps is not None and run.get("batch_size") else None
        rows.append({
            "protocol": protocol, "budget": budget, "panel": panel, "strategy": strategy, "source": data[1],
            "mode": mode, "pretrain_fraction": data[0], "patches": patches.get(tag, math.nan),
            "pretrain_steps": steps, "samples_seen": seen, "metric": metric, "mean": mean,
            "std": float(seeds.std(ddof=1)) if len(seeds) > 1 else math.nan, "n_seeds": len(seeds),
            "baseline": ref, "baseline_mean": b_mean,
            "baseline_std": float(base_seeds.std(ddof=1)) if len(base_seeds) > 1 else math.nan,
            "delta": mean - b_mean,
        })
    out = pd.DataFrame(rows, columns=SCALING_COLUMNS)
    order = {p: i for i, p in enumerate(group_order(out["panel"]))}
    return (out.assign(_p=out["panel"].map(order))
            .sort_values(["_p", "strategy", "source", "mode", "pretrain_fraction"]).drop(columns="_p")
            .reset_index(drop=True))


def _pct(value: float, metric: str, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return format(value * metric_scale(metric), "+.1f" if signed else ".1f")


def render_scaling_markdown(table: pd.DataFrame) -> str:
    """Rows: each pretrained strategy × source × mode × fraction, then the baselines; columns: the
    panels' metric, mean ± std over seeds (Δ to the baseline in points)."""
    if table.empty:
        return "No pretrained run to show: configure an SSL strategy in finetune.strategies.\n"
    metric = str(table["metric"].iloc[0])
    panels = group_order(table["panel"])
    head = ["strategy", "source", "mode", "fraction", "patches", "steps"] + panels
    note = (f"Test {metric_label(metric)} vs pretraining data ({table['protocol'].iloc[0]}, label budget "
            f"{table['budget'].iloc[0]}); mean ± std over seeds (each seed: mean over the panel's cases); "
            "Δ = with − without SSL, in points.")
    lines = [note, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    idx = table.set_index(["strategy", "source", "mode", "pretrain_fraction", "panel"])
    keys = list(dict.fromkeys(table[["strategy", "source", "mode", "pretrain_fraction"]].itertuples(index=False)))
    for key in keys:
        first = table[(table["strategy"] == key[0]) & (table["source"] == key[1]) & (table["mode"] == key[2])
                      & (table["pretrain_fraction"] == key[3])].iloc[0]
        cells = []
        for panel in panels:
            if tuple(key) + (panel,) not in idx.index:
                cells.append("")
                continue
            r = idx.loc[tuple(key) + (panel,)]
            text = _pct(r["mean"], metric) + ("" if math.isnan(r["std"]) else f" ± {_pct(r['std'], metric)}")
            cells.append(f"{text} (Δ {_pct(r['delta'], metric, signed=True)})")
        patches = "" if pd.isna(first["patches"]) else str(int(first["patches"]))
        steps = "" if pd.isna(first["pretrain_steps"]) else str(int(first["pretrain_steps"]))
        lines.append("| " + " | ".join([key[0], key[1], key[2], f"{key[3]:g}", patches, steps] + cells) + " |")
    for (ref, mode), sub in table.groupby(["baseline", "mode"], sort=True):
        cells = []
        for panel in panels:
            hit = sub[sub["panel"] == panel]
            if hit.empty:
                cells.append("")
                continue
            r = hit.iloc[0]
            cells.append(_pct(r["baseline_mean"], metric)
                         + ("" if math.isnan(r["baseline_std"]) else f" ± {_pct(r['baseline_std'], metric)}"))
        lines.append("| " + " | ".join([f"{ref} (no SSL)", "–", mode, "0", "0", "0"] + cells) + " |")
    return "\n".join(lines + [""])


def scaling_figure(table: pd.DataFrame, out: str | Path):
    """Test metric vs distinct unannotated patches seen in pretraining (log x): one column per
    panel, one line per strategy (and source, mode) with the seeds' std as a band, each
    strategy's baseline without SSL as a dashed horizontal line (its band dotted)."""
    plt = pyplot()
    if table.empty or table["patches"].isna().all():
        return no_data_figure(out, "no pretrained run with a known pretraining subset to plot")
    metric = str(table["metric"].iloc[0])
    scale = metric_scale(metric)
    panels = group_order(table["panel"])
    colours = strategy_colours(list(table["strategy"]) + list(table["baseline"]))
    order = strategy_order(table["strategy"])
    sources = sorted(set(table["source"]), key=lambda s: (s != "all", s))
    markers = dict(zip(sources, "osD^v<>"))
    multi_mode = table["mode"].nunique() > 1
    fig, axes = plt.subplots(1, len(panels), figsize=(max(2.2 * len(panels), 3.4), 2.6), squeeze=False, sharey=True)
    handles = {}
    for ax, panel in zip(axes[0], panels):
        sub = table[table["panel"] == panel]
        for ref, base in sub.groupby("baseline"):
            b = base.iloc[0]
            h = ax.axhline(b["baseline_mean"] * scale, color=colours[ref], ls="--", lw=1.1)
            if not math.isnan(b["baseline_std"]):
                for sign in (-1, 1):
                    ax.axhline((b["baseline_mean"] + sign * b["baseline_std"]) * scale, color=colours[ref], ls=":",
                               lw=0.6)
            handles.setdefault(f"{ref} (no SSL)", h)
        for (strategy, source, mode), run in sorted(sub.groupby(["strategy", "source", "mode"]),
                                                    key=lambda kv: (order.index(kv[0][0]), kv[0][1], kv[0][2])):
            run = run.dropna(subset=["patches"]).sort_values("patches")
            x = run["patches"].to_numpy(float)
            y = run["mean"].to_numpy(float) * scale
            s = np.nan_to_num(run["std"].to_numpy(float)) * scale
            label = strategy + ("" if source == "all" else f" [{source}]") + (f" ({mode})" if multi_mode else "")
            h, = ax.plot(x, y, color=colours[strategy], marker=markers[source], ms=3.5, lw=1.4,
                         ls="-" if mode == "full" else ":", label=label)
            ax.fill_between(x, y - s, y + s, color=colours[strategy], alpha=0.18, lw=0)
            handles.setdefault(label, h)
        ax.set_xscale("log")
        ticks = sorted({int(v) for v in sub["patches"].dropna()})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_title(panel)
        ax.set_xlabel("unannotated patches seen (log)")
        ax.grid(alpha=0.3, lw=0.5, which="both")
        if panel.startswith("unseen"):
            ax.set_facecolor("#fff7e0")
    axes[0, 0].set_ylabel(f"test {metric_label(metric)}")
    n_seeds = int(table["n_seeds"].max())
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(len(handles), 6), frameon=False,
               bbox_to_anchor=(0.5, -0.04))
    fig.suptitle(f"Test {metric_label(metric)} vs unannotated patches seen in pretraining ({table['protocol'].iloc[0]}, "
                 f"label budget {table['budget'].iloc[0]})\nmean over {n_seeds} seed(s), band ± std; dashed: "
                 "without SSL (dotted: ± std)", fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return save_figure(fig, out)


def write_scaling(cases: pd.DataFrame | str | Path, subset_indexes: Sequence[str | Path], out, protocol=None,
                  budget=None, runs: Mapping[str, Mapping] | None = None, unseen=DEFAULT_UNSEEN) -> list[Path]:
    """The scaling figure (``out.figure``, PNG + PDF) and table (``out.table_md``,
    ``out.table_csv``) from the leaderboard's ``cases.csv`` and the subsets' index CSVs."""
    if not isinstance(cases, pd.DataFrame):
        cases = read_cases(cases)
    table = scaling_table(cases, subset_sizes(subset_indexes), protocol, budget, runs, unseen=unseen)
    scaling_figure(table, out.figure)
    with atomic_path(out.table_md) as tmp:
        tmp.write_text("# Pretraining-data scaling\n\n" + render_scaling_markdown(table), encoding="utf-8")
    with atomic_path(out.table_csv) as tmp:
        table.to_csv(tmp, index=False, float_format="%.10g")
    return [Path(out.figure), Path(out.figure).with_suffix(".pdf"), Path(out.table_md), Path(out.table_csv)]

