"""Rules figures, figures_data, figures_pretrain, figures_finetune: draw one rule's figures."""

from selma3d.core.logs import start_rule

start_rule(snakemake)

from selma3d.reporting.figures import make_figures  # noqa: E402

make_figures(snakemake.params.kind, snakemake.input, snakemake.output, dict(snakemake.params.items()))
