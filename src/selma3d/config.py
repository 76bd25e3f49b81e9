"""The pipeline's config as the workflow sees it: files, schema defaults, validation, networks.

How a config resolves (``snakemake [--configfile F ...] [--config KEY=VALUE ...]``):

1. the files: those given with ``--configfile``, merged in order; with none, the demo
   ``config/config.yaml`` (:func:`config_files`). A dataset config is never layered over the
   demo, so it gets its own settings plus the schema's defaults, nothing of another dataset;
2. ``--config`` values on top (:func:`parse_overrides`); merging recurses into blocks and
   replaces everything else (lists included), as Snakemake's ``update_config``;
3. validation against the schema (``config.schema.yaml`` beside this module, the only place
   defaults are written), filling in every default (:func:`validate`);
4. the networks every strategy pretrains and finetunes (:func:`resolved_networks`), resolved by
   the functions training uses, checked (a width key its backbone does not read is an error),
   and a warning when a finetuned strategy's patch size differs from ``model.patch_size``.

The Snakefile calls :func:`workflow_config`, ``selma3d config show`` calls :func:`load_config`;
both end in the same steps. Nothing here imports torch.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Iterable, Sequence

from selma3d.core.schema import SCHEMA_PATH, load_schema, schema_default, schema_defaults  # noqa: F401

#: the embedded synthetic demo, relative to the workflow's directory: loaded only without --configfile
DEMO_CONFIG = Path("config") / "config.yaml"


class ConfigWarning(UserWarning):
    """A config that is valid but probably not what was meant."""


# -- files, merging, overrides --------------------------------------------------------------


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A JSON or YAML config file as a dict, read as Snakemake reads ``--configfile`` files
    (its own loader when importable; else JSON first, then YAML with the same loader)."""
    try:
        from snakemake.common.configfile import load_configfile
        from snakemake_interface_common.exceptions import WorkflowError
    except ImportError:
        load_configfile = None
    if load_configfile is not None:
        try:
            return _plain(load_configfile(str(path)))
        except WorkflowError as err:
            raise ValueError(f"{path}: {err}") from err
    import yaml

    text = Path(path).read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except ValueError:
        data = yaml.load(text, Loader=yaml.FullLoader)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a config with keys at the top level, found {type(data).__name__}")
    return data


def merge(base: dict, over: Mapping) -> dict:
    """Merge ``over`` into ``base`` in place and return it: blocks merge, the rest is replaced.

    The rule of ``snakemake.utils.update_config``, which Snakemake applies to ``--configfile``
    files and ``--config`` values.
    """
    for key, value in over.items():
        if isinstance(value, Mapping):
            sub = base.get(key)
            base[key] = merge(sub if isinstance(sub, dict) else {}, value)
        else:
            base[key] = value
    return base


