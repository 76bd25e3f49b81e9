"""Paper-size figures of a run: data, pretraining, finetuning and evaluation.

Every public ``*_figure``/panel function draws one figure, writes it as PNG and PDF (same stem)
atomically and returns the matplotlib ``Figure`` (closed, so tests can count its axes). All
share one style (``STYLE``), one colour per strategy (``strategy_colours``: ``scratch`` grey,
SSL strategies from a fixed palette) and one grouping of structures into panels
(``panel_group``: the four categories, with unseen structures — microglia in SELMA3D — in panels
of their own). Aggregates come from ``selma3d.evaluation.leaderboard`` / ``selma3d.reporting.tables`` so figures and
tables agree.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from selma3d import io
from selma3d.core.errors import InputError
from selma3d.evaluation.leaderboard import GROUP_METRICS, group_of
from selma3d.data.manifest import parse_spacing, read_manifest
from selma3d.training.runplan import is_pretrained
from selma3d.core.structures import CATEGORIES
from selma3d.reporting.tables import BASELINE, DEFAULT_UNSEEN, ablation_table, budget_key, budget_order, read_cases
from selma3d.reporting.style import (DIST_METRICS, GT_RGB, OFF_PROTOCOL_FACE, PANEL_W, PRED_RGB, UNSEEN_FACE, default_protocol, group_order, integer_x, metric_axis, metric_label, metric_scale, no_data_figure, panel_group, pyplot, run_label, save_figure, secondary_metric, strategy_colours, strategy_order, unseen_structures)
from selma3d.reporting.images import (read_label, best_slice, contrast, image_axes, outline, overlay, read_mask, scale_bar)


log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------- qualitative


def choose_cases(pairs: pd.DataFrame, scores: pd.Series | None, per_structure: int = 1) -> pd.DataFrame:
    """Test cases to show: per structure, ``per_structure`` cases spread over the score range
    (one: the case closest to the median score — representative, not cherry-picked)."""
    picks = []
    for _, sub in pairs.sort_values("case").groupby("structure", sort=True):
        if scores is not None and sub["case"].isin(scores.index).any():
            s = scores.reindex(sub["case"]).fillna(scores.median() if len(scores) else 0.0)
            order = sub.assign(_s=s.values).sort_values(["_s", "case"], ascending=[False, True])
            if per_structure == 1:
                med = order["_s"].median()
                order = order.assign(_d=(order["_s"] - med).abs()).sort_values(["_d", "case"])
                picks.append(order.head(1))
                continue
            idx = np.unique(np.round(np.linspace(0, len(order) - 1, min(per_structure, len(order)))).astype(int))
            picks.append(order.iloc[idx])
        else:
            picks.append(sub.head(per_structure))
    out = pd.concat(picks, ignore_index=True) if picks else pairs.head(0)
    return out.drop(columns=[c for c in ("_s", "_d") if c in out.columns])


def _qualitative(manifest: str | Path, runs: Mapping[str, str | Path], out: str | Path, view: str,
                 cases: pd.DataFrame | None = None, split: str = "test", per_structure: int = 1,
                 protocol: str | None = None, case_names: Sequence[str] | None = None):
    from selma3d.data.manifest import annotated_pairs

    plt = pyplot()
    table = read_manifest(manifest)
    pairs = annotated_pairs(table, split)
    if pairs.empty:
        return no_data_figure(out, f"no annotated {split} cases in the manifest")
    unseen = unseen_structures(table)
    scores = None
    per_run = {}
    if cases is not None and not cases.empty:
        protocol = default_protocol(cases, protocol)
        sub = cases[cases["protocol"] == protocol] if "protocol" in cases.columns else cases
        per_run = {k: v for k, v in sub.groupby(["strategy", "mode", "budget", "seed"])}
        scores = sub.groupby("case")["dice"].mean()
    if case_names:
        picks = pairs[pairs["case"].isin(case_names)].sort_values(["structure", "case"])
    else:
        picks = choose_cases(pairs, scores, per_structure)
    titles = ["raw", "ground truth"] + list(runs)
    n_rows, n_cols = len(picks), len(titles)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(PANEL_W * n_cols, PANEL_W * n_rows + 0.35), squeeze=False,
                             gridspec_kw={"wspace": 0.04, "hspace": 0.08})
    for r, (_, row) in enumerate(picks.iterrows()):
        raw = io.read_volume(row.image).data.astype(np.float32)
        gt = read_label(row, raw.shape)
        spacing = parse_spacing(row.spacing_um)
        masks = [None, gt] + [read_mask(Path(d) / f"{row.case}.nii.gz", raw.shape, "prediction") for d in runs.values()]
        if view == "slice":
            z = best_slice(gt)
            base = contrast(raw[z])
            images = [np.repeat(base[..., None], 3, axis=2)] + [
                overlay(base, m[z], GT_RGB if i == 1 else PRED_RGB) for i, m in enumerate(masks) if m is not None]
            where = f"z = {z}"
        else:
            base = contrast(raw.max(axis=0))
            images = [np.repeat(base[..., None], 3, axis=2)] + [
                outline(base, m.any(axis=0), GT_RGB if i == 1 else PRED_RGB) for i, m in enumerate(masks) if m is not None]
            where = f"MIP of {raw.shape[0]} slices"
        for c, img in enumerate(images):
            ax = axes[r, c]
            ax.imshow(img, interpolation="nearest")
            image_axes(ax)
            if r == 0:
                ax.set_title(titles[c])
            if c == 0:
                scale_bar(ax, raw.shape[2], spacing[2])
                tag = " (unseen)" if row.structure in unseen else ""
                ax.set_ylabel(f"{row.structure}{tag}\n{row.case}\n{where}", fontsize=6.5)
            if c >= 2 and per_run:
                key = _run_key(list(runs.values())[c - 2])
                hit = per_run.get(key)
                if hit is not None and row.case in set(hit["case"]):
                    d = float(hit.loc[hit["case"] == row.case, "dice"].iloc[0])
                    ax.text(0.03, 0.97, f"Dice {100 * d:.1f}%", transform=ax.transAxes, va="top", ha="left",
                            fontsize=6.5, color="white", bbox={"facecolor": "black", "alpha": 0.55, "pad": 1.2, "lw": 0})
    what = "one slice (the one with most ground truth): prediction red, ground truth green" if view == "slice" else \
        "maximum-intensity projection along z with mask outlines: prediction red, ground truth green"
    fig.suptitle(f"Test cases, {what}", y=1.0, fontsize=8)
    return save_figure(fig, out)


def _run_key(path: str | Path) -> tuple:
    """(strategy, mode, budget, seed) of a folder ``.../<strategy>/<mode>/b<budget>_s<seed>``."""
    p = Path(path)
    budget, _, seed = p.name[1:].rpartition("_s")
    return (p.parts[-3], p.parts[-2], budget, int(seed) if seed.isdigit() else seed)


def qualitative_panel(manifest: str | Path, runs: Mapping[str, str | Path], out: str | Path,
                      cases: pd.DataFrame | None = None, split: str = "test", per_structure: int = 1,
                      protocol: str | None = None, case_names: Sequence[str] | None = None):
    """Paper figure 1 style: per chosen test case one slice — raw, ground truth (green), then one
    column per run with its prediction in red and the case's Dice.

    ``runs`` maps a column title to a prediction folder ``.../<strategy>/<mode>/b<budget>_s<seed>``
    holding ``<case>.nii.gz``. Cases: ``case_names`` if given, else ``per_structure`` per
    structure chosen by ``choose_cases`` from the mean Dice in ``cases``.
    """
    return _qualitative(manifest, runs, out, "slice", cases, split, per_structure, protocol, case_names)


def qualitative_mip(manifest: str | Path, runs: Mapping[str, str | Path], out: str | Path,
                    cases: pd.DataFrame | None = None, split: str = "test", per_structure: int = 1,
                    protocol: str | None = None, case_names: Sequence[str] | None = None):
    """Paper figure 2 style "3D view": maximum-intensity projection of the raw volume along z with
    the outline of each mask's projection (same layout as ``qualitative_panel``)."""
    return _qualitative(manifest, runs, out, "mip", cases, split, per_structure, protocol, case_names)


