"""Rule figures: qualitative overlays and label-efficiency curves."""

import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from selma3d.runtime import setup_logging  # noqa: E402

setup_logging()

from selma3d.figures import make_figures  # noqa: E402

make_figures(snakemake.input.cases, snakemake.input.manifest, snakemake.params.results, snakemake.output)
