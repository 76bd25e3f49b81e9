"""Rule leaderboard: aggregate every run's per-case metrics into the paper's tables."""

import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from selma3d.runtime import setup_logging  # noqa: E402

setup_logging()

from selma3d.leaderboard import collect_eval_tables, write_leaderboard  # noqa: E402

cases = collect_eval_tables(snakemake.input.tables, snakemake.params.results)
write_leaderboard(cases, snakemake.output)
