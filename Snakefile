# SELMA3D SSL pipeline: data -> preprocess -> SSL pretraining -> finetuning -> inference ->
# evaluation -> leaderboard and figures. See README.md; config keys in workflow/schemas/.
import os
import sys

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


validate(config, "workflow/schemas/config.schema.yaml", set_default=True)

# Input functions and rule scripts (child processes, also under --sdm conda and on SLURM nodes,
# which re-read this file) use the library beside this Snakefile, installed or not.
sys.path.insert(0, f"{workflow.basedir}/src")
_src = f"{workflow.basedir}/src"
os.environ["PYTHONPATH"] = os.pathsep.join(
    [_src] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != _src]
)


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/preprocess.smk"
include: "workflow/rules/pretrain.smk"
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
