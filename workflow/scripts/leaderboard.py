"""Rule leaderboard: aggregate every run's per-case metrics into the paper's tables."""

import sys
from pathlib import Path

sys.stderr = open(snakemake.log[0], "w", buffering=1)
sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))  # the library, installed or not

from selma3d.core.logs import setup_logging  # noqa: E402

setup_logging()

from selma3d.evaluation.leaderboard import collect_eval_tables, write_leaderboard  # noqa: E402

cases = collect_eval_tables(snakemake.input.tables)
write_leaderboard(cases, snakemake.output)
