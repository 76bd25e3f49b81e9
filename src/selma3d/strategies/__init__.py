"""Self-supervised pretraining strategies, registered by config name.

Adding a strategy: one module in this package that defines a ``Strategy`` subclass decorated
with ``@register("name")``, plus one line in ``_CATALOG`` below (its module and default backbone).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch stays unimported until a strategy is built
    from selma3d.strategies.base import Strategy

_REGISTRY: dict[str, type["Strategy"]] = {}

#: strategy name -> (module that registers it, default backbone). Modules are imported lazily,
#: so the workflow plans its runs (``selma3d.training.runplan``) without importing torch.
_CATALOG = {
    "mae": ("selma3d.strategies.mae", "swinunetr"),
    "byol": ("selma3d.strategies.byol", "unet"),
    "simclr": ("selma3d.strategies.simclr", "attention_unet"),
    "swin_multitask": ("selma3d.strategies.swin_multitask", "swinunetr"),
    "dino": ("selma3d.strategies.dino", "vit"),
    "mae_text": ("selma3d.strategies.mae_text", "swinunetr"),
}


def register(name: str):
    """Class decorator: make a Strategy available under ``name``."""

    def wrap(cls):
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def available() -> list[str]:
    """Names of every SSL strategy (``scratch`` is not one: it skips pretraining)."""
    return sorted(_CATALOG)


def catalog_order() -> list[str]:
    """The SSL strategies in catalog order (the order figures and tables list them in)."""
    return list(_CATALOG)


def default_backbone(name: str) -> str:
    """The backbone a strategy uses when its config block names none (its class default)."""
    if name not in _CATALOG:
        raise KeyError(f"unknown SSL strategy {name!r}; available: {available()}")
    return _CATALOG[name][1]


def get_strategy(name: str) -> type["Strategy"]:
    """The Strategy class for a config name; a clear error lists the known names."""
    if name not in _CATALOG:
        raise KeyError(f"unknown SSL strategy {name!r}; available: {available()}")
    if name not in _REGISTRY:
        importlib.import_module(_CATALOG[name][0])
    return _REGISTRY[name]


def build_strategy(name: str, config: dict, in_channels: int = 1) -> "Strategy":
    return get_strategy(name)(config, in_channels=in_channels)
