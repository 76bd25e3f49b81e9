# Whole-volume segmentation: a finetuned model applied block-wise to whole brains (GPU).
# Not part of `all`: run `snakemake segment_all` with segment.volumes and segment.runs set.

SEGMENT = config["segment"]


localrules:
    segment_all,


rule segment_volume:
    input:
        model=rules.finetune.output.model,
        volume=lambda wc: SEGMENT["volumes"][wc.volume],
    output:
        prediction=directory(
            f"{RESULTS}/segment/{{strategy}}{{pdata}}/{{mode}}/b{{budget}}_s{{seed}}/{{volume}}.ome.zarr"
        ),
    log:
        f"{RESULTS}/logs/segment/{{strategy}}{{pdata}}/{{mode}}/b{{budget}}_s{{seed}}/{{volume}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/segment/{{strategy}}{{pdata}}/{{mode}}/b{{budget}}_s{{seed}}/{{volume}}.tsv"
    params:
        settings={
            k: v for k, v in SEGMENT.items() if k not in ("volumes", "runs", "structures")
        },
        structure=lambda wc: SEGMENT["structures"].get(wc.volume),
    resources:
        **gpu_resources("infer"),
    conda:
        "../../envs/torch.yaml"
    script:
        "../scripts/segment_volume.py"


rule segment_all:
    input:
        [
            f"{RESULTS}/segment/{run}/{name}.ome.zarr"
            for run in SEGMENT["runs"]
            for name in SEGMENT["volumes"]
        ],
