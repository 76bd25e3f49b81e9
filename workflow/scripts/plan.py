"""Rule plan: dataset fingerprint of the train split and the nnU-Net-like training plan."""

from selma3d.core.logs import start_rule

start_rule(snakemake)

from selma3d.training.plan import plan_dataset  # noqa: E402

p = snakemake.params
plan_dataset(snakemake.input.manifest, snakemake.output.plan, snakemake.output.fingerprint, p.settings,
             ignore_label=p.ignore_label, background_values=tuple(p.background_values), seed=p.seed)
