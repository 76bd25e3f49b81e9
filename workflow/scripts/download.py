"""Rule download: fetch or link a manifest's files, verify SHA-256, write the local manifest."""

import sys
from pathlib import Path

sys.stderr = open(snakemake.log[0], "w", buffering=1)
sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))  # the library, installed or not

from selma3d.core.logs import setup_logging  # noqa: E402

setup_logging()

from selma3d.data.download import download_manifest  # noqa: E402

download_manifest(snakemake.input.manifest, Path(snakemake.output.manifest).parent,
                  workers=snakemake.params.workers)
