"""Rule patchify: cut filtered cubes from one pyramid level into a store plus an index."""

from selma3d.core.logs import start_rule

start_rule(snakemake)

from selma3d.data.manifest import volume_row  # noqa: E402
from selma3d.preprocess.patchify import patchify_volume  # noqa: E402

p = snakemake.params
row = volume_row(snakemake.input.manifest, snakemake.wildcards.volume)
patchify_volume(snakemake.input.pyramid, snakemake.output.store, snakemake.output.index,
                patch_size=p.patch_size, level=p.level, min_foreground=p.min_foreground,
                intensity_threshold=p.intensity_threshold, background_share=p.background_share, seed=p.seed,
                meta={"volume": snakemake.wildcards.volume, "structure": row["structure"],
                      "category": row["category"], "caption": row.get("caption", "")})
