"""Rule report_plan: the training plan (dataset fingerprint of the train split) for the report."""

from selma3d.core.logs import start_rule

start_rule(snakemake)

from selma3d.reporting.tables import write_plan_report  # noqa: E402

write_plan_report(snakemake.input.plan, snakemake.params.config, snakemake.output.html)
