"""The nnU-Net-grade recipe wired into finetuning and inference: schema defaults equal the
library's, seeded augmented batches, legacy vs nnunet, the plan, post-processing calibrated on
validation and applied by infer, and the classical ``threshold`` strategy end to end.
Tiny NIfTI cases and networks: every test runs in seconds on a CPU."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from helpers import finetune_settings, schema_config, schema_path, blob_volume
from selma3d import io

SPACING = (2.0, 1.0, 1.0)
TINY_DYN = {"backbone": "dynunet", "patch_size": [16, 32, 32], "spacing": list(SPACING), "base_filters": 4,
            "max_filters": 16}
INFER = {"overlap": 0.25, "sw_batch_size": 4, "blend": "gaussian", "mirror_axes": [0, 1, 2],
         "postprocess": {"select_on_validation": True, "per": "structure", "thresholds": [0.3, 0.5, 0.7],
                         "min_sizes": [0, 5], "peaks": [0, 0.9]}}


def _blobs(seed, gain, offset, n=6, shape=(16, 32, 32)):
    return blob_volume(seed, gain, offset, n=n, shape=shape, margin=3)


def _write_dataset(folder, cases):
    """NIfTI blob cases and their manifest + train split in ``folder``; ``cases``: (split,
    structure, number of blobs) in order, named ``<structure>_<split><i>``."""
    from selma3d.data.manifest import annotated_pairs, read_manifest

    rows, seen = [], {}
    for k, (split, s, blobs) in enumerate(cases):
        i = seen[(split, s)] = seen.get((split, s), -1) + 1
        name = f"{s}_{split}{i}"
        img, gt = _blobs(k, 100 + 30 * k, 200, n=blobs)
        io.write_nifti(folder / f"{name}_0000.nii.gz", img, SPACING)
        io.write_nifti(folder / f"{name}.nii.gz", gt.astype(np.uint8), SPACING)
        for role, path in (("image", f"{name}_0000.nii.gz"), ("label", f"{name}.nii.gz")):
            rows.append({"case": name, "role": role, "split": split, "structure": s,
                         "spacing_um": "2,1,1", "path": path})
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
    annotated_pairs(read_manifest(folder / "manifest.csv"), "train").to_csv(folder / "split.csv", index=False)
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Train 2 + val 1 + test 1 cases of two structures (+ an unseen test structure)."""
    return _write_dataset(tmp_path_factory.mktemp("tiny"), [
        (split, s, 10 if s == "blood_vessel" else 6)
        for split, per in (("train", 2), ("val", 1), ("test", 1))
        for s in ["cfos_neuron", "blood_vessel"] + (["microglia"] if split == "test" else [])
        for _ in range(per)])


# ---------------------------------------------------------------------------------------------
# the schema holds the defaults; the library's constants must equal them


def _plain(v):
    return [_plain(x) for x in v] if isinstance(v, (list, tuple)) else v


def test_schema_defaults_equal_the_library_defaults():
    from selma3d.augment.pipeline import DEFAULTS
    from selma3d.inference.postprocess import MIN_SIZES, PEAKS, THRESHOLDS
    from selma3d.training.plan import CONFIG_NAMES, NOT_SETTINGS, PLAN_DEFAULTS

    cfg = schema_config({})
    aug = cfg["finetune"]["augmentation"]
    assert set(aug) == set(DEFAULTS)
    assert {k: _plain(v) for k, v in DEFAULTS.items()} == aug
    pp = cfg["infer"]["postprocess"]
    assert pp["thresholds"] == list(THRESHOLDS) and pp["min_sizes"] == list(MIN_SIZES)
    assert pp["peaks"] == list(PEAKS)
    plan = {CONFIG_NAMES.get(k, k): v for k, v in cfg["plan"].items() if k not in NOT_SETTINGS}
    # foreground_oversample: null = finetune.foreground_oversample; deep supervision: finetune.deep_supervision
    differ = {k for k in PLAN_DEFAULTS if k in plan and plan[k] != PLAN_DEFAULTS[k]} - {"foreground_oversample"}
    assert not differ, {k: (plan[k], PLAN_DEFAULTS[k]) for k in differ}
    assert set(plan) == set(PLAN_DEFAULTS) - {"deep_supervision"}
    schema = yaml.safe_load(schema_path().read_text())
    assert "dynunet" in schema["properties"]["model"]["properties"]["backbone"]["enum"]
    ft = cfg["finetune"]
    assert ft["recipe"] == "nnunet" and ft["optimizer"] is None and ft["lr"] is None and ft["grad_clip"] == 12
    assert cfg["infer"]["mirror_axes"] == [0, 1, 2] and cfg["plan"]["enabled"] is True


