"""Which run to submit: the leaderboard's best under a challenge edition's ranking.

Usage::

    from selma3d.evaluation.submission import best_run
    best = best_run(pd.read_csv("results/leaderboard/cases.csv"), 2026)
    best["run_id"]  # e.g. "mae/full/b5_s1"

A leaderboard run is (strategy, mode, budget) with its seeds pooled
(:mod:`selma3d.evaluation.leaderboard`), but a container ships one model, so the seed is chosen
by the same ranking applied to the best run's seeds taken one by one.

Rankings: 2026 is the official one (:func:`selma3d.evaluation.leaderboard.rank_2026`); 2025 is
scored with the 2026 protocol here (same test-file prefixes and categories; its own assessment
page was not available to check). For 2024 the same rank-then-average scheme is applied to the
2024 groups (spot: Dice, β0 error; tree: Dice, clDice, β0 and β1 errors; errors rank lower is
better): mean rank per metric within a group, mean over the groups (:func:`rank_2024`).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from selma3d.core.errors import InputError
from selma3d.evaluation.leaderboard import RUN_KEYS, build_table, finish_ranking, group_ranks, rank_2026

#: challenge edition -> the evaluation protocol its ranking uses
EDITION_PROTOCOL = {2024: "selma3d2024", 2025: "selma3d2026", 2026: "selma3d2026"}


def protocol_of(year: int | str) -> str:
    try:
        return EDITION_PROTOCOL[int(year)]
    except (KeyError, ValueError):
        raise InputError(None, f"a SELMA3D edition in {sorted(EDITION_PROTOCOL)}", repr(year)) from None


def rank_2024(table: pd.DataFrame) -> pd.DataFrame:
    """Rank-then-average over the 2024 groups of a ``build_table(..., 'selma3d2024')`` table.

    Per (group, metric) runs are ranked (1 = best; Dice/clDice higher is better, Betti errors
    lower; ties share the average rank; NaN ranks last), ranks are averaged per group, then over
    the groups present = ``final_rank``; ``place`` orders by it (ties share the better place).
    """
    out, group_rank = group_ranks(table, "selma3d2024", "2024 group rows (spot/tree)")
    return finish_ranking(out, list(group_rank.values()))


def rank_runs(cases: pd.DataFrame, protocol: str) -> pd.DataFrame:
    """The runs of a per-case table (one protocol) ranked: RUN_KEYS, final_rank, place, ..."""
    table = build_table(cases, protocol)
    return rank_2026(table) if protocol == "selma3d2026" else rank_2024(table)


def _cases_for(cases: pd.DataFrame, protocol: str) -> pd.DataFrame:
    if "protocol" in cases.columns:
        cases = cases[cases["protocol"] == protocol]
    if cases.empty:
        raise InputError("leaderboard cases", f"scored cases of protocol {protocol} (evaluate.protocols)", "none")
    return cases.drop(columns=["protocol"], errors="ignore")


def best_run(cases: pd.DataFrame, year: int | str) -> dict:
    """The run (and seed) to submit for ``year``, from the leaderboard's per-case table.

    Args:
        cases: ``results/leaderboard/cases.csv`` (columns strategy, mode, budget, seed, protocol
            and the per-case metrics), or one protocol's rows without ``protocol``.
        year: the edition (2024, 2025, 2026).
    Returns:
        ``{"strategy", "mode", "budget", "seed", "run_id", "protocol", "final_rank", "place",
        "runs_ranked", "seed_rank", "seeds"}`` (an ensemble run, mode ``<mode>+ens``: seed
        ``"ens"``, run_id ``<strategy>/<mode>/b<budget>_sens``); ties go to the first in (strategy, mode, budget)
        order, and to the lowest seed. ``threshold`` runs (the classical baseline) are not
        candidates: the container exports a network.
    """
    from selma3d.training.runplan import ENSEMBLE, THRESHOLD, split_ensemble_mode

    protocol = protocol_of(year)
    cases = _cases_for(cases, protocol)
    # the classical baseline is every leaderboard's reference, not a network to put in a container
    cases = cases[cases["strategy"].astype(str) != THRESHOLD]
    if cases.empty:
        raise InputError(None, "a network run (any strategy but 'threshold') in the leaderboard", "none")
    ranked = rank_runs(cases, protocol)
    top = ranked.iloc[0]
    key = {k: top[k] for k in RUN_KEYS}
    mask = np.logical_and.reduce([cases[k].astype(str) == str(v) for k, v in key.items()])
    run_cases = cases[mask]
    seeds = sorted({int(s) for s in run_cases["seed"]})
    mode, ensembled = split_ensemble_mode(key["mode"])
    if ensembled:  # one model: the seeds' ensemble
        seed, seed_rank = ENSEMBLE, 1.0
    elif len(seeds) == 1:
        seed, seed_rank = seeds[0], 1.0
    else:  # the same ranking over this run's seeds, each standing alone
        per_seed = run_cases.assign(strategy=run_cases["seed"].astype(int).astype(str))
        seed_ranked = rank_runs(per_seed, protocol)
        seed_ranked["seed"] = seed_ranked["strategy"].astype(int)
        best = seed_ranked.sort_values(["final_rank", "seed"], kind="stable").iloc[0]
        seed, seed_rank = int(best["seed"]), float(best["final_rank"])
    budget = key["budget"]
    budget = int(budget) if str(budget).isdigit() else str(budget)
    final = float(top["final_rank"])
    return {"strategy": str(key["strategy"]), "mode": str(key["mode"]), "budget": budget, "seed": seed,
            "run_id": f"{key['strategy']}/{mode}/b{budget}_s{seed}", "protocol": protocol,
            "final_rank": None if math.isnan(final) else final, "place": int(top["place"]),
            "runs_ranked": int(len(ranked)), "seed_rank": seed_rank, "seeds": seeds}

