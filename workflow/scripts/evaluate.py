"""Rule evaluate: per-case metrics of one run's predictions under one protocol."""

from selma3d.core.logs import start_rule

start_rule(snakemake)

from selma3d.evaluation.evaluate import evaluate_manifest_split  # noqa: E402

evaluate_manifest_split(snakemake.input.predictions, snakemake.input.manifest, snakemake.wildcards.protocol,
                        snakemake.output.cases, workers=snakemake.params.workers,
                        ignore_label=snakemake.params.ignore_label,
                        background_values=tuple(snakemake.params.background_values))