def test_lr_and_weight_decay_resolve_per_optimizer():
    from selma3d.training.recipe import optimizer_settings

    assert optimizer_settings(finetune_settings()) == {"optimizer": "sgd", "lr": 0.01, "weight_decay": 3e-5,
                                                       "momentum": 0.99, "nesterov": True}
    assert optimizer_settings(finetune_settings(recipe="legacy")) == {"optimizer": "adamw", "lr": 1e-4,
                                                                      "weight_decay": 1e-5}
    assert optimizer_settings(finetune_settings(recipe="legacy", adamw={"lr": 0.001}))["lr"] == 0.001
    assert optimizer_settings(finetune_settings(adamw={"lr": 0.001}))["lr"] == 0.01  # nnunet runs sgd
    explicit = optimizer_settings(finetune_settings(optimizer="adamw", lr=0.003, weight_decay=0.0))
    assert explicit == {"optimizer": "adamw", "lr": 0.003, "weight_decay": 0.0}


def test_normalisation_follows_the_plan_per_structure_in_either_recipe():
    from selma3d.core.errors import InputError
    from selma3d.training.recipe import resolve_recipe

    plan = {"normalization": "percentile", "normalization_by_structure": {"cfos_neuron": "local"},
            "foreground_oversample": {}, "intensity": None}
    nn = resolve_recipe(finetune_settings(), plan)
    assert nn["normalize"] == "percentile" and nn["normalize_by_structure"] == {"cfos_neuron": "local"}
    legacy = resolve_recipe(finetune_settings(recipe="legacy"), plan)  # legacy ignores the plan ...
    assert legacy["normalize"] == "percentile" and legacy["normalize_by_structure"] == {}
    legacy = resolve_recipe(finetune_settings(recipe="legacy", normalize="plan"), plan)  # ... unless asked
    assert legacy["normalize_by_structure"] == {"cfos_neuron": "local"} and legacy["augmentation"] is None
    with pytest.raises(InputError, match="training plan"):
        resolve_recipe(finetune_settings(recipe="legacy", normalize="plan"), None)


def test_poly_schedule_with_warmup():
    from selma3d.training.recipe import lr_factor

    assert lr_factor(0, 100, 10) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10) == pytest.approx((1 - 9 / 100) ** 0.9)
    assert lr_factor(50, 100, 0) == pytest.approx(0.5**0.9)
    factors = [lr_factor(s, 100, 10) for s in range(100)]
    assert np.argmax(factors) == 9 and all(a >= b for a, b in zip(factors[9:], factors[10:]))


# ---------------------------------------------------------------------------------------------
# batches


def _cases():
    from selma3d.training.finetune import Case

    out = []
    for i, (s, cat) in enumerate((("cfos_neuron", "isolated_sparse"), ("blood_vessel", "contiguous_dense"))):
        img, gt = _blobs(i, 1.0, 0.0, shape=(16, 24, 24))
        out.append(Case(f"c{i}", s, cat, img, gt.astype(np.uint8), None, None, SPACING))
    return out


def test_augmented_batches_are_a_function_of_seed_and_step():
    from selma3d.training.recipe import AugmentedBatches

    aug = finetune_settings()["augmentation"]
    make = lambda seed: AugmentedBatches(_cases(), (16, 16, 16), 3, seed, {"*": 0.5, "cfos_neuron": 1.0}, aug)  # noqa
    a, b = make(0), make(0)
    x1, y1, i1, c1 = a.numpy(5)
    a.numpy(6)  # what ran before does not matter
    x2, y2, i2, c2 = b.numpy(5)
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2) and np.array_equal(i1, i2) and c1 == c2
    assert x1.shape == (3, 1, 16, 16, 16) and x1.dtype == np.float32 and set(np.unique(y1)) <= {0.0, 1.0}
    assert np.array_equal(a.numpy(5)[0], x1)
    assert not np.array_equal(a.numpy(6)[0], x1)  # another step, another batch
    assert not np.array_equal(make(1).numpy(5)[0], x1)  # another seed, another batch
    assert a.foreground_share("cfos_neuron") == 1.0 and a.foreground_share("blood_vessel") == 0.5
    # the augmentation is on: without it, the crops are the raw intensities
    plain = AugmentedBatches(_cases(), (16, 16, 16), 3, 0, {"*": 0.5, "cfos_neuron": 1.0},
                             {k: (0.0 if k.startswith("p_") else v) for k, v in aug.items()})
    assert not np.array_equal(plain.numpy(5)[0], x1)


