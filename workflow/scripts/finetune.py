"""Rule finetune: train the segmentation net on a label budget, from scratch or pretrained."""

import sys
from pathlib import Path

sys.stderr = open(snakemake.log[0], "w", buffering=1)
sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))  # the library, installed or not

from selma3d.core.logs import setup_logging  # noqa: E402

setup_logging()

from selma3d.training.finetune import finetune  # noqa: E402
from selma3d.training.runtime import configure_threads  # noqa: E402

configure_threads()
w = snakemake.wildcards
summary = finetune(snakemake.input.manifest, snakemake.input.split, snakemake.params.model,
                   snakemake.params.settings, snakemake.output.model, snakemake.output.curve, mode=w.mode,
                   pretrained=snakemake.input.pretrained or None, seed=int(w.seed),
                   scratch_net=snakemake.params.scratch_net or None)
print(f"finetune summary: {summary}", file=sys.stderr)
