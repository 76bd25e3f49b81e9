# Figures: qualitative overlays and label efficiency.


rule figures:
    input:
        cases=f"{RESULTS}/leaderboard/cases.csv",
        manifest=manifest_path(),
        predictions=[run_dir("predictions", *r) for r in run_ids()],
    output:
        qualitative=report(
            f"{RESULTS}/figures/qualitative.png",
            caption="../report/qualitative.rst",
            category="Evaluation",
        ),
        budget=report(
            f"{RESULTS}/figures/dice_vs_budget.png",
            caption="../report/dice_vs_budget.rst",
            category="Evaluation",
        ),
    log:
        f"{RESULTS}/logs/figures.log",
    benchmark:
        f"{RESULTS}/benchmarks/figures.tsv"
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/figures.py"
