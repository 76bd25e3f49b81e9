"""File matching, policies and the ``selma3d evaluate`` command on small NIfTI/MHA files."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from selma3d.evaluation import evaluate as E
from selma3d.cli import main
from selma3d.core.errors import InputError
from selma3d.io import write_mha, write_nifti


def _blob(shape=(12, 14, 16), offset=0):
    m = np.zeros(shape, np.uint8)
    m[3 + offset : 7 + offset, 4:9, 5:10] = 1
    return m


@pytest.fixture()
def folders(tmp_path):
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    g1, g2 = _blob(), _blob()
    g2[1:3, 1:12, 2] = 1  # a second instance
    write_nifti(gt / "cfos_neuron_patch_001_0000.nii.gz", g1)
    write_nifti(gt / "blood_vessel_patch_002.nii.gz", g2)
    write_nifti(pred / "cfos_neuron_patch_001.nii.gz", _blob(offset=1) * 255)
    write_mha(pred / "blood_vessel_patch_002.mha", g2)
    return pred, gt


def test_evaluate_dirs_matches_cases_and_categories(folders):
    pred, gt = folders
    df = E.evaluate_dirs(pred, gt, "selma3d2026", progress=False)
    assert list(df.columns) == list(E.COLUMNS)
    assert list(df["case"]) == ["blood_vessel_patch_002", "cfos_neuron_patch_001"]
    assert list(df["category"]) == ["contiguous_dense", "isolated_sparse"]
    vessel, cfos = df.iloc[0], df.iloc[1]
    assert vessel["dice"] == 1.0 and vessel["pq"] == 1.0 and vessel["betti0_error"] == 0
    assert cfos["dice"] == pytest.approx(2 * 60 / 160)  # 4x5x5 blobs shifted by one plane
    assert cfos["betti0_error"] == 0


def test_missing_prediction_is_an_error_naming_the_case(folders):
    pred, gt = folders
    (pred / "blood_vessel_patch_002.mha").unlink()
    with pytest.raises(InputError, match="blood_vessel_patch_002"):
        E.evaluate_dirs(pred, gt, "selma3d2024", progress=False)
    df = E.evaluate_dirs(pred, gt, "selma3d2024", missing="empty", progress=False)
    row = df.set_index("case").loc["blood_vessel_patch_002"]
    assert row["dice"] == 0.0 and row["cldice"] == pytest.approx(1.0) and row["cldice_corrected"] == 0.0
    assert row["betti0_error"] == 2


def test_extra_prediction_warns_and_is_skipped(folders):
    pred, gt = folders
    write_nifti(pred / "microglia_extra.nii.gz", _blob())
    with pytest.warns(UserWarning, match="microglia_extra"):
        df = E.evaluate_dirs(pred, gt, "selma3d2026", progress=False)
    assert len(df) == 2


def test_shape_mismatch_names_case(folders):
    pred, gt = folders
    write_nifti(pred / "cfos_neuron_patch_001.nii.gz", np.zeros((5, 5, 5), np.uint8))
    with pytest.raises(InputError, match="cfos_neuron_patch_001.*shape"):
        E.evaluate_dirs(pred, gt, "selma3d2026", progress=False)


def test_nan_prediction_is_an_input_error(tmp_path):
    g = _blob().astype(np.float32)
    p = g.copy()
    p[0, 0, 0] = np.nan
    write_nifti(tmp_path / "gt" / "cfos_neuron_a.nii.gz", g)
    write_nifti(tmp_path / "pred" / "cfos_neuron_a.nii.gz", p)
    with pytest.raises(InputError, match="NaN"):
        E.evaluate_dirs(tmp_path / "pred", tmp_path / "gt", "selma3d2026", progress=False)


def test_categories_csv_and_unknown_structure(tmp_path):
    write_nifti(tmp_path / "gt" / "patchvolume_000.nii.gz", _blob())
    write_nifti(tmp_path / "pred" / "patchvolume_000.nii.gz", _blob())
    df = E.evaluate_dirs(tmp_path / "pred", tmp_path / "gt", "selma3d2024", progress=False)
    assert (df.loc[0, "structure"], df.loc[0, "category"]) == ("unknown", "unknown")
    csv = tmp_path / "cats.csv"
    csv.write_text("case,structure,category\npatchvolume_000_0000,microglia,isolated_sparse\n")
    df = E.evaluate_dirs(tmp_path / "pred", tmp_path / "gt", "selma3d2024", categories=csv, progress=False)
    assert (df.loc[0, "structure"], df.loc[0, "category"]) == ("microglia", "isolated_sparse")
    csv.write_text("case,structure\nx,y\n")
    with pytest.raises(InputError, match="columns"):
        E.read_categories(csv)


def test_ignore_label_excludes_unannotated_voxels(tmp_path):
    g = np.full((8, 8, 8), 0, np.uint8)
    g[1:4, 1:4, 1:4] = 1
    g[6:, 6:, 6:] = 9  # unannotated region
    p = (g == 1).astype(np.uint8)
    p[6, 6, 6] = 1  # a prediction where nobody annotated
    write_nifti(tmp_path / "gt" / "cfos_neuron_a.nii.gz", g)
    write_nifti(tmp_path / "pred" / "cfos_neuron_a.nii.gz", p)
    df = E.evaluate_dirs(tmp_path / "pred", tmp_path / "gt", "selma3d2026", ignore_label=9, progress=False)
    assert df.loc[0, "dice"] == 1.0 and df.loc[0, "pq"] == 1.0
    df = E.evaluate_dirs(tmp_path / "pred", tmp_path / "gt", "selma3d2026", progress=False)
    assert df.loc[0, "pq"] < 1.0  # 9 counts as foreground without --ignore-label


def test_parallel_equals_serial(folders):
    pred, gt = folders
    a = E.evaluate_dirs(pred, gt, "selma3d2024", workers=1, progress=False)
    b = E.evaluate_dirs(pred, gt, "selma3d2024", workers=2, progress=False)
    pd.testing.assert_frame_equal(a, b)


def test_workers_left_over_thread_the_single_case(folders, monkeypatch):
    """One case and two workers: that case's metrics run with two threads (same numbers)."""
    pred, gt = folders
    pairs = E.pair_dirs(pred, gt)[:1]
    seen = []
    real = E.case_metrics

    def spy(*args, threads=1, **kwargs):
        seen.append(threads)
        return real(*args, threads=threads, **kwargs)

    monkeypatch.setattr(E, "case_metrics", spy)
    one = E.evaluate_pairs(pairs, "selma3d2026", workers=1, progress=False)
    two = E.evaluate_pairs(pairs, "selma3d2026", workers=2, progress=False)
    assert seen == [1, 2]
    pd.testing.assert_frame_equal(one, two)


