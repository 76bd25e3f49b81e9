"""Partial annotation end to end: ground truth with unlabelled voxels (TRAILMAP: 0 = unlabelled,
1 = background, 2/4 = axon) is read the same way by finetuning and by evaluation, and no metric
looks at voxels nobody annotated."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import snakemake

from selma3d.evaluation.evaluate import evaluate_pairs, ground_truth_mask
from selma3d.io import write_nifti
from selma3d.evaluation.metrics import case_metrics

REPO = Path(__file__).resolve().parents[1]


def trailmap_like(shape=(24, 32, 32), planes=(5, 12, 19), seed=0):
    """A TRAILMAP-style label: a few axons (2) with edges (4), annotated on ``planes`` only
    (1 = background there), 0 elsewhere; plus the full axon mask."""
    rng = np.random.default_rng(seed)
    axons = np.zeros(shape, bool)
    for _ in range(4):
        y, x = rng.integers(4, shape[1] - 4), rng.integers(4, shape[2] - 4)
        axons[:, y - 1:y + 2, x - 1:x + 2] = True  # straight tubes along z
    edge = axons & ~np.pad(axons[:, 1:-1, 1:-1], ((0, 0), (1, 1), (1, 1)))
    label = np.zeros(shape, np.uint8)
    for z in planes:
        label[z] = 1
        label[z][axons[z]] = 2
        label[z][edge[z]] = 4
    return label, axons


def test_metrics_with_an_ignore_mask_only_see_annotated_voxels():
    label, axons = trailmap_like()
    gt, ignore = ground_truth_mask(label, ignore_label=0, background_values=(1,))
    assert ignore is not None and ignore.sum() == label.size - 3 * 32 * 32
    assert not (gt.astype(bool) & ignore).any() and gt.sum() == (label >= 2).sum()
    rng = np.random.default_rng(1)
    # differs from the truth only where nobody annotated: junk blobs and missing axons there
    pred = axons.copy()
    pred[ignore] = rng.random(int(ignore.sum())) < 0.3
    for protocol in ("selma3d2024", "selma3d2026"):
        m = case_metrics(pred, gt, protocol, ignore=ignore)
        assert m["dice"] == 1.0 and m["pq"] == 1.0 and m["instance_f1"] == 1.0
        assert m["betti0_error"] == 0 and m["betti1_error"] == 0
        # the same prediction judged on every voxel is far from perfect: the mask matters
        assert case_metrics(pred, gt, protocol)["dice"] < 0.5
    # a prediction wrong on an annotated voxel is penalised
    worse = pred.copy()
    worse[5][~axons[5]] = True
    assert case_metrics(worse, gt, "selma3d2026", ignore=ignore)["dice"] < 0.9


def test_evaluation_reads_trailmap_labels_like_finetuning(tmp_path):
    """Label 1 is background and 0 unannotated: with the defaults (> 0 is foreground) label 1
    would count as axon; with ignore_label/background_values the score is exact."""
    label, axons = trailmap_like(seed=3)
    gt_file = write_nifti(tmp_path / "gt" / "axonalmarker_x.nii.gz", label)
    rng = np.random.default_rng(2)
    pred = axons.copy()
    unannotated = label == 0
    pred[unannotated] = rng.random(int(unannotated.sum())) < 0.2
    pred_file = write_nifti(tmp_path / "pred" / "axonalmarker_x.nii.gz", pred.astype(np.uint8))
    pairs = [("axonalmarker_x", pred_file, gt_file)]
    right = evaluate_pairs(pairs, "selma3d2026", ignore_label=0, background_values=(1,), progress=False)
    assert right.dice.tolist() == [1.0] and right.category.tolist() == ["contiguous_sparse"]
    naive = evaluate_pairs(pairs, "selma3d2026", progress=False)
    assert naive.dice.iloc[0] < 0.5
    only_ignore = evaluate_pairs(pairs, "selma3d2026", ignore_label=0, progress=False)  # label 1 as axon
    assert only_ignore.dice.iloc[0] < 0.9
    # the defaults keep the official rule untouched: the label volume passes through as is
    same, none = ground_truth_mask(label)
    assert same is label and none is None


@pytest.mark.slow
def test_custom_axon_config_runs_end_to_end_on_the_partially_annotated_volume(tmp_path, real_data):
    fast = {"results_dir": str(tmp_path / "r"),
            "pretrain": {"steps": 3, "batch_size": 2, "num_workers": 0},
            "finetune": {"steps": 8, "val_every": 8, "batch_size": 2, "lr": 0.003},
            "infer": {"overlap": 0.25, "sw_batch_size": 2, "mirror_axes": []}}
    (tmp_path / "fast.yaml").write_text(yaml.safe_dump(fast))
    res = snakemake("all", "--nolock", "--profile", "profiles/local", "--cores", "2",
                    "--configfile", "config/custom.yaml", str(tmp_path / "fast.yaml"), timeout=600)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-6000:]
    out = tmp_path / "r"
    assert (out / "downsample" / "axonalmarker_trailmap.ome.zarr").is_dir()
    cases = pd.read_csv(out / "leaderboard" / "cases.csv")
    assert set(cases.case) == {"axonalmarker_trailmap_test"} and set(cases.strategy) == {"scratch", "mae"}
    assert np.isfinite(cases.dice).all() and cases.dice.between(0, 1).all()
    log = (out / "logs" / "finetune" / "scratch" / "full" / "ball_s0.log").read_text()
    assert "val Dice" in log
    # the evaluation saw only the three annotated planes: rescoring by hand agrees
    from selma3d.io import read_volume

    label = read_volume(real_data / "axon_trailmap" / "label.tif").data
    pred = read_volume(out / "predictions" / "scratch" / "full" / "ball_s0" / "axonalmarker_trailmap_test.nii.gz").data
    gt, ignore = ground_truth_mask(label, 0, (1,))
    expected = case_metrics(pred, gt, "selma3d2024", ignore=ignore)["dice"]
    row = cases[(cases.strategy == "scratch") & (cases.protocol == "selma3d2024")]
    assert row.dice.iloc[0] == pytest.approx(expected, abs=1e-9)
