"""Rule scaling: test Dice vs unannotated patches seen in pretraining (figure and table)."""

from selma3d.core.logs import start_rule

start_rule(snakemake)

from selma3d.reporting.scaling import write_scaling  # noqa: E402

p = snakemake.params
write_scaling(snakemake.input.cases, list(snakemake.input.subsets), snakemake.output, protocol=p.protocol,
              budget=p.budget, runs=dict(p.runs))
