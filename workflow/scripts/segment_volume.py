"""Rule segment_volume: block-wise sliding-window segmentation of one whole volume to OME-Zarr."""

from selma3d.core.logs import start_rule

start_rule(snakemake)

from selma3d.inference.volume import predict_from_checkpoint  # noqa: E402
from selma3d.training.runtime import configure_threads  # noqa: E402

configure_threads()
s = dict(snakemake.params.settings)
predict_from_checkpoint(snakemake.input.model, snakemake.input.volume, snakemake.output.prediction,
                        block=s.get("block", 256), overlap=s.get("overlap", 0.25), batch=s.get("batch", 8),
                        probability=s.get("probability", False), prob_dtype=s.get("prob_dtype", "float16"),
                        threshold=s.get("threshold", 0.5), levels=s.get("levels", 2),
                        precision=s.get("precision", "auto"))
