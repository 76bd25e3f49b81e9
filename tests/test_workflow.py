"""The workflow as users run it: lint, dry-runs of every shipped config and profile, a bad
config caught before any job, and a tiny end-to-end run on the synthetic dataset."""

from __future__ import annotations

import math
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
CONFIGS = sorted(p.name for p in (REPO / "config").glob("*.yaml"))
PROFILES = ["profiles/local", "profiles/slurm"]


def snakemake(*args, cwd=REPO, timeout=900):
    return subprocess.run(SNAKEMAKE + list(args), cwd=cwd, capture_output=True, text=True, timeout=timeout)


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
    assert jobs["ingest"] == 66 and jobs["pretrain"] == 6
    assert jobs["finetune"] == 7 * 2 * 3 * 3
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
