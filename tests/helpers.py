"""Builders shared by several test modules."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


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
