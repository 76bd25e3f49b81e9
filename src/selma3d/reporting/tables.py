"""The paper's tables 4, 5 and 6 regenerated from a run, plus HTML versions for the report.

Tables 4–5 (the leaderboards) are ``selma3d.evaluation.leaderboard``'s per-protocol tables; this module
re-renders them (Markdown → HTML for the Snakemake report) and adds table 6, the SSL ablation:
each pretrained strategy against the same finetuning without pretraining (``scratch``), per test
structure, as in the paper's "Zoomlin with / without SSL" table. Aggregation is the
leaderboard's (``build_table``: NaN-aware mean, sample std over cases and seeds pooled), run on
one structure at a time, so table 6 numbers agree with tables 4–5 by construction.
"""

from __future__ import annotations

import html
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from selma3d.core.atomic import atomic_path
from selma3d.core.errors import InputError
from selma3d.core.text import tex_escape
from selma3d.evaluation.leaderboard import (
    GROUP_METRICS,
    LABELS,
    PERCENT_METRICS,
    RUN_KEYS,
    TEX_LABELS,
    build_table,
    group_of,
    render_latex,
    render_markdown,
)
from selma3d.evaluation.metrics import METRIC_COLUMNS, PROTOCOLS
from selma3d.training.runplan import SCRATCH, baseline_for, is_pretrained

BASELINE = SCRATCH
#: structures never annotated in the challenge's training data (scored as "unseen")
DEFAULT_UNSEEN = frozenset({"microglia"})
TABLE6_COLUMNS = [
    "protocol", "structure", "seen", "group", "strategy", "pretrain_fraction", "pretrain_source", "mode", "budget", "metric",
    "ssl_mean", "ssl_std", "ssl_n", "baseline", "baseline_mode", "baseline_mean", "baseline_std", "baseline_n",
    "delta", "ssl_better",
]


def budget_key(value) -> tuple:
    """Sort key for budgets: numbers ascending, then words (``all``) last."""
    text = str(value)
    return (not text.isdigit(), int(text) if text.isdigit() else 0, text)


def budget_order(values) -> list[str]:
    """Budgets as strings, numbers ascending, ``all`` last."""
    return sorted({str(v) for v in values}, key=budget_key)


