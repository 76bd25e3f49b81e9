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
from selma3d.core.atomic import atomic_path
from selma3d.core.errors import InputError
from selma3d.evaluation.leaderboard import GROUP_METRICS, LABELS, PERCENT_METRICS, group_of
from selma3d.data.manifest import parse_spacing, read_manifest
from selma3d.training.runplan import is_pretrained
from selma3d.core.structures import CATEGORIES
from selma3d.reporting.tables import BASELINE, DEFAULT_UNSEEN, ablation_table, budget_key, budget_order, read_cases

log = logging.getLogger(__name__)

STYLE = {
    "figure.dpi": 100, "savefig.dpi": 200, "font.size": 8, "axes.titlesize": 8.5, "axes.labelsize": 8,
    "xtick.labelsize": 7, "ytick.labelsize": 7, "legend.fontsize": 7, "axes.spines.top": False,
    "axes.spines.right": False, "axes.grid": False, "pdf.fonttype": 42, "figure.constrained_layout.use": False,
}
#: fixed palette order so a strategy keeps its colour across figures and runs
KNOWN_STRATEGIES = ("mae", "byol", "simclr", "dino", "swin_multitask", "mae_text")
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#bcbd22")
BASELINE_COLOUR = "#555555"
#: scratch_<strategy> baselines (same net as an SSL strategy, no pretraining)
BASELINE_GREYS = ("#8c8c8c", "#b0b0b0", "#6f6f6f", "#c8c8c8")
PRED_RGB = np.array([1.0, 0.12, 0.12])
GT_RGB = np.array([0.15, 0.95, 0.2])
UNSEEN_FACE = "#fff7e0"
OFF_PROTOCOL_FACE = "#f0f0f0"
DIST_METRICS = ("dice", "cldice", "pq", "betti0_error", "betti1_error")
PANEL_W = 1.45  # inches per image panel: 5 panels fit a 7.2-inch double column


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(STYLE)
    return plt


def _save(fig, path: str | Path):
    """PNG at ``path`` and PDF beside it (same stem), both atomic; closes and returns ``fig``."""
    import matplotlib.pyplot as plt

    path = Path(path)
    for target in (path, path.with_suffix(".pdf")):
        with atomic_path(target) as tmp:
            fig.savefig(tmp, bbox_inches="tight", format=target.suffix.lstrip("."))
    plt.close(fig)
    log.info("wrote %s (+ .pdf)", path)
    return fig


