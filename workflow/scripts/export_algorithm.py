"""Rule export_algorithm: the leaderboard's best run (the edition's ranking) as a SELMA3D algorithm build folder."""

from selma3d.core.logs import start_rule

start_rule(snakemake)

import logging  # noqa: E402

from pathlib import Path  # noqa: E402

import pandas as pd  # noqa: E402

from selma3d.evaluation.submission import best_run  # noqa: E402
from selma3d.inference.export import export_algorithm  # noqa: E402

p = snakemake.params
best = best_run(pd.read_csv(snakemake.input.cases, dtype={"budget": str}), p.edition)
logging.getLogger("export_algorithm").info("best run under the %s ranking: %s (final rank %s of %d runs)",
                                           best["protocol"], best["run_id"], best["final_rank"], best["runs_ranked"])
run_dir = next(Path(m).parent for m in snakemake.input.models if Path(m).parent.as_posix().endswith(best["run_id"]))
export_algorithm(run_dir, p.edition, snakemake.output.build, dict(p.settings),
                 leaderboard=snakemake.input.leaderboard, base_image=p.base_image or None,
                 allow_dirty=p.allow_dirty, extra={"selection": best})
