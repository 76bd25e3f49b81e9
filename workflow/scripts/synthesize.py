"""Rule synthesize: write the embedded synthetic light-sheet dataset and its manifest."""

import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from selma3d.runtime import setup_logging  # noqa: E402

setup_logging()

from pathlib import Path  # noqa: E402

from selma3d.synth import synthesize_dataset  # noqa: E402

out = Path(snakemake.output.manifest)
synthesize_dataset(out.parent, snakemake.params.synthetic, seed=snakemake.params.seed, manifest_name=out.name)
