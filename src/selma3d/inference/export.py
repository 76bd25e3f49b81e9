"""``selma3d export-algorithm``: a finetuned run as a SELMA3D challenge algorithm build folder.

Usage::

    selma3d export-algorithm --run results/finetune/mae/full/b5_s0 --edition 2026 \\
        --out build/selma3d-algorithm [--config config/config.yaml] [--leaderboard results/leaderboard/leaderboard.csv]
    selma3d check-algorithm build/selma3d-algorithm --images some/test/folder

The build folder is self-contained (``docker build`` needs nothing else)::

    Dockerfile          pinned CUDA PyTorch base, the library from selma3d-src.tar.gz, non-root user
    app.py | inference.py   the entry point (2026 | 2024, 2025): one call into selma3d.inference.algorithm
    selma3d-src.tar.gz  the library at the exported commit (git archive of src/, pyproject.toml, README.md)
    requirements.txt    the runtime packages, pinned; constraints.txt pins everything else (the repo's pins)
    model/              model.pt (the run's, byte for byte) and settings.json (the infer settings)
    model.tar.gz        model/ as the tarball Grand Challenge extracts to /opt/ml/model (2026)
    manifest.json       run id, config hash, git commit, validation and leaderboard scores, checksums
    README.md           build, test and save commands
    do_test_run.sh      the test command: every image of a folder through the built image

The model's inference settings are the ``infer`` config block (``--config``, defaults from the
workflow schema), the same the ``infer`` rule uses; per-structure thresholds stored in
``model.pt`` (``postprocess``) are applied by :func:`selma3d.inference.patches.segment_case`.
The exported commit must be clean (``--allow-dirty`` ships the working tree instead, recorded in
the manifest): the image runs the library as committed, not as edited.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import logging
import re
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

from selma3d.core.atomic import atomic_path
from selma3d.core.errors import InputError
from selma3d.core.hashing import sha256_file
from selma3d.inference.algorithm import EDITIONS, MODEL_FILE, SETTINGS_FILE, edition

log = logging.getLogger(__name__)

SOURCE_ARCHIVE = "selma3d-src.tar.gz"
MODEL_TARBALL = "model.tar.gz"
MANIFEST = "manifest.json"
#: what the source archive holds (pyproject.toml names README.md as the package's readme)
SOURCE_PATHS = ("pyproject.toml", "README.md", "src")
#: the packages the container's code imports (selma3d.inference.algorithm and everything it
#: reaches; tests/test_export.py checks the list against the import graph), pinned from the
#: repo's requirements.txt. torch comes with the base image.
RUNTIME_PACKAGES = ("numpy", "scipy", "pandas", "monai", "einops", "tifffile", "imagecodecs", "nibabel",
                    "simpleitk", "zarr", "numcodecs", "connected-components-3d", "scikit-image", "tqdm", "pyyaml")
RUN_ID = re.compile(r"(?P<strategy>[^/]+)/(?P<mode>[^/]+)/b(?P<budget>[^_/]+)_s(?P<seed>\d+|ens)$")
LEADERBOARD_METRICS = ("dice", "cldice", "pq", "betti0_error", "betti1_error")


def repo_root() -> Path:
    """The source checkout this library runs from (holds pyproject.toml and src/selma3d)."""
    import selma3d

    root = Path(selma3d.__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file() or not (root / "src" / "selma3d").is_dir():
        raise InputError(root, "a source checkout of selma3d (pyproject.toml, src/) to ship in the image",
                         "an installed package without its sources")
    return root


def infer_settings(config_file: str | Path | None = None) -> dict:
    """The ``infer`` block as the workflow resolves it: ``config_file`` alone plus the schema's
    defaults (:func:`selma3d.config.load_config`), or the schema's defaults without one."""
    if not config_file:
        from selma3d.core.schema import schema_default

        return schema_default("infer")
    import warnings

    from selma3d.config import ConfigWarning, load_config

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConfigWarning)
        return dict(load_config([Path(config_file)], basedir=repo_root())["infer"])


