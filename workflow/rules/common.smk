# Input functions, wildcard constraints and config lookups. No rules, no torch. The config is
# complete here: the Snakefile resolved it (selma3d.config), every schema default filled in.
import csv
from pathlib import Path

from selma3d.core.text import table_separator
from selma3d.training import runplan

RESULTS = config["results_dir"]
DATASET = config["dataset"]
SSL_STRATEGIES = config["pretrain"]["strategies"]
# preprocess.unannotated: "volumes" (whole brains: downsample -> patchify, one job
# each) or "patches" (files that already are patches: one patchset job per structure)
PATCHSET = config["preprocess"]["unannotated"] == "patches"


wildcard_constraints:
    volume=r"[A-Za-z0-9_.\-]+",
    shard=r"[A-Za-z0-9_.\-]+",
    strategy=r"[a-z0-9_]+",
    mode=r"full|frozen|adapter",
    budget=r"\d+|all",
    seed=r"\d+|ens",  # ens: the ensemble of a run's seeds (finetune.ensemble)
    protocol=r"selma3d2024|selma3d2026",
    # pretraining data variant (pretrain.data_fractions x data_sources); "" = every patch
    pdata=r"(@[a-z0-9._\-]+)?",


def manifest_path():
    """The dataset's local manifest (paths to files on this machine), made by data.smk."""
    return f"{RESULTS}/data/manifest.csv"


def _read_source_manifest():
    path = DATASET["manifest"]
    if not path:
        raise ValueError("config: dataset.source is 'manifest' but dataset.manifest is empty")
    if not Path(path).exists():
        raise ValueError(f"config: dataset.manifest {path!r} does not exist")
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter=table_separator(path)))


def _synthetic_volumes():
    """Volume names of the synthetic dataset, known from config before it is written."""
    from selma3d.data.synth import volume_names

    return volume_names(DATASET["synthetic"])


def pretrain_volumes():
    """Unannotated volumes that feed pretraining (downsample -> patchify)."""
    if DATASET["source"] == "synthetic":
        return _synthetic_volumes()
    names = [r["case"] for r in _read_source_manifest() if r["role"] == "unannotated"]
    return sorted(dict.fromkeys(names))


def pretrain_shards():
    """Structures whose unannotated patch files feed pretraining (one patchset job each)."""
    if DATASET["source"] == "synthetic":
        raise ValueError(
            "config: preprocess.unannotated is 'patches', but the synthetic dataset holds whole "
            "volumes; use 'volumes' or dataset.source: manifest"
        )
    names = [r["structure"] for r in _read_source_manifest() if r["role"] == "unannotated"]
    return sorted(dict.fromkeys(names))


def pretrain_units():
    """One name per patch store pretraining reads: a volume, or a structure in patches mode."""
    return pretrain_shards() if PATCHSET else pretrain_volumes()


def run_ids(ensembles=True):
    """(strategy, mode, budget, seed, pretraining data tag) for every finetuning run configured
    (selma3d.training.runplan.scaled_runs), then, with ``ensembles``, every ensemble of a run's
    seeds (seed "ens", runplan.ensemble_runs)."""
    runs = runplan.scaled_runs(config)
    return runs + runplan.ensemble_runs(config) if ensembles else runs


def ensemble_members(wildcards):
    """The models of every configured seed of the run an ensemble averages."""
    return [
        f"{run_dir('finetune', wildcards.strategy, wildcards.mode, wildcards.budget, seed, wildcards.pdata)}/model.pt"
        for seed in config["finetune"]["seeds"]
    ]


def run_dir(kind, s, m, b, seed, pdata=""):
    return f"{RESULTS}/{kind}/{s}{pdata}/{m}/b{b}_s{seed}"


def pretrained_weights(wildcards):
    """The encoder weights a finetuning run starts from (none for scratch)."""
    if not runplan.is_pretrained(wildcards.strategy):
        return []
    if runplan.is_external(wildcards.strategy):  # published weights (weights.smk)
        return f"{RESULTS}/weights/{runplan.external_name(wildcards.strategy)}/encoder.pt"
    return f"{RESULTS}/pretrain/{wildcards.strategy}{wildcards.pdata}/encoder.pt"


def pretrain_input_indexes(wildcards):
    """Every patch index (the default variant), or the variant's nested subset (pretrain_data)."""
    if not wildcards.pdata:
        return patch_indexes()
    return [f"{RESULTS}/pretrain_data/patches{wildcards.pdata}.csv"]


def pretrain_run_steps(wildcards):
    """A strategy's steps (its block wins over pretrain.steps), scaled per pretrain.scale_steps."""
    steps = strategy_block(wildcards).get("steps", config["pretrain"]["steps"])
    fraction, _ = runplan.parse_data_tag(wildcards.pdata)
    return runplan.pretrain_steps(steps, fraction, config["pretrain"]["scale_steps"])


