"""Rule evaluate: per-case metrics of one run's predictions under one protocol."""

import sys
from pathlib import Path

sys.stderr = open(snakemake.log[0], "w", buffering=1)
sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))  # the library, installed or not

from selma3d.core.logs import setup_logging  # noqa: E402

setup_logging()

from selma3d.evaluation.evaluate import evaluate_manifest_split  # noqa: E402

evaluate_manifest_split(snakemake.input.predictions, snakemake.input.manifest, snakemake.wildcards.protocol,
                        snakemake.output.cases, workers=snakemake.params.workers,
                        ignore_label=snakemake.params.ignore_label,
                        background_values=tuple(snakemake.params.background_values))
