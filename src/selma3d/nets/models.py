"""Segmentation backbones (MONAI), their encoder parts, pretrained-weight loading, finetune modes.

Every network takes 1 input channel and returns **one output channel: the foreground logit**
(apply ``sigmoid`` for a probability; threshold the logit at 0 for a mask). One channel keeps
every SELMA3D task binary, makes losses (Dice/BCE/blob/clDice) unambiguous, and lets a masked
inpainting strategy reuse the same output layer shape for the reconstruction.

Backbones (``cfg["backbone"]``):

- ``unet``: MONAI ``BasicUNet`` (clean ``conv_0 / down_i / upcat_i / final_conv`` names, so the
  encoder is a set of key prefixes). Patch sides must be multiples of 16.
- ``swinunetr``: MONAI ``SwinUNETR``; the encoder is ``swinViT`` (what Tang et al. pretrain).
  Patch sides must be multiples of 32 and at least 64; ``feature_size`` a multiple of 12.
- ``attention_unet``: MONAI ``AttentionUnet``; the encoder is the chain of down-sampling conv
  blocks inside its nested attention layers. Patch sides multiple of ``prod(strides)``.
- ``vit``: :class:`ViTSegNet`, a MONAI ``ViT`` encoder (any power-of-two token size, any depth;
  MONAI's ``UNETR`` hard-codes 16³ tokens and 12 layers) plus a UNETR-style conv decoder
  built from MONAI's UNETR blocks. Positional embeddings are interpolated for other input
  sizes (DINO local crops). The encoder is ``vit``.
- ``dynunet``: MONAI ``DynUNet`` with nnU-Net's topology (kernels/strides from ``patch_size``
  and ``spacing``), see :mod:`selma3d.nets.dynunet`. The encoder is ``input_block``,
  ``downsamples`` and ``bottleneck``; optional deep supervision.

The strategy and the finetuning run must build the network from the same config; the keys it
reads are listed in :data:`selma3d.nets.spec.NET_DEFAULTS` (torch-free, with :func:`net_config`);
any other key is an error naming it.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from selma3d.core.errors import InputError
from selma3d.nets import dynunet as _dynunet
from selma3d.nets.spec import BACKBONES, NET_DEFAULTS, applicable, net_config, split_net_config  # noqa: F401

log = logging.getLogger(__name__)

FINETUNE_MODES = ("full", "frozen", "adapter")


def encoder_stride(cfg: dict[str, Any]) -> int:
    """Down-sampling factor between the input and the deepest encoder feature map."""
    c = net_config(cfg)
    b = c["backbone"]
    if b == "unet":
        return 16
    if b == "swinunetr":
        return 32
    if b == "attention_unet":
        return int(math.prod(c["strides"]))
    if b == "dynunet":  # per axis in _dynunet.total_strides; the largest here
        return int(max(_dynunet.total_strides(_dynunet.resolve(c))))
    return int(c["vit_patch_size"])


def encoder_channels(cfg: dict[str, Any]) -> int:
    """Channels of the deepest encoder feature map (what SSL heads pool)."""
    c = net_config(cfg)
    b = c["backbone"]
    if b == "unet":
        return int(c["features"][4])
    if b == "swinunetr":
        return int(c["feature_size"]) * 16
    if b == "attention_unet":
        return int(c["channels"][-1])
    if b == "dynunet":
        return int(_dynunet.resolve(c)["filters"][-1])
    return int(c["hidden_size"])


def _check_patch(c: dict[str, Any]) -> None:
    if c["backbone"] == "dynunet":
        return _dynunet.check_patch(c)
    stride = encoder_stride(c)
    # instance norm on the deepest map of unet / swinunetr needs more than one voxel
    least = 2 * stride if c["backbone"] in ("unet", "swinunetr") else stride
    if any(p % stride or p < least for p in c["patch_size"]):
        raise InputError(
            None,
            f"patch_size sides divisible by {stride} and >= {least} for backbone {c['backbone']!r}",
            f"patch_size {c['patch_size']}",
        )


class ViTSegNet(nn.Module):
    """MONAI ViT encoder + UNETR-style conv decoder with a configurable token size and depth.

    Skips come from evenly spaced transformer blocks (as UNETR's blocks 3/6/9 of 12) and from a
    conv block on the raw input; each is brought to its resolution with MONAI's UNETR blocks.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        img_size: Sequence[int],
        patch_size: int = 16,
        hidden_size: int = 384,
        mlp_dim: int = 1536,
        num_layers: int = 12,
        num_heads: int = 6,
        feature_size: int = 16,
        dropout_rate: float = 0.0,
        norm_name: str = "instance",
    ):
        super().__init__()
        from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetrPrUpBlock, UnetrUpBlock
        from monai.networks.nets import ViT

        n_up = int(round(math.log2(patch_size)))
        if 2**n_up != patch_size or n_up < 1:
            raise InputError(None, "vit_patch_size a power of two >= 2", str(patch_size))
        self.patch = int(patch_size)
        self.hidden_size = hidden_size
        self.base_grid = tuple(int(s) // self.patch for s in img_size)
        self.vit = ViT(
            in_channels=in_channels,
            img_size=tuple(img_size),
            patch_size=self.patch,
            hidden_size=hidden_size,
            mlp_dim=mlp_dim,
            num_layers=num_layers,
            num_heads=num_heads,
            proj_type="conv",
            classification=False,
            dropout_rate=dropout_rate,
            spatial_dims=3,
            qkv_bias=True,
        )
        fs = feature_size
        self.skip_layers = [min(num_layers - 1, num_layers * i // n_up) for i in range(1, n_up)]
        self.encoder1 = UnetrBasicBlock(3, in_channels, fs, 3, 1, norm_name=norm_name, res_block=True)
        self.skips = nn.ModuleList(
            UnetrPrUpBlock(3, hidden_size, fs * 2**i, num_layer=n_up - i - 1, kernel_size=3, stride=1,
                           upsample_kernel_size=2, norm_name=norm_name, conv_block=True, res_block=True)
            for i in range(1, n_up)
        )
        ups = []
        for i in range(n_up - 1, -1, -1):
            cin = hidden_size if i == n_up - 1 else fs * 2 ** (i + 1)
            ups.append(UnetrUpBlock(3, cin, fs * 2**i, kernel_size=3, upsample_kernel_size=2,
                                    norm_name=norm_name, res_block=True))
        self.ups = nn.ModuleList(ups)
        self.out = UnetOutBlock(3, fs, out_channels)

    def tokens(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, mask_token: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor], tuple[int, int, int]]:
        """Token forward: (normed final tokens (B,N,C), per-block hidden states, token grid).

        ``mask`` (B, N) bool replaces those patch embeddings by ``mask_token`` (iBOT); inputs of
        another size than the build size get trilinearly interpolated positional embeddings.
        """
        pe = self.vit.patch_embedding
        t = pe.patch_embeddings(x)
        grid = tuple(int(s) for s in t.shape[2:])
        t = t.flatten(2).transpose(1, 2)
        if mask is not None:
            t = torch.where(mask.unsqueeze(-1), mask_token.to(t.dtype).expand_as(t), t)
        pos = pe.position_embeddings
        if grid != self.base_grid:
            pos = pos.transpose(1, 2).reshape(1, -1, *self.base_grid)
            pos = F.interpolate(pos.float(), size=grid, mode="trilinear", align_corners=False)
            pos = pos.flatten(2).transpose(1, 2)
        t = pe.dropout(t + pos.to(t.dtype))
        hidden = []
        for blk in self.vit.blocks:
            t = blk(t)
            hidden.append(t)
        return self.vit.norm(t), hidden, grid

    @staticmethod
    def to_grid(t: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], *grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        final, hidden, grid = self.tokens(x)
        skips = [blk(self.to_grid(hidden[li], grid)) for blk, li in zip(self.skips, self.skip_layers)]
        skips = [self.encoder1(x)] + skips  # resolution 1, 1/2, ..., 1/2^(n_up-1)
        y = self.to_grid(final, grid)
        for up, skip in zip(self.ups, reversed(skips)):
            y = up(y, skip)
        return self.out(y)


def build_segmentation_net(cfg: dict[str, Any]) -> nn.Module:
    """Segmentation network (1 input channel → 1 foreground-logit channel) from a config.

    Args:
        cfg: ``backbone`` plus the keys of :data:`NET_DEFAULTS` for it and ``patch_size``.
            A key the backbone does not read is an error (:func:`net_config`); split a whole
            strategy config first (:func:`split_net_config`).
    Returns:
        the network, with ``selma3d_cfg`` (the resolved network config) and
        ``selma3d_backbone`` attributes set.
    """
    c = net_config(cfg)
    _check_patch(c)
    b, cin, cout = c["backbone"], int(c["in_channels"]), int(c["out_channels"])
    if b == "unet":
        from monai.networks.nets import BasicUNet

        if len(c["features"]) != 6:
            raise InputError(None, "unet features as 6 ints", repr(c["features"]))
        net = BasicUNet(spatial_dims=3, in_channels=cin, out_channels=cout, features=tuple(c["features"]),
                        dropout=float(c["dropout"]), upsample=c["upsample"])
    elif b == "swinunetr":
        from monai.networks.nets import SwinUNETR

        if int(c["feature_size"]) % 12:
            raise InputError(None, "swinunetr feature_size a multiple of 12", str(c["feature_size"]))
        net = SwinUNETR(in_channels=cin, out_channels=cout, feature_size=int(c["feature_size"]),
                        depths=tuple(c["depths"]), num_heads=tuple(c["num_heads"]),
                        window_size=c["window_size"], dropout_path_rate=float(c["dropout_path_rate"]),
                        use_checkpoint=bool(c["use_checkpoint"]), use_v2=bool(c["use_v2"]), spatial_dims=3)
    elif b == "attention_unet":
        from monai.networks.nets import AttentionUnet

        if len(c["channels"]) != len(c["strides"]) + 1:
            raise InputError(None, "attention_unet len(channels) == len(strides) + 1",
                             f"channels {c['channels']}, strides {c['strides']}")
        net = AttentionUnet(spatial_dims=3, in_channels=cin, out_channels=cout, channels=tuple(c["channels"]),
                            strides=tuple(c["strides"]), dropout=float(c["dropout"]))
    elif b == "dynunet":
        net, c = _dynunet.build(c)
    else:
        net = ViTSegNet(cin, cout, c["patch_size"], patch_size=int(c["vit_patch_size"]),
                        hidden_size=int(c["hidden_size"]), mlp_dim=int(c["mlp_dim"]),
                        num_layers=int(c["num_layers"]), num_heads=int(c["num_heads"]),
                        feature_size=int(c["feature_size"]), dropout_rate=float(c["dropout"]))
    net.selma3d_cfg = c
    net.selma3d_backbone = b
    return net


# ---------------------------------------------------------------------------------------------
# encoder structure


def _attention_encoder_modules(net: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of AttentionUnet's down-sampling conv blocks, shallow to deep."""
    from monai.networks.nets.attentionunet import AttentionLayer

    out = [("model.0", net.model[0])]
    layer, name = net.model[1], "model.1"
    while isinstance(layer, AttentionLayer):
        sub = layer.submodule
        if isinstance(sub, nn.Sequential):
            out.append((f"{name}.submodule.0", sub[0]))
            layer, name = sub[1], f"{name}.submodule.1"
        else:
            out.append((f"{name}.submodule", sub))
            break
    return out


def _encoder_modules(net: nn.Module, backbone: str) -> list[tuple[str, nn.Module]]:
    if backbone == "unet":
        return [(n, getattr(net, n)) for n in ("conv_0", "down_1", "down_2", "down_3", "down_4")]
    if backbone == "swinunetr":
        return [("swinViT", net.swinViT)]
    if backbone == "attention_unet":
        return _attention_encoder_modules(net)
    if backbone == "vit":
        return [("vit", net.vit)]
    if backbone == "dynunet":
        return _dynunet.encoder_modules(net)
    raise InputError(None, f"backbone one of {list(BACKBONES)}", repr(backbone))


def encoder_prefixes(backbone: str, cfg: dict[str, Any] | None = None) -> list[str]:
    """State-dict key prefixes (with trailing dot) of the encoder: what SSL trains, ``frozen`` freezes.

    ``attention_unet`` prefixes depend on the depth (``cfg["strides"]``; defaults otherwise).
    """
    if backbone == "unet":
        return ["conv_0.", "down_1.", "down_2.", "down_3.", "down_4."]
    if backbone == "swinunetr":
        return ["swinViT."]
    if backbone == "vit":
        return ["vit."]
    if backbone == "dynunet":
        return list(_dynunet.ENCODER_PREFIXES)
    if backbone == "attention_unet":
        n = len((cfg or {}).get("strides") or NET_DEFAULTS[backbone]["strides"])
        out, name = ["model.0."], "model.1"
        for _ in range(n - 1):
            out.append(f"{name}.submodule.0.")
            name += ".submodule.1"
        out.append(f"{name}.submodule.")
        return out
    raise InputError(None, f"backbone one of {list(BACKBONES)}", repr(backbone))


def output_prefixes(backbone: str, cfg: dict[str, Any] | None = None) -> list[str]:
    """Prefixes of the final 1×1 output layer (not exported by reconstruction pretext tasks)."""
    if backbone == "attention_unet":
        return ["model.2."]
    if backbone == "dynunet":
        return _dynunet.output_prefixes(cfg)
    return {"unet": ["final_conv."], "swinunetr": ["out."], "vit": ["out."]}[backbone]


def _net_prefixes(net: nn.Module, backbone: str) -> list[str]:
    if backbone == "attention_unet":
        return [n + "." for n, _ in _attention_encoder_modules(net)]
    return encoder_prefixes(backbone)


def encode(net: nn.Module, x: torch.Tensor, backbone: str | None = None) -> torch.Tensor:
    """Deepest encoder feature map (B, C, d, h, w), running only the encoder."""
    backbone = backbone or net.selma3d_backbone
    if backbone == "swinunetr":
        return net.swinViT(x, net.normalize)[-1]
    if backbone == "vit":
        final, _, grid = net.tokens(x)
        return ViTSegNet.to_grid(final, grid)
    for _, mod in _encoder_modules(net, backbone):
        x = mod(x)
    return x


@contextlib.contextmanager
def _capture(module: nn.Module, store: dict) -> Iterator[None]:
    def hook(_m, _i, out):
        store["out"] = out

    h = module.register_forward_hook(hook)
    try:
        yield
    finally:
        h.remove()


def forward_with_bottleneck(net: nn.Module, x: torch.Tensor, backbone: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Full forward (B,1,D,H,W) plus the deepest encoder feature map, in one pass (forward hook)."""
    backbone = backbone or net.selma3d_backbone
    store: dict = {}
    if backbone == "vit":
        with _capture(net.vit.norm, store):
            y = net(x)
        grid = tuple(s // net.patch for s in x.shape[2:])
        return y, ViTSegNet.to_grid(store["out"], grid)
    mod = _encoder_modules(net, backbone)[-1][1]
    with _capture(mod, store):
        y = net(x)
    feat = store["out"]
    if isinstance(feat, (list, tuple)):
        feat = feat[-1]
    return y, feat


# ---------------------------------------------------------------------------------------------
# pretrained weights


@dataclass
class LoadReport:
    """What loading a pretrained state dict into a network matched, by tensor name.

    ``share`` is the loaded fraction of the encoder's elements (adapter tensors excepted): a
    missing 3×3×3 convolution weighs more than a missing norm bias.
    """

    loaded: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)  # in the state dict, not in the network
    misshapen: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # (name, given, network's)
    missing_encoder: list[str] = field(default_factory=list)  # encoder tensors not loaded
    encoder_tensors: int = 0
    encoder_elements: int = 0
    loaded_encoder_elements: int = 0

    @property
    def share(self) -> float:
        return self.loaded_encoder_elements / self.encoder_elements if self.encoder_elements else 0.0

    def summary(self) -> str:
        return (f"{len(self.loaded)} tensors loaded; encoder {self.encoder_tensors - len(self.missing_encoder)}/"
                f"{self.encoder_tensors} tensors, {self.share:.1%} of its elements; {len(self.unexpected)} "
                f"unexpected, {len(self.misshapen)} misshapen")

    def lines(self) -> list[str]:
        """Every key that did not match, by name (one line each)."""
        out = [f"unexpected (not in the network): {k}" for k in self.unexpected]
        out += [f"misshapen: {k} {list(a)} in the weights, {list(b)} in the network" for k, a, b in self.misshapen]
        out += [f"encoder tensor not loaded: {k}" for k in self.missing_encoder]
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"loaded": len(self.loaded), "unexpected": list(self.unexpected),
                "misshapen": [[k, list(a), list(b)] for k, a, b in self.misshapen],
                "missing_encoder": list(self.missing_encoder), "encoder_tensors": self.encoder_tensors,
                "share": self.share}


def load_report(net: nn.Module, state: dict[str, torch.Tensor], backbone: str | None = None) -> LoadReport:
    """Match ``state`` against ``net``'s state dict by name and shape, without copying anything.

    A ``module.`` prefix (DataParallel) is stripped first, as :func:`load_pretrained` does.
    """
    backbone = backbone or getattr(net, "selma3d_backbone", None)
    own = net.state_dict()
    state = {k.removeprefix("module."): v for k, v in state.items()}
    rep = LoadReport()
    for k, v in state.items():
        if k not in own:
            rep.unexpected.append(k)
        elif tuple(own[k].shape) != tuple(v.shape):
            rep.misshapen.append((k, tuple(v.shape), tuple(own[k].shape)))
        else:
            rep.loaded.append(k)
    if backbone:
        prefixes = tuple(_net_prefixes(net, backbone))
        need = [k for k in own if k.startswith(prefixes) and ".adapter." not in k]
        got = set(rep.loaded)
        rep.missing_encoder = [k for k in need if k not in got]
        rep.encoder_tensors = len(need)
        rep.encoder_elements = sum(own[k].numel() for k in need)
        rep.loaded_encoder_elements = sum(own[k].numel() for k in need if k in got)
    return rep


def load_pretrained(
    net: nn.Module,
    state: dict[str, torch.Tensor],
    strict_encoder: bool = True,
    backbone: str | None = None,
    source: str | None = None,
    min_share: float | None = None,
) -> int:
    """Copy tensors whose name and shape match from ``state`` into ``net``; return the count.

    Every key that did not match (unexpected, misshapen, encoder tensors left out) is logged
    by name as a warning.

    Args:
        net: network from :func:`build_segmentation_net`.
        state: pretrained tensors (e.g. ``Strategy.export_weights()``); a ``module.`` prefix
            (DataParallel) is stripped.
        strict_encoder: also require at least ``min_share`` of the encoder's elements (adapter
            tensors excepted) to load — a pretrained run must transfer its encoder.
        backbone: defaults to ``net.selma3d_backbone``.
        source: file the weights came from, named in errors.
        min_share: the least loaded share of the encoder (default: the schema's
            ``finetune.min_loaded_share``).
    Raises:
        InputError: nothing matched, or (strict) less than ``min_share`` of the encoder loaded.
    """
    from selma3d.core.schema import schema_default

    backbone = backbone or getattr(net, "selma3d_backbone", None)
    rep = load_report(net, state, backbone)
    if not rep.loaded:
        names = sorted(rep.unexpected + [k for k, _, _ in rep.misshapen])
        raise InputError(
            source,
            f"pretrained tensors named and shaped as the {backbone} network's state dict",
            f"0 of {len(names)} tensors match (e.g. {names[:3]}; misshapen {[k for k, _, _ in rep.misshapen][:3]})",
        )
    where = f" from {source}" if source else ""
    for line in rep.lines():
        log.warning("pretrained weights%s: %s", where, line)
    if strict_encoder and backbone:
        least = float(schema_default("finetune.min_loaded_share") if min_share is None else min_share)
        if rep.share < least:
            raise InputError(
                source,
                f"at least {least:.0%} of the {backbone} network's {rep.encoder_tensors} encoder tensors "
                f"(by elements) loaded",
                f"{rep.share:.1%}: {len(rep.missing_encoder)} encoder tensors missing or misshapen, e.g. "
                f"{rep.missing_encoder[:3]}",
            )
    own = net.state_dict()
    loaded = {k.removeprefix("module."): v for k, v in state.items()}
    with torch.no_grad():
        for k in rep.loaded:
            own[k].copy_(loaded[k].to(own[k].device, own[k].dtype))
    log.info("loaded pretrained weights%s: %s", where, rep.summary())
    return len(rep.loaded)


# ---------------------------------------------------------------------------------------------
# finetuning modes


class Adapter(nn.Module):
    """Bottleneck MLP added residually after a transformer block; zero-init so it starts as identity."""

    def __init__(self, dim: int, bottleneck: int = 64):
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.act = nn.GELU()
        self.up = nn.Linear(bottleneck, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(x)))


def _adapter_hook(module: nn.Module, _inputs, output: torch.Tensor) -> torch.Tensor:
    return output + module.adapter(output)


def _train_keeping_frozen(self: nn.Module, mode: bool = True) -> nn.Module:
    """``train()`` that leaves frozen encoder modules in eval (norm statistics, dropout fixed)."""
    nn.Module.train(self, mode)
    if mode:
        for name in self._selma3d_frozen:
            self.get_submodule(name).eval()
        for name in self._selma3d_trainable_inside:
            self.get_submodule(name).train()
    return self


def apply_finetune_mode(net: nn.Module, mode: str, backbone: str | None = None, adapter_dim: int = 64) -> nn.Module:
    """Prepare ``net`` for finetuning in place and return it.

    - ``full``: everything trains.
    - ``frozen``: encoder parameters get ``requires_grad=False`` and the encoder stays in eval
      mode across ``net.train()`` calls, so its state dict is bit-identical after training
      (build the optimiser from parameters with ``requires_grad``).
    - ``adapter`` (``vit`` only; after team Tonyxu): ViT frozen as above, a zero-initialised
      bottleneck adapter (``vit.blocks.<i>.adapter.*``) after each block, conv decoder trains.

    Call after :func:`load_pretrained`; to reload an adapter checkpoint build the net, apply the
    mode, then load the state dict.
    """
    backbone = backbone or net.selma3d_backbone
    if mode not in FINETUNE_MODES:
        raise InputError(None, f"finetune mode one of {list(FINETUNE_MODES)}", repr(mode))
    for p in net.parameters():
        p.requires_grad_(True)
    net._selma3d_frozen, net._selma3d_trainable_inside = [], []
    if mode == "full":
        net.train = _train_keeping_frozen.__get__(net)
        return net
    if mode == "adapter" and backbone != "vit":
        raise InputError(None, "finetune mode 'adapter' with backbone 'vit'", f"backbone {backbone!r}")
    frozen = [name for name, _ in _encoder_modules(net, backbone)]
    for name in frozen:
        for p in net.get_submodule(name).parameters():
            p.requires_grad_(False)
    inside = []
    if mode == "adapter":
        for i, blk in enumerate(net.vit.blocks):
            if not hasattr(blk, "adapter"):
                ref = next(net.parameters())
                blk.adapter = Adapter(net.hidden_size, adapter_dim).to(ref.device, ref.dtype)
                blk.register_forward_hook(_adapter_hook)
            inside.append(f"vit.blocks.{i}.adapter")
    net._selma3d_frozen, net._selma3d_trainable_inside = frozen, inside
    net.train = _train_keeping_frozen.__get__(net)
    net.train(net.training)
    return net
