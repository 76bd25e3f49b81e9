"""Rule downsample: one unannotated volume (TIFF series, NIfTI, MHA, OME-Zarr), read straight
from its files -> OME-Zarr pyramid at the target voxel size."""

from selma3d.core.logs import start_rule

start_rule(snakemake)

from selma3d.data.manifest import parse_spacing, volume_row  # noqa: E402
from selma3d.preprocess.pyramid import downsample_volume  # noqa: E402

row = volume_row(snakemake.input.manifest, snakemake.wildcards.volume)
downsample_volume(row["path"], snakemake.output.pyramid, target_spacing_um=tuple(snakemake.params.target_spacing_um),
                  spacing=parse_spacing(row["spacing_um"]), levels=snakemake.params.levels,
                  workers=snakemake.params.workers)
