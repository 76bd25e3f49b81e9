# Published pretrained weights (config block `pretrained`; known sources in
# config/manifests/pretrained_weights.yaml): download by url + SHA-256, convert into this pipeline's
# encoder weights. Finetune strategy ext_<source> starts from them; scratch_ext_<source>
# trains the same network without them (its table 6 baseline).


rule download_weights:
    output:
        checkpoint=f"{RESULTS}/weights/{{source}}/checkpoint",
    log:
        f"{RESULTS}/logs/weights/{{source}}.download.log",
    benchmark:
        f"{RESULTS}/benchmarks/weights/{{source}}.download.tsv"
    params:
        entry=lambda wc: runplan.external_entry(wc.source, config),
    wildcard_constraints:
        source=r"[a-z0-9_]+",
    conda:
        "../../envs/core.yaml"
    script:
        "../scripts/download_weights.py"


rule import_weights:
    input:
        checkpoint=rules.download_weights.output.checkpoint,
    output:
        weights=f"{RESULTS}/weights/{{source}}/encoder.pt",
        report=f"{RESULTS}/weights/{{source}}/import_report.json",
    log:
        f"{RESULTS}/logs/weights/{{source}}.import.log",
    benchmark:
        f"{RESULTS}/benchmarks/weights/{{source}}.import.tsv"
    params:
        format=lambda wc: runplan.external_entry(wc.source, config)["format"],
        branch=lambda wc: runplan.external_entry(wc.source, config).get("branch"),
        net=lambda wc: runplan.finetune_network(runplan.EXTERNAL_PREFIX + wc.source, config),
        min_share=config["finetune"]["min_loaded_share"],
    wildcard_constraints:
        source=r"[a-z0-9_]+",
    conda:
        "../../envs/torch.yaml"
    script:
        "../scripts/import_weights.py"