def parse_run_id(run_dir: str | Path) -> dict:
    """``.../<strategy>/<mode>/b<budget>_s<seed>`` -> its parts and ``id``; only ``id`` (the folder
    name) when the path is laid out otherwise."""
    path = Path(run_dir).resolve()
    text = "/".join(path.parts[-3:])
    m = RUN_ID.search(text)
    if m is None:
        return {"id": path.name}
    budget = m["budget"]
    return {"id": text, "strategy": m["strategy"], "mode": m["mode"],
            "budget": int(budget) if budget.isdigit() else budget,
            "seed": int(m["seed"]) if m["seed"].isdigit() else m["seed"]}  # "ens": an ensemble of seeds


def config_hash(payload: dict, settings: dict) -> str:
    """SHA-256 of what, besides the weights, decides a prediction: network config, finetuning
    mode, normalisation, infer settings and per-structure post-processing."""
    key = {"network": payload.get("config"), "mode": payload.get("mode"), "normalize": payload.get("normalize"),
           **({"normalize_by_structure": payload["normalize_by_structure"]}
              if payload.get("normalize_by_structure") else {}),
           "inference": settings, "postprocess": payload.get("postprocess")}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def validation_scores(run_dir: Path, payload: dict) -> dict:
    """The run's validation record: best Dice and step (model.pt), the curve's last value."""
    out = {k: payload[k] for k in ("best_val_dice", "best_step") if k in payload}
    curve = run_dir / "train_log.csv"
    if curve.is_file():
        import pandas as pd

        df = pd.read_csv(curve)
        if "val_dice" in df and df["val_dice"].notna().any():
            val = df.dropna(subset=["val_dice"])
            out.update({"last_val_dice": float(val["val_dice"].iloc[-1]), "val_points": int(len(val)),
                        "steps": int(df["step"].max()) + 1})
    return out


def leaderboard_scores(csv: str | Path, run: dict) -> dict:
    """The run's rows of ``leaderboard.csv``: {protocol: {"final_rank", "groups": {group: {metric:
    {"mean", "std", "n"}}}}} (seeds pooled, as the leaderboard does)."""
    import pandas as pd

    if "strategy" not in run:
        raise InputError(csv, "a run folder laid out <strategy>/<mode>/b<budget>_s<seed> to look up", run["id"])
    df = pd.read_csv(csv, dtype={"budget": str})
    need = ("protocol", "strategy", "mode", "budget", "group", "metric", "mean", "std", "n")
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise InputError(csv, f"leaderboard.csv columns {list(need)}", f"missing {missing}")
    rows = df[(df.strategy == run["strategy"]) & (df["mode"] == run["mode"]) & (df.budget == str(run["budget"]))]
    if rows.empty:
        raise InputError(csv, f"rows of run {run['strategy']}/{run['mode']}/b{run['budget']}", "none")
    out: dict[str, Any] = {}
    for protocol, sub in rows.groupby("protocol", sort=True):
        entry: dict[str, Any] = {"groups": {}}
        if "final_rank" in sub and sub["final_rank"].notna().any():
            entry["final_rank"] = float(sub["final_rank"].dropna().iloc[0])
        for _, r in sub[sub.metric.isin(LEADERBOARD_METRICS) & sub["mean"].notna()].iterrows():
            entry["groups"].setdefault(str(r.group), {})[str(r.metric)] = {
                "mean": float(r["mean"]), "std": None if pd.isna(r["std"]) else float(r["std"]), "n": int(r["n"])}
        out[str(protocol)] = entry
    return out


# ----------------------------------------------------------------------------- sources


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True, text=True).stdout


