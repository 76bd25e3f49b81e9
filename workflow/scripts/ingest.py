"""Rule ingest: one unannotated volume (TIFF series, NIfTI, MHA, OME-Zarr) -> canonical zarr."""

import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from selma3d.runtime import setup_logging  # noqa: E402

setup_logging()

from selma3d.ingest import ingest_volume  # noqa: E402
from selma3d.manifest import parse_spacing, volume_row  # noqa: E402

row = volume_row(snakemake.input.manifest, snakemake.wildcards.volume)
ingest_volume(row["path"], snakemake.output.store, spacing=parse_spacing(row["spacing_um"]),
              workers=snakemake.params.workers)
