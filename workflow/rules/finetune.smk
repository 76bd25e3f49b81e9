# Label budgets drawn per seed, the training plan (dataset fingerprint), then supervised
# finetuning per strategy x mode x budget x seed (strategy threshold: the classical baseline).


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


rule plan:
    input:
        manifest=manifest_path(),
    output:
        plan=PLAN,
        fingerprint=f"{RESULTS}/plan/fingerprint.json",
    log:
        f"{RESULTS}/logs/plan.log",
    benchmark:
        f"{RESULTS}/benchmarks/plan.tsv"
    params:
        settings=plan_settings(),
        ignore_label=config["finetune"]["ignore_label"],
        background_values=config["finetune"]["background_values"],
        seed=config["seed"],
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/plan.py"


rule finetune:
    input:
        manifest=manifest_path(),
        split=rules.split.output.split,
        pretrained=pretrained_weights,
        plan=finetune_plan,
    output:
        model=f"{RESULTS}/finetune/{{strategy}}{{pdata}}/{{mode}}/b{{budget}}_s{{seed}}/model.pt",
        curve=f"{RESULTS}/finetune/{{strategy}}{{pdata}}/{{mode}}/b{{budget}}_s{{seed}}/train_log.csv",
    log:
        f"{RESULTS}/logs/finetune/{{strategy}}{{pdata}}/{{mode}}/b{{budget}}_s{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/finetune/{{strategy}}{{pdata}}/{{mode}}/b{{budget}}_s{{seed}}.tsv"
    params:
        model=config["model"],
        scratch_net=scratch_net,
        settings={
            k: v
            for k, v in config["finetune"].items()
            if k not in ("strategies", "modes", "budgets", "seeds")
        },
        # how infer predicts: the post-processing is calibrated on validation after training
        calibration={
            k: config["infer"][k]
            for k in ("overlap", "sw_batch_size", "blend", "mirror_axes", "postprocess")
        },
    resources:
        **gpu_resources("train"),
    conda:
        "../../envs/torch.yaml"
    script:
        "../scripts/finetune.py"
