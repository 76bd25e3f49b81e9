"""How configs resolve: each config alone (never over the demo), schema defaults as the only
defaults, every strategy's network as training builds it, `selma3d config show` = the workflow's
config, the patch-size warning, strict network keys, and no torch on the way."""

from __future__ import annotations

import copy
import inspect
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml

from selma3d import config as C
from selma3d.core.errors import InputError
from selma3d.nets import spec

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.name for p in (REPO / "config").glob("*.yaml"))
DEMO = "config.yaml"
HALF_UNET = [16, 16, 32, 64, 128, 16]
FULL_UNET = spec.NET_DEFAULTS["unet"]["features"]
SMALL_VIT = ("vit", [32] * 3, "hidden_size", 96)

# (backbone, patch_size, a width key, its value) of every finetuned strategy, per shipped config
UNET_32 = ("unet", [32] * 3, "features", HALF_UNET)
CHALLENGE = {
    "scratch": ("unet", [96] * 3, "features", FULL_UNET),
    "mae": ("swinunetr", [64] * 3, "feature_size", 24),
    "byol": ("unet", [64] * 3, "features", FULL_UNET),
    "simclr": ("attention_unet", [64] * 3, "channels", [16, 32, 64, 128, 256]),
    "swin_multitask": ("swinunetr", [96] * 3, "feature_size", 48),
    "dino": ("vit", [128] * 3, "hidden_size", 384),
}
CLASSICAL = ("classical",)  # the threshold baseline trains no network
TINY_UNET = ("unet", [32] * 3, "features", [8, 8, 16, 32, 64, 8])
EXPECTED = {
    "config.yaml": {**{s: UNET_32 for s in ("scratch", "mae", "byol", "simclr")}, "threshold": CLASSICAL},
    "tiny.yaml": {"scratch": TINY_UNET, "mae": TINY_UNET},
    "real_selma.yaml": {**{s: UNET_32 for s in ("scratch", "swin_multitask", "mae_text")}, "threshold": CLASSICAL},
    "custom.yaml": {s: UNET_32 for s in ("scratch", "mae")},
    "real_cfos.yaml": {**{s: UNET_32 for s in ("scratch", "mae", "byol", "simclr", "swin_multitask", "mae_text")},
                       "dino": SMALL_VIT, "scratch_dino": SMALL_VIT},
    "ssl_benchmark.yaml": {**{s: UNET_32 for s in ("scratch", "mae", "byol", "simclr", "swin_multitask",
                                                   "mae_text")},
                           "dino": SMALL_VIT, "scratch_dino": SMALL_VIT},
    "ssl_scaling.yaml": {s: UNET_32 for s in ("scratch", "mae", "simclr")},
    "selma3d_2024.yaml": CHALLENGE,
    "selma3d_2025.yaml": CHALLENGE,
    "selma3d_2026_task1.yaml": CHALLENGE,
    "selma3d_2026_task2.yaml": {**CHALLENGE, "mae_text": ("swinunetr", [64] * 3, "feature_size", 36)},
}


def load(name: str, **kw) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", C.ConfigWarning)
        return C.load_config([REPO / "config" / name], basedir=REPO, **kw)


def run(*args, timeout=300, **kw):
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run(list(args), cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, **kw)


