"""Published pretrained checkpoints converted into this pipeline's encoder weights.

``selma3d import-weights SOURCE --format F --out encoder.pt`` writes the payload ``rule
pretrain`` writes (``{"strategy", "net", "weights", ...}``, see
:func:`selma3d.training.finetune.stored_network`), so a finetuning run starts from it exactly as
from weights pretrained here. One converter per source format, registered in :data:`CONVERTERS` (catalog: :mod:`selma3d.nets.formats`):

========================  ==========  =======================================================
format                    backbone    source, and how much of it maps
========================  ==========  =======================================================
``monai_swinvit``         swinunetr   Tang et al. 2022 ``model_swinvit.pt`` (MONAI research-
                                      contributions SwinUNETR/Pretrain): ``state_dict`` with
                                      ``module.`` + swinViT names, MLP as ``fc1``/``fc2``.
                                      The whole swinViT encoder maps.
``monai_swin_dae``        swinunetr   MONAI's ``ssl_pretrained_weights.pth`` (Valanarasu et
                                      al., Disruptive Autoencoders): ``model`` with
                                      ``encoder.`` names, renamed as MONAI's
                                      ``filter_swinunetr``. The swinViT encoder maps.
``lsm_fm_swinunetr``      swinunetr   LSM foundation model (Scheinfeld et al.) Lightning
                                      ``.ckpt``: ``state_dict`` of ``student_encoder.`` /
                                      ``teacher_encoder.`` MONAI SwinUNETRs. Encoder and
                                      decoder map; the output layer (embedding width) does not.
``lsm_fm_unet``           (none)      LSM foundation model UNet variant: MONAI ``UNet`` with
                                      residual units; no backbone here has its blocks, so
                                      nothing maps (the converter says so and stops).
``dino3d_vit``            vit         3DINO-ViT (Xu et al. 2025, DINOv2 in 3D): ``teacher`` /
                                      ``backbone.`` names, chunked blocks, LayerScale folded
                                      into the projections, positional embeddings interpolated
                                      to the finetuning grid. The whole ViT encoder maps
                                      (``cls_token``/``mask_token`` have no counterpart).
``nnssl``                 dynunet     nnssl ``network_weights`` of a PlainConvUNet encoder
                                      (``encoder.stages.<s>.0.convs.<c>``) onto DynUNet's
                                      levels. ResEnc-L (stem + several residual blocks per
                                      stage) and Primus (EVA ViT with RoPE) do not map: refused.
========================  ==========  =======================================================

Every conversion is checked by loading the weights into the network they were made for
(:func:`selma3d.nets.models.load_report`): unmatched and misshapen keys are reported by name,
and less than ``min_share`` of the encoder loaded is an error naming the checkpoint.
Nothing here imports torch at module level.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selma3d.core.errors import InputError
from selma3d.nets.formats import CATALOG, WeightsFormat, format_names

log = logging.getLogger(__name__)


@dataclass
class Converted:
    """A converter's result: tensors named as the target network's state dict, its network keys
    read from the checkpoint, the source keys left out (with why) and notes for the report."""

    weights: dict[str, Any]
    net: dict[str, Any] = field(default_factory=dict)
    unused: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


#: format name -> converter(checkpoint dict, branch, net keys) (one per published source layout)
CONVERTERS: dict[str, Callable[[dict, str | None, dict], Converted]] = {}
#: the catalog (torch-free, :mod:`selma3d.nets.formats`): backbone and published architecture
FORMATS = CATALOG


def register(name: str):
    if name not in CATALOG:
        raise KeyError(f"format {name!r} is not in selma3d.nets.formats.CATALOG")

    def wrap(fn):
        CONVERTERS[name] = fn
        return fn

    return wrap


def get_format(name: str, where: str | None = None) -> WeightsFormat:
    if name not in CATALOG:
        raise InputError(where, f"a weights format among {format_names()}", repr(name))
    return CATALOG[name]


# ------------------------------------------------------------------------------- checkpoints


def read_checkpoint(path: str | Path, trust_pickle: bool = False) -> dict:
    """A checkpoint file as a dict. Tensors and plain containers load with ``weights_only``;
    ``trust_pickle`` also runs the pickled objects some trainers store (Lightning's
    ``hyper_parameters``, argparse namespaces): only for files whose SHA-256 you checked."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "a checkpoint file", "nothing at that path" if not path.exists() else "not a file")
    try:
        if trust_pickle:
            ckpt = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_tolerant_pickle)
        else:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise InputError(path, "a checkpoint of tensors and plain containers (weights_only)",
                         f"pickled objects ({str(exc).splitlines()[0][:200]}); pass --trust-pickle for a "
                         "file whose SHA-256 you verified") from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise InputError(path, "a PyTorch checkpoint", f"unreadable: {str(exc).splitlines()[0][:200]}") from None
    if not isinstance(ckpt, dict):
        raise InputError(path, "a checkpoint holding a dict of tensors", type(ckpt).__name__)
    return ckpt