# ---------------------------------------------------------------------------------------------
# finetuning: legacy vs nnunet, plan, deep supervision, calibration, infer


def _finetune(data, out, settings, model=TINY_DYN, plan=None, seed=0):
    from selma3d.training.finetune import finetune

    out.mkdir(parents=True, exist_ok=True)
    summary = finetune(data / "manifest.csv", data / "split.csv", model, settings, out / "model.pt",
                       out / "train_log.csv", seed=seed, plan=plan)
    return summary, torch.load(out / "model.pt", weights_only=False), pd.read_csv(out / "train_log.csv")


def test_legacy_and_nnunet_recipes_both_train_and_differ(data, tmp_path):
    common = dict(steps=2, val_every=2, batch_size=2, val_overlap=0.25)
    _, legacy, legacy_log = _finetune(data, tmp_path / "legacy", finetune_settings(recipe="legacy", **common))
    _, again, _ = _finetune(data, tmp_path / "again", finetune_settings(recipe="legacy", **common))
    _, nnunet, nnunet_log = _finetune(data, tmp_path / "nnunet", finetune_settings(**common))
    assert legacy["recipe"] == "legacy" and nnunet["recipe"] == "nnunet"
    assert all(torch.equal(legacy["state_dict"][k], again["state_dict"][k]) for k in legacy["state_dict"])
    assert any(not torch.equal(legacy["state_dict"][k], nnunet["state_dict"][k]) for k in legacy["state_dict"])
    assert list(legacy_log.columns) == ["step", "loss", "val_dice"]  # the legacy log, unchanged
    assert "lr" in nnunet_log.columns and nnunet_log["lr"].iloc[0] == pytest.approx(0.01 / 50)
    assert np.isfinite(legacy_log["loss"]).all() and np.isfinite(nnunet_log["loss"]).all()
    # nnunet trains the dynunet's deep-supervision heads; legacy keeps the net config's (off)
    assert nnunet["config"]["deep_supervision"] is True and not legacy["config"].get("deep_supervision")
    assert any(k.startswith("deep_supervision_heads") for k in nnunet["state_dict"])


_SAME_SEED_RUN = """
import sys, json, torch
from selma3d.training.finetune import finetune, finetune_settings
data, out = sys.argv[1], sys.argv[2]
settings = finetune_settings(json.loads(sys.argv[3]))
finetune(f"{data}/manifest.csv", f"{data}/split.csv", json.loads(sys.argv[4]), settings, f"{out}/model.pt",
         f"{out}/train_log.csv", seed=0)
"""


def test_same_seed_same_weights_whatever_the_process_string_hash(tmp_path):
    """Three categories with three losses in one batch: their terms are summed in a fixed order,
    not in the order of a set of names, which follows the per-process string hash
    (PYTHONHASHSEED); with three terms float addition is not associative, so the order shows."""
    import os
    import subprocess
    import sys

    _write_dataset(tmp_path, [(split, s, 8) for split in ("train", "val")
                              for s in ("cfos_neuron", "cell_nuclei", "blood_vessel")])
    settings = {"recipe": "legacy", "steps": 2, "val_every": 2, "batch_size": 6, "val_overlap": 0.25,
                "foreground_oversample": 1.0,
                "loss": {"default": "dice_ce", "isolated_sparse": "blob", "isolated_dense": "focal_dice",
                         "contiguous_dense": "cldice"}}
    states, logs = [], []
    for hash_seed in ("1", "2", "3", "4"):
        out = tmp_path / f"run{hash_seed}"
        out.mkdir()
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        subprocess.run([sys.executable, "-c", _SAME_SEED_RUN, str(tmp_path), str(out), json.dumps(settings),
                        json.dumps(TINY_DYN)], env=env, check=True, capture_output=True)
        states.append(torch.load(out / "model.pt", weights_only=False)["state_dict"])
        logs.append((out / "train_log.csv").read_text())
    for other in states[1:]:
        assert all(torch.equal(states[0][k], other[k]) for k in states[0])
    assert logs[1:] == logs[:1] * (len(logs) - 1)  # the logged losses too, to the last digit


