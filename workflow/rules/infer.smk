# Sliding-window inference over every test patch (GPU).


rule infer:
    input:
        manifest=manifest_path(),
        model=rules.finetune.output.model,
    output:
        predictions=directory(
            f"{RESULTS}/predictions/{{strategy}}{{pdata}}/{{mode}}/b{{budget}}_s{{seed}}"
        ),
    log:
        f"{RESULTS}/logs/infer/{{strategy}}{{pdata}}/{{mode}}/b{{budget}}_s{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/infer/{{strategy}}{{pdata}}/{{mode}}/b{{budget}}_s{{seed}}.tsv"
    params:
        settings=config["infer"],
    resources:
        **gpu_resources("infer"),
    conda:
        "../../envs/torch.yaml"
    script:
        "../scripts/infer.py"
