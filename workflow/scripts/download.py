"""Rule download: fetch or link a manifest's files, verify SHA-256, write the local manifest."""

import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from selma3d.runtime import setup_logging  # noqa: E402

setup_logging()

from pathlib import Path  # noqa: E402

from selma3d.download import download_manifest  # noqa: E402

download_manifest(snakemake.input.manifest, Path(snakemake.output.manifest).parent,
                  workers=snakemake.params.workers)
