"""Self-supervised pretraining strategies, registered by config name.

Adding a strategy: one module in this package that defines a ``Strategy`` subclass decorated
with ``@register("name")``, one line in ``_CATALOG`` below (its module) and its team defaults in
:data:`selma3d.strategies.defaults.TEAM_DEFAULTS` (which the class reads as its ``defaults``).

Everything here is torch-free: the workflow plans its runs and ``selma3d config show`` resolves
each strategy's network (:func:`resolve_strategy_config`, :func:`strategy_network`) without
importing a strategy module.
"""

from __future__ import annotations

import copy
import importlib
from typing import TYPE_CHECKING, Any

from selma3d.strategies.defaults import TEAM_DEFAULTS

if TYPE_CHECKING:  # torch stays unimported until a strategy is built
    from selma3d.strategies.base import Strategy

_REGISTRY: dict[str, type["Strategy"]] = {}

#: strategy name -> module that registers it. Modules are imported lazily, so the workflow plans
#: its runs (``selma3d.training.runplan``) without importing torch.
_CATALOG = {
    "mae": "selma3d.strategies.mae",
    "byol": "selma3d.strategies.byol",
    "simclr": "selma3d.strategies.simclr",
    "swin_multitask": "selma3d.strategies.swin_multitask",
    "dino": "selma3d.strategies.dino",
    "mae_text": "selma3d.strategies.mae_text",
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


def _check(name: str) -> None:
    if name not in _CATALOG:
        raise KeyError(f"unknown SSL strategy {name!r}; available: {available()}")


def team_defaults(name: str) -> dict[str, Any]:
    """A copy of the team's default settings of a strategy (its class's ``defaults``)."""
    _check(name)
    return copy.deepcopy(TEAM_DEFAULTS[name])


def default_backbone(name: str) -> str:
    """The backbone a strategy uses when its config block names none (its team default)."""
    _check(name)
    return TEAM_DEFAULTS[name]["backbone"]


def resolve_strategy_config(name: str, model: dict | None, block: dict | None) -> dict[str, Any]:
    """A strategy's settings: the ``model`` block, then the team's defaults, then its config block.

    The one resolution pretraining, finetuning (``scratch_<name>``) and ``selma3d config show``
    use. ``None`` values count as unset. Network keys of the ``model`` block and of the team
    defaults that the resolved backbone does not read are left out (a UNet's ``features`` does
    not follow a strategy onto SwinUNETR); one set in ``block`` stays and fails in
    :func:`strategy_network` with a message naming it.
    """
    from selma3d.nets import spec

    _check(name)
    team = team_defaults(name)
    block = {k: v for k, v in (block or {}).items() if v is not None}
    backbone = block.get("backbone") or team["backbone"]
    reads = set(spec.net_keys(spec.check_backbone(backbone, f"pretrain.{name}")))
    inherited = {k: copy.deepcopy(v) for k, v in (model or {}).items() if k in reads and v is not None}
    team = {k: v for k, v in team.items() if k in reads or k not in spec.NET_KEYS}
    return {**inherited, **team, **copy.deepcopy(block)}


def strategy_network(name: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The network (``selma3d.nets.spec.net_config``) a strategy builds from its resolved settings."""
    from selma3d.nets import spec

    return spec.net_config(spec.split_net_config(settings)[0], where=f"pretrain.{name}")


def get_strategy(name: str) -> type["Strategy"]:
    """The Strategy class for a config name; a clear error lists the known names."""
    _check(name)
    if name not in _REGISTRY:
        importlib.import_module(_CATALOG[name])
    return _REGISTRY[name]


def build_strategy(name: str, config: dict, in_channels: int = 1) -> "Strategy":
    return get_strategy(name)(config, in_channels=in_channels)
