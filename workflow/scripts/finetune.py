"""Rule finetune: train the segmentation net on a label budget, from scratch or pretrained."""

import sys

from selma3d.core.logs import start_rule

start_rule(snakemake)

from selma3d.training.finetune import finetune  # noqa: E402
from selma3d.training.runtime import configure_threads  # noqa: E402

configure_threads()
w = snakemake.wildcards
summary = finetune(snakemake.input.manifest, snakemake.input.split, snakemake.params.model,
                   snakemake.params.settings, snakemake.output.model, snakemake.output.curve, mode=w.mode,
                   pretrained=snakemake.input.pretrained or None, seed=int(w.seed),
                   scratch_net=snakemake.params.scratch_net or None)
print(f"finetune summary: {summary}", file=sys.stderr)
