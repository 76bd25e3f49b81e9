# Figures, the paper's tables and the material of `snakemake --report`: every output marked
# report() is grouped by category (Data, Pretraining, Finetuning, Evaluation, Configuration).
# Config block `figures:` (defaults in the schema): budget (qualitative/distribution figures;
# default the largest), cases_per_structure (1), cases (explicit test case names), protocol
# (the protocol of the figures; default selma3d2026 when evaluated).


rule figures_data:
    input:
        manifest=manifest_path(),
        indexes=patch_indexes,
    output:
        examples=_report_fig("data_examples", "data_examples", "1. Data", "Annotated patches"),
        examples_pdf=_fig("data_examples")[1],
        patch_counts=_report_fig("patch_counts", "patch_counts", "1. Data", "Pretraining patches"),
        patch_counts_pdf=_fig("patch_counts")[1],
    log:
        f"{RESULTS}/logs/figures/data.log",
    benchmark:
        f"{RESULTS}/benchmarks/figures/data.tsv"
    params:
        kind="data",
        min_foreground=config["preprocess"]["min_foreground"],
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/figures.py"


rule figures_pretrain:
    input:
        curves=[f"{RESULTS}/pretrain/{s}{t}/loss.csv" for s, t in runplan.pretrain_ids(config)],
    output:
        curves=_report_fig("pretrain_loss", "pretrain_loss", "2. Pretraining", "Loss curves"),
        curves_pdf=_fig("pretrain_loss")[1],
    log:
        f"{RESULTS}/logs/figures/pretrain.log",
    benchmark:
        f"{RESULTS}/benchmarks/figures/pretrain.tsv"
    params:
        kind="pretrain",
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/figures.py"


rule figures_finetune:
    input:
        logs=[f"{run_dir('finetune', *r)}/train_log.csv" for r in run_ids(ensembles=False)],
    output:
        curves=_report_fig("finetune_curves", "finetune_curves", "3. Finetuning", "Training curves"),
        curves_pdf=_fig("finetune_curves")[1],
    log:
        f"{RESULTS}/logs/figures/finetune.log",
    benchmark:
        f"{RESULTS}/benchmarks/figures/finetune.tsv"
    params:
        kind="finetune",
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/figures.py"


rule figures:
    input:
        cases=rules.leaderboard.output.cases,
        manifest=manifest_path(),
        predictions=[run_dir("predictions", *r) for r in run_ids()],
    output:
        qualitative=_report_fig("qualitative", "qualitative", "4. Evaluation", "Qualitative", view="slice"),
        qualitative_pdf=_fig("qualitative")[1],
        qualitative_mip=_report_fig("qualitative_mip", "qualitative_mip", "4. Evaluation", "Qualitative", view="MIP"),
        qualitative_mip_pdf=_fig("qualitative_mip")[1],
        budget=_report_fig("dice_vs_budget", "dice_vs_budget", "3. Finetuning", "Label efficiency"),
        budget_pdf=_fig("dice_vs_budget")[1],
        ablation=_report_fig("ssl_ablation", "ssl_ablation", "4. Evaluation", "SSL ablation (table 6)"),
        ablation_pdf=_fig("ssl_ablation")[1],
        distributions=_report_fig("distributions", "distributions", "4. Evaluation", "Per-case distributions"),
        distributions_pdf=_fig("distributions")[1],
    log:
        f"{RESULTS}/logs/figures.log",
    benchmark:
        f"{RESULTS}/benchmarks/figures.tsv"
    params:
        kind="evaluation",
        budget=FIGURES["budget"],
        cases_per_structure=FIGURES["cases_per_structure"],
        cases=FIGURES["cases"],
        protocol=FIGURES["protocol"],
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/figures.py"


rule scaling:
    input:
        cases=rules.leaderboard.output.cases,
        subsets=[f"{RESULTS}/pretrain_data/patches{t}.csv" for t in runplan.data_tags(config)],
    output:
        figure=_report_fig("pretrain_scaling", "pretrain_scaling", "4. Evaluation", "Pretraining-data scaling"),
        figure_pdf=_fig("pretrain_scaling")[1],
        table_md=f"{TABLES}/scaling.md",
        table_csv=f"{TABLES}/scaling.csv",
    log:
        f"{RESULTS}/logs/scaling.log",
    benchmark:
        f"{RESULTS}/benchmarks/scaling.tsv"
    params:
        runs=scaling_runs(),
        budget=FIGURES["budget"],
        protocol=FIGURES["protocol"],
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/scaling.py"


rule tables:
    input:
        cases=rules.leaderboard.output.cases,
    output:
        tables_md=f"{TABLES}/tables.md",
        tables_tex=f"{TABLES}/tables.tex",
        table6_md=f"{TABLES}/table6.md",
        table6_csv=f"{TABLES}/table6.csv",
        table6_tex=f"{TABLES}/table6.tex",
        html=[
            report(
                f"{TABLES}/{kind}_{p}.html",
                caption=f"../report/{kind}.rst",
                category="4. Evaluation",
                subcategory="Tables",
                labels={"table": "tables 4–5 (leaderboard)" if kind == "leaderboard" else "table 6 (SSL ablation)",
                        "protocol": p},
            )
            for p in config["evaluate"]["protocols"]
            for kind in ("leaderboard", "table6")
        ],
    log:
        f"{RESULTS}/logs/tables.log",
    benchmark:
        f"{RESULTS}/benchmarks/tables.tsv"
    params:
        protocols=config["evaluate"]["protocols"],
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/tables.py"


rule report_config:
    output:
        yaml=f"{RESULTS}/report/config.yaml",
        html=report(
            f"{RESULTS}/report/config.html",
            caption="../report/config.rst",
            category="5. Configuration",
            subcategory="Effective config",
            labels={"file": "effective config"},
        ),
    log:
        f"{RESULTS}/logs/report_config.log",
    benchmark:
        f"{RESULTS}/benchmarks/report_config.tsv"
    params:
        config=config,
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/report_config.py"


rule report_plan:
    input:
        plan=rules.plan.output.plan,
    output:
        html=report(
            f"{RESULTS}/report/plan.html",
            caption="../report/plan.rst",
            category="5. Configuration",
            subcategory="Training plan",
            labels={"file": "training plan"},
        ),
    log:
        f"{RESULTS}/logs/report_plan.log",
    benchmark:
        f"{RESULTS}/benchmarks/report_plan.tsv"
    params:
        config=config,
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/report_plan.py"