def test_cli_end_to_end(folders, tmp_path):
    pred, gt = folders
    out, summary = tmp_path / "res" / "cases.csv", tmp_path / "res" / "summary.json"
    rc = main(["evaluate", "--pred", str(pred), "--gt", str(gt), "--protocol", "selma3d2026",
               "--out", str(out), "--summary", str(summary), "--no-progress"])
    assert rc == 0
    df = pd.read_csv(out)
    assert len(df) == 2 and set(E.COLUMNS) == set(df.columns)
    s = json.loads(summary.read_text())
    assert s["protocol"] == "selma3d2026" and s["n_cases"] == 2
    agg = s["aggregates"]
    assert agg["con_dice_mean"] == 1.0 and agg["con_cldice_mean"] == 1.0
    assert agg["iso_dice_mean"] == pytest.approx(0.75)
    assert agg["iso_dice_std"] is None  # one case: no sample std (NaN -> null)
    assert not list(out.parent.glob("*incomplete*"))


def test_cli_prints_bad_input_in_one_line_and_exits_nonzero(folders, tmp_path):
    """`selma3d evaluate` on a shape mismatch (also from worker processes): one line, exit 2."""
    import subprocess
    import sys

    pred, gt = folders
    write_nifti(pred / "cfos_neuron_patch_001.nii.gz", np.zeros((5, 5, 5), np.uint8))
    for workers in ("1", "2"):
        res = subprocess.run([sys.executable, "-m", "selma3d.cli", "evaluate", "--pred", str(pred), "--gt", str(gt),
                              "--protocol", "selma3d2026", "--out", str(tmp_path / "c.csv"), "--no-progress",
                              "--workers", workers], capture_output=True, text=True)
        assert res.returncode == 2, res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
        assert lines[0].startswith("selma3d evaluate: error: ") and "cfos_neuron_patch_001" in lines[0]
        assert "shape" in lines[0]


def test_cli_missing_policy(folders, tmp_path):
    pred, gt = folders
    (pred / "cfos_neuron_patch_001.nii.gz").unlink()
    out = tmp_path / "cases.csv"
    args = ["evaluate", "--pred", str(pred), "--gt", str(gt), "--protocol", "selma3d2024", "--out", str(out),
            "--no-progress"]
    assert main(args) == 2  # bad input: one line on stderr, no traceback
    assert not out.exists()
    assert main(args + ["--missing", "empty"]) == 0
    df = pd.read_csv(out).set_index("case")
    assert df.loc["cfos_neuron_patch_001", "dice"] == 0.0
    assert math.isclose(df.loc["cfos_neuron_patch_001", "cldice"], 1.0)


def test_evaluate_manifest_split(tmp_path):
    from selma3d.data.manifest import write_manifest

    g = _blob()
    write_nifti(tmp_path / "data" / "img.nii.gz", g)
    write_nifti(tmp_path / "data" / "lab.nii.gz", g)
    rows = [
        {"case": "p1", "role": "image", "split": "test", "structure": "blood_vessel", "category": "contiguous_dense",
         "spacing_um": "1,1,1", "path": str(tmp_path / "data" / "img.nii.gz")},
        {"case": "p1", "role": "label", "split": "test", "structure": "blood_vessel", "category": "contiguous_dense",
         "spacing_um": "1,1,1", "path": str(tmp_path / "data" / "lab.nii.gz")},
    ]
    manifest = write_manifest(pd.DataFrame(rows), tmp_path / "manifest.csv")
    write_nifti(tmp_path / "pred" / "p1.nii.gz", g)
    out = tmp_path / "eval" / "cases.csv"
    df = E.evaluate_manifest_split(tmp_path / "pred", manifest, "selma3d2026", out)
    assert out.exists() and df.loc[0, "category"] == "contiguous_dense" and df.loc[0, "dice"] == 1.0
