"""The real c-Fos config end to end: train on brain 695, validate and score on brain 753.

Its own module (not test_workflow.py) so that parallel test workers (``make test`` runs
pytest-xdist by file) can run it beside the synthetic end-to-end run.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import snakemake


@pytest.mark.slow
def test_real_cfos_train_on_brain_695_validate_on_753(tmp_path, real_data):
    fast = {"results_dir": str(tmp_path / "r"),
            "pretrain": {"strategies": ["mae"], "steps": 4, "batch_size": 2, "num_workers": 0},
            "finetune": {"strategies": ["scratch", "mae"], "steps": 30, "val_every": 15, "batch_size": 2,
                         "lr": 0.003},
            "infer": {"overlap": 0.25, "mirror_axes": []}}  # TTA is tested on its own (test_recipe*)
    (tmp_path / "fast.yaml").write_text(yaml.safe_dump(fast))
    res = snakemake("all", "--nolock", "--profile", "profiles/local", "--cores", "2",
                    "--configfile", "config/real_cfos.yaml", str(tmp_path / "fast.yaml"))
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-6000:]
    out = tmp_path / "r"
    assert len(list((out / "downsample").glob("*.ome.zarr"))) == 8, "brain 695's eight raw patches are downsampled"
    cases = pd.read_csv(out / "leaderboard" / "cases.csv")
    assert sorted(cases.case.unique()) == [f"cfos_neuron_753_{k}" for k in range(8)]
    assert np.isfinite(cases.dice).all()
    log = (out / "logs" / "finetune" / "scratch" / "full" / "ball_s0.log").read_text()
    assert "val Dice" in log and "8 cases" in log