class _TolerantUnpickler(__import__("pickle").Unpickler):
    """Unpickler for verified checkpoints whose extras name classes not installed here
    (Lightning's ``AttributeDict`` hyper-parameters, a trainer's config objects): such a class
    becomes a ``dict`` holding its state, so the tensors and plain settings still load."""

    def find_class(self, module, name):
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return type(name, (dict,), {"__module__": module, "__setstate__": _set_state})


def _set_state(self, state) -> None:
    if isinstance(state, dict):
        self.update(state)


class _tolerant_pickle:  # stands in for the pickle module in torch.load)
    Unpickler = _TolerantUnpickler
    load = staticmethod(lambda f, **kw: _TolerantUnpickler(f, **kw).load())


def _tensors(d: Any) -> bool:
    return isinstance(d, dict) and bool(d) and all(hasattr(v, "shape") for v in d.values())


def state_of(ckpt: dict, keys: tuple[str, ...], where: str) -> dict:
    """The tensor dict under the first of ``keys`` present (or ``ckpt`` itself when it is one)."""
    for k in keys:
        if _tensors(ckpt.get(k)):
            return dict(ckpt[k])
    if _tensors(ckpt):
        return dict(ckpt)
    raise InputError(where, f"tensors under one of {list(keys)} (or at the top level)",
                     f"top-level keys {sorted(map(str, ckpt))[:10]}")


def strip_prefixes(state: dict, prefixes: tuple[str, ...] = ("module.", "_orig_mod.")) -> dict:
    """Keys without wrapper prefixes (DataParallel's ``module.``, torch.compile's ``_orig_mod.``)."""
    out = {}
    for k, v in state.items():
        changed = True
        while changed:
            changed = False
            for p in prefixes:
                if k.startswith(p):
                    k, changed = k[len(p):], True
        out[k] = v
    return out


# ------------------------------------------------------------------------------- SwinUNETR


_SWIN_PARTS = ("patch_embed.", "layers1.", "layers2.", "layers3.", "layers4.", "layers1c.", "layers2c.",
               "layers3c.", "layers4c.")


def _swin_net(state: dict[str, Any], prefix: str) -> dict[str, Any]:
    """swinunetr network keys read from swinViT tensors named ``prefix`` + MONAI's names."""
    emb = state.get(prefix + "patch_embed.proj.weight")
    if emb is None:
        raise InputError(None, f"a Swin transformer's {prefix}patch_embed.proj.weight",
                         f"keys such as {sorted(state)[:3]}")
    out = {"backbone": "swinunetr", "feature_size": int(emb.shape[0]), "in_channels": int(emb.shape[1])}
    if any(k.startswith(prefix + "layers1c.") for k in state):
        out["use_v2"] = True
    return out


def _mlp_names(key: str) -> str:
    return key.replace(".mlp.fc1.", ".mlp.linear1.").replace(".mlp.fc2.", ".mlp.linear2.")


@register("monai_swinvit")
def convert_monai_swinvit(ckpt: dict, branch: str | None, net: dict) -> Converted:
    state = strip_prefixes(state_of(ckpt, ("state_dict", "model"), "monai_swinvit checkpoint"))
    # research-contributions' SSLHead saves swin_vit.*; the published file has module.* (stripped above)
    state = {k.removeprefix("swin_vit.").removeprefix("swinViT."): v for k, v in state.items()}
    weights, unused = {}, []
    for k, v in state.items():
        if k.startswith(_SWIN_PARTS):
            weights["swinViT." + _mlp_names(k)] = v
        else:
            unused.append(k)  # rotation / contrastive / reconstruction heads
    return Converted(weights, _swin_net(weights, "swinViT."), unused,
                     ["MLP tensors fc1/fc2 renamed to MONAI's linear1/linear2"])


