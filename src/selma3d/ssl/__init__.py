"""Self-supervised pretraining strategies, registered by config name.

Adding a strategy: one module in this package that defines a ``Strategy`` subclass decorated
with ``@register("name")``, plus one import line in ``_MODULES`` below.
"""

from __future__ import annotations

import importlib

from .base import Strategy

_REGISTRY: dict[str, type[Strategy]] = {}

#: strategy name -> module that registers it (imported lazily so a dry-run never imports torch)
_MODULES = {
    "mae": "selma3d.ssl.mae",
    "byol": "selma3d.ssl.byol",
    "simclr": "selma3d.ssl.simclr",
    "swin_multitask": "selma3d.ssl.swin_multitask",
    "dino": "selma3d.ssl.dino",
    "mae_text": "selma3d.ssl.mae_text",
}


def register(name: str):
    """Class decorator: make a Strategy available under ``name``."""

    def wrap(cls: type[Strategy]) -> type[Strategy]:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def available() -> list[str]:
    """Names of every SSL strategy (``scratch`` is not one: it skips pretraining)."""
    return sorted(_MODULES)


def get_strategy(name: str) -> type[Strategy]:
    """The Strategy class for a config name; a clear error lists the known names."""
    if name not in _MODULES:
        raise KeyError(f"unknown SSL strategy {name!r}; available: {available()}")
    if name not in _REGISTRY:
        importlib.import_module(_MODULES[name])
    return _REGISTRY[name]


def build_strategy(name: str, config: dict, in_channels: int = 1) -> Strategy:
    return get_strategy(name)(config, in_channels=in_channels)