# ------------------------------------------------------------------------------- finetuning / evaluation


def _with_panels(cases: pd.DataFrame, unseen) -> pd.DataFrame:
    df = cases.copy()
    df["budget"] = df["budget"].astype(str)
    df["panel"] = [panel_group(s, c, unseen) for s, c in zip(df["structure"], df["category"])]
    return df


def label_efficiency(cases: pd.DataFrame, out: str | Path, protocol: str | None = None,
                     metrics: Sequence[str] = ("dice", "secondary"), unseen=DEFAULT_UNSEEN):
    """Metric vs label budget per run (mean ± std over seeds), one column of panels per category,
    unseen structures in their own (shaded) panels; one row per metric, ``secondary`` being the
    protocol's second metric of the panel (PQ for isolated, clDice for contiguous)."""
    plt = pyplot()
    protocol = default_protocol(cases, protocol)
    df = _with_panels(cases[cases["protocol"] == protocol] if "protocol" in cases.columns else cases, unseen)
    if df.empty:
        return no_data_figure(out, f"no scored cases for {protocol}")
    panels = group_order(df["panel"])
    budgets = budget_order(df["budget"])
    x = np.arange(len(budgets))
    colours = strategy_colours(df["strategy"])
    multi_mode = df["mode"].nunique() > 1
    mode_styles = {m: ls for m, ls in zip(sorted(df["mode"].unique()), ("-", ":", "-."))}
    fig, axes = plt.subplots(len(metrics), len(panels), figsize=(max(2.0 * len(panels), 3.2), 1.9 * len(metrics) + 0.5),
                             squeeze=False, sharex=True)
    handles = {}
    for c, panel in enumerate(panels):
        sub = df[df["panel"] == panel]
        first = sub.iloc[0]
        for r, metric in enumerate(metrics):
            m = secondary_metric(first["structure"], first["category"], protocol) if metric == "secondary" else metric
            ax = axes[r, c]
            for (strategy, mode), run in sorted(sub.groupby(["strategy", "mode"]), key=lambda kv: (strategy_order(df["strategy"]).index(kv[0][0]), kv[0][1])):
                per_seed = run.groupby(["budget", "seed"])[m].mean().groupby("budget")
                mean = per_seed.mean().reindex(budgets) * metric_scale(m)
                std = per_seed.std().reindex(budgets).fillna(0) * metric_scale(m)
                ok = mean.notna().values
                label = run_label(strategy, mode, multi_mode)
                h = ax.errorbar(x[ok], mean.values[ok], yerr=std.values[ok] if run["seed"].nunique() > 1 else None,
                                color=colours[strategy], marker="o", ms=3.5, capsize=2.5, lw=1.4, ls="--" if not is_pretrained(strategy) else mode_styles[mode], label=label)
                handles.setdefault(label, h)
            ax.set_xticks(x, budgets)
            ax.grid(alpha=0.3, lw=0.5)
            ax.set_ylabel(metric_label(m))
            metric_axis(ax, m)
            if panel.startswith("unseen"):
                ax.set_facecolor(UNSEEN_FACE)
            if r == 0:
                ax.set_title(panel)
            if r == len(metrics) - 1:
                ax.set_xlabel("label budget (training cases)")
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(len(handles), 6), frameon=False,
               bbox_to_anchor=(0.5, -0.02))
    fig.suptitle(f"Label efficiency ({protocol}); mean ± std over seeds; shaded: structure unseen in training", fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return save_figure(fig, out)


def ssl_ablation(cases: pd.DataFrame, out: str | Path, protocol: str | None = None, baseline: str = BASELINE,
                 unseen=DEFAULT_UNSEEN):
    """Table 6 as a figure: per test structure (columns) and metric (rows: Dice, then the
    protocol's second metric), bars of each SSL run next to ``baseline`` at every budget
    (mean ± std over cases and seeds, the numbers of ``tables.ablation_table``)."""
    plt = pyplot()
    protocol = default_protocol(cases, protocol)
    t6 = ablation_table(cases, protocol, baseline, unseen)
    if t6.empty:
        return no_data_figure(out, f"no SSL run to compare with {baseline!r}: configure both in finetune.strategies")
    structures = list(dict.fromkeys(t6["structure"]))
    budgets = budget_order(t6["budget"])
    multi_mode = t6["mode"].nunique() > 1
    runs = sorted({(s, m) for s, m in t6[["strategy", "mode"]].itertuples(index=False)},
                  key=lambda r: (strategy_order(t6["strategy"]).index(r[0]), r[1]))
    refs = sorted(set(t6["baseline"]), key=lambda b: (b != baseline, b))
    colours = strategy_colours(list(t6["strategy"]) + refs)
    n_bars = len(runs) + len(refs)
    width = 0.8 / n_bars
    fig, axes = plt.subplots(2, len(structures), figsize=(max(2.2 * len(structures), 3.2), 4.3), squeeze=False)
    for c, structure in enumerate(structures):
        sub = t6[t6["structure"] == structure]
        metrics = list(dict.fromkeys(sub["metric"]))
        shown = [metrics[0], metrics[1] if len(metrics) > 1 else metrics[0]]
        seen = bool(sub["seen"].iloc[0])
        for r, metric in enumerate(shown):
            ax = axes[r, c]
            rows = sub[sub["metric"] == metric]
            x = np.arange(len(budgets))
            for k, ref in enumerate(refs):
                base = rows[rows["baseline"] == ref].drop_duplicates("budget").set_index("budget").reindex(budgets)
                ax.bar(x - 0.4 + width * (k + 0.5), base["baseline_mean"] * metric_scale(metric), width,
                       yerr=_err(base["baseline_std"], metric), color=colours[ref], hatch="//",
                       edgecolor="white", lw=0, capsize=1.5, error_kw={"lw": 0.7}, label=f"{ref} (no SSL)")
            for k, (strategy, mode) in enumerate(runs, start=len(refs)):
                rr = rows[(rows["strategy"] == strategy) & (rows["mode"] == mode)].set_index("budget").reindex(budgets)
                ax.bar(x - 0.4 + width * (k + 0.5), rr["ssl_mean"] * metric_scale(metric), width,
                       yerr=_err(rr["ssl_std"], metric), color=colours[strategy], capsize=1.5,
                       error_kw={"lw": 0.7}, label=run_label(strategy, mode, multi_mode))
            ax.set_xticks(x, budgets)
            ax.set_ylabel(metric_label(metric))
            ax.grid(axis="y", alpha=0.3, lw=0.5)
            metric_axis(ax, metric)
            if not seen:
                ax.set_facecolor(UNSEEN_FACE)
            if r == 0:
                ax.set_title(structure + ("" if seen else " (unseen)"))
            else:
                ax.set_xlabel("label budget")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), frameon=False, bbox_to_anchor=(0.5, -0.02))
    fig.suptitle(f"With vs without SSL per test structure ({protocol}); mean ± std over cases and seeds", fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return save_figure(fig, out)


def _err(std: pd.Series, metric: str):
    """Error bar lengths, or None where no std is defined (one case): no zero-length caps."""
    values = std.to_numpy(dtype=np.float64) * metric_scale(metric)
    return None if np.isnan(values).all() else np.nan_to_num(values)


def metric_distributions(cases: pd.DataFrame, out: str | Path, protocol: str | None = None,
                         budget: str | None = None, metrics: Sequence[str] = DIST_METRICS, unseen=DEFAULT_UNSEEN,
                         seed: int = 0):
    """Per-case Dice, clDice, PQ and Betti errors as box + strip plots: one row per metric, one
    column per category panel (unseen shaded), one box per run at ``budget`` (default: the
    largest). Metrics the protocol does not score for a panel's group are drawn on grey."""
    plt = pyplot()
    protocol = default_protocol(cases, protocol)
    df = _with_panels(cases[cases["protocol"] == protocol] if "protocol" in cases.columns else cases, unseen)
    if df.empty:
        return no_data_figure(out, f"no scored cases for {protocol}")
    budget = str(budget) if budget is not None else budget_order(df["budget"])[-1]
    df = df[df["budget"] == budget]
    panels = group_order(df["panel"])
    multi_mode = df["mode"].nunique() > 1
    runs = sorted({(s, m) for s, m in df[["strategy", "mode"]].itertuples(index=False)},
                  key=lambda r: (strategy_order(df["strategy"]).index(r[0]), r[1]))
    colours = strategy_colours(df["strategy"])
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(len(metrics), len(panels), figsize=(max(0.45 * len(runs) + 1.1, 1.9) * len(panels),
                                                                   1.55 * len(metrics) + 0.5), squeeze=False, sharex=True)
    for c, panel in enumerate(panels):
        sub = df[df["panel"] == panel]
        first = sub.iloc[0]
        scored = GROUP_METRICS[protocol].get(group_of(first["structure"], first["category"], protocol), ())
        for r, metric in enumerate(metrics):
            ax = axes[r, c]
            data = [sub[(sub["strategy"] == s) & (sub["mode"] == m)][metric].dropna().to_numpy() * metric_scale(metric)
                    for s, m in runs]
            pos = np.arange(len(runs))
            nonempty = [i for i, d in enumerate(data) if d.size]
            if nonempty:
                bp = ax.boxplot([data[i] for i in nonempty], positions=pos[nonempty], widths=0.6, patch_artist=True,
                                showfliers=False, medianprops={"color": "black", "lw": 1})
                for patch, i in zip(bp["boxes"], nonempty):
                    patch.set_facecolor(colours[runs[i][0]])
                    patch.set_alpha(0.45)
            for i, d in enumerate(data):
                if d.size:
                    ax.scatter(i + rng.uniform(-0.18, 0.18, d.size), d, s=7, color=colours[runs[i][0]],
                               edgecolor="black", linewidth=0.3, zorder=3)
            ax.set_xticks(pos, [run_label(s, m, multi_mode) for s, m in runs], rotation=40, ha="right")
            ax.set_xlim(-0.6, len(runs) - 0.4)
            ax.grid(axis="y", alpha=0.3, lw=0.5)
            metric_axis(ax, metric)
            if c == 0:
                ax.set_ylabel(metric_label(metric))
            if r == 0:
                ax.set_title(panel)
            if panel.startswith("unseen"):
                ax.set_facecolor(UNSEEN_FACE)
            elif scored and metric not in scored:
                ax.set_facecolor(OFF_PROTOCOL_FACE)
    fig.suptitle(f"Per-case metrics at budget {budget} ({protocol})\ngrey: not scored by the protocol for that "
                 "category; yellow: structure unseen in training", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out)


# ------------------------------------------------------------------------------- training curves


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Centred rolling mean (edges use the available points) — the trend under noisy losses."""
    s = pd.Series(np.asarray(values, dtype=np.float64))
    return s.rolling(max(int(window), 1), center=True, min_periods=1).mean().to_numpy()


def _read_curve(path: str | Path, needed: Sequence[str]) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise InputError(path, "a training log CSV", "nothing at that path")
    df = pd.read_csv(path)
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise InputError(path, f"columns {list(needed)}", f"missing {missing} (have {list(df.columns)})")
    return df


def pretrain_curves(loss_csvs: Mapping[str, str | Path], out: str | Path, window: int | None = None):
    """Pretraining loss vs step, one panel per strategy (losses differ in kind and scale): raw
    values thin, rolling mean (``window``, default 5 % of the steps) bold."""
    plt = pyplot()
    if not loss_csvs:
        return no_data_figure(out, "no SSL strategy configured (pretrain.strategies is empty)")
    names = strategy_order(loss_csvs)
    colours = strategy_colours(names)
    n = len(names)
    ncol = min(n, 4)
    nrow = math.ceil(n / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(1.9 * ncol + 0.3, 1.7 * nrow + 0.3), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, name in zip(axes.flat, names):
        df = _read_curve(loss_csvs[name], ("step", "loss"))
        w = window or max(len(df) // 20, 1)
        ax.plot(df["step"], df["loss"], color=colours[name], alpha=0.3, lw=0.7, label="raw")
        ax.plot(df["step"], smooth(df["loss"].to_numpy(), w), color=colours[name], lw=1.6, label=f"rolling mean ({w})")
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3, lw=0.5)
        integer_x(ax)
        ax.legend(frameon=False, loc="best")
    fig.suptitle("Self-supervised pretraining loss", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out)


def finetune_curves(train_logs: Mapping[tuple, str | Path], out: str | Path, window: int | None = None):
    """Finetuning loss (rolling mean) and validation Dice vs step: one column per budget, one
    colour per strategy, one line per seed. ``train_logs`` maps (strategy, mode, budget, seed)
    to a ``train_log.csv`` (columns step, loss, val_dice)."""
    plt = pyplot()
    if not train_logs:
        return no_data_figure(out, "no finetuning runs")
    keys = list(train_logs)
    budgets = budget_order(k[2] for k in keys)
    colours = strategy_colours(k[0] for k in keys)
    multi_mode = len({k[1] for k in keys}) > 1
    mode_styles = {m: ls for m, ls in zip(sorted({k[1] for k in keys}), ("-", ":", "-."))}
    fig, axes = plt.subplots(2, len(budgets), figsize=(max(2.1 * len(budgets), 3.2), 3.9), squeeze=False, sharex="col")
    handles = {}
    for key in sorted(keys, key=lambda k: (strategy_order(colours).index(k[0]), k[1], budget_key(k[2]), str(k[3]))):
        strategy, mode, budget, _ = key
        c = budgets.index(str(budget))
        df = _read_curve(train_logs[key], ("step", "loss", "val_dice"))
        w = window or max(len(df) // 20, 1)
        label = run_label(strategy, mode, multi_mode)
        style = dict(color=colours[strategy], ls=mode_styles[mode], lw=1.2)
        h, = axes[0, c].plot(df["step"], smooth(df["loss"].to_numpy(), w), **style, label=label)
        val = df.dropna(subset=["val_dice"])
        axes[1, c].plot(val["step"], 100 * val["val_dice"], marker="o", ms=2.5, **style)
        handles.setdefault(label, h)
    for c, budget in enumerate(budgets):
        axes[0, c].set_title(f"budget {budget}")
        axes[1, c].set_xlabel("step")
        for r in range(2):
            axes[r, c].grid(alpha=0.3, lw=0.5)
            integer_x(axes[r, c])
    axes[0, 0].set_ylabel("training loss (rolling mean)")
    axes[1, 0].set_ylabel("validation Dice (%)")
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(len(handles), 6), frameon=False,
               bbox_to_anchor=(0.5, -0.02))
    fig.suptitle("Finetuning curves (one line per seed)", fontsize=8)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return save_figure(fig, out)


# ------------------------------------------------------------------------------- data overview


def data_examples(manifest: str | Path, out: str | Path, split: str = "train", per_structure: int = 1):
    """One annotated patch per structure of ``split``: raw slice, slice with ground truth (green),
    raw MIP along z, MIP with the ground-truth outline — what each structure looks like."""
    from selma3d.data.manifest import annotated_pairs

    plt = pyplot()
    table = read_manifest(manifest)
    pairs = annotated_pairs(table, split)
    if pairs.empty:
        return no_data_figure(out, f"no annotated {split} cases in the manifest")
    picks = pairs.sort_values(["structure", "case"]).groupby("structure", sort=True).head(per_structure)
    titles = ["raw slice", "+ ground truth", "raw MIP (z)", "+ outline"]
    fig, axes = plt.subplots(len(picks), 4, figsize=(PANEL_W * 4, PANEL_W * len(picks) + 0.3), squeeze=False,
                             gridspec_kw={"wspace": 0.04, "hspace": 0.08})
    for r, (_, row) in enumerate(picks.iterrows()):
        raw = io.read_volume(row.image).data.astype(np.float32)
        gt = read_label(row, raw.shape)
        z = best_slice(gt)
        sl, mip = contrast(raw[z]), contrast(raw.max(axis=0))
        images = [np.repeat(sl[..., None], 3, 2), overlay(sl, gt[z], GT_RGB), np.repeat(mip[..., None], 3, 2),
                  outline(mip, gt.any(axis=0), GT_RGB)]
        spacing = parse_spacing(row.spacing_um)
        for c, img in enumerate(images):
            ax = axes[r, c]
            ax.imshow(img, interpolation="nearest")
            image_axes(ax)
            if r == 0:
                ax.set_title(titles[c])
        scale_bar(axes[r, 0], raw.shape[2], spacing[2])
        axes[r, 0].set_ylabel(f"{row.structure}\n({row.category.replace('_', ' ')})\n{row.case}\nz = {z}",
                              fontsize=6.5)
    fig.suptitle(f"Annotated {split} patches, one per structure:\nthe slice with most ground truth (green) and the "
                 "maximum-intensity projection along z", y=1.02, fontsize=8)
    return save_figure(fig, out)


def patch_counts(index_csvs: Sequence[str | Path], out: str | Path, min_foreground: float | None = None):
    """Pretraining patches kept after filtering, per category: stacked counts of foreground
    patches and the background share kept on purpose, and the foreground-fraction spread."""
    from selma3d.preprocess.patchify import load_patch_index

    plt = pyplot()
    df = load_patch_index(list(index_csvs)) if index_csvs else pd.DataFrame()
    if df.empty:
        return no_data_figure(out, "no pretraining patches were kept")
    cats = [c for c in CATEGORIES if c in set(df["category"])] + sorted(set(df["category"]) - set(CATEGORIES))
    fg = df[~df["background"]].groupby("category").size().reindex(cats, fill_value=0)
    bg = df[df["background"]].groupby("category").size().reindex(cats, fill_value=0)
    labels = [c.replace("_", "\n") for c in cats]
    fig, (a, b) = plt.subplots(1, 2, figsize=(max(1.0 * len(cats), 2.2) * 2 + 0.6, 2.6))
    x = np.arange(len(cats))
    a.bar(x, fg.values, color="#4c72b0", label="foreground")
    a.bar(x, bg.values, bottom=fg.values, color="#c8c8c8", label="background (kept share)")
    for i, (f, g) in enumerate(zip(fg.values, bg.values)):
        a.text(i, f + g, f"{f + g}", ha="center", va="bottom", fontsize=6.5)
    a.set_xticks(x, labels)
    a.set_ylabel("patches kept")
    a.set_title("Patches per category")
    a.legend(frameon=False, loc="upper left", bbox_to_anchor=(0, -0.28), ncol=2)
    a.set_ylim(0, max(int((fg + bg).max()), 1) * 1.18)
    data = [df.loc[df["category"] == c, "foreground_fraction"].to_numpy() * 100 for c in cats]
    b.boxplot(data, positions=x, widths=0.55, showfliers=False, medianprops={"color": "black"})
    rng = np.random.default_rng(0)
    for i, d in enumerate(data):
        b.scatter(i + rng.uniform(-0.15, 0.15, d.size), d, s=5, color="#4c72b0", alpha=0.6, lw=0)
    if min_foreground is not None:
        b.axhline(100 * float(min_foreground), color="#d62728", ls="--", lw=0.9, label="min_foreground")
        b.legend(frameon=False, loc="upper left", bbox_to_anchor=(0, -0.28))
    b.set_xticks(x, labels)
    b.set_ylabel("foreground voxels (%)")
    b.set_title("Foreground fraction of kept patches")
    fig.suptitle(f"Pretraining data after filtering: {len(df)} patches from {df['volume'].nunique()} volumes",
                 fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out)


# ------------------------------------------------------------------------------- rule entry points


def evaluation_runs(prediction_dirs: Sequence[str | Path], cases: pd.DataFrame, budget: str | None = None,
                    seed=None) -> dict[str, Path]:
    """Column title -> prediction folder for the qualitative figures: every (strategy, mode) at
    ``budget`` (default the largest) and ``seed`` (default the first), scratch first."""
    budgets = budget_order(cases["budget"])
    budget = str(budget) if budget is not None else budgets[-1]
    seed = seed if seed is not None else sorted(cases["seed"].unique())[0]
    multi_mode = cases["mode"].nunique() > 1
    found = {}
    for d in map(Path, prediction_dirs):
        strategy, mode, b, s = _run_key(d)
        if b == budget and str(s) == str(seed):
            found[(strategy, mode)] = d
    order = strategy_order([k[0] for k in found])
    return {run_label(s, m, multi_mode): found[(s, m)]
            for s, m in sorted(found, key=lambda k: (order.index(k[0]), k[1]))}


def make_figures(kind: str, inputs, outputs, params=None) -> None:
    """Draw one rule's figures. ``kind``: ``evaluation`` (inputs cases, manifest, predictions),
    ``data`` (manifest, indexes), ``pretrain`` (curves), ``finetune`` (logs); ``outputs`` has one
    attribute per figure (the PNG; its PDF sits beside it), e.g. Snakemake's output."""
    params = params or {}
    get = params.get if isinstance(params, dict) else (lambda k, d=None: getattr(params, k, d))
    if kind == "evaluation":
        cases = read_cases(inputs.cases)
        manifest = read_manifest(inputs.manifest)
        unseen = unseen_structures(manifest)
        protocol = get("protocol")
        prot = default_protocol(cases, protocol)
        runs = evaluation_runs(inputs.predictions, cases, get("budget"))
        per = int(get("cases_per_structure", 1) or 1)
        names = get("cases") or None
        qualitative_panel(inputs.manifest, runs, outputs.qualitative, cases, per_structure=per, protocol=prot, case_names=names)
        qualitative_mip(inputs.manifest, runs, outputs.qualitative_mip, cases, per_structure=per, protocol=prot, case_names=names)
        label_efficiency(cases, outputs.budget, prot, unseen=unseen)
        ssl_ablation(cases, outputs.ablation, prot, unseen=unseen)
        metric_distributions(cases, outputs.distributions, prot, get("budget"), unseen=unseen)
    elif kind == "data":
        data_examples(inputs.manifest, outputs.examples)
        patch_counts(list(inputs.indexes), outputs.patch_counts, get("min_foreground"))
    elif kind == "pretrain":
        curves = {Path(p).parent.name: p for p in inputs.curves}
        pretrain_curves(curves, outputs.curves)
    elif kind == "finetune":
        logs = {_run_key(Path(p).parent): p for p in inputs.logs}
        finetune_curves(logs, outputs.curves)
    else:
        raise ValueError(f"figure kind {kind!r}: expected evaluation, data, pretrain or finetune")
