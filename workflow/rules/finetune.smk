# Label budgets drawn per seed, the training plan (dataset fingerprint), then supervised
# finetuning per strategy x mode x budget x seed (strategy threshold: the classical baseline),
# and, with finetune.ensemble, the ensemble of each network run's seeds.


rule split:
    input:
        manifest=manifest_path(),
    output:
        split=f"{RESULTS}/splits/b{{budget}}_s{{seed}}.csv",
    wildcard_constraints:
        seed=r"\d+",
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
    wildcard_constraints:
        seed=r"\d+",
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


rule ensemble:
    input:
        manifest=manifest_path(),
        models=ensemble_members,
    output:
        model=f"{RESULTS}/finetune/{{strategy}}{{pdata}}/{{mode}}/b{{budget}}_sens/model.pt",
    log:
        f"{RESULTS}/logs/finetune/{{strategy}}{{pdata}}/{{mode}}/b{{budget}}_sens.log",
    benchmark:
        f"{RESULTS}/benchmarks/finetune/{{strategy}}{{pdata}}/{{mode}}/b{{budget}}_sens.tsv"
    params:
        # calibrated on validation exactly as the finetune rule calibrates a single model
        calibration={
            k: config["infer"][k]
            for k in ("overlap", "sw_batch_size", "blend", "mirror_axes", "postprocess")
        },
    resources:
        **gpu_resources("infer"),
    conda:
        "../../envs/torch.yaml"
    script:
        "../scripts/ensemble.py"
