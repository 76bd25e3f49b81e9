"""The finetuning augmentation as ``selma3d.augment.pipeline`` had it before the loader fixes
(commit 12ebf0d), kept callable as ``benchmarks/loader.py``'s reference: a
``monai.transforms.Compose`` of MONAI dict transforms on MetaTensors, rotation/scaling as two
float32 MONAI ``Affine`` calls (image bilinear, label + ignore stack nearest), each one building
its own grid, three ``RandFlipd``. Same configuration (:data:`selma3d.augment.pipeline.DEFAULTS`,
``resolve_config``), same seeding, same outputs as the library's path is checked to give.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

from selma3d.augment.pipeline import draw_rotate_scale, intensity_transforms, resolve_config
from selma3d.core.errors import InputError


def _plain(x) -> torch.Tensor:
    """A plain tensor (MONAI may return MetaTensors)."""
    return x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)


def _rotate_scale_transform(c: dict[str, Any], dtype=torch.float32):
    """MapTransform rotating and/or scaling ``image`` (linear) and ``label`` (nearest) in one go.

    ``dtype`` is the resampling precision: float32 (MONAI's default, float64, is about twice as
    slow on a 96³ crop on the CPU and changes nothing a float32 training sample can hold
    beyond rounding)."""
    from monai.transforms import Affine, MapTransform, Randomizable

    class RandRotateScaled(Randomizable, MapTransform):
        """Rotation (p_rotation) and scaling (p_scaling) drawn independently, one resampling."""

        def __init__(self):
            MapTransform.__init__(self, ["image", "label"], allow_missing_keys=True)
            self.p_rot, self.p_scale = float(c["p_rotation"]), float(c["p_scaling"])
            self.max_angles = [math.radians(float(c["rotate_inplane_deg"])),
                               math.radians(float(c["rotate_outofplane_deg"])),
                               math.radians(float(c["rotate_outofplane_deg"]))]
            self.scale_range = tuple(float(s) for s in c["scale_range"])
            self.p_per_axis = float(c["p_scale_per_axis"])
            self.padding = c["image_padding"]
            self.do_rot = self.do_scale = False
            self.angles, self.scale = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]

        def randomize(self, data=None) -> None:  # the library's draws: the same random stream
            self.do_rot, self.do_scale, self.angles, self.scale = draw_rotate_scale(
                self.R, self.p_rot, self.p_scale, self.max_angles, self.scale_range, self.p_per_axis)

        def __call__(self, data):
            self.randomize()
            if not (self.do_rot or self.do_scale):
                return data
            d = dict(data)
            kw = {"rotate_params": self.angles if self.do_rot else None,
                  "scale_params": list(self.scale) if self.do_scale else None, "image_only": True, "dtype": dtype}
            d["image"] = _plain(Affine(mode="bilinear", padding_mode=self.padding, **kw)(d["image"]))
            if "label" in d:
                d["label"] = _plain(Affine(mode="nearest", padding_mode="zeros", **kw)(d["label"]))
            return d

    return RandRotateScaled()


def _compose(c: dict[str, Any], affine_dtype=torch.float32):
    import monai.transforms as T

    ts: list = [_rotate_scale_transform(c, affine_dtype)]
    if float(c["p_elastic"]) > 0:
        ts.append(T.Rand3DElasticd(["image", "label"], sigma_range=tuple(c["elastic_sigma"]),
                                   magnitude_range=tuple(c["elastic_magnitude"]), prob=float(c["p_elastic"]),
                                   mode=("bilinear", "nearest"), padding_mode=(c["image_padding"], "zeros"),
                                   allow_missing_keys=True))
    ts += intensity_transforms(c)  # the library's list (the same MONAI transforms as before)
    for axis in c["mirror_axes"]:
        ts.append(T.RandFlipd(["image", "label"], prob=float(c["p_mirror"]), spatial_axis=int(axis),
                              allow_missing_keys=True))
    return T.Compose(ts)


class Augmenter:
    """Seeded augmentation callable (see the module docstring); build with :func:`build_augmentation`."""

    def __init__(self, cfg: dict[str, Any] | None = None, spacing: Sequence[float] | None = None, seed: int = 0):
        self.config = resolve_config(cfg, spacing)
        self.transform = _compose(self.config)
        self.set_random_state(seed)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> "Augmenter":
        """Reseed every random transform (MONAI's ``Randomizable.set_random_state``)."""
        self.transform.set_random_state(seed=None if seed is None else int(seed) % 2**32, state=state)
        return self

    def __call__(self, image, label=None, ignore=None):
        c = self.config
        is_np = isinstance(image, np.ndarray)
        img = torch.as_tensor(np.asarray(image) if is_np else image).float()
        squeeze = img.ndim == 3
        if squeeze:
            img = img[None]
        if img.ndim != 4:
            raise InputError(None, "image (C, z, y, x) or (z, y, x)", f"shape {tuple(img.shape)}")
        spatial = tuple(img.shape[1:])
        lab_in = label
        parts, n_lab, lab_squeeze = [], 0, False
        if label is not None:
            lab = torch.as_tensor(np.asarray(label) if isinstance(label, np.ndarray) else label)
            lab_squeeze = lab.ndim == 3
            lab = lab[None] if lab_squeeze else lab
            if tuple(lab.shape[1:]) != spatial:
                raise InputError(None, f"label of spatial shape {spatial} like the image", f"{tuple(lab.shape)}")
            parts.append(lab.float())
            n_lab = lab.shape[0]
        if ignore is not None:
            ign = torch.as_tensor(np.asarray(ignore) if isinstance(ignore, np.ndarray) else ignore).bool()
            ign = ign[None] if ign.ndim == 3 else ign
            if tuple(ign.shape[1:]) != spatial or ign.shape[0] != 1:
                raise InputError(None, f"ignore mask of shape {spatial}", f"{tuple(ign.shape)}")
            parts.append(ign.float())
        track_valid = c["label_padding"] == "ignore" and bool(parts)
        if c["label_padding"] == "ignore" and ignore is None and c["ignore_value"] is None:
            raise InputError(None, "label_padding 'ignore' with an ignore mask argument or an ignore_value",
                             "neither")
        if track_valid:
            parts.append(torch.ones((1, *spatial)))
        data = {"image": img}
        if parts:
            data["label"] = torch.cat(parts)
        out = self.transform(data)
        img_out = _plain(out["image"]).float()
        if squeeze:
            img_out = img_out[0]
        lab_out = ign_out = None
        if parts:
            stack = _plain(out["label"])
            i = n_lab
            lab_out = stack[:n_lab]
            if ignore is not None:
                ign_out = stack[i:i + 1] > 0.5
                i += 1
            if track_valid:
                outside = stack[i:i + 1] < 0.5
                if ign_out is not None:
                    ign_out = ign_out | outside
                if c["ignore_value"] is not None and lab_out is not None:
                    fill = torch.full_like(lab_out, float(c["ignore_value"]))
                    lab_out = torch.where(outside.expand_as(lab_out), fill, lab_out)
        img_ret = img_out.numpy().astype(np.float32) if is_np else img_out.to(
            image.dtype if image.is_floating_point() else torch.float32)
        lab_ret = None
        if lab_in is not None:
            lab_out = lab_out[0] if lab_squeeze else lab_out
            if isinstance(lab_in, np.ndarray):
                arr = lab_out.numpy()
                lab_ret = (np.rint(arr) if lab_in.dtype.kind in "iub" else arr).astype(lab_in.dtype)
            else:
                lab_ret = torch.round(lab_out).to(lab_in.dtype) if not lab_in.is_floating_point() else lab_out.to(
                    lab_in.dtype)
        if ignore is None:
            return img_ret, lab_ret
        ign_ret = ign_out[0] if np.ndim(ignore) == 3 else ign_out
        ign_ret = ign_ret.numpy() if isinstance(ignore, np.ndarray) else ign_ret
        return img_ret, lab_ret, ign_ret


def build_augmentation(cfg: dict[str, Any] | None = None, spacing: Sequence[float] | None = None,
                       seed: int = 0) -> Augmenter:
    """The augmentation callable ``aug(image, label[, ignore])`` for a config (subset of
    :data:`DEFAULTS`) and the data's voxel spacing (z, y, x), seeded with ``seed``."""
    return Augmenter(cfg, spacing, seed)
