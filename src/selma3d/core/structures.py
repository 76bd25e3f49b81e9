"""Structure names, their SELMA3D category and file-name prefixes.

Categories follow SELMA3D 2026: isolated sparse / isolated dense / contiguous sparse /
contiguous dense. The 2024 protocol groups them into spot-like (isolated) and tree-like
(contiguous, plus microglia which the 2024 evaluator scored as tree-like).
"""

from __future__ import annotations

CATEGORIES = ("isolated_sparse", "isolated_dense", "contiguous_sparse", "contiguous_dense")

#: structure -> category (the synthetic dataset uses these names as file-name prefixes)
STRUCTURE_CATEGORY = {
    "cfos_neuron": "isolated_sparse",
    "AD_plaques": "isolated_sparse",
    "protein": "isolated_sparse",
    "microglia": "isolated_sparse",
    "cell_nuclei": "isolated_dense",
    "axonalmarker": "contiguous_sparse",
    "peripheral_nerve": "contiguous_sparse",
    "gutnerve": "contiguous_sparse",
    "blood_vessel": "contiguous_dense",
    "lymphatic_vessel": "contiguous_dense",
}

#: extra file-name prefixes (2024 names, dataset folders) -> canonical structure
PREFIX_ALIASES = {
    "cfos": "cfos_neuron",
    "cFos": "cfos_neuron",
    "c-fos": "cfos_neuron",
    "patchvolume": None,  # 2024 patches carry no structure in the name
    "ab_plaque": "AD_plaques",
    "nucleus": "cell_nuclei",
    "shannel_cells": "cell_nuclei",
    "vessel": "blood_vessel",
    "axon": "axonalmarker",
}

#: 2024 protocol: structure type used for aggregation
SPOT_LIKE_2024 = {"isolated_sparse", "isolated_dense"}


def category_of(structure: str) -> str:
    """Category of a canonical structure name; KeyError names the known ones."""
    try:
        return STRUCTURE_CATEGORY[structure]
    except KeyError:
        raise KeyError(
            f"unknown structure {structure!r}; known: {sorted(STRUCTURE_CATEGORY)}"
        ) from None


def structure_from_name(name: str) -> str | None:
    """Structure encoded as the prefix of a case/file name, or None if it carries none.

    The longest matching prefix wins (``blood_vessel_…`` before ``vessel``). Microglia is a
    structure of its own, listed as isolated in 2026 but scored tree-like in 2024.
    """
    candidates = list(STRUCTURE_CATEGORY) + [k for k, v in PREFIX_ALIASES.items() if v]
    for prefix in sorted(candidates, key=len, reverse=True):
        if name == prefix or name.startswith(prefix + "_") or name.startswith(prefix + "-"):
            return PREFIX_ALIASES.get(prefix, prefix) if prefix in PREFIX_ALIASES else prefix
    return None


def structure_type_2024(structure: str) -> str:
    """2024 structure type: 'spot' (c-Fos-like) or 'tree' (microglia and contiguous)."""
    if structure == "microglia":
        return "tree"
    return "spot" if category_of(structure) in SPOT_LIKE_2024 else "tree"
