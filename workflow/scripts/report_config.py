"""Rule report_config: the effective config and every strategy's network for the report (the
same YAML as `selma3d config show`)."""

from selma3d.core.logs import start_rule

start_rule(snakemake)

from selma3d.reporting.tables import write_config_report  # noqa: E402

write_config_report(snakemake.params.config, snakemake.output.yaml, snakemake.output.html)
