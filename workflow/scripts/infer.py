"""Rule infer: segment every test patch with a finetuned model; NIfTI masks out."""

import sys
from pathlib import Path

sys.stderr = open(snakemake.log[0], "w", buffering=1)
sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))  # the library, installed or not

from selma3d.core.logs import setup_logging  # noqa: E402

setup_logging()

from selma3d.inference.patches import infer_test_split  # noqa: E402
from selma3d.training.runtime import configure_threads  # noqa: E402

configure_threads()
s = snakemake.params.settings
infer_test_split(snakemake.input.model, snakemake.input.manifest, snakemake.output.predictions,
                 overlap=s["overlap"], threshold=s["threshold"], sw_batch_size=s["sw_batch_size"],
                 blend=s["blend"], min_component_size=s["min_component_size"])
