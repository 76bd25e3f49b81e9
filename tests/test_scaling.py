"""Pretraining-data scaling (SELMA3D 2026 Task 2): data variants in the run plan, nested seeded
subsets of the patch index, steps per fraction, the fraction carried into the leaderboard and
table 6, and the "test Dice vs unannotated patches seen" figure and table."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from selma3d.core.errors import InputError
from selma3d.core.structures import STRUCTURE_CATEGORY
from selma3d.evaluation import leaderboard as L
from selma3d.evaluation.metrics import METRIC_COLUMNS
from selma3d.preprocess.patchify import load_patch_index
from selma3d.preprocess.subsets import nested_subset, write_pretrain_subset
from selma3d.reporting import scaling as S
from selma3d.reporting import tables as T
from selma3d.training import runplan

REPO = Path(__file__).resolve().parents[1]
FRACTIONS = [0.125, 0.25, 0.5, 1.0]


def _index(n_per_volume=(40, 24, 16)) -> pd.DataFrame:
    rows = []
    for v, (structure, n) in enumerate(zip(("cfos_neuron", "blood_vessel", "cell_nuclei"), n_per_volume)):
        for i in range(n):
            rows.append({"volume": f"vol{v}", "structure": structure, "category": STRUCTURE_CATEGORY[structure],
                         "spacing_um": "4,2.4,2.4", "patch": i, "z": 0, "y": 0, "x": 32 * i,
                         "foreground_fraction": 0.2, "background": False, "store": f"/data/vol{v}.zarr", "level": 0})
    return pd.DataFrame(rows)


def _keys(df: pd.DataFrame) -> set:
    return {(Path(s).name, int(p)) for s, p in zip(df["store"], df["patch"])}


# ------------------------------------------------------------------------------ nested subsets


@pytest.mark.parametrize("seed", [0, 7])
def test_smaller_fractions_are_subsets_of_every_larger_one(seed):
    index = _index()
    subsets = [_keys(nested_subset(index, f, seed)) for f in FRACTIONS]
    assert [len(s) for s in subsets] == [10, 20, 40, 80]  # ceil(f x 80)
    for small, large in itertools.pairwise(subsets):
        assert small < large
    assert subsets[-1] == _keys(index)


def test_subsets_depend_on_the_seed_not_on_the_index_order_or_location():
    index = _index()
    a = _keys(nested_subset(index, 0.25, seed=0))
    assert a != _keys(nested_subset(index, 0.25, seed=1))
    # the same patches from index tables listed in another order and stored elsewhere
    moved = index.iloc[::-1].assign(store=[s.replace("/data/", "/elsewhere/") for s in index["store"].iloc[::-1]])
    assert _keys(nested_subset(moved, 0.25, seed=0)) == a
    # every volume is drawn from (a shuffle, not the first rows)
    assert len({k[0] for k in a}) == 3


def test_a_source_keeps_its_structures_or_categories_and_is_nested_too():
    index = _index()
    nuclei = [_keys(nested_subset(index, f, 3, keep=["cell_nuclei", "contiguous_dense"])) for f in (0.25, 1.0)]
    assert nuclei[0] < nuclei[1] and {k[0] for k in nuclei[1]} == {"vol1.zarr", "vol2.zarr"}
    assert len(nuclei[1]) == 24 + 16
    with pytest.raises(InputError, match="microglia"):
        nested_subset(index, 0.5, 0, keep=["microglia"])
    for bad in (0, 1.5):
        with pytest.raises(InputError, match="fraction"):
            nested_subset(index, bad, 0)


def test_written_subset_is_a_patch_index_beside_the_stores(tmp_path):
    index = _index((8, 8, 8))
    src = tmp_path / "patches" / "all.csv"
    src.parent.mkdir()
    index.assign(store=[f"{Path(s).name}" for s in index["store"]]).to_csv(src, index=False)
    out = write_pretrain_subset([src], tmp_path / "pretrain_data" / "patches@f0.5.csv", 0.5, seed=0)
    back = load_patch_index([out])
    assert len(back) == 12 and set(back["store"]) <= {str((tmp_path / "patches" / f"vol{v}.zarr").resolve())
                                                     for v in range(3)}
    assert _keys(back) == _keys(nested_subset(load_patch_index([src]), 0.5, 0))


# ------------------------------------------------------------------------------ the run plan


def _config(**pretrain):
    return {"seed": 0, "model": {"backbone": "unet"},
            "pretrain": {"strategies": ["mae", "simclr"], "data_fractions": FRACTIONS, **pretrain},
            "finetune": {"strategies": ["scratch", "mae", "simclr"], "modes": ["full"], "budgets": [1, "all"],
                         "seeds": [0, 1]}}


def test_every_pretrained_run_is_planned_once_per_data_variant():
    cfg = _config()
    assert runplan.data_tags(cfg) == ["@f0.125", "@f0.25", "@f0.5", ""]
    runs = runplan.scaled_runs(cfg)
    assert len(runs) == (1 + 2 * 4) * 2 * 2
    assert {t for s, *_, t in runs if s == "scratch"} == {""}
    assert {t for s, *_, t in runs if s == "mae"} == {"@f0.125", "@f0.25", "@f0.5", ""}
    assert ("mae", "full", "all", "1", "@f0.25") in runs
    assert [r[:4] for r in runs if r[4] == ""] == runplan.finetune_runs(cfg)  # default paths unchanged
    assert len(runplan.pretrain_ids(cfg)) == 8
    sourced = _config(data_sources={"all": [], "nuclei": ["cell_nuclei"]})
    assert runplan.data_tags(sourced)[-4:] == ["@f0.125-nuclei", "@f0.25-nuclei", "@f0.5-nuclei", "@nuclei"]
    assert runplan.data_subset(sourced, "@f0.25-nuclei") == {"fraction": 0.25, "source": "nuclei",
                                                              "keep": ["cell_nuclei"], "seed": 0}
    with pytest.raises(ValueError, match="data_sources"):
        runplan.data_subset(cfg, "@f0.25-nuclei")


@pytest.mark.parametrize("tag", ["", "@f0.125", "@nuclei", "@f0.5-nuclei", "@f0.3333-all_isolated"])
def test_data_tags_round_trip(tag):
    fraction, source = runplan.parse_data_tag(tag)
    assert runplan.data_tag(fraction, source) == tag


def test_run_strategies_carry_their_pretraining_data():
    assert runplan.pretrain_data("mae@f0.25") == (0.25, "all")
    assert runplan.pretrain_data("mae") == (1.0, "all")
    assert runplan.pretrain_data("scratch") is None and runplan.pretrain_data("scratch_dino") is None
    assert runplan.baseline_for("dino@f0.5", ["scratch", "scratch_dino", "dino@f0.5"]) == "scratch_dino"
    assert runplan.baseline_for("mae@f0.5", ["scratch", "mae@f0.5"]) == "scratch"


def test_steps_per_fraction():
    assert [runplan.pretrain_steps(200, f, "same_steps") for f in FRACTIONS] == [200] * 4
    assert [runplan.pretrain_steps(200, f, "same_epochs") for f in FRACTIONS] == [25, 50, 100, 200]
    assert runplan.pretrain_steps(3, 0.125, "same_epochs") == 1
    with pytest.raises(ValueError, match="scale_steps"):
        runplan.pretrain_steps(200, 0.5, "same_time")


def test_the_schema_validates_the_scaling_keys():
    from selma3d.config import validate

    validate({"pretrain": {"data_fractions": [0.5, 1.0], "scale_steps": "same_epochs",
                           "data_sources": {"nuclei": ["cell_nuclei"]}}})
    for bad in ({"data_fractions": [0]}, {"data_fractions": [1.5]}, {"scale_steps": "x"},
                {"data_sources": {"f1": []}}, {"data_sources": {"Bad-name": []}}):
        with pytest.raises(ValueError):
            validate({"pretrain": bad})


def test_the_task2_config_plans_a_scaling_axis():
    """The 2026 Task 2 config pretrains every strategy on several data fractions; its DAG holds one
    pretraining job and one set of finetuning runs per fraction (planned as the workflow does)."""
    from selma3d.config import load_config

    cfg = load_config([REPO / "config" / "selma3d_2026_task2.yaml"], basedir=REPO)
    fractions = cfg["pretrain"]["data_fractions"]
    assert len(fractions) >= 3 and 1.0 in fractions
    tags = runplan.data_tags(cfg)
    assert len(tags) == len(fractions) and "@f0.25" in tags
    assert {t for _, t in runplan.pretrain_ids(cfg)} == set(tags)
    runs = runplan.scaled_runs(cfg)
    for s in cfg["pretrain"]["strategies"]:
        assert {t for r in runs if r[0] == s for t in [r[4]]} == set(tags), s


# ------------------------------------------------------------------------------ leaderboard, table 6


def _case_row(strategy, seed, structure, dice, budget="1", mode="full"):
    row = {m: 0.5 for m in METRIC_COLUMNS}
    row.update(betti0_error=1.0, betti1_error=1.0, dice=dice)
    return {"strategy": strategy, "mode": mode, "budget": budget, "seed": seed, "case": f"{structure}_{seed}",
            "structure": structure, "category": STRUCTURE_CATEGORY.get(structure, "isolated_sparse"), **row}


#: run -> Dice per seed (cfos_neuron); the unseen microglia scores 0.1 lower
DICE = {"scratch": (0.50, 0.54), "mae@f0.125": (0.52, 0.56), "mae@f0.5": (0.58, 0.60), "mae": (0.62, 0.66)}


def _cases() -> pd.DataFrame:
    rows = [_case_row(s, seed, structure, d - (0.1 if structure == "microglia" else 0.0))
            for s, ds in DICE.items() for seed, d in enumerate(ds) for structure in ("cfos_neuron", "microglia")]
    return pd.DataFrame(rows).assign(protocol="selma3d2026")


def test_the_leaderboard_carries_the_pretraining_fraction(tmp_path):
    paths = []
    for (strategy, seed), sub in _cases().groupby(["strategy", "seed"]):
        p = tmp_path / "eval" / "selma3d2026" / strategy / "full" / f"b1_s{seed}.csv"
        p.parent.mkdir(parents=True, exist_ok=True)
        sub.drop(columns=["strategy", "mode", "budget", "seed", "protocol"]).to_csv(p, index=False)
        paths.append(p)
    cases = L.collect_eval_tables(paths)["selma3d2026"]
    got = cases.groupby("strategy")["pretrain_fraction"].first()
    assert got["mae@f0.125"] == 0.125 and got["mae@f0.5"] == 0.5 and got["mae"] == 1.0
    assert math.isnan(got["scratch"])
    out = SimpleNamespace(markdown=tmp_path / "lb.md", csv=tmp_path / "lb.csv", latex=tmp_path / "lb.tex",
                          cases=tmp_path / "cases.csv")
    L.write_leaderboard({"selma3d2026": cases}, out)
    board = pd.read_csv(out.csv)
    assert dict(board.groupby("strategy")["pretrain_fraction"].first().dropna()) == \
        {"mae": 1.0, "mae@f0.125": 0.125, "mae@f0.5": 0.5}
    assert set(pd.read_csv(out.cases)["pretrain_fraction"].dropna()) == {0.125, 0.5, 1.0}
    assert "mae@f0.125 / full / 1" in out.markdown.read_text()
    t6 = T.ablation_table(T.read_cases(out.cases), "selma3d2026")
    assert set(t6["strategy"]) == {"mae", "mae@f0.125", "mae@f0.5"} and set(t6["baseline"]) == {"scratch"}
    cfos = t6[(t6["structure"] == "cfos_neuron") & (t6["metric"] == "dice")].set_index("strategy")
    assert cfos.loc["mae@f0.5", "delta"] == pytest.approx(0.59 - 0.52)
    assert cfos.loc["mae@f0.5", "pretrain_fraction"] == 0.5


# ------------------------------------------------------------------------------ figure and table


def test_scaling_table_numbers():
    table = S.scaling_table(_cases(), {"@f0.125": 10, "@f0.5": 40, "": 80},
                            runs={"mae@f0.125": {"steps": 100, "batch_size": 4}})
    assert list(table["panel"].unique()) == ["isolated sparse", "unseen: microglia"]
    cfos = table[table["panel"] == "isolated sparse"].set_index("pretrain_fraction")
    assert list(cfos.index) == [0.125, 0.5, 1.0] and list(cfos["patches"]) == [10, 40, 80]
    assert cfos.loc[0.5, "mean"] == pytest.approx(0.59)
    assert cfos.loc[0.5, "std"] == pytest.approx(np.std([0.58, 0.60], ddof=1))  # over seeds
    assert cfos.loc[1.0, "baseline_mean"] == pytest.approx(0.52)
    assert cfos.loc[1.0, "delta"] == pytest.approx(0.64 - 0.52)
    assert cfos.loc[0.125, "samples_seen"] == 400 and pd.isna(cfos.loc[1.0, "pretrain_steps"])
    md = S.render_scaling_markdown(table)
    assert md.startswith("Test Dice (%) vs pretraining data (selma3d2026, label budget 1)")
    assert "| mae | all | full | 0.5 | 40 |  | 59.0 ± 1.4 (Δ +7.0) | 49.0 ± 1.4 (Δ +7.0) |" in md
    assert "| scratch (no SSL) | – | full | 0 | 0 | 0 | 52.0 ± 2.8 | 42.0 ± 2.8 |" in md


def test_scaling_figure_has_log_x_one_line_per_strategy_and_the_scratch_level(tmp_path):
    from tests.test_figures import _check_png

    subsets = []
    for tag, n in (("@f0.125", 10), ("@f0.5", 40), ("", 80)):
        p = tmp_path / "pretrain_data" / f"patches{tag}.csv"
        p.parent.mkdir(exist_ok=True)
        _index((n, 0, 0)).to_csv(p, index=False)
        subsets.append(p)
    cases_csv = tmp_path / "cases.csv"
    _cases().to_csv(cases_csv, index=False)
    out = SimpleNamespace(figure=tmp_path / "scaling.png", table_md=tmp_path / "scaling.md",
                          table_csv=tmp_path / "scaling.csv")
    written = S.write_scaling(cases_csv, subsets, out)
    assert all(p.exists() for p in written)
    _check_png(out.figure, min_std=0.02)
    table = pd.read_csv(out.table_csv)
    fig = S.scaling_figure(table, tmp_path / "again.png")
    assert [ax.get_title() for ax in fig.axes] == ["isolated sparse", "unseen: microglia"]
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    curves = [line for line in ax.lines if len(line.get_xdata()) > 2]
    assert len(curves) == 1 and list(curves[0].get_xdata()) == [10, 40, 80]
    assert list(curves[0].get_ydata()) == pytest.approx([54.0, 59.0, 64.0])
    level = [line for line in ax.lines if line.get_linestyle() == "--"]
    assert len(level) == 1 and level[0].get_ydata()[0] == pytest.approx(52.0)
    assert len(ax.collections) == 1  # the seeds' band
    with pytest.raises(InputError, match="patches<tag>"):
        S.subset_sizes([tmp_path / "cases.csv"])


@pytest.mark.slow
def test_a_fraction_pretrains_on_its_nested_subset_end_to_end(tmp_path):
    """config/tiny.yaml with a half: pretrain_data draws the subset, pretrain reads only it."""
    import subprocess
    import sys

    import yaml

    r = tmp_path / "r"
    (tmp_path / "half.yaml").write_text(yaml.safe_dump({"results_dir": str(r),
                                                        "pretrain": {"data_fractions": [0.5, 1.0]}}))
    res = subprocess.run([sys.executable, "-m", "snakemake", f"{r}/pretrain/mae@f0.5/encoder.pt", "--nolock",
                          "--cores", "2", "--configfile", "config/tiny.yaml", str(tmp_path / "half.yaml")],
                         cwd=REPO, capture_output=True, text=True, timeout=900, check=False)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    full = load_patch_index(sorted((r / "patches").glob("*.csv")))
    half = load_patch_index([r / "pretrain_data" / "patches@f0.5.csv"])
    assert len(half) == math.ceil(len(full) / 2) and _keys(half) < _keys(full)
    assert f"pretraining mae on {len(half)} patches" in (r / "logs" / "pretrain" / "mae@f0.5.log").read_text()
    assert not (r / "pretrain" / "mae").exists()  # the full variant was not asked for
