# Label budgets drawn per seed, then supervised finetuning per strategy x mode x budget x seed.


rule split:
    input:
        manifest=manifest_path(),
    output:
        split=f"{RESULTS}/splits/b{{budget}}_s{{seed}}.csv",
    log:
        f"{RESULTS}/logs/split/b{{budget}}_s{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/split/b{{budget}}_s{{seed}}.tsv"
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/split.py"


rule finetune:
    input:
        manifest=manifest_path(),
        split=f"{RESULTS}/splits/b{{budget}}_s{{seed}}.csv",
        pretrained=pretrained_weights,
    output:
        model=f"{RESULTS}/finetune/{{strategy}}/{{mode}}/b{{budget}}_s{{seed}}/model.pt",
        curve=f"{RESULTS}/finetune/{{strategy}}/{{mode}}/b{{budget}}_s{{seed}}/train_log.csv",
    log:
        f"{RESULTS}/logs/finetune/{{strategy}}/{{mode}}/b{{budget}}_s{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/finetune/{{strategy}}/{{mode}}/b{{budget}}_s{{seed}}.tsv"
    params:
        model=config["model"],
        scratch_net=scratch_net,
        settings={
            k: v
            for k, v in config["finetune"].items()
            if k not in ("strategies", "modes", "budgets", "seeds")
        },
    resources:
        **gpu_resources("train"),
    conda:
        "../../envs/torch.yaml"
    script:
        "../scripts/finetune.py"