def _no_data(path: str | Path, message: str, size=(4.0, 1.2)):
    """A figure that says why it is empty, so a rule's outputs always exist."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=size)
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True)
    return _save(fig, path)


# ------------------------------------------------------------------------------- conventions


def strategy_colours(strategies) -> dict[str, str]:
    """Runs without SSL in greys (``scratch`` darkest); known SSL strategies in palette order,
    unknown ones after them."""
    names = sorted(set(strategies), key=lambda s: (s != BASELINE, is_pretrained(s), s not in KNOWN_STRATEGIES,
                                                   KNOWN_STRATEGIES.index(s) if s in KNOWN_STRATEGIES else 0, s))
    out, k, g = {}, 0, 0
    for s in names:
        if s == BASELINE:
            out[s] = BASELINE_COLOUR
        elif not is_pretrained(s):
            out[s] = BASELINE_GREYS[g % len(BASELINE_GREYS)]
            g += 1
        else:
            out[s] = PALETTE[k % len(PALETTE)]
            k += 1
    return out


def strategy_order(strategies) -> list[str]:
    return list(strategy_colours(strategies))


def run_label(strategy: str, mode: str, multi_mode: bool) -> str:
    return f"{strategy} ({mode})" if multi_mode else strategy


def unseen_structures(manifest: pd.DataFrame | None, default=DEFAULT_UNSEEN) -> set[str]:
    """Test structures without annotated training cases (the paper's "unseen" microglia)."""
    if manifest is None:
        return set(default)
    annotated = manifest[manifest["role"].isin(["image", "label"])]
    trained = set(annotated.loc[annotated["split"] == "train", "structure"])
    tested = set(annotated.loc[annotated["split"] == "test", "structure"])
    return (tested - trained) if trained else set(default)


def panel_group(structure: str, category: str, unseen) -> str:
    """Panel of a structure: ``unseen: <structure>`` or its category in words."""
    if structure in unseen:
        return f"unseen: {structure}"
    return str(category).replace("_", " ")


def _group_order(groups) -> list[str]:
    cats = [c.replace("_", " ") for c in CATEGORIES]
    return sorted(set(groups), key=lambda g: (g.startswith("unseen"), cats.index(g) if g in cats else len(cats), g))


def _default_protocol(cases: pd.DataFrame, protocol: str | None) -> str:
    have = sorted(set(cases["protocol"])) if "protocol" in cases.columns else []
    if protocol is None:
        if not have:
            raise InputError("cases table", "a protocol column", "none")
        return "selma3d2026" if "selma3d2026" in have else have[0]
    if have and protocol not in have:
        raise InputError("cases table", f"rows for protocol {protocol!r}", f"protocols {have}")
    return protocol


def _metric_label(metric: str) -> str:
    label = LABELS.get(metric, metric)
    if metric in PERCENT_METRICS:
        return f"{label} (%)"
    return f"{label} (lower is better)" if metric.startswith("betti") else label


def _scale(metric: str) -> float:
    return 100.0 if metric in PERCENT_METRICS else 1.0


def _metric_axis(ax, metric: str) -> None:
    """Metrics are non-negative: start the axis at (just below) 0, give all-zero data a range;
    Betti errors span decades, so they get a symlog axis with plain-number ticks."""
    from matplotlib.ticker import FuncFormatter

    if metric.startswith("betti"):
        ax.set_yscale("symlog", linthresh=1)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}" if v >= 0 else ""))
    ymax = float(ax.dataLim.ymax) if np.isfinite(ax.dataLim.ymax) else 0.0
    if ymax <= 0:
        top = 1.0
    elif metric.startswith("betti"):
        top = ymax * 1.6 + 0.5
    else:
        top = max(ax.get_ylim()[1], ymax * 1.06)
    bottom = -0.3 if metric.startswith("betti") else -0.025 * top  # markers at 0 stay visible
    ax.set_ylim(bottom, top)


def _integer_x(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(nbins=4, integer=True))


def _secondary_metric(structure: str, category: str, protocol: str) -> str:
    """The protocol's second metric for a structure: PQ (isolated), clDice (contiguous/tree), β0 (spot)."""
    group = group_of(structure, category, protocol)
    metrics = GROUP_METRICS[protocol].get(group, ("dice", "cldice"))
    return metrics[1] if len(metrics) > 1 else "cldice"


# ------------------------------------------------------------------------------- image helpers


def _contrast(img: np.ndarray) -> np.ndarray:
    """Percentile stretch (1–99.5 %) to [0, 1]: light-sheet intensities have long bright tails."""
    img = np.asarray(img, dtype=np.float32)
    lo, hi = np.percentile(img, [1, 99.5])
    return np.clip((img - lo) / max(float(hi - lo), 1e-6), 0, 1)


def overlay(base: np.ndarray, mask: np.ndarray, rgb=PRED_RGB, alpha: float = 0.55) -> np.ndarray:
    """Grey image (values in [0, 1]) with ``mask`` tinted ``rgb``; an (y, x, 3) float image."""
    out = np.repeat(base[..., None], 3, axis=2).astype(np.float32)
    m = np.asarray(mask, dtype=bool)
    out[m] = (1 - alpha) * out[m] + alpha * np.asarray(rgb, dtype=np.float32)
    return out


def outline(base: np.ndarray, mask: np.ndarray, rgb=PRED_RGB) -> np.ndarray:
    """Grey image with the boundary of a 2D mask drawn in ``rgb`` (the MIP "3D view")."""
    from skimage.segmentation import find_boundaries

    out = np.repeat(base[..., None], 3, axis=2).astype(np.float32)
    edge = find_boundaries(np.asarray(mask, dtype=bool), mode="inner")
    out[edge] = rgb
    return out


def _best_slice(gt: np.ndarray) -> int:
    return int(np.argmax(gt.sum(axis=(1, 2)))) if gt.any() else gt.shape[0] // 2


