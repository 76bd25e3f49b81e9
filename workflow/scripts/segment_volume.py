"""Rule segment_volume: block-wise sliding-window segmentation of one whole volume to OME-Zarr."""

import sys
from pathlib import Path

sys.stderr = open(snakemake.log[0], "w", buffering=1)
sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))  # the library, installed or not

from selma3d.core.logs import setup_logging  # noqa: E402

setup_logging()

from selma3d.inference.volume import predict_from_checkpoint  # noqa: E402
from selma3d.training.runtime import configure_threads  # noqa: E402

configure_threads()
s = dict(snakemake.params.settings)  # the segment block, schema defaults filled in
predict_from_checkpoint(snakemake.input.model, snakemake.input.volume, snakemake.output.prediction,
                        block=s["block"], overlap=s["overlap"], batch=s["batch"], probability=s["probability"],
                        prob_dtype=s["prob_dtype"], threshold=s["threshold"], levels=s["levels"],
                        precision=s["precision"])
