"""Rules figures, figures_data, figures_pretrain, figures_finetune: draw one rule's figures."""

import sys
from pathlib import Path

sys.stderr = open(snakemake.log[0], "w", buffering=1)
sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))  # the library, installed or not

from selma3d.core.logs import setup_logging  # noqa: E402

setup_logging()

from selma3d.reporting.figures import make_figures  # noqa: E402

make_figures(snakemake.params.kind, snakemake.input, snakemake.output, dict(snakemake.params.items()))
