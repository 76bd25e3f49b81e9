"""Rule report_config: the effective config and every strategy's network for the report
(the same YAML as `selma3d config show`)."""

import sys
from pathlib import Path

sys.stderr = open(snakemake.log[0], "w", buffering=1)
sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))  # the library, installed or not

from selma3d.core.logs import setup_logging  # noqa: E402

setup_logging()

from selma3d.reporting.tables import write_config_report  # noqa: E402

write_config_report(snakemake.params.config, snakemake.output.yaml, snakemake.output.html)