def _nice_length(limit: float) -> float:
    """Largest 1/2/5 × 10^k not above ``limit``."""
    if limit <= 0:
        return 0.0
    k = math.floor(math.log10(limit))
    for m in (5, 2, 1):
        if m * 10**k <= limit:
            return float(m * 10**k)
    return float(10**k)


def _scale_bar(ax, width_px: int, spacing_x: float) -> None:
    """A white scale bar (µm) about a quarter of the panel wide, bottom right."""
    from matplotlib.font_manager import FontProperties
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    um = _nice_length(width_px * spacing_x / 4)
    if um <= 0 or spacing_x <= 0:
        return
    bar = AnchoredSizeBar(ax.transData, um / spacing_x, f"{um:g} µm", "lower right", pad=0.1, borderpad=0.9,
                          color="white", frameon=False, size_vertical=max(width_px / 60, 0.5),
                          fontproperties=FontProperties(size=6))
    ax.add_artist(bar)


def _image_axes(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)


def _read_mask(path: Path, shape, what: str, rule: tuple | None = None) -> np.ndarray:
    """``> 0`` as a mask, or by ``rule`` (``(ignore_label, background_values, annotated_z)``,
    :func:`selma3d.data.manifest.label_rule`) when it is not the default one."""
    if not path.exists():
        raise InputError(path, f"the {what} of this case", "nothing at that path")
    data = io.read_volume(path).data
    if data.shape != tuple(shape):
        raise InputError(path, f"a {what} of the image's shape {tuple(shape)}", f"shape {data.shape}")
    if rule is None or tuple(rule) == (None, (0,), None):
        return data > 0
    from selma3d.core.labels import binarize_label

    return binarize_label(data, *rule)[0].astype(bool)


def _read_label(row, shape) -> np.ndarray:
    """A manifest pair's ground truth as a mask, by the label row's own rule when it sets one."""
    from selma3d.data.manifest import label_rule

    return _read_mask(Path(row.label), shape, "label", label_rule(row))


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

    plt = _plt()
    table = read_manifest(manifest)
    pairs = annotated_pairs(table, split)
    if pairs.empty:
        return _no_data(out, f"no annotated {split} cases in the manifest")
    unseen = unseen_structures(table)
    scores = None
    per_run = {}
    if cases is not None and not cases.empty:
        protocol = _default_protocol(cases, protocol)
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
        gt = _read_label(row, raw.shape)
        spacing = parse_spacing(row.spacing_um)
        masks = [None, gt] + [_read_mask(Path(d) / f"{row.case}.nii.gz", raw.shape, "prediction") for d in runs.values()]
        if view == "slice":
            z = _best_slice(gt)
            base = _contrast(raw[z])
            images = [np.repeat(base[..., None], 3, axis=2)] + [
                overlay(base, m[z], GT_RGB if i == 1 else PRED_RGB) for i, m in enumerate(masks) if m is not None]
            where = f"z = {z}"
        else:
            base = _contrast(raw.max(axis=0))
            images = [np.repeat(base[..., None], 3, axis=2)] + [
                outline(base, m.any(axis=0), GT_RGB if i == 1 else PRED_RGB) for i, m in enumerate(masks) if m is not None]
            where = f"MIP of {raw.shape[0]} slices"
        for c, img in enumerate(images):
            ax = axes[r, c]
            ax.imshow(img, interpolation="nearest")
            _image_axes(ax)
            if r == 0:
                ax.set_title(titles[c])
            if c == 0:
                _scale_bar(ax, raw.shape[2], spacing[2])
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
    return _save(fig, out)


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
    plt = _plt()
    protocol = _default_protocol(cases, protocol)
    df = _with_panels(cases[cases["protocol"] == protocol] if "protocol" in cases.columns else cases, unseen)
    if df.empty:
        return _no_data(out, f"no scored cases for {protocol}")
    panels = _group_order(df["panel"])
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
            m = _secondary_metric(first["structure"], first["category"], protocol) if metric == "secondary" else metric
            ax = axes[r, c]
            for (strategy, mode), run in sorted(sub.groupby(["strategy", "mode"]), key=lambda kv: (strategy_order(df["strategy"]).index(kv[0][0]), kv[0][1])):
                per_seed = run.groupby(["budget", "seed"])[m].mean().groupby("budget")
                mean = per_seed.mean().reindex(budgets) * _scale(m)
                std = per_seed.std().reindex(budgets).fillna(0) * _scale(m)
                ok = mean.notna().values
                label = run_label(strategy, mode, multi_mode)
                h = ax.errorbar(x[ok], mean.values[ok], yerr=std.values[ok] if run["seed"].nunique() > 1 else None,
                                color=colours[strategy], marker="o", ms=3.5, capsize=2.5, lw=1.4, ls="--" if not is_pretrained(strategy) else mode_styles[mode], label=label)
                handles.setdefault(label, h)
            ax.set_xticks(x, budgets)
            ax.grid(alpha=0.3, lw=0.5)
            ax.set_ylabel(_metric_label(m))
            _metric_axis(ax, m)
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
    return _save(fig, out)


