"""Network configs without torch: which keys a backbone reads, their defaults, validation.

A network config is ``backbone``, ``patch_size`` ((z, y, x) voxels), ``in_channels``,
``out_channels`` and the width/depth keys of its backbone (:data:`NET_DEFAULTS`). ``backbone``
and ``patch_size`` default to the config schema's ``model`` block (``selma3d.config``); the
per-backbone keys, which the schema does not list, default to :data:`NET_DEFAULTS`.

:func:`net_config` rejects keys the backbone does not read, so a width key set for another
backbone (``features`` on a SwinUNETR) fails loudly instead of being dropped. Callers holding
a whole strategy config (lr, batch_size, ...) split it first with :func:`split_net_config`.
"""

from __future__ import annotations

import copy
from typing import Any

from selma3d.core.errors import InputError

BACKBONES = ("unet", "swinunetr", "attention_unet", "vit", "dynunet")

#: per-backbone network keys and their defaults (the schema has none for them)
NET_DEFAULTS: dict[str, dict[str, Any]] = {
    "unet": {"features": [32, 32, 64, 128, 256, 32], "dropout": 0.0, "upsample": "deconv"},
    "swinunetr": {
        "feature_size": 24,
        "depths": [2, 2, 2, 2],
        "num_heads": [3, 6, 12, 24],
        "window_size": 7,
        "dropout_path_rate": 0.0,
        "use_checkpoint": False,
        "use_v2": False,
    },
    "attention_unet": {"channels": [16, 32, 64, 128, 256], "strides": [2, 2, 2, 2], "dropout": 0.0},
    "vit": {
        "vit_patch_size": 16,
        "hidden_size": 384,
        "mlp_dim": 1536,
        "num_layers": 12,
        "num_heads": 6,
        "feature_size": 16,
        "dropout": 0.0,
    },
    # nnU-Net's topology from patch_size and spacing (selma3d.nets.topology); None: derived
    "dynunet": {
        "spacing": [1.0, 1.0, 1.0],
        "kernel_size": None,
        "strides": None,
        "filters": None,
        "max_pool": 5,
        "min_feature_map": 4,
        "base_filters": 32,
        "max_filters": 320,
        "deep_supervision": False,
        "deep_supr_num": 2,
        "res_block": False,
        "dropout": 0.0,
    },
}
#: keys every backbone reads
COMMON_KEYS = ("backbone", "patch_size", "in_channels", "out_channels")
#: every key some backbone reads
NET_KEYS = frozenset(COMMON_KEYS).union(*NET_DEFAULTS.values())


def common_defaults() -> dict[str, Any]:
    """``backbone`` and ``patch_size`` from the schema's ``model`` block, plus 1 in / 1 out channel."""
    from selma3d.core.schema import schema_default

    return {"backbone": schema_default("model.backbone"), "patch_size": schema_default("model.patch_size"),
            "in_channels": 1, "out_channels": 1}


def net_keys(backbone: str) -> tuple[str, ...]:
    """The keys a backbone's network reads (common keys first)."""
    check_backbone(backbone)
    return COMMON_KEYS + tuple(NET_DEFAULTS[backbone])


def check_backbone(backbone: Any, where: str | None = None) -> str:
    if backbone not in NET_DEFAULTS:
        raise InputError(where, f"backbone one of {list(BACKBONES)}", repr(backbone))
    return backbone


def split_net_config(cfg: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(network keys, everything else) of a strategy or finetuning config.

    Network keys are those *some* backbone reads (:data:`NET_KEYS`); :func:`net_config` then
    rejects the ones the chosen backbone does not read.
    """
    net = {k: v for k, v in cfg.items() if k in NET_KEYS}
    rest = {k: v for k, v in cfg.items() if k not in NET_KEYS}
    return net, rest


def applicable(cfg: dict[str, Any]) -> dict[str, Any]:
    """The keys of ``cfg`` its backbone reads (default backbone when unset); others dropped.

    For configs stored by older runs (a whole strategy config beside the weights), never for
    configs a user wrote: those go through :func:`net_config`, which names a stray key.
    """
    backbone = cfg.get("backbone") or common_defaults()["backbone"]
    keys = set(net_keys(backbone))
    return {k: v for k, v in cfg.items() if k in keys}


def net_config(cfg: dict[str, Any], where: str | None = None) -> dict[str, Any]:
    """The network config with defaults filled in; a key the backbone does not read is an error.

    Args:
        cfg: network keys only (split a strategy config with :func:`split_net_config`).
            ``None`` values mean "the default".
        where: what ``cfg`` is (e.g. ``pretrain.mae``), named in errors.
    Raises:
        InputError: unknown backbone, a key the backbone does not read (the message names the
            key, the backbone and the keys it reads), or a malformed ``patch_size``.
    """
    common = common_defaults()
    backbone = check_backbone(cfg.get("backbone") or common["backbone"], where)
    allowed = net_keys(backbone)
    unknown = [k for k in cfg if k not in allowed]
    if unknown:
        raise InputError(where, f"network keys of backbone {backbone!r}: {', '.join(allowed)}",
                         f"unknown key {unknown[0]!r}" + (f" (and {unknown[1:]})" if unknown[1:] else ""))
    out = {**common, **copy.deepcopy(NET_DEFAULTS[backbone])}
    out.update({k: v for k, v in cfg.items() if v is not None})
    out["backbone"] = backbone
    ps = out["patch_size"]
    ps = [int(ps)] * 3 if isinstance(ps, (int, float)) else [int(p) for p in ps]
    if len(ps) != 3:
        raise InputError(where, "patch_size as 3 ints (z, y, x)", repr(out["patch_size"]))
    out["patch_size"] = ps
    return out
