"""Rule check_algorithm: the exported algorithm run locally (no Docker) on test cases, checked
against the infer rule's predictions of the same run."""

from selma3d.core.logs import start_rule

start_rule(snakemake)

import json  # noqa: E402
import logging  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

from selma3d.inference.check import check_algorithm, format_checks, stage_manifest_images, write_report  # noqa: E402
from selma3d.training.runtime import configure_threads  # noqa: E402

configure_threads()
p = snakemake.params
run_id = json.loads((Path(snakemake.input.build) / "manifest.json").read_text())["run"]["id"]
predictions = next(d for d in snakemake.input.predictions if Path(d).as_posix().endswith(run_id))
with tempfile.TemporaryDirectory(prefix="selma3d-submission-") as tmp:
    stage_manifest_images(snakemake.input.manifest, tmp, p.cases)
    checks = check_algorithm(snakemake.input.build, tmp, predictions=predictions,
                             timeout=p.timeout)
logging.getLogger("check_algorithm").info("run %s:\n%s", run_id, format_checks(checks))
failed = [c.case for c in checks if not c.ok]
if failed:
    raise SystemExit(f"check_algorithm: {len(failed)} of {len(checks)} checks failed: {', '.join(failed)} "
                     f"(see {snakemake.log[0]})")
write_report(checks, snakemake.output.report)
