# SELMA3D SSL pipeline: data -> preprocess -> SSL pretraining -> finetuning -> inference ->
# evaluation -> leaderboard and figures. See README.md; config keys in workflow/schemas/.
import sys

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


validate(config, "workflow/schemas/config.schema.yaml", set_default=True)

# Input functions and rule scripts use the library beside this Snakefile, installed or not.
sys.path.insert(0, f"{workflow.basedir}/src")
from selma3d.core.checkout import use_checkout  # noqa: E402

use_checkout(f"{workflow.basedir}/src")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/preprocess.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/infer.smk"
include: "workflow/rules/segment.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        get_final_output(),
    default_target: True
