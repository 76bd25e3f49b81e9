"""The run plan: which finetuning runs a config asks for, decided without torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from selma3d.training import runplan
from selma3d import strategies as ssl

CONFIG = {
    "model": {"backbone": "unet"},
    "pretrain": {"strategies": ["mae", "dino"], "mae": {"backbone": "unet"}},
    "finetune": {"strategies": ["scratch", "mae", "dino", "scratch_dino"], "modes": ["full", "frozen", "adapter"],
                 "budgets": [1, "all"], "seeds": [0, 1]},
}


def test_catalog_backbones_equal_the_strategy_classes_defaults():
    for name in ssl.available():
        assert ssl.default_backbone(name) == ssl.get_strategy(name).defaults["backbone"], name


def test_planning_runs_does_not_import_torch():
    code = "import sys; from selma3d.training import runplan; runplan.finetune_runs(%r); print('torch' in sys.modules)" % CONFIG
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_adapter_runs_only_for_vit_strategies():
    runs = runplan.finetune_runs(CONFIG)
    modes = {s: {m for s2, m, _, _ in runs if s2 == s} for s in CONFIG["finetune"]["strategies"]}
    assert modes == {"scratch": {"full", "frozen"}, "mae": {"full", "frozen"},
                     "dino": {"full", "frozen", "adapter"}, "scratch_dino": {"full", "frozen", "adapter"}}
    assert len(runs) == (2 + 2 + 3 + 3) * 2 * 2
    assert ("dino", "adapter", "all", "1") in runs


def test_backbones_resolve_as_in_pretraining():
    assert runplan.strategy_backbone("mae", CONFIG) == "unet"  # block wins over the class default
    assert runplan.strategy_backbone("dino", CONFIG) == "vit"  # class default wins over the model block
    assert runplan.strategy_backbone("scratch_dino", CONFIG) == "vit"
    assert runplan.strategy_backbone("scratch", CONFIG) == "unet"
    assert runplan.is_pretrained("dino") and not runplan.is_pretrained("scratch_dino")
    assert runplan.baseline_for("dino", ["scratch", "scratch_dino"]) == "scratch_dino"
    assert runplan.baseline_for("mae", ["scratch", "scratch_dino"]) == "scratch"


@pytest.mark.parametrize("strategies, modes, words", [
    (["scratch", "byol"], ["full"], ["'byol'", "does not pretrain"]),
    (["scratch_nope"], ["full"], ["'nope'", "no SSL strategy"]),
    (["scratch", "mae"], ["adapter"], ["'scratch'", "'vit'"]),
])
def test_bad_strategy_lists_are_refused_naming_the_strategy(strategies, modes, words):
    cfg = {**CONFIG, "finetune": {**CONFIG["finetune"], "strategies": strategies, "modes": modes}}
    with pytest.raises(ValueError) as err:
        runplan.check_strategies(cfg)
    assert all(w in str(err.value) for w in words)


def test_scratch_of_a_strategy_trains_that_strategys_net():
    from selma3d.training.finetune import scratch_model_config
    from selma3d.nets.models import build_segmentation_net, load_pretrained, net_config
    from selma3d.training.pretrain import resolve_strategy_config

    model = {"backbone": "unet", "patch_size": [32, 32, 32]}
    block = {"patch_size": [32, 32, 32], "vit_patch_size": 8, "hidden_size": 48, "mlp_dim": 96, "num_layers": 2,
             "num_heads": 4, "local_size": 16, "n_local_crops": 2, "out_dim": 64, "head_hidden": 32}
    cfg = scratch_model_config(model, {"strategy": "dino", "block": block})
    assert cfg["backbone"] == "vit" and cfg["patch_size"] == [32, 32, 32] and cfg["hidden_size"] == 48
    # what dino pretrains loads, whole, into the net scratch_dino trains: same architecture
    exported = ssl.build_strategy("dino", resolve_strategy_config("dino", model, block)).export_weights()
    net = build_segmentation_net(cfg)
    assert load_pretrained(net, exported) == len(exported) > 0
    assert scratch_model_config(model, None) == net_config(model)  # the model block's net, defaults filled in


def test_threshold_baseline_is_planned_without_pretraining_in_mode_full_only():
    cfg = {**CONFIG, "finetune": {**CONFIG["finetune"], "strategies": ["scratch", "threshold"]}}
    runplan.check_strategies(cfg)  # needs no pretraining
    runs = runplan.finetune_runs(cfg)
    assert {m for s, m, _, _ in runs if s == "threshold"} == {"full"}
    assert not runplan.is_pretrained("threshold") and runplan.scratch_reference("threshold") is None
    frozen = {**cfg, "finetune": {**cfg["finetune"], "modes": ["frozen"]}}
    runplan.check_strategies(frozen)  # no network to freeze: still the one classical run, as full
    assert {(s, m) for s, m, _, _ in runplan.finetune_runs(frozen)} == {("scratch", "frozen"), ("threshold", "full")}

def test_ensemble_runs_average_each_network_run_over_its_seeds():
    cfg = {**CONFIG, "finetune": {**CONFIG["finetune"], "strategies": ["scratch", "mae", "threshold"]}}
    assert runplan.ensemble_runs(cfg) == []  # off unless asked for
    cfg["finetune"]["ensemble"] = True
    runs = runplan.ensemble_runs(cfg)
    assert {(s, m, b) for s, m, b, _, _ in runs} == {(s, m, b) for s in ("scratch", "mae") for m in ("full", "frozen")
                                                      for b in ("1", "all")}
    assert {seed for _, _, _, seed, _ in runs} == {runplan.ENSEMBLE}  # never threshold, one per run
    assert runplan.ensemble_runs({**cfg, "finetune": {**cfg["finetune"], "seeds": [3]}}) == []  # one seed: nothing
    assert runplan.split_ensemble_mode(runplan.ensemble_mode("frozen")) == ("frozen", True)
    assert runplan.split_ensemble_mode("full") == ("full", False)