def read_cases(path: str | Path) -> pd.DataFrame:
    """``leaderboard/cases.csv`` with budgets as strings (``1``, ``all``) and a checked layout."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "the leaderboard's per-case table (cases.csv)", "nothing at that path")
    df = pd.read_csv(path, dtype={"budget": str, "strategy": str, "mode": str, "case": str})
    needed = RUN_KEYS + ("seed", "case", "structure", "category", "protocol") + METRIC_COLUMNS
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise InputError(path, f"columns {list(needed)}", f"missing {missing} (have {list(df.columns)})")
    bad = sorted(set(df["protocol"]) - set(PROTOCOLS))
    if bad:
        raise InputError(path, f"protocol values in {PROTOCOLS}", repr(bad))
    return df


def _for_protocol(cases: pd.DataFrame, protocol: str) -> pd.DataFrame:
    if "protocol" in cases.columns:
        cases = cases[cases["protocol"] == protocol]
    out = cases.copy()
    out["budget"] = out["budget"].astype(str)
    return out


def _better(delta: float, metric: str) -> bool | None:
    if math.isnan(delta):
        return None
    return delta > 0 if metric in PERCENT_METRICS else delta < 0


def ablation_table(cases: pd.DataFrame, protocol: str, baseline: str = BASELINE,
                   unseen=DEFAULT_UNSEEN) -> pd.DataFrame:
    """Table 6 as a long frame: per structure × SSL run × metric, with vs without SSL.

    Each SSL run (strategy, mode, budget) is paired with its baseline at the same budget and
    mode, or in mode ``full`` when the baseline was not run in that mode (a frozen random
    encoder is no "without SSL" reference). The baseline is ``scratch_<strategy>`` (the same
    architecture trained without SSL) when that was run, else ``baseline``. Metrics are the
    protocol's metrics of the structure's group (2024: spot Dice, β0; tree Dice, clDice, β0, β1 — 2026: Dice with PQ for
    isolated, clDice for contiguous). ``delta`` = SSL − baseline in raw units;
    ``ssl_better`` respects the metric's direction (Betti errors: lower is better).
    """
    if protocol not in PROTOCOLS:
        raise InputError(None, f"protocol in {PROTOCOLS}", repr(protocol))
    df = _for_protocol(cases, protocol)
    rows = []
    for structure, sub in df.groupby("structure", sort=True):
        category = str(sub["category"].iloc[0])
        group = group_of(str(structure), category, protocol)
        metrics = GROUP_METRICS[protocol].get(group, METRIC_COLUMNS)
        table = build_table(sub, protocol)
        table = table[(table["group"] == group) & table["metric"].isin(metrics)]
        table = table.assign(budget=table["budget"].astype(str))
        ssl_rows = table[table["strategy"].map(is_pretrained) & (table["strategy"] != baseline)]
        present = set(table["strategy"])
        for _, r in ssl_rows.iterrows():
            ref = baseline_for(r["strategy"], present) if baseline == BASELINE else baseline
            base = table[table["strategy"] == ref].set_index(["mode", "budget", "metric"])
            base_modes = set(base.index.get_level_values("mode"))
            bmode = r["mode"] if r["mode"] in base_modes else ("full" if "full" in base_modes else None)
            key = (bmode, r["budget"], r["metric"])
            b = base.loc[key] if bmode is not None and key in base.index else None
            b_mean = float(b["mean"]) if b is not None else math.nan
            delta = float(r["mean"]) - b_mean
            rows.append({
                "protocol": protocol, "structure": structure, "seen": structure not in unseen, "group": group,
                "strategy": r["strategy"], "pretrain_fraction": r["pretrain_fraction"],
                "pretrain_source": r["pretrain_source"], "mode": r["mode"], "budget": r["budget"], "metric": r["metric"],
                "ssl_mean": float(r["mean"]), "ssl_std": float(r["std"]), "ssl_n": int(r["n"]),
                "baseline": ref, "baseline_mode": bmode if b is not None else "",
                "baseline_mean": b_mean, "baseline_std": float(b["std"]) if b is not None else math.nan,
                "baseline_n": int(b["n"]) if b is not None else 0,
                "delta": delta, "ssl_better": _better(delta, r["metric"]),
            })
    out = pd.DataFrame(rows, columns=TABLE6_COLUMNS)
    out["ssl_better"] = pd.Series([None if v is None else bool(v) for v in out["ssl_better"]], index=out.index,
                                  dtype=object)  # True / False / None (no baseline), never numpy bools
    if out.empty:
        return out
    metric_pos = {m: i for i, m in enumerate(METRIC_COLUMNS)}
    out["_b"] = out["budget"].map(budget_key)
    out["_m"] = out["metric"].map(metric_pos)
    out = out.sort_values(["seen", "structure", "_b", "strategy", "mode", "_m"], ascending=[False, True, True, True, True, True])
    return out.drop(columns=["_b", "_m"]).reset_index(drop=True)


# ------------------------------------------------------------------------------ rendering


def _num(value: float, metric: str, signed: bool = False) -> str:
    if math.isnan(value):
        return "–"
    scale = 100.0 if metric in PERCENT_METRICS else 1.0
    spec = ("+" if signed else "") + (".2f" if metric in PERCENT_METRICS else ".3g")
    return format(value * scale, spec)


def _cell(mean: float, std: float, metric: str) -> str:
    text = _num(mean, metric)
    if not math.isnan(mean) and not math.isnan(std):
        text += " ± " + _num(std, metric)
    return text


def _structure_label(structure: str, seen: bool) -> str:
    return structure if seen else f"{structure} (unseen)"


def _ablation_layout(t6: pd.DataFrame):
    """Columns (structure, seen, metric), baseline rows and SSL rows, in display order."""
    cols = list(dict.fromkeys((s, bool(seen), m) for s, seen, m in t6[["structure", "seen", "metric"]].itertuples(index=False)))
    blocks = []
    for budget in budget_order(t6["budget"]):
        sub = t6[t6["budget"] == budget]
        for ref, bmode in sorted(set(sub[["baseline", "baseline_mode"]].itertuples(index=False))):
            runs = sub[(sub["baseline"] == ref) & (sub["baseline_mode"] == bmode)]
            ssl_runs = sorted({(s, m) for s, m in runs[["strategy", "mode"]].itertuples(index=False)})
            blocks.append((budget, ref, bmode, ssl_runs))
    return cols, blocks


def _ablation_rows(t6: pd.DataFrame):
    """Yield (label, [(text, best)], is_baseline) rows of the rendered table 6."""
    cols, blocks = _ablation_layout(t6)
    idx = t6.set_index(["strategy", "mode", "budget", "structure", "metric"]).sort_index()
    for budget, ref, bmode, ssl_runs in blocks:
        if bmode:
            cells = []
            for s, _, m in cols:
                hit = t6[(t6["budget"] == budget) & (t6["baseline"] == ref) & (t6["baseline_mode"] == bmode)
                         & (t6["structure"] == s) & (t6["metric"] == m)]
                cells.append((_cell(float(hit["baseline_mean"].iloc[0]), float(hit["baseline_std"].iloc[0]), m), False)
                             if len(hit) else ("", False))
            yield f"{ref} / {bmode} / {budget} (no SSL)", cells, True
        for strategy, mode in ssl_runs:
            cells = []
            for s, _, m in cols:
                key = (strategy, mode, budget, s, m)
                if key not in idx.index:
                    cells.append(("", False))
                    continue
                r = idx.loc[key]
                text = _cell(float(r["ssl_mean"]), float(r["ssl_std"]), m)
                if not math.isnan(float(r["delta"])):
                    text += f" (Δ {_num(float(r['delta']), m, signed=True)})"
                cells.append((text, isinstance(r["ssl_better"], (bool, np.bool_)) and bool(r["ssl_better"])))
            yield f"{strategy} / {mode} / {budget}", cells, False


def render_ablation_markdown(t6: pd.DataFrame, protocol: str, baseline: str = BASELINE) -> str:
    """Table 6 as Markdown: baseline row, then each SSL run with Δ; improvements in bold."""
    lines = [f"## {protocol}", ""]
    if t6.empty:
        return "\n".join(lines + [f"No SSL run to compare with {baseline!r} (configure both).", ""])
    cols, _ = _ablation_layout(t6)
    header = ["strategy / mode / budget"] + [f"{_structure_label(s, seen)} {LABELS.get(m, m)}" for s, seen, m in cols]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, cells, _ in _ablation_rows(t6):
        lines.append("| " + " | ".join([label] + [f"**{t}**" if best else t for t, best in cells]) + " |")
    lines += ["", f"Mean ± sample std over cases and seeds; Dice/clDice/PQ in %; Δ = with SSL − without "
              f"({baseline}), in points; bold = SSL better (β errors: lower is better).", ""]
    return "\n".join(lines)


def render_ablation_latex(t6: pd.DataFrame, protocol: str, baseline: str = BASELINE) -> str:
    """booktabs tabular of table 6, one column group per structure."""
    if t6.empty:
        return f"% {protocol}: no SSL run to compare with {baseline}\n"
    cols, _ = _ablation_layout(t6)
    groups: list[list] = []
    for s, seen, _ in cols:
        if not groups or groups[-1][0] != (s, seen):
            groups.append([(s, seen), 0])
        groups[-1][1] += 1
    lines = [f"% {protocol}: with vs without SSL ({tex_escape(baseline)}); mean $\\pm$ sample std, "
             "Dice/clDice/PQ in \\%, $\\Delta$ in points",
             r"\begin{tabular}{l" + "c" * len(cols) + "}", r"\toprule",
             " & ".join([""] + [rf"\multicolumn{{{n}}}{{c}}{{{tex_escape(_structure_label(*g))}}}" for g, n in groups]) + r" \\",
             " & ".join(["Strategy / mode / budget"] + [TEX_LABELS.get(m, tex_escape(m)) for _, _, m in cols]) + r" \\",
             r"\midrule"]
    first = True
    for label, cells, is_base in _ablation_rows(t6):
        if is_base and not first:
            lines.append(r"\midrule")
        first = False
        row = [tex_escape(label)] + [rf"\textbf{{{tex_escape(t)}}}" if best else tex_escape(t) for t, best in cells]
        lines.append(" & ".join(row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- HTML for the report

_BOLD = re.compile(r"\*\*(.+?)\*\*")
_STYLE = ("<style>body{font-family:sans-serif;font-size:13px;margin:12px}"
          "table{border-collapse:collapse;margin:8px 0}th,td{border:1px solid #bbb;padding:3px 7px;"
          "text-align:center;white-space:nowrap}td:first-child,th:first-child{text-align:left}"
          "th{background:#eee}pre{background:#f6f6f6;padding:8px;border:1px solid #ddd}"
          "p.note{color:#444;font-size:12px}</style>")


def _bold(text: str) -> str:
    return _BOLD.sub(r"<b>\1</b>", html.escape(text))


def markdown_to_html(md: str, title: str) -> str:
    """A standalone HTML page from this module's Markdown (headings, pipe tables, notes)."""
    out = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>{_STYLE}</head><body>"]
    in_table = False
    for line in md.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if all(set(c) <= {"-", ":"} for c in cells):
                continue
            tag = "th" if not in_table else "td"
            if not in_table:
                out.append("<table>")
                in_table = True
            out.append("<tr>" + "".join(f"<{tag}>{_bold(c)}</{tag}>" for c in cells) + "</tr>")
            continue
        if in_table:
            out.append("</table>")
            in_table = False
        if line.startswith("#"):
            level = min(len(line) - len(line.lstrip("#")), 4)
            out.append(f"<h{level}>{html.escape(line.lstrip('#').strip())}</h{level}>")
        elif line.strip():
            out.append(f"<p class='note'>{_bold(line)}</p>")
    if in_table:
        out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out)


