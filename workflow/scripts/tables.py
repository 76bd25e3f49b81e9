"""Rule tables: the paper's tables 4-6 (Markdown, CSV, LaTeX, HTML) from the per-case table."""

import sys
from pathlib import Path

sys.stderr = open(snakemake.log[0], "w", buffering=1)
sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))  # the library, installed or not

from selma3d.core.logs import setup_logging  # noqa: E402

setup_logging()

from selma3d.reporting.tables import write_tables  # noqa: E402

write_tables(snakemake.input.cases, snakemake.params.protocols, snakemake.output)
