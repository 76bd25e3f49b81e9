"""Rule segment_volume: block-wise sliding-window segmentation of one whole volume to OME-Zarr."""

from selma3d.core.logs import start_rule

start_rule(snakemake)

from selma3d.inference.volume import predict_from_checkpoint  # noqa: E402
from selma3d.training.runtime import configure_threads  # noqa: E402

configure_threads()
s = dict(snakemake.params.settings)  # the segment block, schema defaults filled in
predict_from_checkpoint(snakemake.input.model, snakemake.input.volume, snakemake.output.prediction,
                        block=s["block"], overlap=s["overlap"], batch=s["batch"], probability=s["probability"],
                        prob_dtype=s["prob_dtype"], threshold=s["threshold"], min_size=s["min_component_size"],
                        use_stored_postprocess=s["use_stored_postprocess"], levels=s["levels"],
                        precision=s["precision"], structure=snakemake.params.structure)