def ssl_ablation(cases: pd.DataFrame, out: str | Path, protocol: str | None = None, baseline: str = BASELINE,
                 unseen=DEFAULT_UNSEEN):
    """Table 6 as a figure: per test structure (columns) and metric (rows: Dice, then the
    protocol's second metric), bars of each SSL run next to ``baseline`` at every budget
    (mean ± std over cases and seeds, the numbers of ``tables.ablation_table``)."""
    plt = _plt()
    protocol = _default_protocol(cases, protocol)
    t6 = ablation_table(cases, protocol, baseline, unseen)
    if t6.empty:
        return _no_data(out, f"no SSL run to compare with {baseline!r}: configure both in finetune.strategies")
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
                ax.bar(x - 0.4 + width * (k + 0.5), base["baseline_mean"] * _scale(metric), width,
                       yerr=_err(base["baseline_std"], metric), color=colours[ref], hatch="//",
                       edgecolor="white", lw=0, capsize=1.5, error_kw={"lw": 0.7}, label=f"{ref} (no SSL)")
            for k, (strategy, mode) in enumerate(runs, start=len(refs)):
                rr = rows[(rows["strategy"] == strategy) & (rows["mode"] == mode)].set_index("budget").reindex(budgets)
                ax.bar(x - 0.4 + width * (k + 0.5), rr["ssl_mean"] * _scale(metric), width,
                       yerr=_err(rr["ssl_std"], metric), color=colours[strategy], capsize=1.5,
                       error_kw={"lw": 0.7}, label=run_label(strategy, mode, multi_mode))
            ax.set_xticks(x, budgets)
            ax.set_ylabel(_metric_label(metric))
            ax.grid(axis="y", alpha=0.3, lw=0.5)
            _metric_axis(ax, metric)
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
    return _save(fig, out)


def _err(std: pd.Series, metric: str):
    """Error bar lengths, or None where no std is defined (one case): no zero-length caps."""
    values = std.to_numpy(dtype=np.float64) * _scale(metric)
    return None if np.isnan(values).all() else np.nan_to_num(values)


def metric_distributions(cases: pd.DataFrame, out: str | Path, protocol: str | None = None,
                         budget: str | None = None, metrics: Sequence[str] = DIST_METRICS, unseen=DEFAULT_UNSEEN,
                         seed: int = 0):
    """Per-case Dice, clDice, PQ and Betti errors as box + strip plots: one row per metric, one
    column per category panel (unseen shaded), one box per run at ``budget`` (default: the
    largest). Metrics the protocol does not score for a panel's group are drawn on grey."""
    plt = _plt()
    protocol = _default_protocol(cases, protocol)
    df = _with_panels(cases[cases["protocol"] == protocol] if "protocol" in cases.columns else cases, unseen)
    if df.empty:
        return _no_data(out, f"no scored cases for {protocol}")
    budget = str(budget) if budget is not None else budget_order(df["budget"])[-1]
    df = df[df["budget"] == budget]
    panels = _group_order(df["panel"])
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
            data = [sub[(sub["strategy"] == s) & (sub["mode"] == m)][metric].dropna().to_numpy() * _scale(metric)
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
            _metric_axis(ax, metric)
            if c == 0:
                ax.set_ylabel(_metric_label(metric))
            if r == 0:
                ax.set_title(panel)
            if panel.startswith("unseen"):
                ax.set_facecolor(UNSEEN_FACE)
            elif scored and metric not in scored:
                ax.set_facecolor(OFF_PROTOCOL_FACE)
    fig.suptitle(f"Per-case metrics at budget {budget} ({protocol})\ngrey: not scored by the protocol for that "
                 "category; yellow: structure unseen in training", fontsize=8)
    fig.tight_layout()
    return _save(fig, out)


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
    plt = _plt()
    if not loss_csvs:
        return _no_data(out, "no SSL strategy configured (pretrain.strategies is empty)")
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
        _integer_x(ax)
        ax.legend(frameon=False, loc="best")
    fig.suptitle("Self-supervised pretraining loss", fontsize=8)
    fig.tight_layout()
    return _save(fig, out)


def finetune_curves(train_logs: Mapping[tuple, str | Path], out: str | Path, window: int | None = None):
    """Finetuning loss (rolling mean) and validation Dice vs step: one column per budget, one
    colour per strategy, one line per seed. ``train_logs`` maps (strategy, mode, budget, seed)
    to a ``train_log.csv`` (columns step, loss, val_dice)."""
    plt = _plt()
    if not train_logs:
        return _no_data(out, "no finetuning runs")
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
            _integer_x(axes[r, c])
    axes[0, 0].set_ylabel("training loss (rolling mean)")
    axes[1, 0].set_ylabel("validation Dice (%)")
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(len(handles), 6), frameon=False,
               bbox_to_anchor=(0.5, -0.02))
    fig.suptitle("Finetuning curves (one line per seed)", fontsize=8)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return _save(fig, out)


