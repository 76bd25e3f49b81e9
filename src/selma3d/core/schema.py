"""The config schema and its defaults: the one place a default value is written.

Library functions that take a config value default to :func:`schema_default` (``"block.key"``),
so a rule, the CLI and a direct call agree. This module needs only PyYAML (it runs in every
environment); validation and config resolution live in :mod:`selma3d.config`.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "config.schema.yaml"


@functools.lru_cache(maxsize=1)
def _schema_text() -> str:
    return SCHEMA_PATH.read_text(encoding="utf-8")


def load_schema() -> dict[str, Any]:
    """The config schema (a fresh copy)."""
    import yaml

    return yaml.safe_load(_schema_text())


def _fill(instance: dict, schema: dict) -> dict:
    """Fill ``default`` values into ``instance`` as a default-filling validator does: a
    property's default is set, then the properties of that block are filled in turn."""
    for name, sub in (schema.get("properties") or {}).items():
        if "default" in sub and name not in instance:
            instance[name] = copy.deepcopy(sub["default"])
        if isinstance(instance.get(name), dict) and "properties" in sub:
            _fill(instance[name], sub)
    return instance


@functools.lru_cache(maxsize=1)
def _defaults() -> dict[str, Any]:
    return _fill({}, load_schema())


def schema_defaults() -> dict[str, Any]:
    """The config every key of which is the schema's default (a fresh copy)."""
    return copy.deepcopy(_defaults())


def schema_default(path: str) -> Any:
    """The schema's default of one key, by dotted path (``"finetune.steps"``); a fresh copy."""
    node: Any = _defaults()
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(f"the config schema has no default for {path!r}")
        node = node[part]
    return copy.deepcopy(node)
