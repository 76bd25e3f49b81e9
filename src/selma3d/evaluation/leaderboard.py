"""Aggregate per-case scores into SELMA3D summaries, ranks and leaderboard tables.

Conventions (why): means and standard deviations skip NaN (panoptica-style metrics are NaN on
empty/empty cases) and every aggregate carries ``n`` (values used) and ``n_nan`` (values
skipped). The standard deviation is the sample one (ddof = 1), as the 2026 evaluator's
``statistics.stdev``; it is NaN with fewer than two values. Seeds are pooled: one run is a
(strategy, mode, budget), and its mean/std are over all its cases of all seeds.

2024 groups: structure type ``spot`` (Dice, β0 error) and ``tree`` (Dice, clDice, β0, β1 errors),
from ``structures.structure_type_2024``. 2026 groups: the four categories, isolated ones scored
by Dice and PQ, contiguous ones by Dice and clDice; the official aggregates pool ``isolated``
and ``contiguous``. Cases whose structure is unknown form the group ``unknown`` (all metrics,
never ranked).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from selma3d.core.atomic import atomic_path
from selma3d.core.errors import InputError
from selma3d.core.text import tex_escape
from selma3d.evaluation.metrics import METRIC_COLUMNS, PROTOCOLS
from selma3d.core.structures import CATEGORIES, structure_type_2024
from selma3d.training.runplan import ENSEMBLE, ensemble_mode, pretrain_data

RUN_KEYS = ("strategy", "mode", "budget")
#: the pretraining data a run started from, read from its strategy (``mae@f0.25``: a quarter of
#: the unannotated patches, source ``all``); empty for runs without pretraining
PRETRAIN_COLUMNS = ("pretrain_fraction", "pretrain_source")
UNKNOWN = "unknown"

#: metrics shown per group in the paper-style tables
GROUP_METRICS = {
    "selma3d2024": {
        "spot": ("dice", "betti0_error"),
        "tree": ("dice", "cldice", "betti0_error", "betti1_error"),
    },
    "selma3d2026": {
        "isolated_sparse": ("dice", "pq"),
        "isolated_dense": ("dice", "pq"),
        "contiguous_sparse": ("dice", "cldice"),
        "contiguous_dense": ("dice", "cldice"),
    },
}
#: 2026 structure type -> its categories (the ranking averages categories, then types)
TYPES_2026 = {
    "isolated": ("isolated_sparse", "isolated_dense"),
    "contiguous": ("contiguous_sparse", "contiguous_dense"),
}
#: higher is better for these; Betti errors are lower-is-better
PERCENT_METRICS = {"dice", "cldice", "cldice_corrected", "pq", "instance_f1", "instance_recall"}
LABELS = {
    "dice": "Dice", "cldice": "clDice", "cldice_corrected": "clDice (corr.)", "betti0_error": "β0 err",
    "betti1_error": "β1 err", "pq": "PQ", "instance_f1": "inst. F1", "instance_recall": "inst. recall",
}
TEX_LABELS = {
    "dice": "Dice", "cldice": "clDice", "cldice_corrected": "clDice (corr.)", "betti0_error": r"$\beta_0$ err",
    "betti1_error": r"$\beta_1$ err", "pq": "PQ", "instance_f1": "inst.\\ F1", "instance_recall": "inst.\\ recall",
}


def _check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise InputError(None, f"protocol in {PROTOCOLS}", repr(protocol))


def _check_columns(cases: pd.DataFrame, needed, what: str = "cases table") -> None:
    missing = [c for c in needed if c not in cases.columns]
    if missing:
        raise InputError(what, f"columns {list(needed)}", f"missing {missing} (have {list(cases.columns)})")


def group_of(row_structure: str, row_category: str, protocol: str) -> str:
    """The aggregation group of one case under ``protocol``."""
    if protocol == "selma3d2024":
        try:
            return structure_type_2024(row_structure)
        except KeyError:
            return UNKNOWN
    return row_category if row_category in CATEGORIES else UNKNOWN


def with_groups(cases: pd.DataFrame, protocol: str) -> pd.DataFrame:
    """Copy of ``cases`` with a ``group`` column for ``protocol``."""
    _check_protocol(protocol)
    _check_columns(cases, ("structure", "category"))
    out = cases.copy()
    out["group"] = [group_of(str(s), str(c), protocol) for s, c in zip(out["structure"], out["category"])]
    return out


def stats(values) -> dict:
    """NaN-aware mean, sample std (ddof 1), n used and n NaN."""
    v = np.asarray(pd.to_numeric(pd.Series(values), errors="coerce"), dtype=np.float64)
    ok = v[~np.isnan(v)]
    n = int(ok.size)
    mean = float(ok.mean()) if n else math.nan
    std = float(ok.std(ddof=1)) if n > 1 else math.nan
    return {"mean": mean, "std": std, "n": n, "n_nan": int(v.size - n)}


def _metrics_for(group: str, protocol: str) -> tuple[str, ...]:
    return GROUP_METRICS[protocol].get(group, METRIC_COLUMNS)


def summarize(cases: pd.DataFrame, protocol: str) -> dict:
    """The protocol's aggregates of a per-case table (one evaluation run).

    Returns ``{"protocol", "n_cases", "groups": {group: {"n_cases", "metrics": {metric:
    stats}}}, "aggregates": {...}}``; ``aggregates`` uses the official evaluators' key names
    (2026: ``iso_dice_mean``, ``iso_panoptic_quality_std``, ``con_cldice_mean``, ...; 2024:
    ``spot_dice_mean``, ``tree_betti_error_1_mean``, ...). Groups with no cases are absent.
    """
    df = with_groups(cases, protocol)
    groups: dict[str, dict] = {}
    for group, sub in df.groupby("group", sort=True):
        groups[str(group)] = {
            "n_cases": int(len(sub)),
            "metrics": {m: stats(sub[m]) for m in _metrics_for(str(group), protocol)},
        }
    agg: dict[str, float] = {}
    if protocol == "selma3d2026":
        names = {"iso": ("isolated", {"dice": "dice", "pq": "panoptic_quality"}),
                 "con": ("contiguous", {"dice": "dice", "cldice": "cldice"})}
        for prefix, (typ, metrics) in names.items():
            sub = df[df["group"].isin(TYPES_2026[typ])]
            if sub.empty:
                continue
            s_all = {}
            for m, official in metrics.items():
                s = stats(sub[m])
                agg[f"{prefix}_{official}_mean"] = s["mean"]
                agg[f"{prefix}_{official}_std"] = s["std"]
                s_all[m] = s
            groups[typ] = {"n_cases": int(len(sub)), "metrics": s_all}
    else:
        official = {"dice": "dice", "cldice": "cldice", "betti0_error": "betti_error_0", "betti1_error": "betti_error_1"}
        for group in ("spot", "tree"):
            if group not in groups:
                continue
            for m, s in groups[group]["metrics"].items():
                agg[f"{group}_{official[m]}_mean"] = s["mean"]
                agg[f"{group}_{official[m]}_std"] = s["std"]
    return {"protocol": protocol, "n_cases": int(len(df)), "groups": groups, "aggregates": agg}


def build_table(cases: pd.DataFrame, protocol: str) -> pd.DataFrame:
    """Long table: one row per (strategy, mode, budget) × group × metric with mean/std/n/n_nan.

    ``cases`` holds one row per case per run (columns ``strategy, mode, budget, seed`` plus the
    per-case columns of ``selma3d.evaluation.evaluate``). All metrics are aggregated for every group; the
    2026 table also has the pooled ``isolated`` and ``contiguous`` groups.
    """
    _check_columns(cases, RUN_KEYS + ("seed", "structure", "category") + METRIC_COLUMNS)
    df = with_groups(cases, protocol)
    parts = [df]
    if protocol == "selma3d2026":
        for typ, cats in TYPES_2026.items():
            sub = df[df["group"].isin(cats)].copy()
            sub["group"] = typ
            parts.append(sub)
    df = pd.concat(parts, ignore_index=True)
    rows = []
    for key, sub in df.groupby(list(RUN_KEYS) + ["group"], sort=True, dropna=False):
        for m in METRIC_COLUMNS:
            rows.append(dict(zip(RUN_KEYS + ("group",), key)) | {"metric": m, "n_seeds": int(sub["seed"].nunique())}
                        | stats(sub[m]))
    cols = list(RUN_KEYS) + ["group", "metric", "mean", "std", "n", "n_nan", "n_seeds"]
    return with_pretrain_data(pd.DataFrame(rows, columns=cols))


def with_pretrain_data(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with :data:`PRETRAIN_COLUMNS` after ``strategy``: the fraction and source of the
    unannotated patches each run's encoder was pretrained on (NaN and "" without pretraining)."""
    data = [pretrain_data(str(s)) for s in table["strategy"]]
    out = table.drop(columns=[c for c in PRETRAIN_COLUMNS if c in table.columns])
    at = list(out.columns).index("strategy") + 1
    out.insert(at, "pretrain_source", [d[1] if d else "" for d in data])
    out.insert(at, "pretrain_fraction", [d[0] if d else math.nan for d in data])
    return out


