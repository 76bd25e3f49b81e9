"""Rule tables: the paper's tables 4-6 (Markdown, CSV, LaTeX, HTML) from the per-case table."""

from selma3d.core.logs import start_rule

start_rule(snakemake)

from selma3d.reporting.tables import write_tables  # noqa: E402

write_tables(snakemake.input.cases, snakemake.params.protocols, snakemake.output)