@register("monai_swin_dae")
def convert_monai_swin_dae(ckpt: dict, branch: str | None, net: dict) -> Converted:
    state = strip_prefixes(state_of(ckpt, ("model", "state_dict"), "monai_swin_dae checkpoint"))
    weights, unused = {}, []
    for k, v in state.items():
        rest = k[len("encoder."):]
        if not k.startswith("encoder.") or rest in ("mask_token", "norm.weight", "norm.bias"):
            unused.append(k)
        elif rest.startswith("patch_embed."):
            weights["swinViT." + rest] = v
        elif re.match(r"layers[1-4]\.\d+\.\d+\.", rest):  # layersN.0.<i>.x -> layersN.0.x (filter_swinunetr)
            weights["swinViT." + _mlp_names(rest[:10] + rest[12:])] = v
        else:
            unused.append(k)
    return Converted(weights, _swin_net(weights, "swinViT."), unused,
                     ["renamed as monai.networks.nets.swin_unetr.filter_swinunetr"])


def _lightning_branch(ckpt: dict, branch: str | None, fmt: str) -> tuple[dict, dict, str]:
    state = strip_prefixes(state_of(ckpt, ("state_dict",), f"{fmt} checkpoint"))
    branch = branch or "student"
    prefix = f"{branch}_encoder."
    if not any(k.startswith(prefix) for k in state):
        heads = sorted({k.split(".", 1)[0] for k in state})
        raise InputError(None, f"a Lightning state_dict with {prefix}* tensors (branch {branch!r})",
                         f"top-level modules {heads[:10]}")
    hp = ckpt.get("hyper_parameters") or {}
    return state, dict(hp) if isinstance(hp, dict) else {}, prefix


@register("lsm_fm_swinunetr")
def convert_lsm_fm_swinunetr(ckpt: dict, branch: str | None, net: dict) -> Converted:
    state, hp, prefix = _lightning_branch(ckpt, branch, "lsm_fm_swinunetr")
    weights, unused = {}, []
    for k, v in state.items():
        if k.startswith(prefix) and not k[len(prefix):].startswith("out."):
            weights[k[len(prefix):]] = v
        else:
            unused.append(k)  # the other branch, heads, text encoder, the embedding-width output layer
    derived = _swin_net(weights, "swinViT.")
    notes = [f"{prefix[:-1]} network (the LSM finetuning scripts load student_encoder.*)"]
    model_hp = hp.get("model") if isinstance(hp.get("model"), dict) else {}
    declared = (model_hp.get("swinunetr") or {}).get("feature_size", model_hp.get("feature_size"))
    if declared is not None and int(declared) != derived["feature_size"]:
        notes.append(f"hyper_parameters say feature_size {declared}; the tensors say {derived['feature_size']}")
    return Converted(weights, derived, unused, notes)


@register("lsm_fm_unet")
def convert_lsm_fm_unet(ckpt: dict, branch: str | None, net: dict) -> Converted:
    state, hp, prefix = _lightning_branch(ckpt, branch, "lsm_fm_unet")
    mine = [k for k in state if k.startswith(prefix)]
    unet = ((hp.get("model") or {}).get("unet") or {}) if isinstance(hp.get("model"), dict) else {}
    raise InputError(None, "an architecture with a backbone in this pipeline (unet is MONAI BasicUNet, "
                     "attention_unet MONAI AttentionUnet, dynunet MONAI DynUNet)",
                     f"MONAI UNet with residual units ({len(mine)} {prefix}* tensors, e.g. {mine[:2]}; "
                     f"channels {unet.get('channels', '?')}, strides {unet.get('strides', '?')}, "
                     f"num_res_units {unet.get('num_res_units', '?')}): its residual units have no "
                     "counterpart, so none of its encoder maps; use lsm_fm_swinunetr")


# ------------------------------------------------------------------------------- 3DINO ViT


