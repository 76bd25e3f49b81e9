"""Rule ingest: one unannotated volume (TIFF series, NIfTI, MHA, OME-Zarr) -> canonical zarr."""

from selma3d.core.logs import start_rule

start_rule(snakemake)

from selma3d.preprocess.ingest import ingest_volume  # noqa: E402
from selma3d.data.manifest import parse_spacing, volume_row  # noqa: E402

row = volume_row(snakemake.input.manifest, snakemake.wildcards.volume)
ingest_volume(row["path"], snakemake.output.store, spacing=parse_spacing(row["spacing_um"]),
              workers=snakemake.params.workers)
