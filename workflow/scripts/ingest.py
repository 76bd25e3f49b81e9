"""Rule ingest: one unannotated volume (TIFF series, NIfTI, MHA, OME-Zarr) -> canonical zarr."""

import sys
from pathlib import Path

sys.stderr = open(snakemake.log[0], "w", buffering=1)
sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))  # the library, installed or not

from selma3d.core.logs import setup_logging  # noqa: E402

setup_logging()

from selma3d.preprocess.ingest import ingest_volume  # noqa: E402
from selma3d.data.manifest import parse_spacing, volume_row  # noqa: E402

row = volume_row(snakemake.input.manifest, snakemake.wildcards.volume)
ingest_volume(row["path"], snakemake.output.store, spacing=parse_spacing(row["spacing_um"]),
              workers=snakemake.params.workers)