def _deterministic_targz(dest: Path, files: list[tuple[Path, str]]) -> None:
    """A .tar.gz of (file, name in archive) pairs with zeroed times and owners: same bytes each time."""
    with open(dest, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, name in sorted(files, key=lambda f: f[1]):
            info = tar.gettarinfo(str(path), arcname=name)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            info.mode = 0o644
            with open(path, "rb") as fh:
                tar.addfile(info, fh)


def source_archive(dest: Path, allow_dirty: bool = False, root: Path | None = None) -> dict:
    """Write the library's sources at HEAD as ``dest`` (a pip-installable .tar.gz); returns
    ``{"commit", "dirty", "sha256"}``. A checkout with uncommitted changes to those sources is
    refused unless ``allow_dirty`` (then the working tree is archived)."""
    root = root or repo_root()
    prefix = "selma3d/"
    try:
        commit = _git(root, "rev-parse", "HEAD").strip()
        changes = _git(root, "status", "--porcelain", "--untracked-files=all", "--", *SOURCE_PATHS).strip()
    except (OSError, subprocess.CalledProcessError):
        commit, changes = None, "(not a git checkout)"
    if changes and not allow_dirty:
        first = changes.splitlines()[:3]
        raise InputError(root, "a clean git checkout to export (commit first, or --allow-dirty)",
                         f"uncommitted changes: {'; '.join(first)}{' ...' if len(changes.splitlines()) > 3 else ''}")
    if not changes:
        with open(dest, "wb") as fh:
            subprocess.run(["git", "-C", str(root), "archive", "--format=tar.gz", f"--prefix={prefix}", "HEAD",
                            *SOURCE_PATHS], check=True, stdout=fh)
    else:
        if commit is not None:
            names = _git(root, "ls-files", "-co", "--exclude-standard", "--", *SOURCE_PATHS).splitlines()
        else:
            names = [str(p.relative_to(root)) for s in SOURCE_PATHS for p in
                     ([root / s] if (root / s).is_file() else (root / s).rglob("*"))
                     if p.is_file() and "__pycache__" not in p.parts]
        files = [(root / n, prefix + n) for n in names if (root / n).is_file()]
        _deterministic_targz(dest, files)
        log.warning("exporting uncommitted sources of %s (dirty working tree, recorded in the manifest)", root)
    return {"commit": commit, "dirty": bool(changes), "sha256": sha256_file(dest)}


def pinned_requirements(root: Path | None = None) -> tuple[list[str], str]:
    """(the runtime packages pinned, the repo's full requirements.txt as constraints)."""
    root = root or repo_root()
    req = root / "requirements.txt"
    if not req.is_file():
        raise InputError(req, "the repo's pinned requirements", "no such file")
    text = req.read_text()
    pins = {}
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)", line.strip())
        if m:
            pins[m.group(1).lower().replace("_", "-")] = (m.group(1), m.group(2))
    missing = [p for p in RUNTIME_PACKAGES + ("torch",) if p not in pins]
    if missing:
        raise InputError(req, f"pins (name==version) of {list(RUNTIME_PACKAGES) + ['torch']}", f"none for {missing}")
    return [f"{pins[p][0]}=={pins[p][1]}" for p in RUNTIME_PACKAGES], text


def default_base_image(root: Path | None = None) -> str:
    """``pytorch/pytorch:<torch>-cuda<cuda>-cudnn9-runtime`` from the repo's pins (requirements.txt
    for torch, envs/torch.yaml for the CUDA version of the GPU rules)."""
    root = root or repo_root()
    torch_pin = re.search(r"^torch==(\S+)", (root / "requirements.txt").read_text(), re.M)
    env = root / "envs" / "torch.yaml"
    cuda = re.search(r"cuda-version\s*=+\s*([0-9.]+)", env.read_text()) if env.is_file() else None
    if not torch_pin or not cuda:
        raise InputError(env, "torch and cuda-version pins to name the base image (or pass --base-image)", "none")
    return f"pytorch/pytorch:{torch_pin.group(1)}-cuda{cuda.group(1)}-cudnn9-runtime"


# ----------------------------------------------------------------------------- the build folder


