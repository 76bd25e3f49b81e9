"""``dynunet`` backbone: MONAI ``DynUNet`` with nnU-Net's topology rule.

nnU-Net (Isensee et al., Nature Methods 2021) derives the U-Net from the patch size and the
voxel spacing; :func:`topology` reproduces its ``get_pool_and_conv_props``:

- per stage, an axis is down-sampled (stride 2) only if its feature map is at least
  ``2 * min_feature_map`` voxels (so no map gets smaller than ``min_feature_map``, default 4)
  **and** its current spacing is less than twice the finest current spacing (anisotropy: a
  coarse z axis waits until y/x have been pooled to its spacing). A lone poolable axis must
  even be ``>= 3 * min_feature_map``. At most ``max_pool`` down-samplings (default 5, i.e. up
  to 6 stages).
- kernel size is 3 along an axis once its spacing is within 2x of the finest, 1 before that
  (an axis pooled late also starts with a 1-wide kernel); the bottleneck always uses 3.
- filters start at 32 and double per stage, capped at 320 (``base_filters``, ``max_filters``).
- instance norm (affine) and leaky ReLU (slope 0.01) as in nnU-Net (MONAI's defaults).

Config keys (``selma3d.nets.models.NET_DEFAULTS["dynunet"]``): ``spacing`` (z, y, x; only
ratios matter), ``kernel_size``/``strides``/``filters`` (``None``: derived as above; give them
explicitly to pin a plan), ``max_pool``, ``min_feature_map``, ``base_filters``,
``max_filters``, ``deep_supervision``, ``deep_supr_num``, ``res_block``, ``dropout``.
:func:`resolve` fills the derived values; the network keeps the resolved config so a saved
model rebuilds the same topology.

Patch sides must be multiples of the per-axis product of strides (:func:`total_strides`);
:func:`topology` returns the smallest valid patch at least as large as the one asked for.

Encoder (what SSL pretrains and ``frozen`` freezes): ``input_block``, ``downsamples.<i>``,
``bottleneck``. Output layers: ``output_block`` and the deep-supervision heads. MONAI's
``DynUNet`` registers its blocks twice (as attributes and inside the recursive
``skip_layers``), so its state dict lists every tensor under two names sharing storage;
loading either name loads both.

Deep supervision: in ``train()`` mode with ``deep_supervision`` the network returns a
(B, 1 + deep_supr_num, C, D, H, W) stack (main output first, heads nearest-upsampled to full
size); in ``eval()`` mode a single (B, C, D, H, W) output. Train it with
:class:`selma3d.training.deep_supervision.DeepSupervisionLoss`. SSL pretext tasks read the
main output only (:func:`single_output`).
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from selma3d.core.errors import InputError
from selma3d.nets.spec import NET_DEFAULTS
from selma3d.nets.topology import default_filters, topology  # noqa: F401  (re-exported)

#: network keys of the ``dynunet`` backbone and their defaults (torch-free, in nets.spec)
DEFAULTS: dict[str, Any] = NET_DEFAULTS["dynunet"]

ENCODER_PREFIXES = ["input_block.", "downsamples.", "bottleneck."]


def _as3(v) -> list[int]:
    return [int(v)] * 3 if isinstance(v, (int, float)) else [int(x) for x in v]


def total_strides(cfg: dict[str, Any]) -> list[int]:
    """Per-axis (z, y, x) product of the strides of a resolved config."""
    out = [1, 1, 1]
    for s in cfg["strides"]:
        out = [a * b for a, b in zip(out, _as3(s))]
    return out


def resolve(cfg: dict[str, Any]) -> dict[str, Any]:
    """Fill ``kernel_size``, ``strides``, ``filters`` and an admissible ``deep_supr_num``.

    ``cfg`` is a network config with the keys of :data:`DEFAULTS` and ``patch_size``
    (``selma3d.nets.models.net_config`` output). Explicit values are kept (checked).
    """
    c = {**DEFAULTS, **{k: v for k, v in cfg.items() if v is not None or k not in DEFAULTS}}
    ps = _as3(c["patch_size"])
    spacing = [float(s) for s in (c["spacing"] if not isinstance(c["spacing"], (int, float))
                                  else [c["spacing"]] * 3)]
    if c["kernel_size"] is None or c["strides"] is None:
        topo = topology(ps, spacing, int(c["min_feature_map"]), int(c["max_pool"]))
        kernels = c["kernel_size"] if c["kernel_size"] is not None else topo["kernel_size"]
        strides = c["strides"] if c["strides"] is not None else topo["strides"]
    else:
        kernels, strides = c["kernel_size"], c["strides"]
    kernels = [_as3(k) for k in kernels]
    strides = [_as3(s) for s in strides]
    if len(kernels) != len(strides) or len(strides) < 3:
        raise InputError(None, "dynunet kernel_size and strides of equal length >= 3 (at least 2 down-samplings)",
                         f"kernel_size {kernels}, strides {strides} (patch {ps}: too small?)")
    filters = c["filters"]
    if filters is None:
        filters = default_filters(len(strides), int(c["base_filters"]), int(c["max_filters"]))
    filters = [int(f) for f in filters]
    if len(filters) != len(strides):
        raise InputError(None, f"dynunet filters with {len(strides)} entries (one per stage)", repr(filters))
    ds = bool(c["deep_supervision"])
    n_up = len(strides) - 1
    dsn = max(1, min(int(c["deep_supr_num"]), n_up - 1))
    c.update(patch_size=ps, spacing=spacing, kernel_size=kernels, strides=strides, filters=filters,
             deep_supervision=ds, deep_supr_num=dsn)
    return c


def check_patch(cfg: dict[str, Any]) -> None:
    """Raise :class:`InputError` unless the patch fits the strides (and the bottleneck holds
    more than one voxel, as instance norm needs)."""
    c = resolve(cfg)
    div = total_strides(c)
    ps = c["patch_size"]
    deepest = [p // d for p, d in zip(ps, div)]
    if any(p % d for p, d in zip(ps, div)) or math.prod(deepest) < 2:
        good = [int(math.ceil(p / d) * d) for p, d in zip(ps, div)]
        raise InputError(None, f"patch_size sides divisible by {div} (per axis) for backbone 'dynunet', e.g. {good}",
                         f"patch_size {ps}")


def build(cfg: dict[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
    """MONAI ``DynUNet`` from a network config; returns (net, resolved config)."""
    from monai.networks.nets import DynUNet

    c = resolve(cfg)
    check_patch(c)
    dropout = float(c["dropout"]) or None
    net = DynUNet(spatial_dims=3, in_channels=int(c.get("in_channels", 1)), out_channels=int(c.get("out_channels", 1)),
                  kernel_size=c["kernel_size"], strides=c["strides"], upsample_kernel_size=c["strides"][1:],
                  filters=c["filters"], dropout=dropout, norm_name=("INSTANCE", {"affine": True}),
                  act_name=("leakyrelu", {"inplace": True, "negative_slope": 0.01}),
                  deep_supervision=c["deep_supervision"], deep_supr_num=c["deep_supr_num"],
                  res_block=bool(c["res_block"]))
    return net, c


def encoder_modules(net: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of the encoder, shallow to deep: input block, down-samplings, bottleneck."""
    return ([("input_block", net.input_block)] + [(f"downsamples.{i}", m) for i, m in enumerate(net.downsamples)]
            + [("bottleneck", net.bottleneck)])


