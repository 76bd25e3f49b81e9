"""Aggregation, 2026 ranking and leaderboard rendering on synthetic per-case tables."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from selma3d.evaluation import leaderboard as L
from selma3d.core.errors import InputError
from selma3d.evaluation.metrics import METRIC_COLUMNS

STRUCT = {
    "isolated_sparse": "cfos_neuron",
    "isolated_dense": "cell_nuclei",
    "contiguous_sparse": "axonalmarker",
    "contiguous_dense": "blood_vessel",
}

# run -> category -> (first metric, second metric); hand-ranked in test_rank_2026_hand_example
MEANS = {
    "A": {"isolated_sparse": (0.9, 0.5), "isolated_dense": (0.6, 0.1), "contiguous_sparse": (0.5, 0.5)},
    "B": {"isolated_sparse": (0.8, 0.6), "isolated_dense": (0.6, 0.2), "contiguous_sparse": (0.4, 0.6)},
    "C": {"isolated_sparse": (0.7, 0.4), "isolated_dense": (0.9, 0.3), "contiguous_sparse": (0.3, math.nan)},
}


def _row(strategy, seed, category, dice, second, case):
    row = {m: 0.5 for m in METRIC_COLUMNS}
    row.update(betti0_error=3, betti1_error=1, dice=dice)
    row["pq" if category.startswith("isolated") else "cldice"] = second
    return {"strategy": strategy, "mode": "finetune", "budget": 5, "seed": seed, "case": case,
            "structure": STRUCT[category], "category": category, **row}


@pytest.fixture()
def cases():
    rows = []
    for run, cats in MEANS.items():
        for cat, (a, b) in cats.items():
            rows.append(_row(run, 0, cat, a, b, f"{STRUCT[cat]}_1"))
    return pd.DataFrame(rows)


def test_rank_2026_hand_example(cases):
    table = L.build_table(cases, "selma3d2026")
    ranks = L.rank_2026(table).set_index("strategy")
    # isolated_sparse: dice A1 B2 C3, pq B1 A2 C3 -> A 1.5, B 1.5, C 3
    assert ranks["rank_isolated_sparse"].to_dict() == {"A": 1.5, "B": 1.5, "C": 3.0}
    # isolated_dense: dice C1, A=B tie 2.5; pq C1 B2 A3 -> A 2.75, B 2.25, C 1
    assert ranks["rank_isolated_dense"].to_dict() == {"A": 2.75, "B": 2.25, "C": 1.0}
    # contiguous_sparse: dice A1 B2 C3; clDice B1 A2 C(NaN) last -> A 1.5, B 1.5, C 3
    assert ranks["rank_contiguous_sparse"].to_dict() == {"A": 1.5, "B": 1.5, "C": 3.0}
    assert "rank_contiguous_dense" not in ranks.columns  # no cases: left out
    assert ranks["rank_isolated"].to_dict() == {"A": 2.125, "B": 1.875, "C": 2.0}
    assert ranks["final_rank"].to_dict() == {"A": 1.8125, "B": 1.6875, "C": 2.5}
    assert list(L.rank_2026(table)["strategy"]) == ["B", "A", "C"]
    assert ranks["place"].to_dict() == {"B": 1, "A": 2, "C": 3}


def test_build_table_pools_seeds_and_counts_nan(cases):
    extra = pd.DataFrame([_row("A", 1, "isolated_sparse", 0.7, 0.3, "cfos_neuron_2")])
    table = L.build_table(pd.concat([cases, extra], ignore_index=True), "selma3d2026")
    t = table.set_index(["strategy", "group", "metric"])
    a = t.loc[("A", "isolated_sparse", "dice")]
    assert a["mean"] == pytest.approx(0.8) and a["std"] == pytest.approx(np.std([0.9, 0.7], ddof=1))
    assert (a["n"], a["n_nan"], a["n_seeds"]) == (2, 0, 2)
    c = t.loc[("C", "contiguous_sparse", "cldice")]
    assert math.isnan(c["mean"]) and (c["n"], c["n_nan"]) == (0, 1)
    iso = t.loc[("A", "isolated", "dice")]  # pooled structure type
    assert iso["n"] == 3 and iso["mean"] == pytest.approx((0.9 + 0.7 + 0.6) / 3)
    assert "contiguous_dense" not in set(table["group"])


def test_build_table_requires_run_columns(cases):
    with pytest.raises(InputError, match="seed"):
        L.build_table(cases.drop(columns="seed"), "selma3d2026")


def test_summarize_2024_groups_and_official_keys():
    rows = [
        {"case": "cfos_1", "structure": "cfos_neuron", "category": "isolated_sparse", **dict.fromkeys(METRIC_COLUMNS, 0.0),
         "dice": 0.8, "betti0_error": 10},
        {"case": "cfos_2", "structure": "cfos_neuron", "category": "isolated_sparse", **dict.fromkeys(METRIC_COLUMNS, 0.0),
         "dice": 0.6, "betti0_error": 20},
        {"case": "microglia_1", "structure": "microglia", "category": "isolated_sparse",
         **dict.fromkeys(METRIC_COLUMNS, 0.0), "dice": 0.7, "cldice": 0.75, "betti1_error": 2},
    ]
    s = L.summarize(pd.DataFrame(rows), "selma3d2024")
    assert set(s["groups"]) == {"spot", "tree"}  # microglia is tree-like in 2024
    assert s["groups"]["spot"]["metrics"]["dice"]["mean"] == pytest.approx(0.7)
    assert set(s["groups"]["spot"]["metrics"]) == {"dice", "betti0_error"}
    assert s["aggregates"]["spot_betti_error_0_mean"] == 15
    assert s["aggregates"]["tree_cldice_mean"] == 0.75 and math.isnan(s["aggregates"]["tree_cldice_std"])
    s26 = L.summarize(pd.DataFrame(rows), "selma3d2026")  # microglia is isolated in 2026
    assert s26["groups"]["isolated"]["n_cases"] == 3
    assert s26["aggregates"]["iso_dice_mean"] == pytest.approx(0.7)
    assert "con_dice_mean" not in s26["aggregates"]


def test_write_leaderboard(cases, tmp_path):
    c24 = cases.copy()
    paths = L.write_leaderboard({"selma3d2026": cases, "selma3d2024": c24}, tmp_path / "lb")
    assert [p.name for p in paths] == ["leaderboard.md", "leaderboard.csv", "leaderboard.tex"]
    md = paths[0].read_text()
    assert "## selma3d2024" in md and "## selma3d2026" in md
    assert "contiguous_dense" not in md  # no cases: no columns
    assert "**90.00**" in md  # best isolated_sparse Dice of A, in percent, bold
    assert "[1 NaN]" not in md and "–" in md  # C's clDice is all NaN -> dash
    assert "final rank" in md
    df = pd.read_csv(paths[1])
    assert set(df["protocol"]) == {"selma3d2024", "selma3d2026"}
    assert df.loc[(df.protocol == "selma3d2026") & (df.strategy == "B"), "final_rank"].iloc[0] == 1.6875
    tex = paths[2].read_text()
    assert r"\textbf{90.00}" in tex and r"\toprule" in tex and "isolated\\_sparse" in tex
    # Betti errors are lower-is-better: all equal here, so every run is bold in that column
    assert md.count("**3**") >= 3


def test_nan_count_is_reported(cases, tmp_path):
    extra = pd.DataFrame([_row("C", 1, "contiguous_sparse", 0.3, 0.2, "axonalmarker_2")])
    paths = L.write_leaderboard({"selma3d2026": pd.concat([cases, extra])}, tmp_path)
    assert "20.00 [1 NaN]" in paths[0].read_text()


def test_collect_eval_tables_and_snakemake_style_outputs(cases, tmp_path):
    from types import SimpleNamespace

    paths = []
    for (strategy, seed), sub in cases.assign(seed=0).groupby(["strategy", "seed"]):
        p = tmp_path / "eval" / "selma3d2026" / strategy / "finetune" / f"b5_s{seed}.csv"
        p.parent.mkdir(parents=True, exist_ok=True)
        sub.drop(columns=["strategy", "mode", "budget", "seed"]).to_csv(p, index=False)
        paths.append(p)
    got = L.collect_eval_tables(paths)
    assert set(got) == {"selma3d2026"}
    df = got["selma3d2026"]
    assert set(df["strategy"]) == {"A", "B", "C"} and set(df["budget"]) == {5} and set(df["seed"]) == {0}
    out = SimpleNamespace(markdown=tmp_path / "lb.md", csv=tmp_path / "lb.csv", latex=tmp_path / "lb.tex",
                          cases=tmp_path / "cases.csv")
    written = L.write_leaderboard(got, out)
    assert all(p.exists() for p in written) and len(written) == 4
    assert set(pd.read_csv(out.cases)["protocol"]) == {"selma3d2026"}
    with pytest.raises(InputError, match="b\\{budget\\}"):
        L.collect_eval_tables([tmp_path / "eval" / "selma3d2026" / "A" / "finetune" / "x.csv"])
