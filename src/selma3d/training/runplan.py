"""Which finetuning runs a config asks for, decided from the config alone (no torch).

The workflow builds its DAG from :func:`finetune_runs`, so a dry-run stays cheap. Two rules
shape the plan beyond the plain product strategies × modes × budgets × seeds:

- ``adapter`` mode exists for ViT encoders only (team Tonyxu's frozen ViT + adapter); other
  strategies skip it instead of failing mid-run.
- ``scratch`` trains the ``model`` block's net without pretraining (the paper's "wo/ SSL").
  ``scratch_<strategy>`` trains the net of ``<strategy>``'s config block without pretraining,
  so an SSL strategy whose backbone differs from the shared one (SwinUNETR, ViT) has a baseline
  of the same architecture; the ablation table pairs them (``baseline_for``).
- ``threshold`` is the classical baseline (``selma3d.training.classical``): no network and no
  pretraining, so it runs in mode ``full`` only; it is scored and ranked like any run.

With ``finetune.ensemble`` and two or more seeds, :func:`ensemble_runs` adds one more run per
network run: the ensemble of its seeds (seed label ``ens``, leaderboard mode ``<mode>+ens``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from selma3d import strategies

SCRATCH = "scratch"
SCRATCH_PREFIX = "scratch_"
#: the classical baseline: a per-structure intensity threshold, no network
THRESHOLD = "threshold"
#: the seed label of an ensemble run (folder ``b<budget>_sens``): the mean of its seeds' models
ENSEMBLE = "ens"
#: how the leaderboard tells an ensemble run from its single-seed runs: mode ``<mode>+ens``
ENSEMBLE_MODE_SUFFIX = "+ens"
#: finetuning modes and the backbones each one applies to (None: any)
MODE_BACKBONES: dict[str, tuple[str, ...] | None] = {"full": None, "frozen": None, "adapter": ("vit",)}


def scratch_reference(strategy: str) -> str | None:
    """``dino`` for ``scratch_dino``; None for ``scratch`` and for SSL strategies."""
    if strategy.startswith(SCRATCH_PREFIX):
        return strategy[len(SCRATCH_PREFIX):]
    return None


def is_pretrained(strategy: str) -> bool:
    """Whether a finetuning strategy starts from SSL weights (everything but the scratch runs
    and the classical ``threshold`` baseline)."""
    return strategy not in (SCRATCH, THRESHOLD) and scratch_reference(strategy) is None


def strategy_net(strategy: str, model: Mapping[str, Any], blocks: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The network a strategy trains: the one resolution pretraining, finetuning and
    ``selma3d config show`` share.

    ``scratch`` trains the ``model`` block's net; an SSL strategy and ``scratch_<s>`` the net of
    ``<s>``'s settings (``model`` block < team defaults < ``blocks[<s>]``,
    :func:`selma3d.strategies.resolve_strategy_config`). Returns the complete
    ``selma3d.nets.spec.net_config``; a key the backbone does not read is an error naming it.
    """
    from selma3d.nets.spec import net_config

    if strategy == THRESHOLD:  # the classical baseline trains no network
        return {"backbone": "classical"}
    if strategy == SCRATCH:
        return net_config(dict(model or {}), where="model")
    name = scratch_reference(strategy) or strategy
    if is_external(name):  # published weights: the network of their config entry
        return external_net(name, model, (blocks or {}).get(name))
    settings = strategies.resolve_strategy_config(name, model, (blocks or {}).get(name))
    return strategies.strategy_network(name, settings)