def export_algorithm(run_dir: str | Path, year: int | str, out: str | Path, settings: dict, *,
                     leaderboard: str | Path | None = None, base_image: str | None = None,
                     allow_dirty: bool = False, extra: dict | None = None) -> Path:
    """Write the build folder of a SELMA3D ``year`` algorithm for the run in ``run_dir``, atomically.

    Args:
        run_dir: a finetuning run folder (``model.pt``, ``train_log.csv``).
        year: 2024, 2025 or 2026.
        out: the build folder (replaced when it exists).
        settings: the ``infer`` settings (:func:`infer_settings`).
        leaderboard: ``leaderboard.csv`` whose rows of this run go into the manifest.
        base_image: the Dockerfile's FROM (default :func:`default_base_image`).
        allow_dirty: ship uncommitted sources instead of refusing.
        extra: more manifest entries (e.g. how the run was selected).
    """
    import torch

    from selma3d.inference.patches import CASE_SETTINGS
    from selma3d.training.finetune import load_model

    ed = edition(year)
    run_dir = Path(run_dir)
    model = run_dir / MODEL_FILE
    if not model.is_file():
        raise InputError(model, "a finetuned model (the finetune rule's model.pt)", "no such file")
    missing = [k for k in CASE_SETTINGS if k not in settings]
    if missing:
        raise InputError(None, f"infer settings {list(CASE_SETTINGS)}", f"none for {missing}")
    settings = {k: settings[k] for k in sorted(settings)}
    try:
        load_model(model, torch.device("cpu"))  # refuse what the container could not load
    except (KeyError, RuntimeError, TypeError) as exc:
        raise InputError(model, "a model.pt that builds and loads (config, state_dict)",
                         f"{type(exc).__name__}: {exc}") from exc
    payload = torch.load(model, map_location="cpu", weights_only=False)
    run = parse_run_id(run_dir)
    root = repo_root()
    requirements, constraints = pinned_requirements(root)
    base_image = base_image or default_base_image(root)
    tag = f"selma3d-algorithm-{ed.year}"

    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        source = source_archive(tmp / SOURCE_ARCHIVE, allow_dirty, root)
        (tmp / "model").mkdir()
        shutil.copyfile(model, tmp / "model" / MODEL_FILE)
        model_settings = {"inference": settings, "edition": ed.year, "run": run["id"],
                          "network": payload.get("config"), "mode": payload.get("mode"),
                          "normalize": payload.get("normalize", "percentile"),
                          "postprocess": payload.get("postprocess")}
        (tmp / "model" / SETTINGS_FILE).write_text(json.dumps(model_settings, indent=2, default=str) + "\n")
        _deterministic_targz(tmp / MODEL_TARBALL, [(tmp / "model" / n, n) for n in (MODEL_FILE, SETTINGS_FILE)])
        (tmp / "requirements.txt").write_text(
            "# Runtime packages of the SELMA3D algorithm (torch comes with the base image).\n"
            + "\n".join(requirements) + "\n")
        (tmp / "constraints.txt").write_text(constraints)
        (tmp / ed.entry_point).write_text(ENTRY_POINT.format(year=ed.year, api=ed.api, run=run["id"],
                                                             commit=source["commit"] or "unknown"))
        (tmp / "Dockerfile").write_text(dockerfile(ed, base_image, run["id"], source["commit"]))
        (tmp / ".dockerignore").write_text(dockerignore(ed))
        script = tmp / "do_test_run.sh"
        script.write_text(test_script(ed, tag))
        script.chmod(0o755)
        manifest = {
            "format": "selma3d-algorithm/1",
            "edition": ed.year,
            "api": ed.api,
            "interface": {"input": f"/input/{ed.input_dir}", "output": f"/output/{ed.output_file}",
                          "slug": ed.slug, "inputs_json_key": ed.inputs_key, "model_dir": ed.model_dir,
                          "entry_point": ed.entry_point},
            "run": {**run, "path": str(run_dir)},
            "model": {"file": f"model/{MODEL_FILE}", "sha256": sha256_file(model),
                      "config_hash": config_hash(payload, settings), "network": payload.get("config"),
                      "mode": payload.get("mode"), "normalize": payload.get("normalize", "percentile")},
            "inference": settings,
            "postprocess": payload.get("postprocess"),
            "validation": validation_scores(run_dir, payload),
            "leaderboard": leaderboard_scores(leaderboard, run) if leaderboard else None,
            "source": {**source, "archive": SOURCE_ARCHIVE},
            "image": {"tag": tag, "base": base_image},
            "model_tarball": {"file": MODEL_TARBALL, "sha256": sha256_file(tmp / MODEL_TARBALL)},
            **(extra or {}),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str) + "\n")
        (tmp / "README.md").write_text(readme(ed, manifest))
    log.info("exported run %s as a SELMA3D %d algorithm to %s", run["id"], ed.year, out)
    return Path(out)