def group_ranks(table: pd.DataFrame, protocol: str, what: str) -> tuple[pd.DataFrame, dict[str, pd.Series]]:
    """Rank the runs of a ``build_table`` table per (group, metric) of ``protocol`` and average
    the ranks within each group.

    1 = best (Dice, clDice, PQ higher is better; Betti errors lower); ties share the average
    rank; a NaN mean ranks last. Returns the per-run rank columns (``rank_<group>_<metric>``,
    ``rank_<group>``) and the mean rank of each group present. ``what`` names the rows expected
    in the error when there are none.
    """
    _check_columns(table, RUN_KEYS + ("group", "metric", "mean"), "leaderboard table")
    metrics = GROUP_METRICS[protocol]
    wanted = table[[g in metrics and m in metrics[g] for g, m in zip(table["group"], table["metric"])]]
    if wanted.empty:
        raise InputError("leaderboard table", what, "none")
    means = wanted.pivot_table(index=list(RUN_KEYS), columns=["group", "metric"], values="mean",
                               aggfunc="first", dropna=False)
    out = pd.DataFrame(index=means.index)
    group_rank = {}
    for group, names in metrics.items():
        cols = [(group, m) for m in names if (group, m) in means.columns]
        if not cols:
            continue
        ranks = [means[c].rank(ascending=c[1] not in PERCENT_METRICS, method="average", na_option="bottom")
                 for c in cols]
        for c, r in zip(cols, ranks):
            out[f"rank_{group}_{c[1]}"] = r
        group_rank[group] = pd.concat(ranks, axis=1).mean(axis=1)
        out[f"rank_{group}"] = group_rank[group]
    return out, group_rank


