"""Rule downsample: canonical zarr -> OME-Zarr pyramid at the target voxel size."""

import sys
from pathlib import Path

sys.stderr = open(snakemake.log[0], "w", buffering=1)
sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))  # the library, installed or not

from selma3d.core.logs import setup_logging  # noqa: E402

setup_logging()

from selma3d.preprocess.pyramid import downsample_volume  # noqa: E402

downsample_volume(snakemake.input.store, snakemake.output.pyramid,
                  target_spacing_um=tuple(snakemake.params.target_spacing_um),
                  levels=snakemake.params.levels, workers=snakemake.params.workers)