def test_expected_table_covers_every_shipped_config():
    assert set(EXPECTED) == set(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_a_config_resolves_alone_to_its_own_keys_plus_schema_defaults(name):
    cfg = load(name)
    alone = C.validate(C.read_config_file(REPO / "config" / name), engine="jsonschema")
    assert cfg == alone
    if name != DEMO:  # nothing of the demo leaks in: its blocks and widths stay out
        own = C.read_config_file(REPO / "config" / name)
        assert set(cfg["pretrain"]) - set(C.schema_defaults()["pretrain"]) == \
            set(own.get("pretrain", {})) - set(C.schema_defaults()["pretrain"])
        assert cfg["model"] == {**C.schema_defaults()["model"], **own.get("model", {})}


@pytest.mark.parametrize("name", CONFIGS)
def test_every_strategy_gets_the_network_expected_of_its_config(name):
    nets = C.resolved_networks(load(name))
    got = {}
    for s, n in nets["finetune"].items():
        if n["backbone"] == "classical":
            got[s] = CLASSICAL
            continue
        key = EXPECTED[name][s][2] if s in EXPECTED[name] else "backbone"
        got[s] = (n["backbone"], n["patch_size"], key, n[key])
    assert got == EXPECTED[name]
    cfg = load(name)
    for s in cfg["pretrain"]["strategies"]:  # what pretraining builds is what finetuning loads
        if s in nets["finetune"]:
            assert nets["pretrain"][s] == nets["finetune"][s], s
    for s, n in nets["finetune"].items():
        if n["backbone"] != "classical":
            assert n == spec.net_config(n), s  # complete: every key the backbone reads


def test_2026_configs_pretrain_mae_on_swinunetr_not_the_demo_unet():
    for name in ("selma3d_2026_task1.yaml", "selma3d_2026_task2.yaml"):
        mae = C.resolved_networks(load(name))["pretrain"]["mae"]
        assert mae["backbone"] == "swinunetr" and min(mae["patch_size"]) >= 64, (name, mae)
        assert "features" not in mae
        settings = load(name)
        assert "mae" not in settings["pretrain"] and "features" not in settings["model"]


def test_resolution_is_the_one_training_uses():
    """Pretraining (resolve_strategy_config + the strategy's own net), scratch_<s> finetuning
    (scratch_model_config) and config show agree, for a block that changes a team default."""
    from selma3d.strategies import build_strategy, resolve_strategy_config
    from selma3d.training.finetune import scratch_model_config
    from selma3d.training.runplan import finetune_network, pretrain_network

    block = {"patch_size": [32, 32, 32], "vit_patch_size": 8, "hidden_size": 48, "mlp_dim": 96, "num_layers": 2,
             "num_heads": 4, "local_size": 16, "n_local_crops": 2, "out_dim": 64, "head_hidden": 32}
    model = {"backbone": "unet", "patch_size": [32, 32, 32], "features": HALF_UNET}
    config = {"model": model, "pretrain": {"strategies": ["dino"], "dino": block}}
    built = build_strategy("dino", resolve_strategy_config("dino", model, block)).net_config
    assert built == pretrain_network("dino", config) == finetune_network("scratch_dino", config)
    assert built == scratch_model_config(model, {"strategy": "dino", "block": block})
    assert finetune_network("scratch", config) == scratch_model_config(model) == spec.net_config(model)


def test_team_defaults_live_in_the_catalog_the_classes_read():
    from selma3d.strategies import available, get_strategy, team_defaults
    from selma3d.strategies.defaults import TEAM_DEFAULTS

    assert sorted(TEAM_DEFAULTS) == available()
    for name in available():
        assert get_strategy(name).defaults == TEAM_DEFAULTS[name] == team_defaults(name), name
        spec.net_config(spec.split_net_config(TEAM_DEFAULTS[name])[0])  # a valid network


# -- the CLI and the workflow ---------------------------------------------------------------


def test_config_show_prints_the_library_resolution(capsys):
    from selma3d.cli import main

    args = ["--configfile", str(REPO / "config" / "selma3d_2026_task1.yaml"), "--config", "seed=3",
            "finetune={'modes': ['frozen']}"]
    with pytest.warns(C.ConfigWarning):
        assert main(["config", "show", *args]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    overrides = C.parse_overrides(["seed=3", "finetune={'modes': ['frozen']}"])
    cfg = load("selma3d_2026_task1.yaml", overrides=overrides)
    assert shown == C.config_report(cfg)
    assert shown["seed"] == 3 and shown["finetune"]["modes"] == ["frozen"]
    assert main(["config", "show", *args, "finetune={'seeds': [4]}"]) == 2  # '4': a string, as Snakemake parses it
    assert "seeds" in capsys.readouterr().err
    assert shown["resolved_networks"]["pretrain"]["mae"]["backbone"] == "swinunetr"


def test_config_show_without_configfile_is_the_demo(capsys):
    from selma3d.cli import main

    assert main(["config", "show", "--directory", str(REPO)]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown == C.config_report(load(DEMO))
    assert main(["config", "show", "--directory", str(REPO / "nowhere")]) == 2
    assert "config.yaml" in capsys.readouterr().err


@pytest.mark.parametrize("files, overrides", [
    (["config/selma3d_2026_task1.yaml"], []),
    (["config/real_cfos.yaml", "EXTRA"], ["seed=2"]),
    ([], ["finetune={'modes': ['frozen']}", "seed=5"]),  # no --configfile: the demo, --config on top
])
def test_the_workflows_config_is_what_config_show_prints(files, overrides, tmp_path):
    """Run the workflow's report_config rule (no torch, seconds) and compare its config.yaml with
    `selma3d config show` for the same command line, byte for byte."""
    extra = tmp_path / "extra.yaml"
    extra.write_text(yaml.safe_dump({"finetune": {"steps": 3}, "model": {"patch_size": [32, 32, 32]}}))
    files = [str(extra) if f == "EXTRA" else f for f in files]
    overrides = [f"results_dir={tmp_path / 'r'}", *overrides]
    target = tmp_path / "r" / "report" / "config.yaml"
    cf = ["--configfile", *files] if files else []
    res = run(sys.executable, "-m", "snakemake", str(target), "--nolock", "--cores", "1", *cf,
              "--config", *overrides)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    show = run(sys.executable, "-m", "selma3d.cli", "config", "show", *cf, "--config", *overrides)
    assert show.returncode == 0, show.stderr
    assert target.read_text() == show.stdout
    assert yaml.safe_load(show.stdout)["results_dir"] == str(tmp_path / "r")
    # the report's config.yaml, used as a config file, reruns the same config
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", C.ConfigWarning)
        assert C.report_yaml(C.load_config([target])) == show.stdout
        edited = yaml.safe_load(show.stdout)
        edited["resolved_networks"]["finetune"]["scratch"]["patch_size"] = [8, 8, 8]
        (tmp_path / "edited.yaml").write_text(yaml.safe_dump(edited))
        with pytest.raises(ValueError, match="resolved_networks"):
            C.load_config([tmp_path / "edited.yaml"])


def test_patch_size_warning_shows_in_a_dry_run(tmp_path):
    res = run(sys.executable, "-m", "snakemake", "-n", "--nolock", "--configfile", "config/selma3d_2026_task1.yaml",
              "--config", f"results_dir={tmp_path}")
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout + res.stderr
    assert "ConfigWarning" in out and "mae 64x64x64" in out and "dino 128x128x128" in out and "96x96x96" in out


def test_dry_run_and_resolution_import_no_torch(tmp_path):
    res = run(sys.executable, "-X", "importtime", "-m", "snakemake", "-n", "--nolock", "--configfile",
              "config/selma3d_2026_task2.yaml", "--config", f"results_dir={tmp_path}")
    assert res.returncode == 0, res.stderr[-3000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in res.stderr.splitlines() if line.startswith("import time:")}
    assert "selma3d.config" in imported and "torch" not in imported
    code = ("import sys, warnings; warnings.simplefilter('ignore'); from selma3d import config as C; "
            "c = C.load_config(['config/selma3d_2026_task2.yaml']); C.report_yaml(c); "
            "print('torch' in sys.modules)")
    out = run(sys.executable, "-c", code)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr
    show = run(sys.executable, "-X", "importtime", "-m", "selma3d.cli", "config", "show")
    assert show.returncode == 0 and "resolved_networks:" in show.stdout
    assert not [line for line in show.stderr.splitlines() if line.rstrip().endswith("| torch")]


# -- the patch-size warning and strict network keys -------------------------------------------


def test_patch_size_warning_names_strategies_and_both_sizes():
    cfg = {"model": {"patch_size": [32, 32, 32], "features": HALF_UNET},
           "pretrain": {"strategies": ["mae", "byol"], "mae": {"backbone": "unet"},
                        "byol": {"patch_size": [32, 32, 32]}},
           "finetune": {"strategies": ["scratch", "mae", "byol", "scratch_dino"]}}
    with pytest.warns(C.ConfigWarning) as record:
        C.load_config(overrides=cfg, replace=True)
    (message,) = [str(w.message) for w in record if issubclass(w.category, C.ConfigWarning)]
    assert "model.patch_size 32x32x32" in message
    assert "mae 64x64x64" in message and "scratch_dino 128x128x128" in message
    assert "byol" not in message and "scratch " not in message
    resolved = C.validate(C.merge({}, cfg))
    assert C.patch_size_mismatches(resolved) == {"mae": [64, 64, 64], "scratch_dino": [128, 128, 128]}


def test_no_patch_size_warning_when_sizes_agree():
    with warnings.catch_warnings():
        warnings.simplefilter("error", C.ConfigWarning)
        C.load_config(basedir=REPO)  # the demo: every net at 32^3
        C.load_config([REPO / "config" / "ssl_benchmark.yaml"])


def test_net_config_rejects_an_unknown_key_naming_key_backbone_and_allowed_keys():
    with pytest.raises(InputError) as err:
        spec.net_config({"backbone": "swinunetr", "features": HALF_UNET})
    msg = str(err.value)
    assert "'features'" in msg and "'swinunetr'" in msg and "feature_size" in msg and "window_size" in msg
    with pytest.raises(InputError, match="'lr'"):
        spec.net_config({"backbone": "unet", "lr": 0.1})
    net, rest = spec.split_net_config({"backbone": "unet", "features": HALF_UNET, "lr": 0.1, "batch_size": 2})
    assert spec.net_config(net)["features"] == HALF_UNET and rest == {"lr": 0.1, "batch_size": 2}


def test_a_stray_network_key_fails_at_config_time_naming_the_block():
    # mae runs on SwinUNETR by default: features is no key of it
    bad_block = {"pretrain": {"strategies": ["mae"], "mae": {"features": HALF_UNET}}}
    with pytest.raises(InputError, match=r"pretrain\.mae.*'swinunetr'.*'features'"):
        C.load_config(overrides=bad_block, replace=True)
    with pytest.raises(InputError, match=r"model.*'featurs'"):
        C.load_config(overrides={"model": {"featurs": HALF_UNET}}, replace=True)
    # the model block's UNet width does not follow a strategy onto another backbone
    ok = C.load_config(overrides={"model": {"features": HALF_UNET, "patch_size": [64] * 3}}, replace=True)
    assert "features" not in C.resolved_networks(ok)["pretrain"]["mae"]
    assert C.resolved_networks(ok)["finetune"]["scratch"]["features"] == HALF_UNET


# -- one source of defaults --------------------------------------------------------------------


def test_schema_is_package_data_and_the_only_default_source():
    assert C.SCHEMA_PATH.parent == Path(C.__file__).parent and C.SCHEMA_PATH.exists()
    assert "config.schema.yaml" in (REPO / "pyproject.toml").read_text()
    assert not (REPO / "workflow" / "schemas").exists()
    assert spec.net_config({})["patch_size"] == C.schema_default("model.patch_size") == [96, 96, 96]
    assert spec.net_config({})["backbone"] == C.schema_default("model.backbone")


def test_library_defaults_are_the_schemas():
    from selma3d.data.download import download_manifest
    from selma3d.evaluation.evaluate import evaluate_manifest_split
    from selma3d.inference.patches import infer_test_split
    from selma3d.inference.volume import predict_from_checkpoint, predict_volume
    from selma3d.preprocess.ingest import ingest_volume
    from selma3d.preprocess.patchify import patchify_volume
    from selma3d.preprocess.patchsets import collect_patch_files
    from selma3d.preprocess.pyramid import downsample_volume
    from selma3d.training.finetune import finetune_settings
    from selma3d.training.pretrain import pretrain

    pre = {k: f"preprocess.{k}" for k in ("patch_size", "level", "min_foreground", "intensity_threshold",
                                          "background_share", "workers")}
    checks = {
        patchify_volume: {**pre, "seed": "seed"},
        collect_patch_files: {**{k: v for k, v in pre.items() if k != "level"},
                              "patch_size": "preprocess.patchset_patch_size", "seed": "seed"},
        downsample_volume: {"levels": "preprocess.pyramid_levels", "workers": "preprocess.workers"},
        ingest_volume: {"levels": "preprocess.pyramid_levels", "workers": "preprocess.workers"},
        download_manifest: {"workers": "dataset.download_workers"},
        pretrain: {k: f"pretrain.{k}" for k in ("num_workers", "log_every", "checkpoint_every", "precision", "gpus",
                                                "shards", "channels_last", "compile", "pin_memory")},
        infer_test_split: {k: f"infer.{k}" for k in ("overlap", "threshold", "sw_batch_size", "blend",
                                                     "min_component_size")},
        evaluate_manifest_split: {"workers": "evaluate.workers", "ignore_label": "finetune.ignore_label"},
        predict_volume: {k: f"segment.{k}" for k in ("overlap", "block", "batch", "probability", "threshold",
                                                     "prob_dtype", "levels", "precision")}
        | {"min_size": "segment.min_component_size"},
        predict_from_checkpoint: {"use_stored_postprocess": "segment.use_stored_postprocess"},
    }
    for fn, params in checks.items():
        sig = inspect.signature(fn).parameters
        for param, key in params.items():
            assert sig[param].default == C.schema_default(key), (fn.__name__, param, key)
    assert tuple(inspect.signature(evaluate_manifest_split).parameters["background_values"].default) == \
        tuple(C.schema_default("finetune.background_values"))
    settings = finetune_settings({"loss": {"contiguous_dense": "cldice"}})
    assert settings["steps"] == C.schema_default("finetune.steps") == 5000
    assert settings["loss"] == {"default": "dice_ce", "contiguous_dense": "cldice"}


def test_validation_engines_and_override_parsing_agree_with_snakemake():
    from snakemake.cli import parse_config
    from snakemake.utils import update_config

    for name in CONFIGS:
        raw = C.read_config_file(REPO / "config" / name)
        assert C.validate(copy.deepcopy(raw), "snakemake") == C.validate(copy.deepcopy(raw), "jsonschema"), name
    assert C.validate({}, "snakemake") == C.schema_defaults()
    entries = ["seed=3", "results_dir=/tmp/x y", "xx=1.5", "flag=True", "empty=", "finetune={'seeds': [4]}",
               "pretrain={'mae': {'lr': 0.1}}"]
    assert C.parse_overrides(entries) == parse_config(entries)
    a, b = {"a": {"b": [1, 2], "c": 1}, "d": 1}, {"a": {"b": [3], "e": {"f": 1}}, "d": {"g": 2}}
    want = copy.deepcopy(a)
    update_config(want, b)
    assert C.merge(copy.deepcopy(a), b) == want
    with pytest.raises(ValueError, match=r"(?s)exclusiveMaximum.*overlap"):
        C.validate({"infer": {"overlap": 1.5}}, "snakemake")
    with pytest.raises(ValueError, match=r"infer\.overlap.*exclusiveMaximum"):
        C.validate({"infer": {"overlap": 1.5}}, "jsonschema")


def test_library_defaults_equal_the_validators_defaults():
    """selma3d.core.schema fills defaults without jsonschema (it runs in every env); it must agree
    with both validators the workflow and the CLI use."""
    from selma3d import config
    from selma3d.core.schema import schema_defaults

    assert schema_defaults() == config.validate({}, engine="jsonschema") == config.validate({}, engine="snakemake")


def test_strategy_names_come_from_the_registry_not_the_schema():
    """The schema lists no strategy names; the registry decides, before any job."""
    from selma3d import strategies

    text = C.SCHEMA_PATH.read_text()
    assert not any(f"{s}|" in text or f"[{s}," in text for s in strategies.available())
    with pytest.raises(ValueError, match=r"pretrain.strategies lists \['mea'\].*registry"):
        C.load_config([REPO / "config" / "tiny.yaml"], overrides={"pretrain": {"strategies": ["mea"]}})