def finish_ranking(out: pd.DataFrame, ranks: list[pd.Series]) -> pd.DataFrame:
    """``final_rank`` = the mean of ``ranks``; ``place`` orders by it (ties share the better place)."""
    out["final_rank"] = pd.concat(ranks, axis=1).mean(axis=1)
    out["place"] = out["final_rank"].rank(method="min").astype(int)
    return out.reset_index().sort_values(["place"] + list(RUN_KEYS), kind="stable").reset_index(drop=True)


def rank_2026(table: pd.DataFrame) -> pd.DataFrame:
    """SELMA3D 2026 ranking of the runs in a ``build_table(..., 'selma3d2026')`` table.

    Mean per metric → rank runs per (category, metric) (1 = best, ties share the average rank,
    a NaN mean ranks last) → mean rank within each category → mean over the categories of each
    structure type → mean over the two types = ``final_rank``; ``place`` orders by it (ties share
    the better place). Categories without cases are left out of the averages.
    """
    out, cat_rank = group_ranks(table, "selma3d2026", "2026 category rows (isolated_*/contiguous_*)")
    type_rank = {}
    for typ, cats in TYPES_2026.items():
        present = [cat_rank[c] for c in cats if c in cat_rank]
        if present:
            type_rank[typ] = pd.concat(present, axis=1).mean(axis=1)
            out[f"rank_{typ}"] = type_rank[typ]
    return finish_ranking(out, list(type_rank.values()))


# ------------------------------------------------------------------------------- rendering


def _fmt(mean: float, std: float, n_nan: int, metric: str) -> str:
    if math.isnan(mean):
        return "–"
    scale = 100.0 if metric in PERCENT_METRICS else 1.0
    spec = ".2f" if metric in PERCENT_METRICS else ".4g"
    text = format(mean * scale, spec)
    if not math.isnan(std):
        text += " ± " + format(std * scale, spec)
    if n_nan:
        text += f" [{n_nan} NaN]"
    return text


def _run_label(key: tuple) -> str:
    return " / ".join(str(k) for k in key)