ENTRY_POINT = '''"""SELMA3D {year} algorithm ({api} API) of run {run}, selma3d commit {commit}.

Written by `selma3d export-algorithm`; the logic is the library installed in the image
(selma3d.inference.algorithm), the same code the pipeline's `infer` rule runs.
"""

import sys

from selma3d.inference.algorithm import main

if __name__ == "__main__":
    sys.exit(main(["--edition", "{year}"]))
'''

def dockerignore(ed) -> str:
    """Only what the image needs enters the build context (2026: no weights, they come apart)."""
    keep = ["Dockerfile", "requirements.txt", "constraints.txt", SOURCE_ARCHIVE, ed.entry_point]
    keep += ["model"] if ed.api == "exec" else []
    return "*\n" + "".join(f"!{k}\n" for k in keep)


def dockerfile(ed, base_image: str, run_id: str, commit: str | None) -> str:
    """The image: pinned PyTorch base, pinned runtime packages, the library, a non-root user."""
    torch_check = ("python -c \"import torch, re, sys; want = re.search(r'^torch==(\\S+)', "
                   "open('constraints.txt').read(), re.M).group(1); got = torch.__version__.split('+')[0]; "
                   "sys.exit(0 if got == want else f'base image has torch {got}, the pipeline pins {want}')\"")
    lines = [
        f"# SELMA3D {ed.year} algorithm ({ed.api} API): run {run_id}, selma3d commit {commit or 'unknown'}.",
        "# Written by `selma3d export-algorithm`; see README.md. No network is needed at run time.",
        f"FROM --platform=linux/amd64 {base_image}",
        "",
        "ENV PYTHONUNBUFFERED=1 \\",
        "    PYTHONDONTWRITEBYTECODE=1 \\",
        "    SELMA3D_INPUT_ROOT=/input \\",
        "    SELMA3D_OUTPUT_ROOT=/output \\",
        f"    SELMA3D_MODEL_DIR={ed.model_dir}",
        "",
        "RUN groupadd -r user && useradd -m --no-log-init -r -g user user",
        "WORKDIR /opt/app",
        "",
        "COPY requirements.txt constraints.txt selma3d-src.tar.gz /opt/app/",
        f"RUN {torch_check} \\",
        "    && python -m pip install --no-cache-dir --no-color --requirement requirements.txt \\",
        "        --constraint constraints.txt \\",
        "    && python -m pip install --no-cache-dir --no-color --no-deps selma3d-src.tar.gz \\",
        "    && python -c \"import selma3d.inference.algorithm\"",
        "",
    ]
    if ed.api == "exec":
        lines += ["# the model is part of the image (exec containers of 2024/2025)",
                  f"COPY --chown=user:user model {ed.model_dir}", ""]
    lines += [f"COPY --chown=user:user {ed.entry_point} /opt/app/", "USER user", ""]
    if ed.api == "invoke":
        lines += ["# Grand Challenge starts containers with this label as invoke-API servers (else: exec).",
                  'LABEL org.grand-challenge.api-method="invoke"',
                  "ENV SELMA3D_PORT=4743",
                  "EXPOSE 4743", ""]
    lines += [f'ENTRYPOINT ["python", "{ed.entry_point}"]', ""]
    return "\n".join(lines)


def _inputs_json_shell(ed) -> str:
    """A shell printf that writes inputs.json for image "$name" (the platform's format)."""
    if ed.inputs_key == "socket":
        body = ('[{"socket": {"slug": "%s", "relative_path": "%s", "is_image_kind": true}, '
                '"image": {"name": "%%s"}, "file": null, "value": null}]') % (ed.slug, ed.input_dir)
    else:
        body = ('[{"interface": {"slug": "%s", "kind": "Image", "super_kind": "Image", "relative_path": "%s"}, '
                '"image": {"name": "%%s"}, "file": null, "value": null}]') % (ed.slug, ed.input_dir)
    return f"printf '{body}\\n' \"$name\""


