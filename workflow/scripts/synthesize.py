"""Rule synthesize: write the embedded synthetic light-sheet dataset and its manifest."""

from pathlib import Path

from selma3d.core.logs import start_rule

start_rule(snakemake)

from selma3d.data.synth import synthesize_dataset  # noqa: E402

out = Path(snakemake.output.manifest)
path = synthesize_dataset(out.parent, snakemake.params.synthetic, seed=snakemake.params.seed, progress=False)
assert Path(path).resolve() == out.resolve(), f"synthesizer wrote {path}, the rule expects {out}"
