# Challenge submission: the leaderboard's best run under the edition's ranking, exported as a
# SELMA3D algorithm build folder (Dockerfile, entry point, model, manifest) and checked locally
# without Docker against the infer rule's predictions. Not part of `all`: `snakemake submission`.

SUBMISSION = config["submission"]
SUBMISSION_OUT = (
    SUBMISSION["out"]
    or f"{RESULTS}/submission/selma3d{SUBMISSION['edition']}-algorithm"
)


localrules:
    submission,


rule export_algorithm:
    input:
        cases=f"{RESULTS}/leaderboard/cases.csv",
        leaderboard=f"{RESULTS}/leaderboard/leaderboard.csv",
        models=[f"{run_dir('finetune', *r)}/model.pt" for r in run_ids()],
    output:
        build=directory(SUBMISSION_OUT),
    log:
        f"{RESULTS}/logs/submission/export_algorithm.log",
    benchmark:
        f"{RESULTS}/benchmarks/submission/export_algorithm.tsv"
    params:
        edition=SUBMISSION["edition"],
        settings=config["infer"],
        base_image=SUBMISSION["base_image"],
        allow_dirty=SUBMISSION["allow_dirty"],
    conda:
        "../../envs/torch.yaml"
    script:
        "../scripts/export_algorithm.py"


rule check_algorithm:
    input:
        build=SUBMISSION_OUT,
        manifest=manifest_path(),
        predictions=[run_dir("predictions", *r) for r in run_ids()],
    output:
        report=f"{RESULTS}/submission/check.tsv",
    log:
        f"{RESULTS}/logs/submission/check_algorithm.log",
    benchmark:
        f"{RESULTS}/benchmarks/submission/check_algorithm.tsv"
    params:
        cases=SUBMISSION["check_cases"],
        timeout=SUBMISSION["timeout"],
    resources:
        **gpu_resources("infer"),
    conda:
        "../../envs/torch.yaml"
    script:
        "../scripts/check_algorithm.py"


rule submission:
    input:
        SUBMISSION_OUT,
        f"{RESULTS}/submission/check.tsv",