def test_plan_calibration_and_infer_apply_per_structure_postprocessing(data, tmp_path):
    from selma3d.inference.calibrate import calibrate
    from selma3d.inference.patches import infer_test_split, probability
    from selma3d.training.finetune import load_model, normalize_image
    from selma3d.training.plan import plan_dataset, read_plan

    cfg = schema_config({"plan": {"max_patch_voxels": 16 * 32 * 32, "base_filters": 4, "max_filters": 16,
                                  "normalize": "zscore", "foreground_oversample": {"cfos_neuron": 0.9}}})
    plan_dataset(data / "manifest.csv", tmp_path / "plan.json", tmp_path / "fingerprint.json", cfg["plan"],
                 seed=0)
    plan = read_plan(tmp_path / "plan.json")
    assert plan["normalization"] == "zscore" and plan["network"]["filters"][0] == 4
    assert plan["foreground_oversample"] == {"blood_vessel": 0.33, "cfos_neuron": 0.9}
    from selma3d.reporting.tables import write_plan_report

    write_plan_report(tmp_path / "plan.json", cfg, tmp_path / "plan.html")
    page = (tmp_path / "plan.html").read_text()
    assert "Training plan" in page and "zscore" in page and "Used by finetuning" in page
    model = {**TINY_DYN, "patch_size": [32, 32, 32]}  # the plan's patch wins for a dynunet scratch run
    settings = finetune_settings(steps=2, val_every=2, batch_size=2)
    _, payload, _ = _finetune(data, tmp_path, settings, model=model, plan=tmp_path / "plan.json")
    assert payload["config"]["patch_size"] == plan["patch_size"] == [16, 32, 32]
    assert payload["config"]["strides"] == plan["network"]["strides"]
    assert payload["normalize"] == "zscore" and payload["normalize_stats"]["mean"] == plan["intensity"]["mean"]

    stored = calibrate(tmp_path / "model.pt", data / "manifest.csv", INFER)
    assert set(stored["values"]) == {"cfos_neuron", "blood_vessel"} and stored["per"] == "structure"
    for v in stored["values"].values():
        assert v["threshold"] in (0.3, 0.5, 0.7) and v["min_size"] in (0, 5) and v["n_cases"] == 1
        assert v["peak"] in (0.0, 0.9)
        assert v["score"] >= v["default_score"] - 1e-12
    _, reloaded = load_model(tmp_path / "model.pt", "cpu")
    assert reloaded["postprocess"] == stored

    # infer applies each structure's values (here set by hand to be unmistakable: the vessel's
    # peak keeps only the component of its most confident voxel), the fixed threshold to the
    # structure never calibrated
    from selma3d.inference.patches import keep_peaked_components, remove_small_components

    net, payload = load_model(tmp_path / "model.pt", "cpu")
    probs = {}
    for structure in ("cfos_neuron", "blood_vessel", "microglia"):
        image = io.read_volume(data / f"{structure}_test0_0000.nii.gz").data
        norm = normalize_image(np.asarray(image, np.float32), payload["normalize"], payload["normalize_stats"])
        probs[structure] = probability(net, norm, tuple(payload["config"]["patch_size"]), torch.device("cpu"), 0.25,
                                       4, "gaussian", (0, 1, 2))
    vessel_thr = float(np.quantile(probs["blood_vessel"], 0.9))
    vessel_peak = float(np.nextafter(probs["blood_vessel"].max(), 0))
    above = probs["blood_vessel"] > vessel_thr
    assert 0 < keep_peaked_components(above, probs["blood_vessel"], vessel_peak).sum() < above.sum()
    reloaded = torch.load(tmp_path / "model.pt", weights_only=False)
    reloaded["postprocess"]["values"] = {"cfos_neuron": {"threshold": 0.02, "min_size": 0},
                                         "blood_vessel": {"threshold": vessel_thr, "min_size": 3, "peak": vessel_peak}}
    torch.save(reloaded, tmp_path / "model.pt")
    out = tmp_path / "pred"
    infer_test_split(tmp_path / "model.pt", data / "manifest.csv", out, overlap=0.25, threshold=0.4,
                     min_component_size=0, mirror_axes=(0, 1, 2), progress=False)
    expect = {"cfos_neuron": (0.02, 0, 0.0), "blood_vessel": (vessel_thr, 3, vessel_peak), "microglia": (0.4, 0, 0.0)}

    for structure, (thr, ms, peak) in expect.items():
        prob = probs[structure]
        want = remove_small_components(keep_peaked_components(prob > thr, prob, peak), ms).astype(np.uint8)
        got = np.asarray(io.read_volume(out / f"{structure}_test0.nii.gz").data)
        assert np.array_equal(got, want), structure