# ------------------------------------------------------------------------------- data overview


def data_examples(manifest: str | Path, out: str | Path, split: str = "train", per_structure: int = 1):
    """One annotated patch per structure of ``split``: raw slice, slice with ground truth (green),
    raw MIP along z, MIP with the ground-truth outline — what each structure looks like."""
    from selma3d.data.manifest import annotated_pairs

    plt = _plt()
    table = read_manifest(manifest)
    pairs = annotated_pairs(table, split)
    if pairs.empty:
        return _no_data(out, f"no annotated {split} cases in the manifest")
    picks = pairs.sort_values(["structure", "case"]).groupby("structure", sort=True).head(per_structure)
    titles = ["raw slice", "+ ground truth", "raw MIP (z)", "+ outline"]
    fig, axes = plt.subplots(len(picks), 4, figsize=(PANEL_W * 4, PANEL_W * len(picks) + 0.3), squeeze=False,
                             gridspec_kw={"wspace": 0.04, "hspace": 0.08})
    for r, (_, row) in enumerate(picks.iterrows()):
        raw = io.read_volume(row.image).data.astype(np.float32)
        gt = _read_label(row, raw.shape)
        z = _best_slice(gt)
        sl, mip = _contrast(raw[z]), _contrast(raw.max(axis=0))
        images = [np.repeat(sl[..., None], 3, 2), overlay(sl, gt[z], GT_RGB), np.repeat(mip[..., None], 3, 2),
                  outline(mip, gt.any(axis=0), GT_RGB)]
        spacing = parse_spacing(row.spacing_um)
        for c, img in enumerate(images):
            ax = axes[r, c]
            ax.imshow(img, interpolation="nearest")
            _image_axes(ax)
            if r == 0:
                ax.set_title(titles[c])
        _scale_bar(axes[r, 0], raw.shape[2], spacing[2])
        axes[r, 0].set_ylabel(f"{row.structure}\n({row.category.replace('_', ' ')})\n{row.case}\nz = {z}",
                              fontsize=6.5)
    fig.suptitle(f"Annotated {split} patches, one per structure:\nthe slice with most ground truth (green) and the "
                 "maximum-intensity projection along z", y=1.02, fontsize=8)
    return _save(fig, out)


def patch_counts(index_csvs: Sequence[str | Path], out: str | Path, min_foreground: float | None = None):
    """Pretraining patches kept after filtering, per category: stacked counts of foreground
    patches and the background share kept on purpose, and the foreground-fraction spread."""
    from selma3d.preprocess.patchify import load_patch_index

    plt = _plt()
    df = load_patch_index(list(index_csvs)) if index_csvs else pd.DataFrame()
    if df.empty:
        return _no_data(out, "no pretraining patches were kept")
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
    return _save(fig, out)


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
        prot = _default_protocol(cases, protocol)
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
