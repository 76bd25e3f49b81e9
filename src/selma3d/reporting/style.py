"""The figures' shared look: matplotlib style, one colour per strategy, panels per structure
group, metric axes, and atomic PNG + PDF saving."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from selma3d import strategies as strategies_registry
from selma3d.core.atomic import atomic_path
from selma3d.core.errors import InputError
from selma3d.core.structures import CATEGORIES
from selma3d.evaluation.leaderboard import GROUP_METRICS, LABELS, PERCENT_METRICS, group_of
from selma3d.reporting.tables import BASELINE, DEFAULT_UNSEEN
from selma3d.training.runplan import is_pretrained

log = logging.getLogger(__name__)

STYLE = {
    "figure.dpi": 100, "savefig.dpi": 200, "font.size": 8, "axes.titlesize": 8.5, "axes.labelsize": 8,
    "xtick.labelsize": 7, "ytick.labelsize": 7, "legend.fontsize": 7, "axes.spines.top": False,
    "axes.spines.right": False, "axes.grid": False, "pdf.fonttype": 42, "figure.constrained_layout.use": False,
}
#: fixed palette order so a strategy keeps its colour across figures and runs
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


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(STYLE)
    return plt


def save_figure(fig, path: str | Path):
    """PNG at ``path`` and PDF beside it (same stem), both atomic; closes and returns ``fig``."""
    import matplotlib.pyplot as plt

    path = Path(path)
    for target in (path, path.with_suffix(".pdf")):
        with atomic_path(target) as tmp:
            fig.savefig(tmp, bbox_inches="tight", format=target.suffix.lstrip("."))
    plt.close(fig)
    log.info("wrote %s (+ .pdf)", path)
    return fig


def no_data_figure(path: str | Path, message: str, size=(4.0, 1.2)):
    """A figure that says why it is empty, so a rule's outputs always exist."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=size)
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True)
    return save_figure(fig, path)


# ------------------------------------------------------------------------------- conventions


def strategy_colours(strategies) -> dict[str, str]:
    """Runs without SSL in greys (``scratch`` darkest); registered SSL strategies
    (``selma3d.strategies.catalog_order()``) in palette order, unknown ones after them."""
    known = strategies_registry.catalog_order()
    names = sorted(set(strategies), key=lambda s: (s != BASELINE, is_pretrained(s), s not in known,
                                                   known.index(s) if s in known else 0, s))
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


def group_order(groups) -> list[str]:
    cats = [c.replace("_", " ") for c in CATEGORIES]
    return sorted(set(groups), key=lambda g: (g.startswith("unseen"), cats.index(g) if g in cats else len(cats), g))


def default_protocol(cases: pd.DataFrame, protocol: str | None) -> str:
    have = sorted(set(cases["protocol"])) if "protocol" in cases.columns else []
    if protocol is None:
        if not have:
            raise InputError("cases table", "a protocol column", "none")
        return "selma3d2026" if "selma3d2026" in have else have[0]
    if have and protocol not in have:
        raise InputError("cases table", f"rows for protocol {protocol!r}", f"protocols {have}")
    return protocol


def metric_label(metric: str) -> str:
    label = LABELS.get(metric, metric)
    if metric in PERCENT_METRICS:
        return f"{label} (%)"
    return f"{label} (lower is better)" if metric.startswith("betti") else label


def metric_scale(metric: str) -> float:
    return 100.0 if metric in PERCENT_METRICS else 1.0


def metric_axis(ax, metric: str) -> None:
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


def integer_x(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(nbins=4, integer=True))


def secondary_metric(structure: str, category: str, protocol: str) -> str:
    """The protocol's second metric for a structure: PQ (isolated), clDice (contiguous/tree), β0 (spot)."""
    group = group_of(structure, category, protocol)
    metrics = GROUP_METRICS[protocol].get(group, ("dice", "cldice"))
    return metrics[1] if len(metrics) > 1 else "cldice"
