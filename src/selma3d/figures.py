"""Figures read at paper size: qualitative overlays and label efficiency."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from . import io
from .atomic import atomic_path
from .manifest import read_manifest

STYLE = {"figure.dpi": 110, "font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "legend.fontsize": 8}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(STYLE)
    return plt


def _save(fig, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, bbox_inches="tight")
    pdf = Path(path).with_suffix(".pdf")
    with atomic_path(pdf) as tmp:
        fig.savefig(tmp, bbox_inches="tight")
    return Path(path)


def budget_order(values) -> list[str]:
    """Budgets as strings, numbers ascending, ``all`` last."""
    vals = sorted({str(v) for v in values}, key=lambda v: (v == "all", int(v) if v.isdigit() else 0))
    return vals


def _contrast(img: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(img, [1, 99.5])
    return np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)


def qualitative_panel(manifest: str | Path, runs: dict[str, Path], out: str | Path, split: str = "test") -> Path:
    """One row per structure, one column per run: the test slice with most ground truth,
    prediction in red over the raw image; the ground truth in the last column (green)."""
    plt = _plt()
    table = read_manifest(manifest)
    images = table[(table.split == split) & (table.role == "image")].sort_values("case")
    labels = table[(table.split == split) & (table.role == "label")].set_index("case")
    picks = images.groupby("structure", sort=True).head(1)
    n_rows, n_cols = len(picks), len(runs) + 1
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.9 * n_cols, 1.9 * n_rows), squeeze=False)
    for r, (_, row) in enumerate(picks.iterrows()):
        raw = io.read_volume(row.path).data.astype(np.float32)
        gt = io.read_volume(labels.loc[row.case, "path"]).data > 0
        z = int(np.argmax(gt.sum(axis=(1, 2)))) if gt.any() else raw.shape[0] // 2
        base = _contrast(raw[z])
        overlays = [(name, io.read_volume(Path(d) / f"{row.case}.nii.gz").data[z] > 0) for name, d in runs.items()]
        overlays.append(("ground truth", gt[z]))
        for c, (name, mask) in enumerate(overlays):
            ax = axes[r, c]
            rgb = np.repeat(base[..., None], 3, axis=2)
            colour = np.array([0.1, 1.0, 0.1]) if name == "ground truth" else np.array([1.0, 0.1, 0.1])
            rgb[mask] = 0.45 * rgb[mask] + 0.55 * colour
            ax.imshow(rgb, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(name)
            if c == 0:
                ax.set_ylabel(f"{row.structure}\n{row.case}\nz={z}", fontsize=7)
    fig.suptitle("Test slices: prediction (red) over raw, ground truth (green)", y=1.0)
    path = _save(fig, out)
    plt.close(fig)
    return path


def label_efficiency(cases: pd.DataFrame, out: str | Path, metric: str = "dice",
                     protocol: str | None = None) -> Path:
    """Metric vs label budget per strategy (mean ± std over seeds), one panel per category;
    the unseen structure (microglia) gets a panel of its own."""
    plt = _plt()
    df = cases.copy()
    if protocol is None:
        protocol = "selma3d2026" if "selma3d2026" in set(df.protocol) else sorted(df.protocol)[0]
    df = df[df.protocol == protocol]
    df["group"] = np.where(df.structure == "microglia", "unseen: microglia", df.category.str.replace("_", " "))
    groups = sorted(df.group.unique(), key=lambda g: (g.startswith("unseen"), g))
    budgets = budget_order(df.budget)
    x = np.arange(len(budgets))
    fig, axes = plt.subplots(1, len(groups), figsize=(2.6 * len(groups), 2.6), squeeze=False, sharey=True)
    for ax, group in zip(axes[0], groups):
        sub = df[df.group == group]
        for label, run in sub.groupby(["strategy", "mode"]):
            per_seed = run.groupby(["budget", "seed"])[metric].mean().groupby("budget")
            mean, std = per_seed.mean().reindex(budgets), per_seed.std().reindex(budgets).fillna(0)
            name = label[0] if df["mode"].nunique() == 1 else f"{label[0]} ({label[1]})"
            style = "--" if label[0] == "scratch" else "-"
            ax.errorbar(x, mean.values, yerr=std.values, marker="o", ms=3, capsize=2, ls=style, label=name)
        ax.set_title(group)
        ax.set_xticks(x, budgets)
        ax.set_xlabel("annotated patches per structure")
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel(f"{metric} ({protocol})")
    axes[0, -1].legend(loc="best", frameon=False)
    path = _save(fig, out)
    plt.close(fig)
    return path


def make_figures(cases_csv: str | Path, manifest: str | Path, prediction_dirs: list[str | Path], outputs) -> None:
    """The workflow's figures: the qualitative panel (largest budget, first seed) and label efficiency.

    ``prediction_dirs`` are the infer rule's folders, ``.../<strategy>/<mode>/b<budget>_s<seed>``.
    """
    cases = pd.read_csv(cases_csv, dtype={"budget": str})
    budgets = budget_order(cases.budget)
    top, seed = budgets[-1], sorted(cases.seed.unique())[0]
    multi_mode = cases["mode"].nunique() > 1
    runs = {}
    for d in map(Path, prediction_dirs):
        strategy, mode, run = d.parts[-3:]
        if run == f"b{top}_s{seed}":
            runs[f"{strategy} ({mode})" if multi_mode else strategy] = d
    qualitative_panel(manifest, runs, outputs.qualitative)
    label_efficiency(cases, outputs.budget)
