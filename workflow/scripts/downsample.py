"""Rule downsample: canonical zarr -> OME-Zarr pyramid at the target voxel size."""

from selma3d.core.logs import start_rule

start_rule(snakemake)

from selma3d.preprocess.pyramid import downsample_volume  # noqa: E402

downsample_volume(snakemake.input.store, snakemake.output.pyramid,
                  target_spacing_um=tuple(snakemake.params.target_spacing_um),
                  levels=snakemake.params.levels, workers=snakemake.params.workers)