def _display(table: pd.DataFrame, protocol: str) -> tuple[list[tuple], list[tuple[str, str]], dict]:
    """Runs, shown (group, metric) columns, and {(run, group, metric): (text, is_best)}."""
    shown_groups = [g for g in GROUP_METRICS[protocol] if g in set(table["group"])]
    if UNKNOWN in set(table["group"]):
        shown_groups.append(UNKNOWN)
    columns = [(g, m) for g in shown_groups for m in _metrics_for(g, protocol)]
    runs = sorted({tuple(r) for r in table[list(RUN_KEYS)].itertuples(index=False)}, key=lambda k: tuple(map(str, k)))
    idx = table.set_index(list(RUN_KEYS) + ["group", "metric"]).sort_index()
    cells = {}
    for g, m in columns:
        vals = {}
        for run in runs:
            key = run + (g, m)
            if key in idx.index:
                row = idx.loc[key]
                vals[run] = (float(row["mean"]), float(row["std"]), int(row["n_nan"]))
        finite = [v[0] for v in vals.values() if not math.isnan(v[0])]
        best = (max(finite) if m in PERCENT_METRICS else min(finite)) if finite else None
        for run, (mean, std, n_nan) in vals.items():
            cells[(run, g, m)] = (_fmt(mean, std, n_nan, m), len(runs) > 1 and best is not None and mean == best)
    return runs, columns, cells


def _ranks_for(table: pd.DataFrame, protocol: str) -> dict[tuple, float]:
    if protocol != "selma3d2026":
        return {}
    try:
        ranks = rank_2026(table)
    except InputError:
        return {}
    return {tuple(r[k] for k in RUN_KEYS): float(r["final_rank"]) for _, r in ranks.iterrows()}


def _by_rank(runs: list[tuple], ranks: dict[tuple, float]) -> list[tuple]:
    """Best-ranked run first when there is a ranking (2026), else the given order."""
    if not ranks:
        return runs
    return sorted(runs, key=lambda r: ranks.get(r, math.inf))


def render_markdown(table: pd.DataFrame, protocol: str) -> str:
    """Paper-style markdown table (tables 4–5): mean ± std, % for overlap metrics, best in bold."""
    runs, columns, cells = _display(table, protocol)
    ranks = _ranks_for(table, protocol)
    runs = _by_rank(runs, ranks)
    header = ["strategy / mode / budget"] + [f"{g} {LABELS.get(m, m)}" for g, m in columns]
    if ranks:
        header.append("final rank")
    lines = [f"## {protocol}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in runs:
        row = [_run_label(run)]
        for g, m in columns:
            text, best = cells.get((run, g, m), ("", False))
            row.append(f"**{text}**" if best else text)
        if ranks:
            row.append(f"{ranks[run]:.2f}" if run in ranks else "")
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Dice/clDice/PQ in %, mean ± sample std over cases and seeds; β errors lower is better; "
              "[k NaN] = cases without a defined value.", ""]
    return "\n".join(lines)


