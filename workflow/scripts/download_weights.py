"""Rule download_weights: fetch a pretrained checkpoint by url and verify its SHA-256."""

from selma3d.core.logs import start_rule

start_rule(snakemake)

from selma3d.data.download import fetch_file  # noqa: E402

entry = snakemake.params.entry
fetch_file(entry["url"], snakemake.output.checkpoint, entry.get("sha256"), size=entry.get("size"), progress=False)