def _write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def _shift_headings(md: str, by: int = 1) -> str:
    return "\n".join("#" * by + line if line.startswith("#") else line for line in md.splitlines())


def write_tables(cases: pd.DataFrame | str | Path, protocols, out, baseline: str = BASELINE,
                 unseen=DEFAULT_UNSEEN) -> list[Path]:
    """Write table 6 (``table6.{md,csv,tex}``), the combined tables 4–6 (``tables.{md,tex}``) and
    one HTML page per table and protocol (``leaderboard_<protocol>.html``,
    ``table6_<protocol>.html``) for the report.

    ``out`` is a folder, or an object with those names as attributes (``table6_md``,
    ``table6_csv``, ``table6_tex``, ``tables_md``, ``tables_tex``) plus ``html`` — a list of the
    HTML paths, e.g. Snakemake's output; HTML paths are matched to tables by file name.
    """
    if not isinstance(cases, pd.DataFrame):
        cases = read_cases(cases)
    protocols = [p for p in protocols]
    missing = [p for p in protocols if p not in set(cases.get("protocol", pd.Series(dtype=str)))]
    if missing:
        raise InputError("cases table", f"per-case rows for protocols {protocols}", f"none for {missing}")
    if hasattr(out, "table6_md"):
        names = {k: Path(getattr(out, k)) for k in ("table6_md", "table6_csv", "table6_tex", "tables_md", "tables_tex")}
        html_paths = {Path(p).name: Path(p) for p in out.html}
    else:
        d = Path(out)
        names = {"table6_md": d / "table6.md", "table6_csv": d / "table6.csv", "table6_tex": d / "table6.tex",
                 "tables_md": d / "tables.md", "tables_tex": d / "tables.tex"}
        html_paths = {f"{k}_{p}.html": d / f"{k}_{p}.html" for p in protocols for k in ("leaderboard", "table6")}
    t6_md, t6_tex, t6_parts, lb_md, lb_tex = ["# Table 6: with vs without SSL", ""], [], [], [], []
    written = []
    for protocol in sorted(protocols):
        df = _for_protocol(cases, protocol)
        lb = build_table(df, protocol)
        md_lb = render_markdown(lb, protocol)
        lb_md.append(md_lb)
        lb_tex.append(render_latex(lb, protocol))
        t6 = ablation_table(df, protocol, baseline, unseen)
        t6_parts.append(t6)
        md6 = render_ablation_markdown(t6, protocol, baseline)
        t6_md.append(md6)
        t6_tex.append(render_ablation_latex(t6, protocol, baseline))
        for kind, md, title in (("leaderboard", md_lb, f"Tables 4–5: leaderboard ({protocol})"),
                                ("table6", md6, f"Table 6: with vs without SSL ({protocol})")):
            name = f"{kind}_{protocol}.html"
            if name in html_paths:
                written.append(_write_text(html_paths[name], markdown_to_html(f"# {title}\n\n" + md, title)))
    written.append(_write_text(names["table6_md"], "\n".join(t6_md)))
    written.append(_write_text(names["table6_tex"], "\n".join(t6_tex)))
    with atomic_path(names["table6_csv"]) as tmp:
        pd.concat(t6_parts, ignore_index=True).to_csv(tmp, index=False, float_format="%.10g")
    written.append(names["table6_csv"])
    combined = (["# SELMA3D paper tables regenerated from this run", "",
                 "## Tables 4–5: leaderboard, one table per evaluation protocol", ""]
                + [_shift_headings(m) + "\n" for m in lb_md]
                + ["## Table 6: with vs without SSL, per test structure", ""]
                + [_shift_headings(m) + "\n" for m in t6_md[2:]])
    written.append(_write_text(names["tables_md"], "\n".join(combined)))
    tex = (["% SELMA3D paper tables regenerated from this run (needs \\usepackage{booktabs})",
            "% Tables 4-5: leaderboard per protocol"] + lb_tex + ["% Table 6: with vs without SSL"] + t6_tex)
    written.append(_write_text(names["tables_tex"], "\n".join(tex)))
    return written


