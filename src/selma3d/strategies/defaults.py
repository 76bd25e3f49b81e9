"""The teams' default settings of every SSL strategy, torch-free.

Pretraining, finetuning and ``selma3d config show`` resolve a strategy's settings from these
(``selma3d.strategies.resolve_strategy_config``: ``model`` block < team defaults < the
strategy's config block) without importing torch; each strategy class reads its own entry as
its ``defaults``.
"""

from __future__ import annotations

from typing import Any

from selma3d.core.structures import STRUCTURE_CATEGORY

TEAM_DEFAULTS: dict[str, dict[str, Any]] = {
    # XunDJ: SwinUNETR on 64³ crops of 1/3-downsampled data; the rest assumed (AdamW, MAE-style masking)
    "mae": {
        "backbone": "swinunetr",
        "patch_size": [64, 64, 64],
        "feature_size": 24,
        "batch_size": 4,
        "lr": 1e-4,
        "weight_decay": 1e-5,
        "warmup_steps": 500,
        "mask_ratio": 0.6,
        "mask_cube": 8,
        "mask_value": 0.0,
        "recon_loss": "mse",
        "seed": 0,
    },
    # BYOL paper values for heads / EMA; 3D UNet encoder after Zoomlin; optimiser values assumed
    "byol": {
        "backbone": "unet",
        "patch_size": [64, 64, 64],
        "batch_size": 8,
        "lr": 1e-4,
        "weight_decay": 1e-5,
        "warmup_steps": 500,
        "ema_momentum": 0.996,
        "proj_hidden": 4096,
        "proj_dim": 256,
        "crop_scale": [0.3, 1.0],
        "blur_p": 0.5,
        "noise_std": 0.05,
        "seed": 0,
    },
    # Attention U-Net after Wu; temperature 0.5 (SimCLR's small-batch value); rest assumed
    "simclr": {
        "backbone": "attention_unet",
        "patch_size": [64, 64, 64],
        "batch_size": 8,
        "lr": 1e-4,
        "weight_decay": 1e-6,
        "warmup_steps": 500,
        "temperature": 0.5,
        "proj_hidden": 512,
        "proj_dim": 128,
        "crop_scale": [0.3, 1.0],
        "blur_p": 0.5,
        "blur_sigma": [0.1, 2.0],
        "noise_std": 0.05,
        "seed": 0,
    },
    # Tang et al.: 96³ ROI, feature_size 48, AdamW lr 4e-4 / decay 0.1, warmup, contrastive
    # temperature 0.5, embedding 512, equal weights; masking fraction assumed
    "swin_multitask": {
        "backbone": "swinunetr",
        "patch_size": [96, 96, 96],
        "feature_size": 48,
        "batch_size": 4,
        "lr": 4e-4,
        "weight_decay": 0.1,
        "warmup_steps": 500,
        "mask_ratio": 0.3,
        "mask_cube": 16,
        "temperature": 0.5,
        "embed_dim": 512,
        "w_rot": 1.0,
        "w_contrast": 1.0,
        "w_recon": 1.0,
        "w_class": 0.1,
        "structure_classes": sorted(STRUCTURE_CATEGORY),
        "seed": 0,
    },
    # DINOv2 defaults (temperatures, centre momentum, EMA 0.992, iBOT masking, KoLeo 0.1, 8 local
    # crops, crop scales); 128³ patches and ViT after Tonyxu; prototype count reduced for 3D memory
    "dino": {
        "backbone": "vit",
        "patch_size": [128, 128, 128],
        "vit_patch_size": 16,
        "hidden_size": 384,
        "num_layers": 12,
        "num_heads": 6,
        "mlp_dim": 1536,
        "batch_size": 4,
        "lr": 5e-4,
        "weight_decay": 0.04,
        "warmup_steps": 1000,
        "ema_momentum": 0.992,
        "out_dim": 8192,
        "head_hidden": 2048,
        "head_bottleneck": 256,
        "student_temp": 0.1,
        "teacher_temp": 0.07,
        "warmup_teacher_temp": 0.04,
        "teacher_temp_warmup_steps": 3000,
        "center_momentum": 0.9,
        "n_local_crops": 8,
        "local_size": 64,
        "global_scale": [0.32, 1.0],
        "local_scale": [0.05, 0.32],
        "mask_ratio": [0.1, 0.5],
        "mask_sample_probability": 0.5,
        "w_dino": 1.0,
        "w_ibot": 1.0,
        "w_koleo": 0.1,
        "seed": 0,
    },
    # LSM foundation-model SwinUNETR config: 64³ (96³ resampled), feature 36, batch 16, lr 1e-4,
    # mask 0.3 of 8³ cubes (0.05 during warm-up), EMA 0.994, student/teacher temps 0.025/0.1,
    # embedding 512, CLIP temperature 0.1, weights distill 0.5 / recon 0.3 / align 0.05 / clip 0.3
    "mae_text": {
        "backbone": "swinunetr",
        "patch_size": [64, 64, 64],
        "feature_size": 36,
        "batch_size": 16,
        "lr": 1e-4,
        "weight_decay": 1e-5,
        "warmup_steps": 500,
        "mask_ratio": 0.3,
        "mask_ratio_warmup": 0.05,
        "mask_warmup_steps": 0,
        "mask_cube": 8,
        "mask_value": 0.0,
        "recon_loss": "l1",
        "ema_momentum": 0.994,
        "student_temp": 0.025,
        "teacher_temp": 0.1,
        "embed_dim": 512,
        "clip_temperature": 0.1,
        "text_vocab": 4096,
        "text_width": 128,
        "text_layers": 2,
        "text_max_len": 32,  # tokens read per caption (a real caption runs to ~70: raise it)
        "w_distill": 0.5,
        "w_recon": 0.3,
        "w_align": 0.05,
        "w_clip": 0.3,
        "seed": 0,
    },
}
