"""Nested, seeded subsets of the pretraining patches: the data axis of a scaling study.

SELMA3D 2026 Task 2 asks how SSL gains grow with the amount (and kind) of unannotated data.
A study pretrains on fractions of the patch index (``pretrain.data_fractions``), optionally
restricted to named sources (``pretrain.data_sources``: structures or categories). The subsets
are *nested*: the patches are put in one seeded order (independent of how the index tables
were listed or where they live), and a fraction keeps a prefix of that order, so every smaller
fraction is a subset of every larger one and the curve measures more data, not other data.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from selma3d.core.atomic import atomic_path
from selma3d.core.errors import InputError
from selma3d.preprocess.patchify import load_patch_index

log = logging.getLogger(__name__)


def nested_subset(index: pd.DataFrame, fraction: float, seed: int, keep: Sequence[str] = ()) -> pd.DataFrame:
    """The rows of a patch index (``load_patch_index``) a pretraining run on ``fraction`` sees.

    ``keep``: structures or categories of the source (a row is kept when either matches;
    empty: every row). The kept rows are ordered by (store folder name, patch) and shuffled
    with ``seed``; the first ``ceil(fraction × n)`` (at least one) are returned, in index
    order. For one ``seed`` and ``keep``, a smaller fraction's rows are a subset of a larger one's.
    """
    if not 0 < float(fraction) <= 1:
        raise InputError(None, "a pretraining data fraction in (0, 1]", repr(fraction))
    rows = index
    if keep:
        wanted = set(keep)
        rows = index[index["structure"].isin(wanted) | index["category"].isin(wanted)]
        if rows.empty:
            found = sorted(set(index["structure"]) | set(index["category"]))
            raise InputError("patch index", f"patches whose structure or category is one of {sorted(wanted)}",
                             f"none (structures and categories present: {found})")
    key = pd.DataFrame({"store": [Path(s).name for s in rows["store"]], "patch": rows["patch"].astype(int).values,
                        "row": np.arange(len(rows))})
    ordered = key.sort_values(["store", "patch", "row"], kind="stable")["row"].to_numpy()
    order = ordered[np.random.default_rng(int(seed)).permutation(len(ordered))]
    n = max(1, math.ceil(float(fraction) * len(order) - 1e-9))
    return rows.iloc[np.sort(order[:n])]


def write_pretrain_subset(index_paths: Sequence[str | Path], out: str | Path, fraction: float, seed: int,
                          keep: Sequence[str] = (), source: str = "all") -> Path:
    """Write the index of :func:`nested_subset` for pretraining (patchify's CSV layout, stores
    relative to ``out``'s folder), atomically; logs how many patches it keeps of how many."""
    index = load_patch_index(list(index_paths))
    if index.empty:
        raise InputError(", ".join(map(str, index_paths)), "patch indexes with at least one patch", "none")
    sub = nested_subset(index, fraction, seed, keep).copy()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sub["store"] = [os.path.relpath(s, out.parent.resolve()) for s in sub["store"]]
    with atomic_path(out) as tmp:
        sub.to_csv(tmp, index=False)
    log.info("pretraining data %s, fraction %g: %d of %d patches (seed %d)", source, fraction, len(sub),
             len(index), seed)
    return out
