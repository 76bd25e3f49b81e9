# Data: synthesize the embedded dataset, or fetch/link what a manifest lists. Both end in
# one local manifest ({results}/data/manifest.csv) that every later rule reads.

if DATASET["source"] == "synthetic":

    rule synthesize:
        output:
            manifest=f"{RESULTS}/data/manifest.csv",
        log:
            f"{RESULTS}/logs/synthesize.log",
        benchmark:
            f"{RESULTS}/benchmarks/synthesize.tsv"
        params:
            synthetic=DATASET["synthetic"],
            seed=config["seed"],
        conda:
            "../../envs/core.yaml"
        script:
            "../scripts/synthesize.py"

else:

    rule download:
        input:
            manifest=DATASET["manifest"],
        output:
            manifest=f"{RESULTS}/data/manifest.csv",
        log:
            f"{RESULTS}/logs/download.log",
        benchmark:
            f"{RESULTS}/benchmarks/download.tsv"
        params:
            workers=DATASET["download_workers"],
        conda:
            "../../envs/core.yaml"
        script:
            "../scripts/download.py"
