"""Rule import_weights: convert a verified published checkpoint into the pipeline's encoder weights."""

import json

from selma3d.core.logs import start_rule

start_rule(snakemake)

from selma3d.core.atomic import atomic_path  # noqa: E402
from selma3d.nets.imports import import_weights  # noqa: E402

p = snakemake.params
# the checkpoint's SHA-256 was verified by download_weights: its pickled extras may load
report = import_weights(snakemake.input.checkpoint, p.format, snakemake.output.weights, net=p.net, branch=p.branch,
                        min_share=p.min_share, trust_pickle=True)
with atomic_path(snakemake.output.report) as tmp:
    tmp.write_text(json.dumps(report, indent=1))
