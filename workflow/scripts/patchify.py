"""Rule patchify: cut filtered cubes from one pyramid level into a store plus an index."""

import sys
from pathlib import Path

sys.stderr = open(snakemake.log[0], "w", buffering=1)
sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))  # the library, installed or not

from selma3d.core.logs import setup_logging  # noqa: E402

setup_logging()

from selma3d.data.manifest import volume_row  # noqa: E402
from selma3d.preprocess.patchify import patchify_volume  # noqa: E402

p = snakemake.params
row = volume_row(snakemake.input.manifest, snakemake.wildcards.volume)
patchify_volume(snakemake.input.pyramid, snakemake.output.store, snakemake.output.index,
                patch_size=p.patch_size, level=p.level, min_foreground=p.min_foreground,
                intensity_threshold=p.intensity_threshold, background_share=p.background_share, seed=p.seed,
                meta={"volume": snakemake.wildcards.volume, "structure": row["structure"],
                      "category": row["category"], "caption": row.get("caption", "")})
