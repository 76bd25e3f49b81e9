"""Rule patchset: one structure's unannotated patch files -> one filtered store plus an index."""

from selma3d.core.logs import start_rule

start_rule(snakemake)

from selma3d.preprocess.patchsets import collect_patch_files, manifest_patch_files  # noqa: E402

p = snakemake.params
files, meta = manifest_patch_files(snakemake.input.manifest, snakemake.wildcards.shard)
collect_patch_files(files, snakemake.output.store, snakemake.output.index, patch_size=p.patch_size,
                    min_foreground=p.min_foreground, intensity_threshold=p.intensity_threshold,
                    background_share=p.background_share, seed=p.seed, meta_rows=meta, workers=p.workers,
                    progress=False)
