"""Rule leaderboard: aggregate every run's per-case metrics into the paper's tables."""

from selma3d.core.logs import start_rule

start_rule(snakemake)

from selma3d.evaluation.leaderboard import collect_eval_tables, write_leaderboard  # noqa: E402

cases = collect_eval_tables(snakemake.input.tables)
write_leaderboard(cases, snakemake.output)