def render_latex(table: pd.DataFrame, protocol: str) -> str:
    """booktabs tabular of the same table; best values in \\textbf."""
    runs, columns, cells = _display(table, protocol)
    ranks = _ranks_for(table, protocol)
    runs = _by_rank(runs, ranks)
    ncol = 1 + len(columns) + (1 if ranks else 0)
    lines = [f"% {protocol}: mean $\\pm$ sample std over cases and seeds; Dice/clDice/PQ in \\%",
             r"\begin{tabular}{l" + "c" * (ncol - 1) + "}", r"\toprule"]
    groups = []
    for g, _ in columns:
        if not groups or groups[-1][0] != g:
            groups.append([g, 0])
        groups[-1][1] += 1
    head1 = [""] + [rf"\multicolumn{{{n}}}{{c}}{{{tex_escape(g)}}}" for g, n in groups] + ([""] if ranks else [])
    head2 = ["Strategy / mode / budget"] + [TEX_LABELS.get(m, tex_escape(m)) for _, m in columns] + (["Rank"] if ranks else [])
    lines += [" & ".join(head1) + r" \\", " & ".join(head2) + r" \\", r"\midrule"]
    for run in runs:
        row = [tex_escape(_run_label(run))]
        for g, m in columns:
            text, best = cells.get((run, g, m), ("", False))
            text = tex_escape(text)
            row.append(rf"\textbf{{{text}}}" if best else text)
        if ranks:
            row.append(f"{ranks[run]:.2f}" if run in ranks else "")
        lines.append(" & ".join(row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", ""]
    return "\n".join(lines)


def collect_eval_tables(paths) -> dict[str, pd.DataFrame]:
    """Per-case CSVs named ``.../{protocol}/{strategy}/{mode}/b{budget}_s{seed}.csv`` -> {protocol: cases}.

    The run columns (strategy, mode, budget, seed) are taken from the path, and the pretraining
    data of the run (:data:`PRETRAIN_COLUMNS`) from its strategy folder (``mae@f0.25``). An
    ensemble of seeds (``b<budget>_sens.csv``) is the run of mode ``<mode>+ens``, seed 0.
    """
    import re

    pattern = re.compile(r"^b(?P<budget>[^_/]+)_s(?P<seed>[^_/]+)\.csv$")
    parts: dict[str, list[pd.DataFrame]] = {}
    for path in map(Path, paths):
        m = pattern.match(path.name)
        protocol, strategy, mode = path.parts[-4], path.parts[-3], path.parts[-2]
        if m is None or protocol not in PROTOCOLS:
            raise InputError(path, "a path .../{protocol}/{strategy}/{mode}/b{budget}_s{seed}.csv", path.as_posix())
        df = pd.read_csv(path)
        _check_columns(df, ("case", "structure", "category") + METRIC_COLUMNS, str(path))
        budget, seed = _maybe_int(m["budget"]), _maybe_int(m["seed"])
        if seed == ENSEMBLE:  # the ensemble of the run's seeds: its own leaderboard run
            mode, seed = ensemble_mode(mode), 0
        df.insert(0, "seed", seed)
        df.insert(0, "budget", budget)
        df.insert(0, "mode", mode)
        df.insert(0, "strategy", strategy)
        parts.setdefault(protocol, []).append(with_pretrain_data(df))
    if not parts:
        raise InputError(None, "at least one per-case table", "none")
    return {p: pd.concat(v, ignore_index=True) for p, v in parts.items()}


def _maybe_int(text: str):
    try:
        return int(text)
    except ValueError:
        return text


def write_leaderboard(cases_by_protocol: dict[str, pd.DataFrame], out) -> list[Path]:
    """Write leaderboard.md, leaderboard.csv and leaderboard.tex (one table per protocol), atomically.

    ``out`` is a folder, or an object with ``markdown``, ``csv``, ``latex`` (and optionally
    ``cases``: all per-case rows with a ``protocol`` column) paths, e.g. Snakemake's output.
    The CSV is the long table of every run × group × metric (all metrics, not only the shown
    ones) with a ``protocol`` column and, for 2026, the run's ``final_rank``.
    """
    if hasattr(out, "markdown"):
        paths = [Path(out.markdown), Path(out.csv), Path(out.latex)]
        cases_path = Path(out.cases) if getattr(out, "cases", None) else None
    else:
        out_dir = Path(out)
        paths = [out_dir / "leaderboard.md", out_dir / "leaderboard.csv", out_dir / "leaderboard.tex"]
        cases_path = None
    if not cases_by_protocol:
        raise InputError(None, "per-case tables for at least one protocol", "none")
    md, tex, csv_parts = ["# SELMA3D leaderboard", ""], [], []
    for protocol in sorted(cases_by_protocol):
        _check_protocol(protocol)
        cases = cases_by_protocol[protocol]
        if cases.empty:
            raise InputError(protocol, "at least one scored case", "an empty table")
        table = build_table(cases, protocol)
        md.append(render_markdown(table, protocol))
        tex.append(render_latex(table, protocol))
        part = table.copy()
        part.insert(0, "protocol", protocol)
        ranks = _ranks_for(table, protocol)
        part["final_rank"] = [ranks.get(tuple(r), math.nan) for r in part[list(RUN_KEYS)].itertuples(index=False)]
        csv_parts.append(part)
    with atomic_path(paths[0]) as tmp:
        tmp.write_text("\n".join(md), encoding="utf-8")
    with atomic_path(paths[1]) as tmp:
        pd.concat(csv_parts, ignore_index=True).to_csv(tmp, index=False, float_format="%.10g")
    with atomic_path(paths[2]) as tmp:
        tmp.write_text("\n".join(tex), encoding="utf-8")
    if cases_path is not None:
        all_cases = pd.concat([df.assign(protocol=p) for p, df in sorted(cases_by_protocol.items())], ignore_index=True)
        with atomic_path(cases_path) as tmp:
            all_cases.to_csv(tmp, index=False, float_format="%.10g")
        paths.append(cases_path)
    return paths
