"""Write the synthetic SELMA3D-like dataset: TIFF-slice brains, NIfTI patches, a manifest.

Layout under ``out_dir``::

    unannotated/<structure>_vol_<k>/<structure>_vol_<k>_z0000.tif ...   (uint16 z-slices)
    train/raw/<structure>_patch_<nnn>_0000.nii.gz   train/gt/<structure>_patch_<nnn>.nii.gz
    val/raw/...  val/gt/...    test/raw/...  test/gt/...                 (int16, LPS affine)
    manifest.csv

Patch numbers run per structure across train, then val, then test, so every case name is
unique in the dataset. Each unannotated volume is its own brain ("specimen"); annotated
patches come from ``specimens[split]`` brains per structure and split, distinct between
splits, so validation and test measure generalisation to unseen brains.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from selma3d import io
from selma3d.core.errors import InputError
from selma3d.core.hashing import sha256_file
from selma3d.core.text import format_spacing
from selma3d.data.manifest import write_manifest
from selma3d.core.structures import category_of
from selma3d.data.synth.render import IMAGING_DEFAULTS, draw_field, draw_specimen, render_structure
from selma3d.data.synth.shapes import GENERATORS

SEEN = ["cfos_neuron", "cell_nuclei", "AD_plaques", "blood_vessel", "axonalmarker"]
SPLITS = ("train", "val", "test")
MANIFEST_NAME = "manifest.csv"

#: Configuration of ``synthesize_dataset`` (a partial dict is merged over this).
#:
#: - ``spacing_um``: voxel size (z, y, x) µm of every volume.
#: - ``unannotated``: list of ``{structure, count, shape}``: whole brains (with clearing medium
#:   around the tissue) written as TIFF slice folders for pretraining; ``shape`` is (z, y, x).
#: - ``patch_shape``: (z, y, x) of annotated patches (all inside tissue).
#: - ``train`` / ``val`` / ``test``: ``{structure: number of patches}``; a split given in a user
#:   config replaces the default one. Microglia is only in ``test`` (the unseen structure).
#: - ``specimens``: number of brains per split the patches of one structure are drawn from
#:   (merged key by key).
#: - ``imaging``: fixed values for ``render_structure`` parameters, overriding the per-brain
#:   draws (e.g. ``{stripe_strength: 0}``; ``saturation`` max 32767 since patches are int16).
DEFAULTS: dict = {
    "spacing_um": [4.0, 1.6, 1.6],
    "unannotated": [{"structure": s, "count": 1, "shape": [40, 160, 160]} for s in SEEN],
    "patch_shape": [32, 64, 64],
    "train": {s: 3 for s in SEEN},
    "val": {s: 1 for s in SEEN},
    "test": {**{s: 2 for s in SEEN}, "microglia": 2},
    "specimens": {"train": 2, "val": 1, "test": 1},
    "imaging": {},
}

_MERGED_KEYS = ("specimens", "imaging")
_SPLIT_CODE = {"pretrain": 0, "train": 1, "val": 2, "test": 3}
_STRUCT_CODE = {s: i for i, s in enumerate(GENERATORS)}


def _shape3(value, where: str) -> list[int]:
    try:
        out = [int(v) for v in value]
    except (TypeError, ValueError):
        out = []
    if len(out) != 3 or min(out) < 1 or any(float(v) != int(v) for v in value):
        raise InputError(where, "three positive whole numbers (z, y, x)", repr(value))
    return out


def resolve_config(config: dict | None = None, source: str | None = None) -> dict:
    """DEFAULTS merged with ``config``, validated; errors name ``source`` (the YAML file)."""
    where = source or "synthesize config"
    config = dict(config or {})
    unknown = sorted(set(config) - set(DEFAULTS))
    if unknown:
        raise InputError(where, f"keys among {sorted(DEFAULTS)}", f"unknown {unknown}")
    cfg = copy.deepcopy(DEFAULTS)
    for key, value in config.items():
        if key in _MERGED_KEYS:
            if not isinstance(value, dict):
                raise InputError(where, f"{key} as a mapping", repr(value))
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = copy.deepcopy(value)
    try:
        spacing = [float(v) for v in cfg["spacing_um"]]
    except (TypeError, ValueError):
        spacing = []
    if len(spacing) != 3 or min(spacing) <= 0:
        raise InputError(where, "spacing_um as three positive µm values (z, y, x)", repr(cfg["spacing_um"]))
    cfg["spacing_um"] = spacing
    cfg["patch_shape"] = _shape3(cfg["patch_shape"], f"{where}: patch_shape")
    if not isinstance(cfg["unannotated"], list):
        raise InputError(where, "unannotated as a list of {structure, count, shape}", repr(cfg["unannotated"]))
    vols = []
    for i, item in enumerate(cfg["unannotated"]):
        w = f"{where}: unannotated[{i}]"
        if not isinstance(item, dict) or "structure" not in item:
            raise InputError(w, "a mapping with structure, count, shape", repr(item))
        extra = sorted(set(item) - {"structure", "count", "shape"})
        if extra:
            raise InputError(w, "keys structure, count, shape", f"unknown {extra}")
        _check_structure(item["structure"], w)
        count = item.get("count", 1)
        if not isinstance(count, int) or count < 0:
            raise InputError(w, "count as a whole number >= 0", repr(count))
        vols.append({"structure": item["structure"], "count": count,
                     "shape": _shape3(item.get("shape", [40, 160, 160]), f"{w}.shape")})
    cfg["unannotated"] = vols
    for split in SPLITS:
        counts = cfg[split] if cfg[split] is not None else {}
        if not isinstance(counts, dict):
            raise InputError(where, f"{split} as a mapping structure -> number of patches", repr(counts))
        for s, n in counts.items():
            _check_structure(s, f"{where}: {split}")
            if not isinstance(n, int) or n < 0:
                raise InputError(f"{where}: {split}.{s}", "a whole number of patches >= 0", repr(n))
        cfg[split] = dict(counts)
    for split in SPLITS:
        n = cfg["specimens"].get(split)
        if not isinstance(n, int) or n < 1:
            raise InputError(f"{where}: specimens.{split}", "a whole number of brains >= 1", repr(n))
    allowed = set(IMAGING_DEFAULTS) - {"tissue"}  # tissue is decided by the kind of output
    bad = sorted(set(cfg["imaging"]) - allowed)
    if bad:
        raise InputError(f"{where}: imaging", f"render parameters among {sorted(allowed)}",
                         f"{bad}")
    sat = cfg["imaging"].get("saturation", IMAGING_DEFAULTS["saturation"])
    if not isinstance(sat, int) or not 0 < sat <= 32767:
        raise InputError(f"{where}: imaging.saturation", "a whole number in 1..32767 (patches are int16)", repr(sat))
    return cfg


def _check_structure(name, where: str) -> None:
    if name not in GENERATORS:
        raise InputError(where, f"a structure among {sorted(GENERATORS)}", repr(name))


def volume_names(config: dict | None = None) -> list[str]:
    """Case names of the unannotated volumes the config will write (known before writing)."""
    cfg = resolve_config(config)
    names = []
    for item in cfg["unannotated"]:
        names += [f"{item['structure']}_vol_{k}" for k in _volume_indices(cfg, item)]
    return names


def _volume_indices(cfg: dict, item: dict) -> range:
    """Volume numbers run per structure over the ``unannotated`` list, in order."""
    start = 0
    for other in cfg["unannotated"]:
        if other is item:
            break
        if other["structure"] == item["structure"]:
            start += other["count"]
    return range(start, start + item["count"])


def _jobs(cfg: dict) -> list[dict]:
    """Everything to render, in a fixed order, each with its own seed path."""
    jobs = []
    for item in cfg["unannotated"]:
        for k in _volume_indices(cfg, item):
            jobs.append({"kind": "volume", "structure": item["structure"], "split": "pretrain",
                         "index": k, "specimen": k, "shape": item["shape"],
                         "case": f"{item['structure']}_vol_{k}"})
    structures = list(dict.fromkeys(s for split in SPLITS for s in cfg[split]))
    for s in structures:
        number = 0
        for split in SPLITS:
            for j in range(cfg[split].get(s, 0)):
                jobs.append({"kind": "patch", "structure": s, "split": split, "index": number,
                             "specimen": j % cfg["specimens"][split], "shape": cfg["patch_shape"],
                             "case": f"{s}_patch_{number:03d}"})
                number += 1
    return jobs


def _specimen_params(seed: int, job: dict) -> dict:
    code = [seed, 1, _STRUCT_CODE[job["structure"]], _SPLIT_CODE[job["split"]], job["specimen"]]
    return draw_specimen(np.random.default_rng(code))


def render_job(seed: int, job: dict, cfg: dict) -> tuple[np.ndarray, np.ndarray]:
    """Render one volume or patch; depends only on (seed, job identity, config)."""
    specimen = _specimen_params(seed, job)
    rng = np.random.default_rng([seed, 2, _STRUCT_CODE[job["structure"]], _SPLIT_CODE[job["split"]], job["index"]])
    params = draw_field(rng, specimen)
    params.update(cfg["imaging"])
    params["tissue"] = job["kind"] == "volume"
    if job["kind"] == "volume":
        params["depth_um"] = float(cfg["imaging"].get("depth_um", 0.0))
    return render_structure(job["structure"], job["shape"], cfg["spacing_um"], rng, **params)


def sha256_folder(paths: list[Path]) -> tuple[str, int]:
    """Digest of a slice folder: sha256 of its ``sha256sum``-style listing, in z order; total bytes.

    Why: a TIFF folder is one manifest row; the listing digest changes if any slice changes.
    """
    lines = "".join(f"{sha256_file(p)}  {p.name}\n" for p in paths)
    return hashlib.sha256(lines.encode()).hexdigest(), sum(p.stat().st_size for p in paths)


def _row(job: dict, role: str, path: Path, spacing, sha: str, size: int) -> dict:
    return {"case": job["case"], "role": role, "split": job["split"], "structure": job["structure"],
            "category": category_of(job["structure"]), "spacing_um": format_spacing(spacing),
            "path": str(path), "url": "", "sha256": sha, "size": str(size),
            "specimen": f"{job['structure']}_{job['split']}_b{job['specimen']}"}


def _remove_stale(out_dir: Path, written: set[Path]) -> None:
    """Drop files of an earlier run (same naming scheme) that this run did not write."""
    prefixes = tuple(f"{s}_" for s in GENERATORS)
    for sub in ["unannotated"] + [f"{s}/{r}" for s in SPLITS for r in ("raw", "gt")]:
        folder = out_dir / sub
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if p.name.startswith(prefixes) and p.resolve() not in written:
                if p.is_dir():
                    shutil.rmtree(p)
                else:
                    p.unlink()


def synthesize_dataset(out_dir: str | Path, config: dict | None = None, seed: int = 0,
                       progress: bool = True) -> Path:
    """Render and write the dataset; returns the manifest path (``out_dir/manifest.csv``).

    The manifest is removed first and written last (atomically), so a failure never leaves a
    manifest that looks complete. Same config and seed give byte-identical files.
    """
    cfg = resolve_config(config)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = out_dir / MANIFEST_NAME
    manifest.unlink(missing_ok=True)
    spacing = tuple(cfg["spacing_um"])
    jobs = _jobs(cfg)
    rows: list[dict] = []
    written: set[Path] = set()
    t0 = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc="synthesize", unit="vol", file=sys.stderr)
    for job in jobs:
        image, label = render_job(seed, job, cfg)
        if job["kind"] == "volume":
            folder = out_dir / "unannotated" / job["case"]
            paths = io.write_tiff_series(folder, image, prefix=job["case"], spacing=spacing)
            sha, size = sha256_folder(paths)
            rows.append(_row(job, "unannotated", folder, spacing, sha, size))
            written.add(folder.resolve())
        else:
            base = out_dir / job["split"]
            raw = io.write_nifti(base / "raw" / f"{job['case']}_0000.nii.gz", image, spacing, dtype=np.int16)
            gt = io.write_nifti(base / "gt" / f"{job['case']}.nii.gz", label, spacing, dtype=np.int16)
            for role, p in (("image", raw), ("label", gt)):
                rows.append(_row(job, role, p, spacing, sha256_file(p), p.stat().st_size))
                written.add(p.resolve())
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    _remove_stale(out_dir, written)
    df = pd.DataFrame(rows)
    write_manifest(df, manifest, relative_to=out_dir)
    if progress:
        total = sum(int(r["size"]) for r in rows)
        print(f"synthesize: {len(jobs)} volumes/patches, {total / 1e6:.1f} MB in "
              f"{time.perf_counter() - t0:.1f} s -> {manifest}", file=sys.stderr)
    return manifest


# ----------------------------------------------------------------------------------------
# CLI: selma3d synthesize OUT_DIR [--config YAML] [--seed N]


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out_dir", metavar="OUT_DIR", type=Path, help="folder to write the dataset into")
    parser.add_argument("--config", type=Path, default=None,
                        help="YAML mapping of options over the defaults: " + ", ".join(DEFAULTS))
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed -> identical files)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def load_config(path: Path | None) -> dict:
    """A YAML config file as a dict (empty file -> {})."""
    if path is None:
        return {}
    import yaml

    if not Path(path).exists():
        raise InputError(path, "a YAML config file", "nothing at that path")
    try:
        data = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        raise InputError(path, "valid YAML", str(exc).splitlines()[0]) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(path, "a YAML mapping of synthesize options", type(data).__name__)
    return data


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
        resolve_config(config, str(args.config) if args.config else None)
        path = synthesize_dataset(args.out_dir, config, seed=args.seed, progress=not args.quiet)
    except InputError as exc:
        print(f"selma3d synthesize: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0
