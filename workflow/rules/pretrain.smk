# Self-supervised pretraining, one job per strategy (GPU; pretrain.gpus > 1: DDP via torchrun).


rule pretrain:
    input:
        indexes=patch_indexes,
        stores=patch_stores,
    output:
        weights=f"{RESULTS}/pretrain/{{strategy}}/encoder.pt",
        curve=f"{RESULTS}/pretrain/{{strategy}}/loss.csv",
    log:
        f"{RESULTS}/logs/pretrain/{{strategy}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/pretrain/{{strategy}}.tsv"
    params:
        strategy_config=strategy_block,
        model=config["model"],
        steps=lambda wc: strategy_block(wc).get("steps", config["pretrain"]["steps"]),
        batch_size=config["pretrain"]["batch_size"],
        num_workers=config["pretrain"]["num_workers"],
        log_every=config["pretrain"]["log_every"],
        checkpoint_every=config["pretrain"]["checkpoint_every"],
        checkpoint_dir=lambda wc: f"{RESULTS}/checkpoints/pretrain/{wc.strategy}",
        precision=config["pretrain"]["precision"],
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
