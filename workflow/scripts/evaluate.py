"""Rule evaluate: per-case metrics of one run's predictions under one protocol."""

import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from selma3d.runtime import setup_logging  # noqa: E402

setup_logging()

from selma3d.evaluate import evaluate_manifest_split  # noqa: E402

evaluate_manifest_split(snakemake.input.predictions, snakemake.input.manifest, snakemake.wildcards.protocol,
                        snakemake.output.cases, workers=snakemake.params.workers,
                        ignore_label=snakemake.params.ignore_label)