def test_script(ed, tag: str) -> str:
    """do_test_run.sh: each image of a folder through the built image, one case at a time."""
    head = f'''#!/usr/bin/env bash
# Test the built image ({tag}) on every .tif/.tiff/.mha of a folder, one case at a time, the
# way the platform runs it: read-only /input, writable /output and /tmp, no network for exec
# containers. Masks land in ./test-output/<case>/{ed.output_file}.
# Usage: ./do_test_run.sh IMAGE_FOLDER      (build first: see README.md)
set -euo pipefail
HERE=$(cd -- "$(dirname -- "${{BASH_SOURCE[0]}}")" && pwd)
TAG="${{TAG:-{tag}}}"
IMAGES=$(cd -- "${{1:?usage: $0 IMAGE_FOLDER}}" && pwd)
GPU=""
if docker info 2>/dev/null | grep -q "Runtimes:.*nvidia"; then GPU="--gpus all"; fi
STAGE=$(mktemp -d)
mkdir -p "$STAGE/input" "$STAGE/output"
chmod -R o+rwx "$STAGE"
stage() {{  # stage "$img": the case's /input
    rm -rf "${{STAGE:?}}/input/"*
    mkdir -p "$STAGE/input/{ed.input_dir}"
    cp "$1" "$STAGE/input/{ed.input_dir}/"
    name=$(basename "$1")
'''
    if ed.inputs_key:
        head += f'    {_inputs_json_shell(ed)} > "$STAGE/input/inputs.json"\n'
    head += "    chmod -R o+rX \"$STAGE/input\"\n}\n"
    if ed.api == "exec":
        body = f'''trap 'rm -rf "$STAGE"' EXIT
for img in "$IMAGES"/*.tif "$IMAGES"/*.tiff "$IMAGES"/*.mha; do
    [ -e "$img" ] || continue
    stage "$img"
    out="$HERE/test-output/${{name%.*}}"
    mkdir -p "$out" && chmod o+rwx "$out"
    docker run --rm --platform=linux/amd64 --network none $GPU --tmpfs /tmp \\
        -v "$STAGE/input":/input:ro -v "$out":/output "$TAG"
    echo "$name -> $out/{ed.output_file}"
done
'''
    else:
        body = f'''NAME="$TAG-test-$$"
cleanup() {{ docker rm -f "$NAME" >/dev/null 2>&1 || true; rm -rf "$STAGE"; }}
trap cleanup EXIT
# Grand Challenge runs the container without network; here port 4743 is published on
# 127.0.0.1 only, so that this script can call the API (the image itself needs no network).
docker run --detach --name "$NAME" --platform=linux/amd64 $GPU --tmpfs /tmp \\
    -p 127.0.0.1:4743:4743 -v "$HERE/model":/opt/ml/model:ro \\
    -v "$STAGE/input":/input:ro -v "$STAGE/output":/output "$TAG" >/dev/null
for i in $(seq 1 60); do
    [ "$(curl -s -o /dev/null -w '%{{http_code}}' http://127.0.0.1:4743/health || true)" = 200 ] && break
    [ "$i" = 60 ] && {{ docker logs "$NAME"; echo "health never answered 200" >&2; exit 1; }}
    sleep 2
done
for img in "$IMAGES"/*.tif "$IMAGES"/*.tiff "$IMAGES"/*.mha; do
    [ -e "$img" ] || continue
    stage "$img"
    docker exec --user root "$NAME" sh -c 'rm -rf /output/*'
    code=$(curl -s -o "$STAGE/response.json" -w '%{{http_code}}' -X POST http://127.0.0.1:4743/invoke)
    if [ "$code" != 201 ]; then docker logs "$NAME"; echo "$name: /invoke answered $code" >&2; exit 1; fi
    out="$HERE/test-output/${{name%.*}}"
    mkdir -p "$out"
    docker exec --user root "$NAME" sh -c 'chmod -R o+rX /output'
    cp -r "$STAGE/output/." "$out/"
    echo "$name -> $out/{ed.output_file}: $(cat "$STAGE/response.json")"
done
'''
    return head + body