def pretrain_network(strategy: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """The network an SSL strategy pretrains under ``config`` (and exports to finetuning)."""
    return strategy_net(strategy, config["model"], config.get("pretrain") or {})


def finetune_network(strategy: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """The network a finetuning strategy (``scratch``, ``<s>``, ``scratch_<s>``, ``ext_<name>``)
    trains under ``config``."""
    return strategy_net(strategy, config["model"], {**(config.get("pretrain") or {}), **external_nets(config)})


def strategy_backbone(strategy: str, config: Mapping[str, Any]) -> str:
    """The backbone a finetuning strategy trains (:func:`finetune_network`)."""
    return finetune_network(strategy, config)["backbone"]


def modes_for(strategy: str, config: dict[str, Any]) -> list[str]:
    """The configured finetuning modes that apply to this strategy's backbone. ``threshold``
    has no network to freeze or adapt: it runs once per budget and seed, as ``full``, whatever
    the modes (the classical reference of every comparison)."""
    if strategy == THRESHOLD:
        return ["full"]
    backbone = strategy_backbone(strategy, config)
    return [m for m in config["finetune"]["modes"] if MODE_BACKBONES[m] is None or backbone in MODE_BACKBONES[m]]


def finetune_runs(config: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(strategy, mode, budget, seed) for every finetuning run the config asks for."""
    ft = config["finetune"]
    return [
        (s, m, str(b), str(seed))
        for s in ft["strategies"]
        for m in modes_for(s, config)
        for b in ft["budgets"]
        for seed in ft["seeds"]
    ]


def check_strategies(config: dict[str, Any]) -> None:
    """Fail before any job when finetuning names a strategy nothing provides, or no mode fits one."""
    known_ssl = strategies.available()
    pretrained = config["pretrain"]["strategies"]
    unknown = [s for s in pretrained if s not in known_ssl]
    if unknown:
        raise ValueError(f"config: pretrain.strategies lists {unknown}, which the strategy registry does not "
                         f"know; known: {known_ssl}")
    for s in config["finetune"]["strategies"]:
        ref = scratch_reference(s)
        if is_external(ref or s):
            check_external(ref or s, config, weights_needed=ref is None)
            continue
        if s in (SCRATCH, THRESHOLD):
            continue
        if ref is not None:
            if ref not in known_ssl:
                raise ValueError(f"config: finetune.strategies lists {s!r}, but {ref!r} is no SSL strategy; "
                                 f"known: {sorted(known_ssl)}")
        elif s not in pretrained:
            raise ValueError(f"config: finetune.strategies lists {s!r}, which pretrain.strategies "
                             f"{pretrained} does not pretrain; add it there or remove it")
    for s in config["finetune"]["strategies"]:
        if config["finetune"]["modes"] and not modes_for(s, config):
            raise ValueError(f"config: no finetune.modes {config['finetune']['modes']} apply to {s!r} "
                             f"(backbone {strategy_backbone(s, config)!r}); 'adapter' needs a 'vit' backbone")


def baseline_for(strategy: str, strategies) -> str:
    """The "without SSL" run an SSL strategy (``mae``, or ``mae@f0.25`` pretrained on a data
    variant) is compared with: ``scratch_<s>`` when run, else ``scratch``."""
    own = SCRATCH_PREFIX + split_run_strategy(strategy)[0]
    return own if own in set(strategies) else SCRATCH


# -- published pretrained weights (config block ``pretrained``) -------------------------------

#: finetuning strategy ``ext_<name>`` starts from the weights of ``pretrained.<name>``
EXTERNAL_PREFIX = "ext_"


def is_external(strategy: str) -> bool:
    """Whether a finetuning strategy starts from published weights (``ext_<name>``)."""
    return strategy.startswith(EXTERNAL_PREFIX)


def external_name(strategy: str) -> str | None:
    """``swinvit_tang`` for ``ext_swinvit_tang`` and ``scratch_ext_swinvit_tang``; else None."""
    name = scratch_reference(strategy) or strategy
    return name[len(EXTERNAL_PREFIX):] if is_external(name) else None


def external_entry(name: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """The ``pretrained.<name>`` entry; a missing one is an error naming the known ones."""
    known = config.get("pretrained") or {}
    if name not in known:
        raise ValueError(f"config: finetune.strategies lists {EXTERNAL_PREFIX}{name}, but pretrained.{name} is not "
                         f"set; known: {sorted(known)} (add config/manifests/pretrained_weights.yaml with --configfile, or "
                         f"an entry of your own)")
    return dict(known[name])


def external_nets(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{ext_<name>: network keys}`` of every ``pretrained`` entry (the blocks :func:`strategy_net`
    reads): the format's published architecture, then the entry's ``net`` keys."""
    from selma3d.nets.formats import CATALOG

    out = {}
    for n, e in (config.get("pretrained") or {}).items():
        fmt = CATALOG.get(e.get("format"))
        out[EXTERNAL_PREFIX + n] = {**(fmt.net if fmt else {}), **dict(e.get("net") or {})}
    return out


def external_net(strategy: str, model: Mapping[str, Any] | None, block: Mapping[str, Any] | None) -> dict[str, Any]:
    """The network published weights fill: ``block`` (:func:`external_nets`: the format's
    published architecture < the entry's ``net``); ``patch_size`` defaults to the ``model`` block's."""
    from selma3d.nets.spec import net_config

    block = dict(block or {})
    out = {"patch_size": (model or {}).get("patch_size"), **block}
    if out["patch_size"] is None:
        out.pop("patch_size")
    return net_config(out, where=f"pretrained.{strategy[len(EXTERNAL_PREFIX):]}.net")


def check_external(strategy: str, config: Mapping[str, Any], weights_needed: bool = True) -> None:
    """Refuse an ``ext_<name>`` run before any job: unknown entry or format, a network its
    format cannot fill, or (when the weights are needed) no SHA-256 to verify the download."""
    from selma3d.nets.formats import CATALOG

    name = strategy[len(EXTERNAL_PREFIX):]
    entry = external_entry(name, config)
    fmt = CATALOG.get(entry["format"])
    if fmt is None:
        raise ValueError(f"config: pretrained.{name}.format {entry['format']!r} is no weights format; "
                         f"known: {sorted(CATALOG)}")
    if fmt.backbone is None:
        raise ValueError(f"config: pretrained.{name}.format {entry['format']!r} maps onto no backbone of this "
                         f"pipeline ({fmt.description})")
    backbone = (entry.get("net") or {}).get("backbone")
    if backbone != fmt.backbone:
        raise ValueError(f"config: pretrained.{name}.net.backbone must be {fmt.backbone!r} for format "
                         f"{entry['format']!r}; found {backbone!r}")
    if weights_needed and not entry.get("sha256"):
        raise ValueError(f"config: pretrained.{name}.sha256 is null: the source publishes no SHA-256 for "
                         f"{entry['url']}; download it yourself, check it against what the source does publish, "
                         f"and set pretrained.{name}.sha256 (the workflow never runs unverified weights)")

# ------------------------------------------------------------------ pretraining-data scaling
#
# ``pretrain.data_fractions`` × ``pretrain.data_sources`` are the pretraining data variants
# (SELMA3D 2026 Task 2: how SSL gains scale with the amount and diversity of unannotated data).
# A variant is a tag appended to a pretrained strategy's folder: ``mae`` (every patch of every
# source, the default), ``mae@f0.25`` (a nested quarter), ``mae@nuclei`` (source ``nuclei``),
# ``mae@f0.25-nuclei``. Finetuning runs of a pretrained strategy carry the tag of the encoder
# they started from (``finetune/mae@f0.25/full/b5_s0``), so the leaderboard tells them apart.

DATA_SEP = "@"
#: the source of every unannotated patch (no tag)
ALL_SOURCES = "all"
SCALE_STEPS = ("same_steps", "same_epochs")


def data_tag(fraction: float, source: str = ALL_SOURCES) -> str:
    """``""`` for all of every source, else ``@f<fraction>``, ``@<source>`` or ``@f<fraction>-<source>``."""
    parts = [] if float(fraction) == 1.0 else [f"f{float(fraction):g}"]
    if source != ALL_SOURCES:
        parts.append(source)
    return DATA_SEP + "-".join(parts) if parts else ""


def parse_data_tag(tag: str) -> tuple[float, str]:
    """(fraction, source) of a tag made by :func:`data_tag` (``""``: ``(1.0, "all")``)."""
    if not tag:
        return 1.0, ALL_SOURCES
    if not tag.startswith(DATA_SEP):
        raise ValueError(f"pretraining data tag {tag!r}: expected '' or '{DATA_SEP}...'")
    first, _, rest = tag[len(DATA_SEP):].partition("-")
    if first[:1] == "f" and first[1:2].isdigit():
        return float(first[1:]), rest or ALL_SOURCES
    return 1.0, tag[len(DATA_SEP):]


def split_run_strategy(name: str) -> tuple[str, str]:
    """``mae@f0.25`` -> ``("mae", "@f0.25")``; a name without a tag -> ``(name, "")``."""
    strategy, sep, rest = str(name).partition(DATA_SEP)
    return strategy, sep + rest


def pretrain_data(name: str) -> tuple[float, str] | None:
    """(fraction, source) of the pretraining data a finetuning run (``mae@f0.25``) started from;
    None for runs without pretraining (``scratch``, ``scratch_<s>``, ``threshold``)."""
    strategy, tag = split_run_strategy(name)
    return parse_data_tag(tag) if is_pretrained(strategy) and not is_external(strategy) else None


def data_tags(config: Mapping[str, Any]) -> list[str]:
    """Every pretraining data variant configured: sources (``all`` when none) × fractions."""
    pre = config["pretrain"]
    sources = list(pre.get("data_sources") or {}) or [ALL_SOURCES]
    fractions = sorted({float(f) for f in pre.get("data_fractions") or [1.0]})
    return [data_tag(f, s) for s in sources for f in fractions]


def pretrain_ids(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(strategy, tag) of every pretraining job: each SSL strategy × each data variant."""
    return [(s, t) for s in config["pretrain"]["strategies"] for t in data_tags(config)]


def scaled_runs(config: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """:func:`finetune_runs` with the pretraining data tag: a pretrained strategy runs once per
    data variant, the others (no pretraining) once with tag ``""``."""
    tags = data_tags(config)
    return [(s, m, b, seed, t) for s, m, b, seed in finetune_runs(config)
            for t in (tags if is_pretrained(s) and not is_external(s) else [""])]


def ensemble_runs(config: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(strategy, mode, budget, :data:`ENSEMBLE`, data tag) for every network run whose seeds
    ``finetune.ensemble`` averages: none unless it is on and two or more seeds are configured;
    never ``threshold`` (no network)."""
    ft = config["finetune"]
    if not ft.get("ensemble") or len(set(ft["seeds"])) < 2:
        return []
    runs = {(s, m, b, t) for s, m, b, _, t in scaled_runs(config) if s != THRESHOLD}
    return [(s, m, b, ENSEMBLE, t) for s, m, b, t in sorted(runs)]


def ensemble_mode(mode: str) -> str:
    """The leaderboard's mode of an ensemble run: ``full`` -> ``full+ens``."""
    return f"{mode}{ENSEMBLE_MODE_SUFFIX}"


def split_ensemble_mode(mode: str) -> tuple[str, bool]:
    """``full+ens`` -> (``full``, True); ``full`` -> (``full``, False)."""
    if str(mode).endswith(ENSEMBLE_MODE_SUFFIX):
        return str(mode)[: -len(ENSEMBLE_MODE_SUFFIX)], True
    return str(mode), False


def pretrain_steps(steps: int, fraction: float, scale: str) -> int:
    """Steps of a pretraining run on ``fraction`` of the patches: ``same_steps`` keeps ``steps``
    (same compute, more passes over less data); ``same_epochs`` scales them with the data
    (``ceil(steps × fraction)``, at least 1: the passes over the data of a full run)."""
    if scale not in SCALE_STEPS:
        raise ValueError(f"pretrain.scale_steps {scale!r}: expected one of {SCALE_STEPS}")
    if not 0 < float(fraction) <= 1:
        raise ValueError(f"pretraining data fraction {fraction!r}: expected 0 < fraction <= 1")
    return int(steps) if scale == "same_steps" else max(1, math.ceil(int(steps) * float(fraction) - 1e-9))


def data_subset(config: Mapping[str, Any], tag: str) -> dict[str, Any]:
    """What the ``pretrain_data`` rule draws for a tag: fraction, source, the structures or
    categories it keeps (empty: all) and the seed."""
    fraction, source = parse_data_tag(tag)
    sources = dict(config["pretrain"].get("data_sources") or {})
    if source != ALL_SOURCES and source not in sources:
        raise ValueError(f"pretraining data tag {tag!r}: source {source!r} is not in pretrain.data_sources "
                         f"{sorted(sources)}")
    return {"fraction": fraction, "source": source, "keep": list(sources.get(source) or []),
            "seed": int(config["seed"])}
