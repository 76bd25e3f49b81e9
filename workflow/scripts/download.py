"""Rule download: fetch or link a manifest's files, verify SHA-256, write the local manifest."""

from pathlib import Path

from selma3d.core.logs import start_rule

start_rule(snakemake)

from selma3d.data.download import download_manifest  # noqa: E402

download_manifest(snakemake.input.manifest, Path(snakemake.output.manifest).parent,
                  workers=snakemake.params.workers)