def readme(ed, manifest: dict) -> str:
    tag = manifest["image"]["tag"]
    run = manifest["run"]["id"]
    val = manifest["validation"].get("best_val_dice")
    save = f"docker save {tag} | gzip -c > {tag}.tar.gz"
    how = ("The server answers `GET /health` (200 once the model is loaded) and `POST /invoke` (201 per case) "
           "on port 4743." if ed.api == "invoke" else f"The container runs `python {ed.entry_point}` once per case.")
    upload = (f"Upload `{tag}.tar.gz` as the algorithm's container image and `model.tar.gz` as its model "
              "(Grand Challenge extracts it to `/opt/ml/model`; the image holds no weights)."
              if ed.api == "invoke" else
              f"Upload `{tag}.tar.gz` as the algorithm's container image (the weights are inside it; "
              "`model.tar.gz` is only needed if you prefer the platform's separate model upload).")
    return f"""# SELMA3D {ed.year} algorithm: run `{run}`

Exported by `selma3d export-algorithm` from selma3d commit `{manifest['source']['commit']}`
(dirty: {str(manifest['source']['dirty']).lower()}); best validation Dice {val if val is not None else 'n/a'}.
`manifest.json` records the run, the config hash, the scores and every checksum.

Contract ({ed.api} API): one case = `/input/{ed.input_dir}/<one .tif|.tiff|.mha>`
{'plus `/input/inputs.json` (socket `' + ed.slug + '`, keyed `' + ed.inputs_key + '`)' if ed.inputs_key else ''}
-> `/output/{ed.output_file}` (int8 {{0, 1}}, the input's size, spacing, origin and direction,
SimpleITK-compressed).
{how}

## Build, test, save

```bash
docker build --platform=linux/amd64 --tag {tag} .
./do_test_run.sh /path/to/test/images      # every .tif/.tiff/.mha through the image -> test-output/
{save}
```

{upload}

Without Docker, the same entry point runs locally against a temporary `/input`-like folder,
and every output is checked against the pipeline's own prediction:

```bash
selma3d check-algorithm . --images /path/to/test/images
```

Settings (`model/settings.json`): {json.dumps(manifest['inference'])}
"""


# ----------------------------------------------------------------------------- CLI


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True,
                        help="finetuning run folder: results/finetune/<strategy>/<mode>/b<budget>_s<seed>")
    parser.add_argument("--edition", type=int, choices=sorted(EDITIONS), default=2026,
                        help="challenge year whose container contract to follow (default 2026)")
    parser.add_argument("--out", required=True, help="build folder to write (replaced if it exists)")
    parser.add_argument("--config", help="workflow config whose `infer` block to use (default: the schema's defaults)")
    parser.add_argument("--leaderboard", help="leaderboard.csv: put the run's test scores in the manifest")
    parser.add_argument("--base-image", help="Dockerfile FROM (default: pytorch/pytorch of the pinned torch and CUDA)")
    parser.add_argument("--allow-dirty", action="store_true",
                        help="ship uncommitted library sources instead of refusing (recorded in the manifest)")


def run(args: argparse.Namespace) -> int:
    from selma3d.core.logs import setup_logging

    setup_logging()
    settings = infer_settings(args.config)
    out = export_algorithm(args.run, args.edition, args.out, settings, leaderboard=args.leaderboard,
                           base_image=args.base_image, allow_dirty=args.allow_dirty)
    manifest = json.loads((out / MANIFEST).read_text())
    print(f"{out}: SELMA3D {manifest['edition']} algorithm ({manifest['api']} API) of run {manifest['run']['id']}, "
          f"commit {manifest['source']['commit']}, config hash {manifest['model']['config_hash'][:12]}")
    return 0
