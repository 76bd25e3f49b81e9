"""The published checkpoint formats ``selma3d import-weights`` converts: a torch-free catalog.

Each entry names the backbone the weights fill and the published architecture (network keys
of :mod:`selma3d.nets.spec`); the converters live in :mod:`selma3d.nets.imports`. The workflow
plans ``ext_<name>`` runs from this catalog without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class WeightsFormat:
    name: str
    backbone: str | None  # None: nothing maps onto a backbone here (the converter says why)
    net: dict[str, Any] = field(default_factory=dict)  # the published architecture
    description: str = ""
    branches: tuple[str, ...] = ()  # networks of a two-network checkpoint


_SWIN_48 = {"backbone": "swinunetr", "feature_size": 48, "depths": [2, 2, 2, 2], "num_heads": [3, 6, 12, 24],
            "window_size": 7, "use_v2": False}

CATALOG: dict[str, WeightsFormat] = {f.name: f for f in (
    WeightsFormat("monai_swinvit", "swinunetr", _SWIN_48,
                  "Tang et al. model_swinvit.pt (MONAI SwinUNETR self-supervised encoder)"),
    WeightsFormat("monai_swin_dae", "swinunetr", {"backbone": "swinunetr", "feature_size": 48, "use_v2": False},
                  "MONAI ssl_pretrained_weights.pth (Disruptive Autoencoders, encoder.* names)"),
    WeightsFormat("lsm_fm_swinunetr", "swinunetr", {"backbone": "swinunetr", "feature_size": 36, "use_v2": False},
                  "LSM foundation model SwinUNETR variant (Lightning .ckpt, student/teacher MONAI SwinUNETR)",
                  ("student", "teacher")),
    WeightsFormat("lsm_fm_unet", None, {},
                  "LSM foundation model UNet variant (MONAI UNet with residual units): no backbone here "
                  "matches, refused with the reason", ("student", "teacher")),
    WeightsFormat("dino3d_vit", "vit",
                  {"backbone": "vit", "vit_patch_size": 16, "hidden_size": 1024, "mlp_dim": 4096, "num_layers": 24,
                   "num_heads": 16, "patch_size": [112, 112, 112]},
                  "3DINO-ViT (DINOv2 3D ViT; teacher backbone, LayerScale folded, positions interpolated)",
                  ("teacher", "student")),
    WeightsFormat("nnssl", "dynunet", {"backbone": "dynunet"},
                  "nnssl network_weights of a PlainConvUNet encoder onto DynUNet (ResEnc-L, Primus refused)"),
)}


def format_names() -> list[str]:
    return sorted(CATALOG)
