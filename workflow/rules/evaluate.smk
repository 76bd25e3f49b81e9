# Per-case metrics under each official protocol, then the leaderboard tables.


rule evaluate:
    input:
        manifest=manifest_path(),
        predictions=rules.infer.output.predictions,
    output:
        cases=f"{RESULTS}/eval/{{protocol}}/{{strategy}}{{pdata}}/{{mode}}/b{{budget}}_s{{seed}}.csv",
    log:
        f"{RESULTS}/logs/eval/{{protocol}}/{{strategy}}{{pdata}}/{{mode}}/b{{budget}}_s{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/eval/{{protocol}}/{{strategy}}{{pdata}}/{{mode}}/b{{budget}}_s{{seed}}.tsv"
    params:
        workers=config["evaluate"]["workers"],
        ignore_label=config["finetune"]["ignore_label"],
        background_values=config["finetune"]["background_values"],
    threads: config["evaluate"]["workers"]
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/evaluate.py"


rule leaderboard:
    input:
        tables=[t for p in config["evaluate"]["protocols"] for t in eval_tables(p)],
    output:
        markdown=f"{RESULTS}/leaderboard/leaderboard.md",
        csv=f"{RESULTS}/leaderboard/leaderboard.csv",
        latex=f"{RESULTS}/leaderboard/leaderboard.tex",
        cases=f"{RESULTS}/leaderboard/cases.csv",
    log:
        f"{RESULTS}/logs/leaderboard.log",
    benchmark:
        f"{RESULTS}/benchmarks/leaderboard.tsv"
    params:
        protocols=config["evaluate"]["protocols"],
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/leaderboard.py"