def plan_summary(plan: dict) -> list[tuple[str, str]]:
    """(what, value) rows of a training plan (``selma3d.training.plan``) for the report."""
    net = plan.get("network") or {}
    fo = plan.get("foreground_oversample") or {}
    rows = [
        ("training cases", str((plan.get("source") or {}).get("n_cases", ""))),
        ("median spacing (z, y, x µm)", ", ".join(f"{v:g}" for v in plan.get("spacing", []))),
        ("median shape (z, y, x)", ", ".join(f"{v:g}" for v in plan.get("median_shape", []))),
        ("patch size (dynunet)", " × ".join(str(v) for v in plan.get("patch_size", []))),
        ("batch size (dynunet)", str(plan.get("batch_size", ""))),
        ("dynunet strides", str(net.get("strides", ""))),
        ("dynunet kernels", str(net.get("kernel_size", ""))),
        ("dynunet filters", str(net.get("filters", ""))),
        ("normalisation", f"{plan.get('normalization', '')}: {plan.get('normalization_reason', '')}"),
        ("foreground oversampling", ", ".join(f"{k} {v:g}" for k, v in sorted(fo.items()))),
    ]
    return rows


def write_config_report(config: dict, yaml_out: str | Path, html_out: str | Path) -> list[Path]:
    """The effective config of the run (schema defaults filled in) and every strategy's network
    (``resolved_networks``) as YAML and as an HTML page: the YAML is ``selma3d config show``'s."""
    from selma3d.config import report_yaml

    text = report_yaml(config)
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>config</title>{_STYLE}</head><body>"
            "<h2>Configuration used (defaults from the schema filled in; resolved_networks: the network "
            "each strategy pretrains and finetunes)</h2>"
            f"<pre>{html.escape(text)}</pre></body></html>")
    return [_write_text(yaml_out, text), _write_text(html_out, page)]


def write_plan_report(plan: str | Path, config: dict, html_out: str | Path) -> Path:
    """The training plan (``plan.json`` of the ``plan`` rule) as an HTML page, saying whether
    finetuning uses it under ``config``."""
    import json

    data = json.loads(Path(plan).read_text())
    cells = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in plan_summary(data))
    used = config.get("plan", {}).get("enabled") and config.get("finetune", {}).get("recipe") == "nnunet"
    note = ("Used by finetuning (recipe nnunet, plan.enabled)." if used
            else "Not used by finetuning (needs finetune.recipe nnunet and plan.enabled).")
    raw = html.escape(json.dumps(data, indent=2))
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>plan</title>{_STYLE}</head><body>"
            "<h2>Training plan (dataset fingerprint of the train split)</h2>"
            f"<p>{note} File: {html.escape(str(plan))}</p><table>{cells}</table>"
            f"<details><summary>plan.json</summary><pre>{raw}</pre></details></body></html>")
    return _write_text(html_out, page)
