# SELMA3D SSL pipeline: data -> preprocess -> SSL pretraining -> finetuning -> inference ->
# evaluation -> leaderboard and figures. See README.md; config keys in src/selma3d/config.schema.yaml.
import sys

from snakemake.utils import min_version

min_version("9.0")

# The library in src/ (installed or not) resolves the config and reads dataset descriptions.
sys.path.insert(0, f"{workflow.basedir}/src")

from selma3d.config import workflow_config
from selma3d.core.checkout import use_checkout

# Input functions and rule scripts (child processes) use the library beside this Snakefile.
use_checkout(f"{workflow.basedir}/src")


report: "workflow/report/workflow.rst"


# The config: the --configfile files (merged in order), or the demo config/config.yaml when none
# is given, then --config values, then the schema's defaults; every strategy's network is
# resolved and checked. `selma3d config show` prints the same (selma3d.config).
_resolved = workflow_config(
    config,
    workflow.overwrite_configfiles,
    workflow.basedir,
    replace=workflow.config_settings.replace_workflow_config,
)
config.clear()
config.update(_resolved)


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/preprocess.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/weights.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/infer.smk"
include: "workflow/rules/segment.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/submission.smk"


rule all:
    input:
        get_final_output(),
    default_target: True
