"""Rule downsample: canonical zarr -> OME-Zarr pyramid at the target voxel size."""

import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from selma3d.runtime import setup_logging  # noqa: E402

setup_logging()

from selma3d.downsample import downsample_volume  # noqa: E402

downsample_volume(snakemake.input.store, snakemake.output.pyramid,
                  target_spacing_um=tuple(snakemake.params.target_spacing_um),
                  levels=snakemake.params.levels, workers=snakemake.params.workers)
