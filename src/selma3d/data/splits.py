"""Label budgets: which annotated training cases a finetuning run sees (the ``split`` rule).

Runs in the CPU environment (``envs/core.yaml``): numpy and pandas only, no torch.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def draw_budget(pairs: pd.DataFrame, budget: int | str, seed: int) -> pd.DataFrame:
    """Pick ``budget`` training cases per structure (stratified, reproducible by seed).

    ``"all"`` keeps every case. A structure with fewer cases than the budget keeps all of them.
    """
    if str(budget) == "all":
        return pairs.sort_values("case").reset_index(drop=True)
    budget = int(budget)
    if budget < 1:
        raise ValueError(f"label budget must be >= 1 or 'all', got {budget}")
    rng = np.random.default_rng([seed, budget])
    chosen = []
    for structure in sorted(pairs["structure"].unique()):
        group = pairs[pairs["structure"] == structure].sort_values("case")
        take = rng.permutation(len(group))[: min(budget, len(group))]
        chosen.append(group.iloc[np.sort(take)])
    return pd.concat(chosen, ignore_index=True)
