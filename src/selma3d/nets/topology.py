"""nnU-Net's network topology rule, without torch: what the ``plan`` rule (CPU env) needs.

:func:`topology` (kernels and strides from a patch size and a voxel spacing) and
:func:`default_filters` are documented in :mod:`selma3d.nets.dynunet`, which builds the MONAI
``DynUNet`` from them and re-exports both. This module imports no torch or MONAI, so
``selma3d.training.plan`` runs in ``envs/core.yaml``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from selma3d.core.errors import InputError


def topology(patch_size: Sequence[int], spacing: Sequence[float] = (1.0, 1.0, 1.0), min_feature_map: int = 4,
             max_pool: int = 5) -> dict[str, Any]:
    """nnU-Net's pooling/kernel rule for a patch (z, y, x) and a voxel spacing (z, y, x).

    Returns a dict with ``kernel_size`` and ``strides`` (one [z, y, x] per stage, the first
    stride [1, 1, 1]; DynUNet's arguments), ``num_pool`` per axis, ``divisor`` (per-axis
    product of strides) and ``patch_size`` (the input rounded up to multiples of ``divisor``).
    """
    if len(patch_size) != 3 or len(spacing) != 3:
        raise InputError(None, "patch_size and spacing as 3 values (z, y, x)", f"{patch_size}, {spacing}")
    if min(spacing) <= 0 or min(patch_size) < 1:
        raise InputError(None, "positive spacing and patch sides", f"spacing {spacing}, patch {patch_size}")
    dim = 3
    cur_spacing = [float(s) for s in spacing]
    cur_size = [int(p) for p in patch_size]
    strides: list[list[int]] = [[1] * dim]
    kernels: list[list[int]] = []
    num_pool = [0] * dim
    kernel = [1] * dim
    while len(strides) - 1 < max_pool:
        valid = [i for i in range(dim) if cur_size[i] >= 2 * min_feature_map]
        if not valid:
            break
        finest = min(cur_spacing[i] for i in valid)
        valid = [i for i in valid if cur_spacing[i] / finest < 2]
        if len(valid) == 1 and cur_size[valid[0]] < 3 * min_feature_map:
            break
        if not valid:
            break
        for d in range(dim):
            if kernel[d] != 3 and cur_spacing[d] / min(cur_spacing) < 2:
                kernel[d] = 3
        stride = [1] * dim
        for v in valid:
            stride[v] = 2
            num_pool[v] += 1
            cur_spacing[v] *= 2
            cur_size[v] = math.ceil(cur_size[v] / 2)
        strides.append(stride)
        kernels.append(list(kernel))
    kernels.append([3] * dim)
    divisor = [2**n for n in num_pool]
    padded = [int(math.ceil(p / d) * d) for p, d in zip(patch_size, divisor)]
    return {"kernel_size": kernels, "strides": strides, "num_pool": num_pool, "divisor": divisor,
            "patch_size": padded}


def default_filters(n_stages: int, base: int = 32, cap: int = 320) -> list[int]:
    """nnU-Net's feature counts: ``base`` doubling per stage, capped at ``cap``."""
    return [min(int(base) * 2**i, int(cap)) for i in range(n_stages)]
