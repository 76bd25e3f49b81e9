"""Rule infer: segment every test patch with a finetuned model (or the threshold baseline); NIfTI masks out."""

from selma3d.core.logs import start_rule

start_rule(snakemake)

from selma3d.inference.patches import infer_test_split  # noqa: E402
from selma3d.training.runtime import configure_threads  # noqa: E402

configure_threads()
s = snakemake.params.settings
infer_test_split(snakemake.input.model, snakemake.input.manifest, snakemake.output.predictions,
                 overlap=s["overlap"], threshold=s["threshold"], sw_batch_size=s["sw_batch_size"],
                 blend=s["blend"], min_component_size=s["min_component_size"],
                 mirror_axes=tuple(s["mirror_axes"]))
