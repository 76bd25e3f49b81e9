"""Ensembles of finetuned models: the mean of the members' probabilities, built by
``selma3d ensemble``, loaded by ``load_model`` everywhere a single model goes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from selma3d.core.errors import InputError
from selma3d.nets.ensemble import ProbabilityEnsemble
from selma3d.nets.models import build_segmentation_net
from selma3d.training.ensemble import combine
from selma3d.training.finetune import load_model, predict_probability

CFG = {"backbone": "unet", "patch_size": [32, 32, 32], "features": [4, 4, 8, 8, 16, 4]}


def save_model(path, seed: int, **extra) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = build_segmentation_net(CFG).eval()
    payload = {"config": CFG, "state_dict": net.state_dict(), "mode": "full", "normalize": "percentile",
               "normalize_by_structure": {}, "normalize_stats": None, "recipe": "nnunet", "ignore_label": None,
               "background_values": (0,), "best_val_dice": 0.5 + seed / 10} | extra
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)
    return net


def test_ensemble_is_the_mean_of_member_probabilities():
    torch.manual_seed(0)
    nets = [torch.nn.Conv3d(1, 1, 3, padding=1) for _ in range(3)]
    x = torch.randn(2, 1, 8, 8, 8)
    with torch.no_grad():
        want = torch.stack([torch.sigmoid(n(x)) for n in nets]).mean(0)
        got = torch.sigmoid(ProbabilityEnsemble(nets)(x))
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    with pytest.raises(ValueError):
        ProbabilityEnsemble([])


def test_combined_file_loads_as_an_ensemble_that_predicts_the_mean(tmp_path):
    nets = [save_model(tmp_path / f"ball_s{s}" / "model.pt", s) for s in (0, 1)]
    summary = combine([tmp_path / "ball_s0" / "model.pt", tmp_path / "ball_s1" / "model.pt"],
                      tmp_path / "ball_sens" / "model.pt")
    assert summary == {"ensemble_of": ["ball_s0", "ball_s1"], "member_val_dice": [0.5, 0.6]}
    net, payload = load_model(tmp_path / "ball_sens" / "model.pt", torch.device("cpu"))
    assert isinstance(net, ProbabilityEnsemble) and len(net.members) == 2
    assert payload["normalize"] == "percentile" and payload["config"]["patch_size"] == [32, 32, 32]
    image = np.random.default_rng(0).normal(size=(36, 34, 32)).astype(np.float32)
    with torch.no_grad():
        x = torch.from_numpy(image)[None, None]
        want = torch.stack([torch.sigmoid(n(x)) for n in nets]).mean(0)[0, 0].numpy()
        got = torch.sigmoid(net(x))[0, 0].numpy()
    np.testing.assert_allclose(got, want, atol=1e-6)
    # the sliding window runs it like any net
    prob = predict_probability(net, image, (32, 32, 32), torch.device("cpu"), overlap=0.25)
    assert prob.shape == image.shape and 0 <= prob.min() and prob.max() <= 1


def test_members_that_differ_are_refused_naming_the_file_and_key(tmp_path):
    save_model(tmp_path / "a" / "model.pt", 0)
    save_model(tmp_path / "b" / "model.pt", 1, normalize="zscore")
    with pytest.raises(InputError, match=r"b/model.pt.*normalize 'percentile'.*'zscore'"):
        combine([tmp_path / "a" / "model.pt", tmp_path / "b" / "model.pt"], tmp_path / "e.pt")
    assert not (tmp_path / "e.pt").exists()
    combine([tmp_path / "a" / "model.pt"], tmp_path / "e1.pt")
    with pytest.raises(InputError, match="a single finetuned model"):
        combine([tmp_path / "e1.pt"], tmp_path / "e2.pt")


def test_cli_writes_the_ensemble_and_reports_bad_input_in_one_line(tmp_path, capsys):
    import io
    import logging

    from selma3d.cli import main

    root = logging.getLogger()
    stale = io.StringIO()
    stale.close()  # a handler an earlier command left on a stream that is gone: the CLI sets up its own
    handlers, level = root.handlers[:], root.level
    root.addHandler(logging.StreamHandler(stale))
    root.setLevel(logging.INFO)
    save_model(tmp_path / "a" / "model.pt", 0)
    save_model(tmp_path / "b" / "model.pt", 1, config={**CFG, "features": [4, 4, 8, 8, 8, 4]})
    try:
        assert main(["ensemble", str(tmp_path / "a" / "model.pt"), "--out", str(tmp_path / "one.pt")]) == 0
        assert "ensemble of 1 models (a) written" in capsys.readouterr().err  # its log, on stderr
        assert main(["ensemble", str(tmp_path / "a" / "model.pt"), str(tmp_path / "b" / "model.pt"),
                     "--out", str(tmp_path / "two.pt")]) == 2
    finally:  # the commands' handlers write to this test's captured stderr: not left for later tests
        root.handlers[:] = handlers
        root.setLevel(level)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "b/model.pt" in err[0] and "config" in err[0]


@pytest.mark.slow
def test_workflow_scores_the_ensemble_of_two_seeds_as_its_own_run(tmp_path):
    """config/tiny.yaml with two seeds and finetune.ensemble: the ensemble (b1_sens) is built from
    both seeds' models, calibrated, inferred, scored as mode full+ens, and a submission can pick it."""
    from pathlib import Path

    import pandas as pd
    import yaml
    from helpers import snakemake

    from selma3d.evaluation.submission import best_run

    repo = Path(__file__).resolve().parents[1]
    overlay = {"results_dir": str(tmp_path / "r"), "pretrain": {"strategies": []},
               "finetune": {"strategies": ["scratch", "threshold"], "seeds": [0, 1], "ensemble": True},
               "infer": {"mirror_axes": []}, "evaluate": {"protocols": ["selma3d2026"]}}
    (tmp_path / "ens.yaml").write_text(yaml.safe_dump(overlay))
    res = snakemake("leaderboard", "--nolock", "--cores", "2", "--configfile", "config/tiny.yaml",
                    str(tmp_path / "ens.yaml"), cwd=repo)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-4000:]
    out = tmp_path / "r"
    net, payload = load_model(out / "finetune" / "scratch" / "full" / "b1_sens" / "model.pt", torch.device("cpu"))
    assert isinstance(net, ProbabilityEnsemble) and payload["ensemble_of"] == ["b1_s0", "b1_s1"]
    assert payload["postprocess"]["split"] == "val"  # calibrated on validation like a single model
    assert not (out / "finetune" / "threshold" / "full" / "b1_sens").exists()  # no network, no ensemble
    cases = pd.read_csv(out / "leaderboard" / "cases.csv", dtype={"budget": str})
    runs = set(cases[["strategy", "mode"]].itertuples(index=False, name=None))
    assert runs == {("scratch", "full"), ("scratch", "full+ens"), ("threshold", "full")}
    ens = cases[cases["mode"] == "full+ens"]
    assert len(ens) == 3 and set(ens["seed"]) == {0} and ens["dice"].between(0, 1).all()
    assert "full+ens" in (out / "leaderboard" / "leaderboard.md").read_text()
    only_ens = cases[cases["mode"] == "full+ens"]
    pick = best_run(only_ens, 2026)
    assert pick["seed"] == "ens" and pick["run_id"] == "scratch/full/b1_sens"
