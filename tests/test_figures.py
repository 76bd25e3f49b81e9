"""Figures and paper tables on a small synthetic results tree built here (tiny NIfTI volumes,
a per-case table, loss curves, patch indexes); table 6 numbers checked on a hand-made frame."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from selma3d.reporting import figures as F
from selma3d import io
from selma3d.reporting import tables as T
from selma3d.evaluation.metrics import METRIC_COLUMNS
from selma3d.core.structures import STRUCTURE_CATEGORY

SHAPE = (6, 20, 20)
SPACING = (4.0, 1.6, 1.6)
STRATEGIES = ("scratch", "mae")
BUDGETS = ("1", "all")
SEEDS = (0, 1)
TEST_STRUCTURES = ("blood_vessel", "cfos_neuron", "microglia")  # microglia: no train case -> unseen


def _volume(rng, structure: str) -> tuple[np.ndarray, np.ndarray]:
    """A raw patch (noise + bright object) and its label; vessels as a bar, others as blobs."""
    z, y, x = np.indices(SHAPE)
    if structure == "blood_vessel":
        label = (np.abs(y - 10) <= 2) & (x >= 2) & (x <= 17)
    else:
        cy, cx = rng.integers(5, 15, size=2)
        label = (z - 3) ** 2 / 4 + (y - cy) ** 2 / 9 + (x - cx) ** 2 / 9 <= 1
    raw = rng.normal(100, 10, SHAPE) + 400 * label
    return raw.astype(np.uint16), label.astype(np.uint8)


def _score(strategy: str, budget: str, seed: int, structure: str, metric: str) -> float:
    base = {"dice": 0.5, "cldice": 0.6, "cldice_corrected": 0.6, "pq": 0.4, "instance_f1": 0.5,
            "instance_recall": 0.5, "betti0_error": 4.0, "betti1_error": 2.0}[metric]
    bonus = (0.1 if strategy == "mae" else 0.0) + (0.05 if budget == "all" else 0.0) + 0.01 * seed
    if metric.startswith("betti"):
        return base + 3 * seed + (1 if structure == "microglia" else 0)
    return min(base + bonus + (0.02 if structure == "microglia" else 0.0), 1.0)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("results")
    rng = np.random.default_rng(0)
    rows = []
    splits = {"train": ("blood_vessel", "cfos_neuron"), "test": TEST_STRUCTURES}
    labels = {}
    for split, structures in splits.items():
        for structure in structures:
            case = f"{structure}_patch_000"
            raw, label = _volume(rng, structure)
            img_p = io.write_nifti(root / "data" / split / "raw" / f"{case}_0000.nii.gz", raw, SPACING)
            lab_p = io.write_nifti(root / "data" / split / "gt" / f"{case}.nii.gz", label, SPACING)
            if split == "test":
                labels[case] = label
            for role, p in (("image", img_p), ("label", lab_p)):
                rows.append({"case": case, "role": role, "split": split, "structure": structure,
                             "category": STRUCTURE_CATEGORY[structure], "spacing_um": "4,1.6,1.6",
                             "path": str(p.relative_to(root / "data"))})
    manifest = root / "data" / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    # predictions of the largest budget, first seed: the label shifted by one voxel (mae) or two (scratch)
    pred_dirs = []
    for strategy in STRATEGIES:
        for budget in BUDGETS:
            for seed in SEEDS:
                d = root / "predictions" / strategy / "full" / f"b{budget}_s{seed}"
                pred_dirs.append(d)
                if budget == "all" and seed == 0:
                    shift = 1 if strategy == "mae" else 2
                    for case, label in labels.items():
                        io.write_nifti(d / f"{case}.nii.gz", np.roll(label, shift, axis=2), SPACING)
    cases = pd.DataFrame([
        {"strategy": s, "mode": "full", "budget": b, "seed": seed, "case": f"{st}_patch_000", "structure": st,
         "category": STRUCTURE_CATEGORY[st], "protocol": protocol,
         **{m: _score(s, b, seed, st, m) for m in METRIC_COLUMNS}}
        for protocol in ("selma3d2024", "selma3d2026") for s in STRATEGIES for b in BUDGETS for seed in SEEDS
        for st in TEST_STRUCTURES])
    cases_csv = root / "leaderboard" / "cases.csv"
    cases_csv.parent.mkdir(parents=True)
    cases.to_csv(cases_csv, index=False)
    curves = {}
    for name in ("mae", "byol"):
        steps = np.arange(60)
        loss = np.exp(-steps / 20) + rng.normal(0, 0.05, steps.size)
        p = root / "pretrain" / name / "loss.csv"
        p.parent.mkdir(parents=True)
        pd.DataFrame({"step": steps, "loss": loss, "lr": 1e-3}).to_csv(p, index=False)
        curves[name] = p
    logs = []
    for strategy in STRATEGIES:
        for budget in BUDGETS:
            for seed in SEEDS:
                p = root / "finetune" / strategy / "full" / f"b{budget}_s{seed}" / "train_log.csv"
                p.parent.mkdir(parents=True)
                steps = np.arange(20)
                val = np.where(steps % 5 == 4, 0.2 + 0.02 * steps, np.nan)
                pd.DataFrame({"step": steps, "loss": 1.5 - 0.03 * steps + 0.01 * seed, "val_dice": val}).to_csv(p, index=False)
                logs.append(p)
    indexes = []
    for volume, structure, fg in (("cfos_neuron_vol_0", "cfos_neuron", (0.5, 0.6, 0.02)),
                                  ("blood_vessel_vol_0", "blood_vessel", (0.1, 0.2, 0.3, 0.01))):
        p = root / "patches" / f"{volume}.csv"
        p.parent.mkdir(exist_ok=True)
        pd.DataFrame([{"volume": volume, "structure": structure, "category": STRUCTURE_CATEGORY[structure],
                       "spacing_um": "4,1.6,1.6", "patch": i, "z": 0, "y": 0, "x": 32 * i, "foreground_fraction": f,
                       "background": f < 0.05, "store": f"{volume}.zarr", "level": 0} for i, f in enumerate(fg)]
                     ).to_csv(p, index=False)
        indexes.append(p)
    return SimpleNamespace(root=root, manifest=manifest, cases_csv=cases_csv, cases=T.read_cases(cases_csv),
                           pred_dirs=pred_dirs, curves=curves, logs=logs, indexes=indexes, labels=labels)


def _check_png(path: Path, min_std: float = 0.03, min_bytes: int = 8000) -> np.ndarray:
    import matplotlib.image as mpimg

    assert path.exists() and path.with_suffix(".pdf").exists()
    assert path.stat().st_size > min_bytes
    assert path.with_suffix(".pdf").stat().st_size > 2000
    img = mpimg.imread(path)[..., :3]
    assert img.std() > min_std, f"{path.name} looks blank (pixel std {img.std():.4f})"
    return img


def _image_axes(fig) -> list:
    return [ax for ax in fig.axes if ax.images]


def test_qualitative_panels(tree, tmp_path):
    runs = F.evaluation_runs(tree.pred_dirs, tree.cases)
    assert list(runs) == ["scratch", "mae"]  # largest budget, first seed, scratch first
    assert all(d.name == "ball_s0" for d in runs.values())
    fig = F.qualitative_panel(tree.manifest, runs, tmp_path / "q.png", tree.cases)
    assert len(_image_axes(fig)) == 3 * 4  # 3 test structures x (raw, gt, 2 runs)
    _check_png(tmp_path / "q.png")
    labels = [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()]
    assert any("microglia (unseen)" in lab for lab in labels)
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert sum(t.startswith("Dice ") for t in texts) == 3 * 2
    fig = F.qualitative_mip(tree.manifest, runs, tmp_path / "m.png", tree.cases)
    assert len(_image_axes(fig)) == 12
    _check_png(tmp_path / "m.png")


def test_overlay_is_aligned_with_the_mask():
    base = np.linspace(0, 1, 100, dtype=np.float32).reshape(10, 10)
    mask = np.zeros((10, 10), bool)
    mask[2:5, 6:9] = True
    rgb = F.overlay(base, mask)
    red = (rgb[..., 0] - rgb[..., 1]) > 0.2
    assert np.array_equal(red, mask)  # tinted exactly where the mask is, nowhere else
    assert np.allclose(rgb[~mask], base[~mask][:, None])
    edge = F.outline(base, mask, F.GT_RGB)
    green = (edge[..., 1] - edge[..., 0]) > 0.5
    assert green.sum() == 8 and not green[~mask].any() and not green[3, 7]  # inner ring of the 3x3 block


def test_choose_cases_takes_the_median_case():
    pairs = pd.DataFrame({"case": ["a", "b", "c", "d"], "structure": ["s", "s", "s", "t"]})
    scores = pd.Series({"a": 0.9, "b": 0.1, "c": 0.5, "d": 0.3})
    assert list(F.choose_cases(pairs, scores)["case"]) == ["c", "d"]
    assert list(F.choose_cases(pairs, scores, per_structure=3)["case"]) == ["a", "c", "b", "d"]


def test_label_efficiency_ablation_distributions(tree, tmp_path):
    unseen = {"microglia"}
    fig = F.label_efficiency(tree.cases, tmp_path / "le.png", unseen=unseen)
    axes = [ax for ax in fig.axes if ax.get_title() or ax.get_ylabel()]
    assert len(axes) == 2 * 3  # (Dice, second metric) x (isolated sparse, contiguous dense, unseen)
    assert [ax.get_title() for ax in axes[:3]] == ["isolated sparse", "contiguous dense", "unseen: microglia"]
    # error bars = std over the two seeds: one line per strategy, mean at budget "all" for mae vessels
    vessel = fig.axes[1]
    ends = sorted(float(c.lines[0].get_ydata()[-1]) for c in vessel.containers)
    assert ends == pytest.approx([100 * (0.5 + 0.05 + 0.005), 100 * (0.5 + 0.1 + 0.05 + 0.005)])
    caps = vessel.containers[0].lines[1]
    assert caps and np.ptp(caps[0].get_ydata() - vessel.containers[0].lines[0].get_ydata()) < 1e-9
    _check_png(tmp_path / "le.png", min_std=0.02)
    fig = F.ssl_ablation(tree.cases, tmp_path / "ab.png", unseen=unseen)
    assert len(fig.axes) == 2 * 3
    assert [ax.get_title() for ax in fig.axes[:3]] == ["blood_vessel", "cfos_neuron", "microglia (unseen)"]
    _check_png(tmp_path / "ab.png", min_std=0.02)
    fig = F.metric_distributions(tree.cases, tmp_path / "d.png", unseen=unseen)
    assert len(fig.axes) == len(F.DIST_METRICS) * 3
    _check_png(tmp_path / "d.png", min_std=0.02)


def test_training_and_data_figures(tree, tmp_path):
    fig = F.pretrain_curves(tree.curves, tmp_path / "p.png")
    assert [ax.get_title() for ax in fig.axes] == ["mae", "byol"]  # palette order, not dict order
    assert len(fig.axes[0].lines) == 2  # raw + smoothed
    raw, smoothed = (np.asarray(line.get_ydata()) for line in fig.axes[0].lines)
    assert np.diff(smoothed).std() < np.diff(raw).std()
    _check_png(tmp_path / "p.png", min_std=0.02)
    fig = F.finetune_curves({F._run_key(p.parent): p for p in tree.logs}, tmp_path / "f.png")
    assert len(fig.axes) == 2 * len(BUDGETS)
    assert len(fig.axes[0].lines) == len(STRATEGIES) * len(SEEDS)
    _check_png(tmp_path / "f.png", min_std=0.02)
    fig = F.data_examples(tree.manifest, tmp_path / "e.png")
    assert len(_image_axes(fig)) == 2 * 4  # 2 train structures x (slice, +gt, MIP, +outline)
    _check_png(tmp_path / "e.png")
    fig = F.patch_counts(tree.indexes, tmp_path / "c.png", min_foreground=0.05)
    bars = [p.get_height() for p in fig.axes[0].patches]
    # categories isolated_sparse, contiguous_dense: foreground 2, 3; background 1, 1
    assert bars == [2, 3, 1, 1]
    _check_png(tmp_path / "c.png", min_std=0.02)


def test_make_figures_entry_points(tree, tmp_path):
    out = SimpleNamespace(**{k: tmp_path / f"{k}.png" for k in
                             ("qualitative", "qualitative_mip", "budget", "ablation", "distributions")})
    F.make_figures("evaluation", SimpleNamespace(cases=tree.cases_csv, manifest=tree.manifest,
                                                 predictions=tree.pred_dirs), out, {"cases_per_structure": 1})
    for p in vars(out).values():
        _check_png(p, min_std=0.02)
    F.make_figures("data", SimpleNamespace(manifest=tree.manifest, indexes=tree.indexes),
                   SimpleNamespace(examples=tmp_path / "ex.png", patch_counts=tmp_path / "pc.png"), {"min_foreground": 0.05})
    F.make_figures("pretrain", SimpleNamespace(curves=list(tree.curves.values())), SimpleNamespace(curves=tmp_path / "pt.png"))
    F.make_figures("finetune", SimpleNamespace(logs=tree.logs), SimpleNamespace(curves=tmp_path / "ft.png"))
    for name in ("ex", "pc", "pt", "ft"):
        _check_png(tmp_path / f"{name}.png", min_std=0.02)
    with pytest.raises(ValueError, match="figure kind"):
        F.make_figures("nope", None, None)


def test_config_report(tmp_path):
    from selma3d.config import validate

    config = validate({"finetune": {"budgets": [1, "all"]}, "results_dir": "r"})  # as the workflow hands it over
    T.write_config_report(config, tmp_path / "c.yaml", tmp_path / "c.html")
    text = (tmp_path / "c.yaml").read_text()
    assert "budgets: [1, all]" in text and "resolved_networks:" in text
    assert "<pre>" in (tmp_path / "c.html").read_text()


def test_empty_inputs_give_an_explaining_figure(tmp_path):
    fig = F.pretrain_curves({}, tmp_path / "p.png")
    assert "no SSL strategy" in fig.axes[0].texts[0].get_text()
    assert (tmp_path / "p.pdf").exists()


# ------------------------------------------------------------------------------- table 6


def _hand_cases() -> pd.DataFrame:
    """scratch (full) vs mae (full, frozen) at budget 1, two seeds, one vessel + one c-Fos case."""
    rows = []
    values = {  # (strategy, mode) -> structure -> per-seed (dice, second metric, betti0)
        ("scratch", "full"): {"blood_vessel": [(0.50, 0.40, 6), (0.60, 0.50, 4)], "cfos_neuron": [(0.70, 0.30, 2), (0.70, 0.50, 2)]},
        ("mae", "full"): {"blood_vessel": [(0.70, 0.60, 2), (0.80, 0.60, 2)], "cfos_neuron": [(0.60, 0.30, 1), (0.60, 0.30, 3)]},
        ("mae", "frozen"): {"blood_vessel": [(0.40, 0.40, 9), (0.40, 0.40, 9)], "cfos_neuron": [(0.60, 0.30, 3), (0.60, 0.30, 3)]},
    }
    for (strategy, mode), per in values.items():
        for structure, seeds in per.items():
            for seed, (dice, second, b0) in enumerate(seeds):
                row = {m: 0.0 for m in METRIC_COLUMNS}
                row.update(dice=dice, betti0_error=b0, betti1_error=1)
                row["cldice" if structure == "blood_vessel" else "pq"] = second
                rows.append({"strategy": strategy, "mode": mode, "budget": 1, "seed": seed, "case": f"{structure}_1",
                             "structure": structure, "category": STRUCTURE_CATEGORY[structure],
                             "protocol": "selma3d2026", **row})
    df = pd.DataFrame(rows)
    return pd.concat([df, df.assign(protocol="selma3d2024")], ignore_index=True)


def test_table6_values_on_a_hand_made_frame():
    t6 = T.ablation_table(_hand_cases(), "selma3d2026").set_index(["strategy", "mode", "structure", "metric"])
    r = t6.loc[("mae", "full", "blood_vessel", "dice")]
    assert r["ssl_mean"] == pytest.approx(0.75) and r["baseline_mean"] == pytest.approx(0.55)
    assert r["delta"] == pytest.approx(0.20) and r["ssl_better"] is True
    assert r["ssl_std"] == pytest.approx(np.std([0.7, 0.8], ddof=1)) and r["ssl_n"] == 2
    assert t6.loc[("mae", "full", "blood_vessel", "cldice"), "delta"] == pytest.approx(0.15)
    assert t6.loc[("mae", "full", "cfos_neuron", "pq"), "delta"] == pytest.approx(-0.1)
    # frozen mae has no frozen scratch: compared with scratch in full mode
    r = t6.loc[("mae", "frozen", "blood_vessel", "dice")]
    assert r["baseline_mode"] == "full" and r["delta"] == pytest.approx(-0.15) and r["ssl_better"] is False
    # 2026 scores vessels by Dice + clDice and c-Fos by Dice + PQ only
    assert set(t6.xs("blood_vessel", level="structure").index.get_level_values("metric")) == {"dice", "cldice"}
    assert set(t6.xs("cfos_neuron", level="structure").index.get_level_values("metric")) == {"dice", "pq"}
    # 2024: Betti errors, lower is better
    t24 = T.ablation_table(_hand_cases(), "selma3d2024").set_index(["strategy", "mode", "structure", "metric"])
    r = t24.loc[("mae", "full", "blood_vessel", "betti0_error")]
    assert r["delta"] == pytest.approx(2 - 5) and r["ssl_better"] is True
    assert t24.loc[("mae", "full", "cfos_neuron", "betti0_error"), "ssl_better"] is False  # 2 vs 2: not better
    assert set(t24.xs("cfos_neuron", level="structure").index.get_level_values("metric")) == {"dice", "betti0_error"}


def test_table6_renderings_and_files(tmp_path):
    cases = _hand_cases()
    t6 = T.ablation_table(cases, "selma3d2026")
    md = T.render_ablation_markdown(t6, "selma3d2026")
    assert "| scratch / full / 1 (no SSL) | 55.00 ± 7.07 | 45.00 ± 7.07 |" in md
    assert "**75.00 ± 7.07 (Δ +20.00)**" in md  # SSL better: bold
    assert "40.00 ± 0.00 (Δ -15.00)" in md and "**40.00" not in md
    tex = T.render_ablation_latex(t6, "selma3d2026")
    assert r"\textbf{75.00 $\pm$ 7.07 ($\Delta$ +20.00)}" in tex and r"\multicolumn{2}{c}{blood\_vessel}" in tex
    written = T.write_tables(cases, ["selma3d2026", "selma3d2024"], tmp_path)
    names = {p.name for p in written}
    assert {"table6.md", "table6.csv", "table6.tex", "tables.md", "tables.tex",
            "leaderboard_selma3d2026.html", "table6_selma3d2024.html"} <= names
    back = pd.read_csv(tmp_path / "table6.csv")
    assert set(back["protocol"]) == {"selma3d2024", "selma3d2026"}
    combined = (tmp_path / "tables.md").read_text()
    assert "Tables 4–5" in combined and "Table 6" in combined and "final rank" in combined
    page = (tmp_path / "table6_selma3d2026.html").read_text()
    assert page.count("<table>") == 1 and "<b>75.00 ± 7.07 (Δ +20.00)</b>" in page


def test_table6_without_baseline_says_so():
    cases = _hand_cases()
    t6 = T.ablation_table(cases[cases["strategy"] != "scratch"], "selma3d2026")
    assert t6["baseline_mean"].isna().all() and t6["ssl_better"].isna().all()
    md = T.render_ablation_markdown(T.ablation_table(cases[cases["strategy"] == "scratch"], "selma3d2026"), "selma3d2026")
    assert "No SSL run" in md


def test_read_cases_names_missing_columns(tmp_path):
    p = tmp_path / "cases.csv"
    pd.DataFrame({"strategy": ["a"]}).to_csv(p, index=False)
    with pytest.raises(ValueError, match="missing"):
        T.read_cases(p)
    assert T.budget_order([3, "all", 10, "1"]) == ["1", "3", "10", "all"]
    assert T._num(math.nan, "dice") == "–"  # a dash, not 'nan'
