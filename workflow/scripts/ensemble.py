"""Rule ensemble: average the seeds' finetuned models into one model, then calibrate its
post-processing on validation like a single model's."""

import sys

from selma3d.core.logs import start_rule

start_rule(snakemake)

from selma3d.training.ensemble import combine  # noqa: E402
from selma3d.training.runtime import configure_threads  # noqa: E402

configure_threads()
p = snakemake.params
summary = combine(list(snakemake.input.models), snakemake.output.model)  # members named by their folders
if p.calibration["postprocess"]["select_on_validation"]:
    from selma3d.inference.calibrate import calibrate

    summary["postprocess"] = calibrate(snakemake.output.model, snakemake.input.manifest, p.calibration)
print(f"ensemble summary: {summary}", file=sys.stderr)
