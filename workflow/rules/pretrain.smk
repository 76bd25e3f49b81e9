# Self-supervised pretraining, one job per strategy and pretraining data variant (GPU;
# pretrain.gpus > 1: DDP via torchrun). A variant other than every patch (pdata "") reads the
# nested subset pretrain_data draws (pretrain.data_fractions x data_sources).


rule pretrain_data:
    input:
        indexes=patch_indexes,
    output:
        index=f"{RESULTS}/pretrain_data/patches{{pdata}}.csv",
    log:
        f"{RESULTS}/logs/pretrain_data/patches{{pdata}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/pretrain_data/patches{{pdata}}.tsv"
    params:
        subset=lambda wc: runplan.data_subset(config, wc.pdata),
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/pretrain_data.py"


rule pretrain:
    input:
        indexes=pretrain_input_indexes,
        stores=patch_stores,
        plan=PLAN if config["pretrain"]["normalize"] == "plan" else [],
    output:
        weights=f"{RESULTS}/pretrain/{{strategy}}{{pdata}}/encoder.pt",
        curve=f"{RESULTS}/pretrain/{{strategy}}{{pdata}}/loss.csv",
    log:
        f"{RESULTS}/logs/pretrain/{{strategy}}{{pdata}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/pretrain/{{strategy}}{{pdata}}.tsv"
    params:
        strategy_config=strategy_block,
        model=config["model"],
        steps=pretrain_run_steps,
        batch_size=config["pretrain"]["batch_size"],
        num_workers=config["pretrain"]["num_workers"],
        log_every=config["pretrain"]["log_every"],
        checkpoint_every=config["pretrain"]["checkpoint_every"],
        checkpoint_dir=lambda wc: f"{RESULTS}/checkpoints/pretrain/{wc.strategy}{wc.pdata}",
        precision=config["pretrain"]["precision"],
        normalize=config["pretrain"]["normalize"],
        gpus=config["pretrain"]["gpus"],
        speed={
            k: config["pretrain"][k]
            for k in ("shards", "channels_last", "compile", "pin_memory")
        },
        seed=config["seed"],
        dataset_meta={"stain": DATASET["stain"], "organism": DATASET["organism"]},
    resources:
        # gpus > 1: one SLURM task holding every GPU; torchrun starts one process per GPU
        **{**gpu_resources("train"), "gpu": config["pretrain"]["gpus"], "tasks_per_gpu": 0},
    conda:
        "../../envs/torch.yaml"
    script:
        "../scripts/pretrain.py"
