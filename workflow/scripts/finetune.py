"""Rule finetune: train the segmentation net on a label budget, from scratch or pretrained, then
calibrate its post-processing on validation; strategy threshold fits the classical baseline."""

import sys

from selma3d.core.logs import start_rule

start_rule(snakemake)

from selma3d.training.runplan import THRESHOLD  # noqa: E402

w, p = snakemake.wildcards, snakemake.params
if w.strategy == THRESHOLD:
    from selma3d.training.classical import fit_budget

    summary = fit_budget(snakemake.input.split, snakemake.input.manifest, snakemake.output.model,
                         snakemake.output.curve, ignore_label=p.settings["ignore_label"],
                         background_values=tuple(p.settings["background_values"]))
else:
    from selma3d.inference.calibrate import calibrate
    from selma3d.training.finetune import finetune
    from selma3d.training.runtime import configure_threads

    configure_threads()
    summary = finetune(snakemake.input.manifest, snakemake.input.split, p.model, p.settings, snakemake.output.model,
                       snakemake.output.curve, mode=w.mode, pretrained=snakemake.input.pretrained or None,
                       seed=int(w.seed), scratch_net=p.scratch_net or None, plan=snakemake.input.plan or None)
    if p.calibration["postprocess"]["select_on_validation"]:
        summary["postprocess"] = calibrate(snakemake.output.model, snakemake.input.manifest, p.calibration)
print(f"finetune summary: {summary}", file=sys.stderr)
