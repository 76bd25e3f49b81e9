"""Builders shared by several test modules."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]


def snakemake(*args, cwd=REPO, timeout=900) -> subprocess.CompletedProcess:
    """``python -m snakemake ARGS`` in the repository (the interpreter running the tests), captured."""
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def make_patch_store(folder: Path, n: int = 6, size: int = 40, seed: int = 0, name: str = "vol") -> Path:
    """A patchify-like output: a zarr array of n cubes plus its index CSV."""
    import zarr

    rng = np.random.default_rng(seed)
    data = rng.gamma(2.0, 100.0, size=(n, size, size, size)).astype(np.float32)
    arr = zarr.create_array(str(folder / f"{name}.zarr"), shape=data.shape, chunks=(1, size, size, size),
                            dtype="float32")
    arr[...] = data
    pd.DataFrame({"volume": name, "structure": "cfos", "category": "isolated_sparse", "spacing_um": "4,3.2,3.2",
                  "patch": range(n), "z": 0, "y": 0, "x": 0, "foreground_fraction": 1.0, "background": False,
                  "store": f"{name}.zarr", "level": 0}).to_csv(folder / f"{name}.csv", index=False)
    return folder / f"{name}.csv"


REPO = Path(__file__).resolve().parents[1]


def schema_path() -> Path:
    """The config schema (workflow/schemas/, or src/selma3d/ where a later layout keeps it)."""
    for p in (REPO / "workflow" / "schemas" / "config.schema.yaml", REPO / "src" / "selma3d" / "config.schema.yaml"):
        if p.exists():
            return p
    raise FileNotFoundError("config.schema.yaml")


def schema_config(config: dict | None = None) -> dict:
    """``config`` with every schema default filled in, as the workflow validates it."""
    from snakemake.utils import validate

    cfg = dict(config or {})
    validate(cfg, str(schema_path()), set_default=True)
    return cfg


def finetune_settings(**overrides) -> dict:
    """The finetune rule's ``settings`` param (the finetune block minus the run lists), defaults filled."""
    block = schema_config({"finetune": overrides})["finetune"]
    return {k: v for k, v in block.items() if k not in ("strategies", "modes", "budgets", "seeds")}


def blob_volume(seed: int, gain: float, offset: float, n: int = 8, shape=(32, 32, 32), margin: float = 4):
    """A noisy image of ``n`` Gaussian blobs (radius 1.5–2.5 voxels) and their ground truth: a
    spot-like structure whose brightness (``gain``, ``offset``) differs like between brains."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    gt = np.zeros(shape, bool)
    signal = np.zeros(shape, np.float32)
    for _ in range(n):
        c = rng.uniform(margin, np.array(shape) - margin)
        r = rng.uniform(1.5, 2.5)
        d2 = (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2
        gt |= d2 <= r**2
        signal += np.exp(-d2 / (2 * r**2)).astype(np.float32)
    img = offset + gain * (signal + 0.08 * rng.normal(size=shape).astype(np.float32))
    return img.astype(np.float32), gt