def scaling_runs():
    """Pretrained run strategy (mae@f0.25) -> its pretraining steps and global batch, for the
    scaling table (batch as the pretrain script resolves it)."""
    from types import SimpleNamespace

    out = {}
    for s, t in runplan.pretrain_ids(config):
        wc = SimpleNamespace(strategy=s, pdata=t)
        block = strategy_block(wc)
        team = runplan.strategies.resolve_strategy_config(s, config["model"], block)
        batch = block.get("batch_size") or config["pretrain"]["batch_size"] or team.get("batch_size")
        out[f"{s}{t}"] = {"steps": pretrain_run_steps(wc), "batch_size": batch}
    return out


def scaling_study():
    """Whether the config pretrains on more than one data variant and finetunes from them."""
    pretrained = any(runplan.is_pretrained(s) for s in config["finetune"]["strategies"])
    return pretrained and len(runplan.data_tags(config)) > 1


def scratch_net(wildcards):
    """For ``scratch_<s>``: the SSL strategy whose network to train, and its config block."""
    ref = runplan.scratch_reference(wildcards.strategy)
    if ref is None:
        return {}
    if runplan.is_external(ref):  # the network of the published weights' entry
        return {"strategy": ref, "block": runplan.external_nets(config)[ref]}
    return {"strategy": ref, "block": dict(config["pretrain"].get(ref) or {})}


PLAN = f"{RESULTS}/plan/plan.json"


def finetune_plan(wildcards):
    """The training plan a finetuning run reads: nnunet recipe with plan.enabled, or
    finetune.normalize plan (any recipe); network strategies only."""
    if wildcards.strategy == runplan.THRESHOLD:
        return []
    if config["finetune"]["normalize"] == "plan":
        return PLAN
    if config["finetune"]["recipe"] != "nnunet" or not config["plan"]["enabled"]:
        return []
    return PLAN


def plan_settings():
    """The plan block for the plan rule; foreground_oversample null: finetune.foreground_oversample."""
    out = dict(config["plan"])
    if out.get("foreground_oversample") is None:
        out["foreground_oversample"] = config["finetune"]["foreground_oversample"]
    return out


def patch_indexes(wildcards=None):
    return expand(f"{RESULTS}/patches/{{unit}}.csv", unit=pretrain_units())


def patch_stores(wildcards=None):
    return expand(f"{RESULTS}/patches/{{unit}}.zarr", unit=pretrain_units())


def strategy_block(wildcards):
    """The config block of a strategy (empty: its team defaults apply)."""
    return dict(config["pretrain"].get(wildcards.strategy) or {})


def gpu_resources(kind="train"):
    res = config["resources"]["gpu_rule"]
    runtime = res["runtime"] if kind == "train" else res["infer_runtime"]
    return dict(
        gpu=1,
        cpus_per_gpu=res["cpus_per_gpu"],
        mem_mb=lambda wc, attempt: res["mem_mb"] * attempt,
        runtime=lambda wc, attempt: runtime * attempt,
    )


def eval_tables(protocol):
    return [
        f"{RESULTS}/eval/{protocol}/{s}{d}/{m}/b{b}_s{seed}.csv" for s, m, b, seed, d in run_ids()
    ]


def get_final_output():
    runplan.check_strategies(config)
    return [rules.leaderboard.output.markdown, rules.leaderboard.output.csv] + report_outputs()


# Figures and tables of the report (rules in report.smk)
FIGURES = config["figures"]
FIG = f"{RESULTS}/figures"
TABLES = f"{RESULTS}/tables"


def _fig(name):
    """The PNG and PDF of a figure (the PDF is written beside the PNG)."""
    return f"{FIG}/{name}.png", f"{FIG}/{name}.pdf"


def _report_fig(name, caption, category, subcategory, **labels):
    return report(
        f"{FIG}/{name}.png",
        caption=f"../report/{caption}.rst",
        category=category,
        subcategory=subcategory,
        labels={"figure": name.replace("_", " "), **labels},
    )


def report_outputs():
    """Every figure, table and page of the report (PNG + PDF per figure) for `rule all`."""
    names = ["data_examples", "patch_counts", "finetune_curves", "qualitative", "qualitative_mip",
             "dice_vs_budget", "ssl_ablation", "distributions"]
    if SSL_STRATEGIES:
        names.append("pretrain_loss")
    if scaling_study():
        names.append("pretrain_scaling")
    out = [p for n in names for p in _fig(n)]
    out += [f"{TABLES}/{n}" for n in ("tables.md", "tables.tex", "table6.md", "table6.csv", "table6.tex")]
    out += table_pages()
    if scaling_study():
        out += [f"{TABLES}/scaling.md", f"{TABLES}/scaling.csv"]
    out += [f"{RESULTS}/report/config.yaml", f"{RESULTS}/report/config.html", f"{RESULTS}/report/plan.html"]
    return out


def table_pages():
    return [f"{TABLES}/{kind}_{p}.html" for p in config["evaluate"]["protocols"] for kind in ("leaderboard", "table6")]
