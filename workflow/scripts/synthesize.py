"""Rule synthesize: write the embedded synthetic light-sheet dataset and its manifest."""

import sys
from pathlib import Path

sys.stderr = open(snakemake.log[0], "w", buffering=1)
sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))  # the library, installed or not

from selma3d.core.logs import setup_logging  # noqa: E402

setup_logging()

from selma3d.data.synth import synthesize_dataset  # noqa: E402

out = Path(snakemake.output.manifest)
path = synthesize_dataset(out.parent, snakemake.params.synthetic, seed=snakemake.params.seed, progress=False)
assert Path(path).resolve() == out.resolve(), f"synthesizer wrote {path}, the rule expects {out}"