@register("dino3d_vit")
def convert_dino3d_vit(ckpt: dict, branch: str | None, net: dict) -> Converted:
    import torch
    import torch.nn.functional as F

    if branch not in (None, "teacher", "student"):
        raise InputError(None, "branch teacher or student", repr(branch))
    top = branch or ("teacher" if _tensors(ckpt.get("teacher")) else None)
    keys = ((top,) if top else ()) + ("model", "state_dict")
    state = strip_prefixes(state_of(ckpt, keys, "dino3d_vit checkpoint"), ("module.", "_orig_mod.", "backbone."))
    state = {re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", k) if re.match(r"^blocks\.\d+\.\d+\.", k) else k: v
             for k, v in state.items()}  # DINOv2 block chunks: blocks.<chunk>.<i>.x -> blocks.<i>.x
    emb = state.get("patch_embed.proj.weight")
    if emb is None or emb.ndim != 5:
        raise InputError(None, "a 3D ViT with patch_embed.proj.weight (D, C, p, p, p)",
                         f"keys such as {sorted(state)[:3]}")
    hidden, patch = int(emb.shape[0]), int(emb.shape[2])
    layers = sorted({int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))})
    if any(".mlp.w12." in k for k in state):
        raise InputError(None, "a ViT with an MLP (fc1, fc2)", "SwiGLU MLP blocks (w12/w3): MONAI's ViT has none")
    derived = {"backbone": "vit", "vit_patch_size": patch, "hidden_size": hidden, "num_layers": len(layers),
               "mlp_dim": int(state[f"blocks.{layers[0]}.mlp.fc1.weight"].shape[0]), "in_channels": int(emb.shape[1])}
    if "num_heads" not in net:
        derived["num_heads"] = max(1, hidden // 64)  # DINOv2's head width
    weights = {"vit.patch_embedding.patch_embeddings.weight": emb,
               "vit.patch_embedding.patch_embeddings.bias": state["patch_embed.proj.bias"],
               "vit.norm.weight": state["norm.weight"], "vit.norm.bias": state["norm.bias"]}
    used = {"patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias"}
    notes = []
    for i in layers:
        b = f"blocks.{i}."
        ls1, ls2 = state.get(b + "ls1.gamma"), state.get(b + "ls2.gamma")
        pairs = {"norm1.weight": "norm1.weight", "norm1.bias": "norm1.bias", "norm2.weight": "norm2.weight",
                 "norm2.bias": "norm2.bias", "attn.qkv.weight": "attn.qkv.weight", "attn.qkv.bias": "attn.qkv.bias",
                 "mlp.fc1.weight": "mlp.linear1.weight", "mlp.fc1.bias": "mlp.linear1.bias"}
        for src, dst in pairs.items():
            if b + src in state:
                weights[f"vit.{b}{dst}"] = state[b + src]
                used.add(b + src)
        for src, dst, gamma in (("attn.proj", "attn.out_proj", ls1), ("mlp.fc2", "mlp.linear2", ls2)):
            w, bias = state[b + src + ".weight"], state.get(b + src + ".bias")
            if gamma is not None:  # x + gamma * (W y + c)  ==  x + (diag(gamma) W) y + gamma * c
                w = w * gamma[:, None]
                bias = bias * gamma if bias is not None else None
            weights[f"vit.{b}{dst}.weight"] = w
            used.update({b + src + ".weight", b + src + ".bias", b + "ls1.gamma", b + "ls2.gamma"})
            if bias is not None:
                weights[f"vit.{b}{dst}.bias"] = bias
    if any(k.endswith(".gamma") for k in state):
        notes.append("LayerScale gammas folded into attn.out_proj and mlp.linear2")
    pos = state.get("pos_embed")
    if pos is not None:
        used.add("pos_embed")
        n = pos.shape[1] - 1  # DINOv2: one class-token position first
        side = round(n ** (1 / 3))
        if side**3 != n:
            raise InputError(None, "pos_embed of 1 + a cubic grid of patch positions", f"shape {list(pos.shape)}")
        size = net.get("patch_size") or FORMATS["dino3d_vit"].net["patch_size"]
        size = [int(size)] * 3 if isinstance(size, int) else [int(s) for s in size]
        grid = tuple(s // patch for s in size)
        g = pos[:, 1:].reshape(1, side, side, side, hidden).permute(0, 4, 1, 2, 3).float()
        if grid != (side,) * 3:
            g = F.interpolate(g, size=grid, mode="trilinear", align_corners=False)
            notes.append(f"positional embeddings interpolated from {side}^3 to {'x'.join(map(str, grid))} patches")
        weights["vit.patch_embedding.position_embeddings"] = g.flatten(2).transpose(1, 2).to(pos.dtype).contiguous()
    unused = sorted(k for k in state if k not in used)  # cls_token, mask_token, register tokens, heads
    return Converted({k: torch.as_tensor(v) for k, v in weights.items()}, derived, unused, notes)


# ------------------------------------------------------------------------------- nnssl


@register("nnssl")
def convert_nnssl(ckpt: dict, branch: str | None, net: dict) -> Converted:
    state = strip_prefixes(state_of(ckpt, ("network_weights", "state_dict", "model"), "nnssl checkpoint"))
    if any(k.startswith("encoder.stem.") or ".blocks." in k for k in state if k.startswith("encoder.")):
        n = sum(k.startswith("encoder.") for k in state)
        raise InputError(None, "a PlainConvUNet encoder (encoder.stages.<s>.0.convs.<c>: two convolutions per "
                         "stage, as DynUNet's levels)",
                         f"a ResEnc-L encoder ({n} encoder tensors: a stem and several residual blocks per stage); "
                         "DynUNet with res_block has one residual block per level, so it does not map")
    if any(k.startswith(("eva.", "down_projection.", "vit.")) for k in state):
        raise InputError(None, "a PlainConvUNet encoder", "a Primus (EVA ViT with rotary positions) network: "
                         "MONAI's ViT has no rotary embeddings, so it does not map")
    pat = re.compile(r"^encoder\.stages\.(\d+)\.0\.convs\.(\d+)\.(conv|norm)\.(weight|bias)$")
    found = {}
    for k, v in state.items():
        if m := pat.match(k):
            found[(int(m.group(1)), int(m.group(2)), m.group(3), m.group(4))] = (k, v)
    if not found:
        raise InputError(None, "encoder.stages.<s>.0.convs.<c>.conv.weight tensors (PlainConvUNet)",
                         f"keys such as {sorted(state)[:3]}")
    stages = sorted({s for s, _, _, _ in found})
    convs = sorted({c for _, c, _, _ in found})
    if convs != [0, 1]:
        raise InputError(None, "two convolutions per stage (DynUNet's UnetBasicBlock)", f"convolutions {convs}")
    last = stages[-1]

    def level(s: int) -> str:
        return "input_block" if s == 0 else "bottleneck" if s == last else f"downsamples.{s - 1}"

    weights, used = {}, set()
    for (s, c, kind, what), (k, v) in found.items():
        if kind == "conv" and what == "bias":
            continue  # DynUNet convolutions have no bias; the instance norm after them removes it anyway
        name = f"conv{c + 1}.conv.weight" if kind == "conv" else f"norm{c + 1}.{what}"
        weights[f"{level(s)}.{name}"] = v
        used.add(k)
    filters = [int(found[(s, 0, "conv", "weight")][1].shape[0]) for s in stages]
    kernels = [list(found[(s, 0, "conv", "weight")][1].shape[2:]) for s in stages]
    unused = sorted(k for k in state if k not in used and ".all_modules." not in k)
    derived = {"backbone": "dynunet", "filters": filters, "kernel_size": kernels,
               "in_channels": int(found[(0, 0, "conv", "weight")][1].shape[1])}
    note = (f"{len(stages)} PlainConvUNet stages -> DynUNet levels; conv biases dropped (cancelled by instance "
            "norm); all_modules.* are aliases of the same tensors")
    return Converted(weights, derived, unused, [note])


# ------------------------------------------------------------------------------- import


def resolve_net(fmt: str, derived: dict[str, Any], net: dict[str, Any] | None) -> dict[str, Any]:
    """The network the weights fill: the format's published architecture < what the
    checkpoint's tensors say < ``net`` (the user's / config's keys, e.g. patch_size)."""
    from selma3d.nets.spec import net_config

    return net_config({**get_format(fmt).net, **derived, **(net or {})}, where=f"import-weights {fmt}")


def convert(source: str | Path, fmt: str, net: dict[str, Any] | None = None, branch: str | None = None,
            trust_pickle: bool = False) -> tuple[Converted, dict[str, Any]]:
    """(conversion, resolved network config) of a checkpoint file; errors name the file."""
    spec = get_format(fmt)
    if branch is not None and spec.branches and branch not in spec.branches:
        raise InputError(source, f"branch one of {list(spec.branches)} for format {fmt}", repr(branch))
    ckpt = read_checkpoint(source, trust_pickle)
    try:
        conv = CONVERTERS[fmt](ckpt, branch, dict(net or {}))
        cfg = resolve_net(fmt, conv.net, net)
    except InputError as exc:  # name the checkpoint
        if exc.path:
            raise
        raise InputError(source, f"{exc.expected} (format {fmt})", exc.found) from None
    return conv, cfg


def import_weights(source: str | Path, fmt: str, out: str | Path, net: dict[str, Any] | None = None,
                   branch: str | None = None, min_share: float | None = None,
                   trust_pickle: bool = False) -> dict[str, Any]:
    """Convert ``source`` and write ``out`` in the pretrain rule's payload format.

    The weights are loaded into the network they were made for before anything is written;
    every unmatched or misshapen key is logged by name and less than ``min_share`` (default
    ``finetune.min_loaded_share``) of the encoder loaded is an :class:`InputError` naming
    ``source``. Returns the load report (``selma3d.nets.models.LoadReport.as_dict``) plus
    the source keys left out.
    """
    import torch

    from selma3d.core.atomic import atomic_path
    from selma3d.core.hashing import sha256_file
    from selma3d.nets.models import build_segmentation_net, load_pretrained, load_report

    conv, cfg = convert(source, fmt, net, branch, trust_pickle)
    target = build_segmentation_net(cfg)
    weights = {k: v.detach().to("cpu").contiguous() for k, v in conv.weights.items()}
    load_pretrained(target, weights, source=str(source), min_share=min_share)  # raises below min_share
    rep = load_report(target, weights)
    for k in conv.unused:
        log.info("%s: source tensor without a counterpart (left out): %s", source, k)
    report = {**rep.as_dict(), "format": fmt, "unused_source": list(conv.unused), "notes": list(conv.notes)}
    payload = {"strategy": f"import:{fmt}", "net": cfg, "config": {}, "weights": weights,
               "source": {"path": Path(source).name, "sha256": sha256_file(source), "format": fmt,
                          "branch": branch}, "report": report}
    with atomic_path(out) as tmp:
        torch.save(payload, tmp)
    log.info("%s -> %s (%s): %s", source, out, fmt, rep.summary())
    return report


# ------------------------------------------------------------------------------- CLI


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Convert a published pretrained checkpoint into this pipeline's encoder weights "
                          "(the file `rule pretrain` writes), checked by loading it into the network. Formats: "
                          + "; ".join(f"{f.name}: {f.description}" for f in FORMATS.values()))
    parser.add_argument("source", help="checkpoint file (.pt, .pth, .ckpt)")
    parser.add_argument("--format", required=True, choices=format_names(), help="the checkpoint's layout")
    parser.add_argument("--out", required=True, help="encoder weights to write (e.g. encoder.pt)")
    parser.add_argument("--net", default="{}", metavar="JSON",
                        help='network keys over the published architecture, e.g. \'{"patch_size": [64, 64, 64]}\'')
    parser.add_argument("--branch", default=None, help="student or teacher network of a two-network checkpoint")
    parser.add_argument("--min-share", type=float, default=None,
                        help="least share of the encoder to load (default: finetune.min_loaded_share)")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="also load pickled objects (Lightning hyper_parameters); only for verified files")


def run(args: argparse.Namespace) -> int:
    from selma3d.core.logs import setup_logging

    setup_logging()  # the command's own log on stderr (not a handler left by whatever ran before)
    try:
        net = json.loads(args.net)
    except ValueError as exc:
        raise InputError(None, "--net as a JSON object", f"{args.net!r} ({exc})") from None
    if not isinstance(net, dict):
        raise InputError(None, "--net as a JSON object", repr(args.net))
    report = import_weights(args.source, args.format, args.out, net=net, branch=args.branch,
                            min_share=args.min_share, trust_pickle=args.trust_pickle)
    print(f"{args.out}: {report['loaded']} tensors, {report['share']:.1%} of the encoder "
          f"({report['encoder_tensors'] - len(report['missing_encoder'])}/{report['encoder_tensors']} tensors); "
          f"{len(report['unused_source'])} source tensors without a counterpart", file=sys.stdout)
    for k in report["missing_encoder"]:
        print(f"  encoder tensor not loaded: {k}")
    for k, a, b in report["misshapen"]:
        print(f"  misshapen: {k} {a} vs {b}")
    return 0
