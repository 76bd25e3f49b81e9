"""The workflow as users run it: lint, dry-runs of every shipped config and profile, a bad
config caught before any job, and a tiny end-to-end run on the synthetic dataset."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import snakemake

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.name for p in (REPO / "config").glob("*.yaml"))
PROFILES = ["profiles/local", "profiles/slurm"]


def test_lint_is_clean():
    res = snakemake("--lint")
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("config", CONFIGS)
def test_dry_run_every_config_and_profile(config, profile, tmp_path):
    res = snakemake("all", "-n", "--nolock", "--profile", profile, "--configfile", f"config/{config}",
                    "--config", f"results_dir={tmp_path / 'results'}")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "finetune" in res.stdout and "leaderboard" in res.stdout


def test_2026_scale_dry_run_is_fast(tmp_path):
    t0 = time.perf_counter()
    res = snakemake("all", "-n", "--nolock", "--profile", "profiles/slurm", "--configfile",
                    "config/selma3d_2026_task2.yaml", "--config", f"results_dir={tmp_path / 'results'}")
    elapsed = time.perf_counter() - t0
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = {line.split()[0]: int(line.split()[1]) for line in res.stdout.splitlines()
            if len(line.split()) == 2 and line.split()[1].isdigit()}
    # the scaling axis: 6 strategies x 4 pretraining data fractions, each finetuned
    assert jobs["downsample"] == 66 and "ingest" not in jobs
    assert jobs["pretrain"] == 6 * 4 and jobs["pretrain_data"] == 4
    assert jobs["finetune"] == (1 + 6 * 4) * 2 * 3 * 3 and jobs["scaling"] == 1
    assert "pretrain/mae@f0.125/encoder.pt" in res.stdout and "finetune/dino@f0.5/frozen/b5_s2" in res.stdout
    print(f"2026-scale dry-run: {elapsed:.1f} s for {jobs['total']} jobs")


def test_bad_config_fails_before_any_job_naming_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"results_dir": str(tmp_path / "r"), "infer": {"overlap": 1.5}}))
    res = snakemake("-n", "--nolock", "--configfile", str(bad))
    assert res.returncode != 0
    assert "overlap" in res.stderr + res.stdout and "exclusiveMaximum" in res.stderr + res.stdout
    assert not (tmp_path / "r").exists()


def test_finetuning_a_strategy_that_is_not_pretrained_is_refused(tmp_path):
    res = snakemake("-n", "--nolock", "--config", "finetune={'strategies': ['scratch', 'dino']}",
                    f"results_dir={tmp_path}")
    assert res.returncode != 0
    assert "dino" in res.stderr + res.stdout


def _jobs(stdout: str) -> dict[str, int]:
    return {line.split()[0]: int(line.split()[1]) for line in stdout.splitlines()
            if len(line.split()) == 2 and line.split()[1].isdigit()}


def test_dry_run_plans_the_dataset_for_nnunet_finetuning_only(tmp_path):
    """The plan rule (CPU) feeds nnunet finetuning and the report; legacy finetuning and the
    threshold baseline do not wait for it, and threshold needs no pretraining."""
    r = tmp_path / "r"
    res = snakemake("-n", "--nolock", "--config", f"results_dir={r}")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    jobs = _jobs(res.stdout)
    assert jobs["plan"] == 1 and jobs["finetune"] == 5 * 3  # the demo: 4 networks + threshold, 3 budgets
    assert "finetune/threshold/full/b1_s0/model.pt" in res.stdout
    scratch = f"{r}/finetune/scratch/full/b1_s0/model.pt"
    res = snakemake(scratch, "-n", "--nolock", "--config", f"results_dir={r}")
    assert res.returncode == 0 and _jobs(res.stdout).get("plan") == 1, res.stdout[-3000:] + res.stderr[-3000:]
    res = snakemake(scratch, "-n", "--nolock", "--config", f"results_dir={r}", "finetune={'recipe': 'legacy'}")
    assert res.returncode == 0 and "plan" not in _jobs(res.stdout), res.stdout[-3000:] + res.stderr[-3000:]
    res = snakemake(f"{r}/finetune/threshold/full/b1_s0/model.pt", "-n", "--nolock", "--config", f"results_dir={r}")
    jobs = _jobs(res.stdout)
    assert res.returncode == 0 and "plan" not in jobs and "pretrain" not in jobs and jobs["finetune"] == 1


TINY_UNET = {"backbone": "unet", "patch_size": [32, 32, 32], "features": [8, 8, 16, 32, 64, 8]}
TINY = {
    "dataset": {"synthetic": {
        "unannotated": [{"structure": "cfos_neuron", "count": 1, "shape": [32, 64, 64]},
                        {"structure": "blood_vessel", "count": 1, "shape": [32, 64, 64]}],
        "patch_shape": [24, 40, 40],
        "train": {"cfos_neuron": 2, "blood_vessel": 2},
        "val": {"cfos_neuron": 1, "blood_vessel": 1},
        "test": {"cfos_neuron": 1, "blood_vessel": 1, "microglia": 1},
    }},
    "preprocess": {"target_spacing_um": [4.0, 1.6, 1.6], "pyramid_levels": 2, "patch_size": 32,
                   "intensity_threshold": "otsu", "min_foreground": 0.05},
    "model": TINY_UNET,
    # all six SSL strategies, each on the smallest net its backbone allows
    "pretrain": {"strategies": ["mae", "byol", "simclr", "swin_multitask", "dino", "mae_text"],
                 "steps": 2, "batch_size": 2, "num_workers": 0, "log_every": 1,
                 "mae": TINY_UNET, "byol": TINY_UNET, "mae_text": TINY_UNET,
                 "simclr": {"patch_size": [32, 32, 32], "channels": [8, 16, 32], "strides": [2, 2]},
                 "swin_multitask": {"patch_size": [64, 64, 64], "feature_size": 12, "out_dim": 64,
                                    "head_hidden": 32},
                 "dino": {"patch_size": [32, 32, 32], "vit_patch_size": 8, "hidden_size": 48, "mlp_dim": 96,
                          "num_layers": 2, "num_heads": 4, "local_size": 16, "n_local_crops": 2,
                          "out_dim": 64, "head_hidden": 32}},
    # every finetuning mode: adapter applies to the ViT runs only; scratch_dino = the ViT without SSL
    "finetune": {"strategies": ["scratch", "mae", "byol", "simclr", "swin_multitask", "dino", "mae_text",
                                "scratch_dino", "threshold"],
                 "modes": ["full", "frozen", "adapter"], "budgets": [1], "seeds": [0], "steps": 2,
                 "val_every": 2, "batch_size": 2},
    # 20 runs: test-time mirroring (8 passes) is left to its own tests (test_recipe*)
    "infer": {"mirror_axes": []},
    "evaluate": {"protocols": ["selma3d2026"], "workers": 1},
}


@pytest.mark.slow
def test_every_strategy_and_mode_runs_end_to_end_to_a_finite_leaderboard(tmp_path):
    import torch

    from selma3d.nets.models import encoder_prefixes
    from selma3d.training.runplan import finetune_runs

    cfg = dict(TINY, results_dir=str(tmp_path / "results"))
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    res = snakemake("all", "--nolock", "--profile", "profiles/local", "--cores", "2",
                    "--configfile", str(tmp_path / "tiny.yaml"), timeout=1800)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-6000:]
    out = tmp_path / "results"
    board = pd.read_csv(out / "leaderboard" / "leaderboard.csv")
    cases = pd.read_csv(out / "leaderboard" / "cases.csv", dtype={"budget": str})
    runs = {(s, m, b) for s, m, b, _ in finetune_runs(TINY)}
    assert {(s, m, b) for s, m, b in cases[["strategy", "mode", "budget"]].itertuples(index=False)} == runs
    assert {m for s, m, _ in runs if s in ("dino", "scratch_dino")} == {"full", "frozen", "adapter"}
    assert {m for s, m, _ in runs if s not in ("dino", "scratch_dino")} == {"full", "frozen"}
    assert set(cases.protocol) == {"selma3d2026"}
    dice = cases["dice"].to_numpy()
    assert np.isfinite(dice).all() and ((dice >= 0) & (dice <= 1)).all()
    means = board.select_dtypes("number").to_numpy().ravel()
    assert np.isfinite(means).any()
    md = (out / "leaderboard" / "leaderboard.md").read_text()
    assert all(s in md for s in TINY["finetune"]["strategies"])
    for fig in ("qualitative.png", "dice_vs_budget.png"):
        assert (out / "figures" / fig).stat().st_size > 10_000
    for s in TINY["pretrain"]["strategies"]:
        log = (out / "logs" / "finetune" / s / "full" / "b1_s0.log").read_text()
        assert "loaded" in log and "pretrained tensors" in log, s
    # table 6 compares the ViT strategy with the ViT trained without SSL, the others with scratch
    t6 = pd.read_csv(out / "tables" / "table6.csv")
    refs = t6.groupby("strategy")["baseline"].unique().to_dict()
    assert list(refs["dino"]) == ["scratch_dino"] and list(refs["mae"]) == ["scratch"]
    # frozen finetuning leaves the pretrained encoder bit-identical in the final model
    pre = torch.load(out / "pretrain" / "mae" / "encoder.pt", weights_only=False)["weights"]
    ft = torch.load(out / "finetune" / "mae" / "frozen" / "b1_s0" / "model.pt", weights_only=False)["state_dict"]
    encoder = tuple(encoder_prefixes("unet", TINY_UNET))
    shared = [k for k in pre if k.startswith(encoder)]
    assert shared and all(torch.equal(pre[k], ft[k]) for k in shared)
    # a second run has nothing to do: every output is complete and up to date
    res = snakemake("all", "-n", "--nolock", "--configfile", str(tmp_path / "tiny.yaml"))
    assert "Nothing to be done" in res.stdout + res.stderr


def test_rule_scripts_import_the_library_beside_them(monkeypatch):
    """The Snakefile puts <repo>/src first on PYTHONPATH (rule scripts are child processes), so a
    checkout runs its own library even when another copy is installed; every script starts
    with the one prologue, start_rule, and none edits sys.path itself."""
    import os
    import sys

    from selma3d.core.checkout import use_checkout

    assert 'use_checkout(f"{workflow.basedir}/src")' in (REPO / "Snakefile").read_text()
    for script in (REPO / "workflow" / "scripts").glob("*.py"):
        text = script.read_text()
        assert "start_rule(snakemake)" in text and "sys.path" not in text, script.name
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(["/elsewhere", str(REPO / "src")]))
    monkeypatch.setattr(sys, "path", list(sys.path))
    use_checkout(str(REPO / "src"))
    assert os.environ["PYTHONPATH"].split(os.pathsep) == [str(REPO / "src"), "/elsewhere"]
    assert sys.path[0] == str(REPO / "src")

@pytest.mark.parametrize("base,overlay", [("real_selma.yaml", "studies/real_selma_ssl.yaml")])
def test_dry_run_study_overlays_on_their_base_config(base, overlay, tmp_path):
    res = snakemake("all", "-n", "--nolock", "--profile", "profiles/local", "--configfile", f"config/{base}",
                    f"config/{overlay}", "--config", f"results_dir={tmp_path / 'results'}")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "finetune" in res.stdout and "leaderboard" in res.stdout
