"""Rule split: draw the label budget's training cases, stratified by structure."""

import sys

from selma3d.core.logs import start_rule

start_rule(snakemake)

from selma3d.core.atomic import atomic_path  # noqa: E402
from selma3d.data.splits import draw_budget  # noqa: E402
from selma3d.data.manifest import annotated_pairs, read_manifest  # noqa: E402

w = snakemake.wildcards
pairs = annotated_pairs(read_manifest(snakemake.input.manifest), "train")
if pairs.empty:
    raise ValueError(f"{snakemake.input.manifest}: expected annotated image/label rows with split 'train', found none")
chosen = draw_budget(pairs, w.budget, int(w.seed))
with atomic_path(snakemake.output.split) as tmp:
    chosen.to_csv(tmp, index=False)
print(f"budget {w.budget}, seed {w.seed}: {len(chosen)} of {len(pairs)} cases", file=sys.stderr)