def _plain(obj: Any) -> Any:
    """Nested mappings/sequences as plain dicts and lists (Snakemake hands out its own types)."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def parse_overrides(entries: Iterable[str] | None) -> dict[str, Any]:
    """``--config KEY=VALUE`` entries as Snakemake parses them (int, float, bool, YAML, str)."""
    import yaml

    out: dict[str, Any] = {}
    valid = re.compile(r"[a-zA-Z_][\w-]*\w$")
    for entry in entries or ():
        key, sep, text = entry.partition("=")
        if not sep:
            raise ValueError(f"--config {entry!r}: expected KEY=VALUE")
        if not valid.match(key):
            raise ValueError(f"--config {entry!r}: the key must start with a letter or '_'")
        if text == "":
            merge(out, {key: None})
            continue
        value: Any = text
        for parser in (int, float, _bool, lambda s: yaml.load(s, Loader=yaml.BaseLoader)):
            try:
                value = parser(text)
            except Exception:  # noqa: BLE001 - try the next reading, as Snakemake does
                continue
            if not callable(value):
                break
            value = text
        merge(out, {key: value})
    return out


def _bool(text: str) -> bool:
    if text in ("True", "False"):
        return text == "True"
    raise ValueError(text)


# -- schema: defaults and validation ---------------------------------------------------------


def _default_filling_validator(schema: dict):
    """jsonschema's 2020-12 validator that fills ``default`` values in, as Snakemake's
    ``validate(set_default=True)`` does (defaults set before a block's properties are checked)."""
    from jsonschema import Draft202012Validator, validators

    check_properties = Draft202012Validator.VALIDATORS["properties"]

    def properties(validator, props, instance, subschema):
        if isinstance(instance, dict):
            for name, sub in props.items():
                if "default" in sub:
                    instance.setdefault(name, copy.deepcopy(sub["default"]))
        yield from check_properties(validator, props, instance, subschema)

    return validators.extend(Draft202012Validator, {"properties": properties})(schema)


def validate(config: dict[str, Any], engine: str = "auto") -> dict[str, Any]:
    """Check ``config`` against the schema and fill in every default, in place; return it.

    Args:
        engine: ``snakemake`` (``snakemake.utils.validate(set_default=True)``, what the workflow
            has always used), ``jsonschema`` (the same default-filling validator without
            Snakemake), or ``auto``: Snakemake's when it is importable.
    Raises:
        ValueError: the message names the offending key and the schema rule.
    """
    if engine == "auto":
        try:
            import snakemake.utils  # noqa: F401
            engine = "snakemake"
        except ImportError:
            engine = "jsonschema"
    if engine == "snakemake":
        from snakemake.utils import validate as snakemake_validate
        from snakemake_interface_common.exceptions import WorkflowError

        try:
            snakemake_validate(config, str(SCHEMA_PATH), set_default=True)
        except WorkflowError as err:
            raise ValueError(f"config: {err}") from err
        return config
    if engine != "jsonschema":
        raise ValueError(f"validation engine one of auto, snakemake, jsonschema; found {engine!r}")
    from jsonschema import ValidationError

    try:
        _default_filling_validator(load_schema()).validate(config)
    except ValidationError as err:
        where = ".".join(str(p) for p in err.absolute_path) or "(top level)"
        raise ValueError(f"config: {where}: {err.message} (schema rule {err.validator!r})") from err
    return config


# -- resolution ------------------------------------------------------------------------------


def config_files(cli_configfiles: Sequence[str | Path] | None, basedir: str | Path = ".") -> list[Path]:
    """The files a run's config is read from: the ``--configfile`` ones, else the demo."""
    files = [Path(f) for f in (cli_configfiles or ())]
    return files or [Path(basedir) / DEMO_CONFIG]


def load_config(configfiles: Sequence[str | Path] | None = None, overrides: Mapping | None = None,
                basedir: str | Path = ".", engine: str = "auto", replace: bool = False) -> dict[str, Any]:
    """The config ``snakemake [--configfile F ...] [--config ...]`` runs with, fully resolved.

    Args:
        configfiles: the ``--configfile`` files, merged in order; none: ``basedir``'s demo.
        overrides: ``--config`` values (:func:`parse_overrides`), merged last.
        basedir: the workflow's directory (where ``config/config.yaml`` lives).
        replace: Snakemake's ``--replace-workflow-config``: without config files, start from
            the overrides alone instead of the demo.
    """
    merged: dict[str, Any] = {}
    if configfiles or not (replace and overrides):
        for path in config_files(configfiles, basedir):
            merge(merged, read_config_file(path))
    merge(merged, _plain(overrides or {}))
    return finish(merged, engine=engine)


def workflow_config(config: Mapping, cli_configfiles: Sequence[str | Path] | None, basedir: str | Path,
                    replace: bool = False) -> dict[str, Any]:
    """The Snakefile's config: Snakemake's ``config`` completed as :func:`load_config` would.

    Snakemake has already merged the ``--configfile`` files and the ``--config`` values into
    ``config``; without a config file, ``config`` holds the ``--config`` values only and the
    demo goes underneath.
    """
    merged = _plain(config)
    if not cli_configfiles and not (replace and merged):
        merged = merge(read_config_file(config_files(None, basedir)[0]), merged)
    return finish(merged)


def finish(config: dict[str, Any], engine: str = "auto") -> dict[str, Any]:
    """Validate with defaults filled in, check every network, warn about patch sizes; in place.

    A ``resolved_networks`` block (a report's ``config.yaml`` or ``config show`` output used as
    a config file) is output, not a setting: it is dropped after checking that it is what the
    config resolves to, so such a file reruns the same run and an edited one fails loudly.
    """
    from selma3d.training import runplan

    shown = config.pop("resolved_networks", None)
    validate(config, engine=engine)
    runplan.check_strategies(config)  # names against the strategy registry (the schema lists none)
    networks = resolved_networks(config)
    if shown is not None and _plain(shown) != networks:
        raise ValueError("config: resolved_networks is printed by `selma3d config show`, not a setting, and it "
                         "differs from what this config resolves to; set networks in the model and "
                         "pretrain.<strategy> blocks and drop resolved_networks")
    warn_patch_sizes(config, networks)
    return config


def resolved_networks(config: Mapping) -> dict[str, dict[str, dict[str, Any]]]:
    """The network of every pretrained and every finetuned strategy, as training builds it.

    ``{"pretrain": {strategy: net}, "finetune": {strategy: net}}``; a net is the complete
    ``selma3d.nets.spec.net_config`` (backbone, patch_size, channels and the backbone's width
    and depth keys). Pretraining and finetuning derive theirs with the same function,
    :func:`selma3d.training.runplan.strategy_net`.
    """
    from selma3d.training import runplan

    return {
        "pretrain": {s: runplan.pretrain_network(s, config) for s in config["pretrain"]["strategies"]},
        "finetune": {s: runplan.finetune_network(s, config) for s in config["finetune"]["strategies"]},
    }


def patch_size_mismatches(config: Mapping, networks: Mapping | None = None) -> dict[str, list[int]]:
    """Finetuned strategies whose patch size is not ``model.patch_size``: strategy -> its size."""
    from selma3d.nets.spec import net_config

    networks = networks or resolved_networks(config)
    model = net_config(dict(config["model"]), where="model")["patch_size"]
    return {s: n["patch_size"] for s, n in networks["finetune"].items()
            if "patch_size" in n and n["patch_size"] != model}  # threshold trains no network


def warn_patch_sizes(config: Mapping, networks: Mapping | None = None) -> str | None:
    """Warn (:class:`ConfigWarning`) when finetuned strategies train at another patch size than
    ``model.patch_size``: a team's default patch size wins over the ``model`` block, so such
    strategies finetune, validate and infer with other windows than ``scratch``. Returns the message."""
    from selma3d.nets.spec import net_config

    odd = patch_size_mismatches(config, networks)
    if not odd:
        return None
    model = net_config(dict(config["model"]), where="model")["patch_size"]
    listed = ", ".join(f"{s} {_size(p)}" for s, p in odd.items())
    message = (f"config: finetuned strategies with a patch size other than model.patch_size {_size(model)}: "
               f"{listed}. Their team defaults (or pretrain.<strategy> blocks) set it, so they finetune and "
               f"infer with other windows than the model block's; set patch_size in pretrain.<strategy> to "
               f"change it")
    warnings.warn(message, ConfigWarning, stacklevel=2)
    return message


def _size(p: Sequence[int]) -> str:
    return "x".join(str(int(v)) for v in p)


# -- the report / `selma3d config show` --------------------------------------------------------


def config_report(config: Mapping) -> dict[str, Any]:
    """The resolved config plus ``resolved_networks``: what the report and ``config show`` print."""
    return {**_plain(config), "resolved_networks": resolved_networks(config)}


def report_yaml(config: Mapping) -> str:
    """:func:`config_report` as YAML (the report's ``config.yaml``, ``selma3d config show``)."""
    import yaml

    return yaml.safe_dump(config_report(config), sort_keys=False, default_flow_style=None, width=100)


# -- CLI: selma3d config show ---------------------------------------------------------------


def configure_parser(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    show = sub.add_parser("show", help="print the fully resolved config and every strategy's network as YAML",
                          description="Print the config `snakemake [--configfile ...] [--config ...]` runs "
                                      "with: the files merged in order (the demo config/config.yaml when "
                                      "none is given), --config values on top, schema defaults filled in, "
                                      "plus resolved_networks (each strategy's network as training builds it).")
    show.add_argument("--configfile", "--configfiles", nargs="+", action="extend", default=[], metavar="FILE",
                      help="config files, merged in order (as snakemake --configfile)")
    show.add_argument("--config", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                      help="values set on top (as snakemake --config)")
    show.add_argument("--directory", default=".", metavar="DIR",
                      help="the workflow's directory, where the demo config/config.yaml is (default: .)")


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.configfile, parse_overrides(args.config), basedir=args.directory)
    except (OSError, ValueError) as err:
        print(f"selma3d config show: {err}", file=sys.stderr)
        return 2
    sys.stdout.write(report_yaml(config))
    return 0