def output_prefixes(cfg: dict[str, Any] | None = None) -> list[str]:
    """Prefixes of the output layers: the 1x1 output block, the deep-supervision heads and
    their aliases inside ``skip_layers`` (head i sits at ``skip_layers`` + i x ``.next_layer``)."""
    # cover every depth DynUNet can have (a prefix matching no key is harmless)
    return ["output_block.", "deep_supervision_heads."] + [
        "skip_layers" + ".next_layer" * i + ".super_head." for i in range(1, 12)]


def single_output(net: nn.Module) -> nn.Module:
    """Make a network return its main output only, also in train mode (SSL pretext tasks);
    the deep-supervision heads stop training. A no-op for other networks."""
    if getattr(net, "deep_supervision", False) and hasattr(net, "deep_supervision_heads"):
        net.deep_supervision = False
        for p in net.deep_supervision_heads.parameters():
            p.requires_grad_(False)
    return net


def head_factors(cfg: dict[str, Any]) -> list[list[int]]:
    """Per-axis down-sampling factor of each output in the deep-supervision stack: [1, 1, 1]
    for the main output, then head i (1-based) at the product of ``strides[0..i]``."""
    c = resolve(cfg)
    out = [[1, 1, 1]]
    f = _as3(c["strides"][0])
    for i in range(1, c["deep_supr_num"] + 1):
        f = [a * b for a, b in zip(f, _as3(c["strides"][i]))]
        out.append(list(f))
    return out
