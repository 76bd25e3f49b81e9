# Unannotated data -> patch stores for pretraining. Whole volumes (preprocess.unannotated:
# volumes): the source (TIFF slices read straight from the files) -> OME-Zarr pyramid at the
# target spacing -> patches, one job chain per volume; no full-resolution copy is written.
# Files that already are patches (preprocess.unannotated: patches, e.g. SELMA3D 2026 Task 1):
# one patchset job per structure filters them into one store.

if PATCHSET:

    rule patchset:
        input:
            manifest=manifest_path(),
        output:
            store=directory(f"{RESULTS}/patches/{{shard}}.zarr"),
            index=f"{RESULTS}/patches/{{shard}}.csv",
        log:
            f"{RESULTS}/logs/patchset/{{shard}}.log",
        benchmark:
            f"{RESULTS}/benchmarks/patchset/{{shard}}.tsv"
        params:
            patch_size=config["preprocess"]["patchset_patch_size"],
            min_foreground=config["preprocess"]["min_foreground"],
            intensity_threshold=config["preprocess"]["intensity_threshold"],
            background_share=config["preprocess"]["background_share"],
            workers=config["preprocess"]["workers"],
            seed=config["seed"],
        threads: config["preprocess"]["workers"]
        conda:
            "../../envs/core.yaml"
        script:
            "../scripts/patchset.py"

else:

    rule downsample:
        input:
            manifest=manifest_path(),
        output:
            pyramid=directory(f"{RESULTS}/downsample/{{volume}}.ome.zarr"),
        log:
            f"{RESULTS}/logs/downsample/{{volume}}.log",
        benchmark:
            f"{RESULTS}/benchmarks/downsample/{{volume}}.tsv"
        params:
            target_spacing_um=config["preprocess"]["target_spacing_um"],
            levels=config["preprocess"]["pyramid_levels"],
            workers=config["preprocess"]["workers"],
        threads: config["preprocess"]["workers"]
        conda:
            "../../envs/core.yaml"
        script:
            "../scripts/downsample.py"


    rule patchify:
        input:
            pyramid=rules.downsample.output.pyramid,
            manifest=manifest_path(),
        output:
            store=directory(f"{RESULTS}/patches/{{volume}}.zarr"),
            index=f"{RESULTS}/patches/{{volume}}.csv",
        log:
            f"{RESULTS}/logs/patchify/{{volume}}.log",
        benchmark:
            f"{RESULTS}/benchmarks/patchify/{{volume}}.tsv"
        params:
            patch_size=config["preprocess"]["patch_size"],
            level=config["preprocess"]["level"],
            min_foreground=config["preprocess"]["min_foreground"],
            intensity_threshold=config["preprocess"]["intensity_threshold"],
            background_share=config["preprocess"]["background_share"],
            seed=config["seed"],
        conda:
            "../../envs/core.yaml"
        script:
            "../scripts/patchify.py"