# ---------------------------------------------------------------------------------------------
# the classical threshold strategy


def test_threshold_strategy_fits_on_the_budget_and_infers(data, tmp_path):
    from selma3d.inference.patches import infer_test_split
    from selma3d.training import classical
    from selma3d.training.finetune import load_model
    from selma3d.training.runplan import finetune_runs, is_pretrained, modes_for

    cfg = {"model": {"backbone": "unet"}, "pretrain": {"strategies": []},
           "finetune": {"strategies": ["scratch", "threshold"], "modes": ["full", "frozen"], "budgets": [1],
                        "seeds": [0]}}
    assert not is_pretrained("threshold") and modes_for("threshold", cfg) == ["full"]
    assert ("threshold", "full", "1", "0") in finetune_runs(cfg) and ("threshold", "frozen", "1", "0") not in \
        finetune_runs(cfg)
    summary = classical.fit_budget(data / "split.csv", data / "manifest.csv", tmp_path / "model.pt",
                                   tmp_path / "train_log.csv")
    assert 0 <= summary["best_val_dice"] <= 1 and summary["train_cases"] == 4
    assert classical.is_params_file(tmp_path / "model.pt")
    params = classical.load_params(tmp_path / "model.pt")
    assert params["kind"] == classical.KIND and set(params["structures"]) == {"cfos_neuron", "blood_vessel", "*"}
    curve = pd.read_csv(tmp_path / "train_log.csv")
    assert list(curve.columns) == ["step", "loss", "val_dice"] and len(curve) == 1
    with pytest.raises(ValueError, match="threshold"):
        load_model(tmp_path / "model.pt", "cpu")
    out = tmp_path / "pred"
    written = infer_test_split(tmp_path / "model.pt", data / "manifest.csv", out, progress=False)
    assert len(written) == 3
    for structure, key in (("cfos_neuron", "cfos_neuron"), ("microglia", "*")):
        image = np.asarray(io.read_volume(data / f"{structure}_test0_0000.nii.gz").data, np.float32)
        want = classical.predict(image, params["structures"][key])
        got = np.asarray(io.read_volume(out / f"{structure}_test0.nii.gz").data)
        assert np.array_equal(got, want) and got.any(), structure


def test_finetuning_starts_from_imported_published_weights(data, tmp_path):
    """A published checkpoint (nnssl's PlainConvUNet layout) through `selma3d import-weights`
    into the file finetuning reads, then finetuned: every encoder tensor is loaded, training
    runs, and the frozen encoder is the imported one."""
    from test_weights import _plain_conv_unet_state

    from selma3d.cli import main as cli
    from selma3d.nets.models import build_segmentation_net, encoder_prefixes
    from selma3d.training.finetune import finetune

    torch.manual_seed(0)
    sd, levels = _plain_conv_unet_state(build_segmentation_net(TINY_DYN))
    torch.save({"network_weights": sd}, tmp_path / "checkpoint_final.pth")
    encoder = tmp_path / "encoder.pt"
    net = {k: v for k, v in TINY_DYN.items() if k != "backbone"}
    assert cli(["import-weights", str(tmp_path / "checkpoint_final.pth"), "--format", "nnssl", "--out", str(encoder),
                "--net", json.dumps(net)]) == 0
    payload = torch.load(encoder, weights_only=False)
    n_encoder = sum(k.startswith(tuple(encoder_prefixes("dynunet"))) for k in payload["weights"])
    settings = finetune_settings(steps=2, val_every=2, batch_size=2, val_overlap=0.25)
    out = tmp_path / "run"
    out.mkdir()
    summary = finetune(data / "manifest.csv", data / "split.csv", TINY_DYN, settings, out / "model.pt",
                       out / "train_log.csv", mode="frozen", pretrained=encoder, seed=0)
    assert summary["pretrained_tensors"] == len(payload["weights"]) and n_encoder > 0
    state = torch.load(out / "model.pt", weights_only=False)["state_dict"]
    first = f"{levels[0]}.conv1.conv.weight"  # frozen encoder: the trained net still holds the imported tensor
    assert torch.equal(state[first], sd["encoder.stages.0.0.convs.0.conv.weight"])
