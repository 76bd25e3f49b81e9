"""nnU-Net-style on-the-fly augmentation of image + label crops, built from ``monai.transforms``.

Usage::

    from selma3d.augment.pipeline import DEFAULTS, build_augmentation
    aug = build_augmentation({"p_elastic": 0.2}, spacing=(6.0, 1.62, 1.62), seed=0)
    image, label = aug(image, label)                  # (C, z, y, x) or (z, y, x); numpy or torch
    image, label, ignore = aug(image, label, ignore)  # with a bool ignore mask of the label's shape
    aug.set_random_state(seed)                        # reseed (e.g. per training step)

The same seed on the same input gives the same output (every random draw comes from the
transforms' own ``RandomState``, seeded through :meth:`Augmenter.set_random_state` as a
``monai.transforms.Compose`` of the same transforms would seed them: a master ``RandomState``
draws one seed per random transform, in order, each mirrored axis counting as one). Each
transform draws its probability first and, where documented below, its other values whether
applied or not; a transform whose probability draw says no is skipped (its stream advanced by
that draw, as in MONAI). The output has the input's shape, type (numpy / torch) and, for the
label, dtype; it never shares memory with the input.

Transforms, in nnU-Net's order (probabilities and ranges are :data:`DEFAULTS`; pass any subset
to override, an unknown key raises):

1. rotation (``p_rotation`` 0.2) and scaling (``p_scaling`` 0.2), drawn independently (the angles
   and scale factors are drawn whether applied or not) and applied in one resampling: one
   float32 grid (MONAI ``AffineGrid``, bitwise the grid MONAI's ``Affine`` builds) shared by the
   image (trilinear) and the label (nearest), ``torch.nn.functional.grid_sample``. Rotation about z (in-plane) within
   ±``rotate_inplane_deg`` (30°); about y and x within ±``rotate_outofplane_deg`` — by default
   30° for near-isotropic data and ``rotate_outofplane_deg_anisotropic`` (5°) when
   max/min spacing > ``anisotropy_threshold`` (3, nnU-Net's rule). Scale factor in
   ``scale_range`` (0.7-1.4; > 1 zooms out as in nnU-Net), the same for all axes except with
   probability ``p_scale_per_axis`` (0 by default, nnU-Net's synchronised scaling), when each
   axis draws its own factor in ``scale_range``: a change of voxel shape, as between specimens
   imaged with another z-step or magnification.
2. elastic deformation (``p_elastic``, off by default; MONAI ``Rand3DElasticd``).
3. Gaussian noise (``p_noise`` 0.1): MONAI samples the noise std uniformly in
   [0, sqrt(max of ``noise_variance``)] (nnU-Net samples the variance in (0, 0.1)).
4. Gaussian blur (``p_blur`` 0.2, sigma ``blur_sigma`` 0.5-1 voxel per axis).
5. brightness, multiplicative (``p_brightness`` 0.15, factor 0.75-1.25).
6. contrast (``p_contrast`` 0.15, factor 0.75-1.25 around the mean, clipped to the input range).
7. simulated low resolution (``p_lowres`` 0.25, nearest down-sampling by a zoom in 0.5-1, then
   trilinear up-sampling).
8. gamma on the inverted image (``p_gamma_inverted`` 0.1), then gamma (``p_gamma`` 0.3), gamma
   in 0.7-1.5, intensity statistics retained.
9. mirroring, each axis of ``mirror_axes`` with ``p_mirror`` 0.5 (one draw per axis), in one flip.

Labels follow the spatial transforms only, with **nearest** interpolation, so label values
(0/1, an ignore value such as 255, extra mask channels) stay values of the input label.
Voxels that rotation/scaling/elastic deformation bring in from outside the crop:

- image: ``image_padding`` (MONAI padding mode ``zeros`` (default, nnU-Net's constant 0),
  ``border`` or ``reflection``);
- label: ``label_padding`` ``background`` (default: 0) or ``ignore``: such voxels are set to
  ``ignore_value`` in the label (when given) and True in the returned ignore mask (when one was
  passed). ``ignore`` needs one of the two. Use ``ignore`` when the loss supports an ignore mask:
  the padded image there is not real data.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

from selma3d.core.errors import InputError

#: nnU-Net's default augmentation probabilities and ranges (Isensee et al. 2021, DA5-free default)
DEFAULTS: dict[str, Any] = {
    "p_rotation": 0.2,
    "rotate_inplane_deg": 30.0,
    "rotate_outofplane_deg": None,  # None: 30 (isotropic) or rotate_outofplane_deg_anisotropic
    "rotate_outofplane_deg_anisotropic": 5.0,
    "anisotropy_threshold": 3.0,
    "p_scaling": 0.2,
    "scale_range": (0.7, 1.4),
    "p_scale_per_axis": 0.0,
    "p_elastic": 0.0,
    "elastic_sigma": (5.0, 8.0),
    "elastic_magnitude": (100.0, 200.0),
    "p_noise": 0.1,
    "noise_variance": (0.0, 0.1),
    "p_blur": 0.2,
    "blur_sigma": (0.5, 1.0),
    "p_brightness": 0.15,
    "brightness_range": (0.75, 1.25),
    "p_contrast": 0.15,
    "contrast_range": (0.75, 1.25),
    "p_lowres": 0.25,
    "lowres_zoom": (0.5, 1.0),
    "p_gamma": 0.3,
    "p_gamma_inverted": 0.1,
    "gamma_range": (0.7, 1.5),
    "p_mirror": 0.5,
    "mirror_axes": (0, 1, 2),
    "image_padding": "zeros",
    "label_padding": "background",
    "ignore_value": None,
}

IMAGE_PADDINGS = ("zeros", "border", "reflection")
LABEL_PADDINGS = ("background", "ignore")


def _plain(x) -> torch.Tensor:
    """A plain tensor (MONAI may return MetaTensors)."""
    return x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)


def resolve_config(cfg: dict[str, Any] | None, spacing: Sequence[float] | None = None) -> dict[str, Any]:
    """:data:`DEFAULTS` overridden by ``cfg``, with the out-of-plane rotation resolved for ``spacing``."""
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        raise InputError(None, f"augmentation keys among {sorted(DEFAULTS)}", f"unknown {unknown}")
    c = {**DEFAULTS, **cfg}
    for k, v in c.items():
        if k.startswith("p_") and not 0.0 <= float(v) <= 1.0:
            raise InputError(None, f"augmentation probability {k} in [0, 1]", repr(v))
    if c["image_padding"] not in IMAGE_PADDINGS:
        raise InputError(None, f"image_padding one of {list(IMAGE_PADDINGS)}", repr(c["image_padding"]))
    if c["label_padding"] not in LABEL_PADDINGS:
        raise InputError(None, f"label_padding one of {list(LABEL_PADDINGS)}", repr(c["label_padding"]))
    sp = [1.0, 1.0, 1.0] if spacing is None else [float(s) for s in spacing]
    anisotropic = max(sp) / min(sp) > float(c["anisotropy_threshold"])
    if c["rotate_outofplane_deg"] is None:
        c["rotate_outofplane_deg"] = (float(c["rotate_outofplane_deg_anisotropic"]) if anisotropic
                                      else float(c["rotate_inplane_deg"]))
    c["anisotropic"] = anisotropic
    c["spacing"] = sp
    return c


MAX_SEED = 2**32  # monai.utils.misc.MAX_SEED


def _random_objects(t) -> list:
    """``t`` and the Randomizable objects it holds (recursively): the ones whose ``R`` its
    ``set_random_state`` reseeds (MONAI dict transforms reseed their array transform(s))."""
    from monai.transforms import Randomizable

    out, stack, seen = [], [t], set()
    while stack:
        o = stack.pop()
        if id(o) in seen:
            continue
        seen.add(id(o))
        if isinstance(o, Randomizable):
            out.append(o)
        stack.extend(v for v in vars(o).values() if isinstance(v, Randomizable))
    return out


class _Reseed:
    """Reseeds a random transform exactly as ``t.set_random_state(seed=s)`` does, without building
    new ``RandomState`` objects (about 80 µs each; ``RandomState.seed`` is about 1 µs and gives the
    same state). Checked once at construction; transforms it cannot mirror use ``set_random_state``."""

    def __init__(self, t):
        self.t = t
        t.set_random_state(seed=12345)
        self.objs = _random_objects(t)
        ref = np.random.RandomState(12345).get_state()
        states = [o.R for o in self.objs]
        fast = len({id(r) for r in states}) == len(states) and all(
            r.get_state()[2:] == ref[2:] and np.array_equal(r.get_state()[1], ref[1]) for r in states)
        if fast:  # every object has its own R and set_random_state seeded each with the seed itself
            t.set_random_state(seed=54321)
            ref = np.random.RandomState(54321).get_state()
            fast = all(np.array_equal(r.get_state()[1], ref[1]) for r in (o.R for o in self.objs))
        self.fast = fast

    def __call__(self, seed: int) -> None:
        if self.fast:
            for o in self.objs:
                o.R.seed(seed)
        else:
            self.t.set_random_state(seed=seed)


class _Grid:
    """The sampling grid MONAI's ``Affine`` (float32, ``align_corners=False``) builds for a
    rotation + scaling, in ``grid_sample``'s (1, z, y, x, 3) layout, computed once for image and
    label with the same operations (bitwise the same grid)."""

    def __init__(self):
        self._base: dict[tuple, torch.Tensor] = {}

    def __call__(self, shape: tuple, rotate, scale) -> torch.Tensor:
        from monai.transforms import AffineGrid
        from monai.transforms.utils import create_grid
        from monai.utils import convert_to_tensor

        base = self._base.get(shape)
        if base is None:
            base = self._base[shape] = create_grid(shape, backend="torch", dtype=torch.float32)
        _, affine = AffineGrid(rotate_params=rotate, scale_params=scale, dtype=torch.float32, lazy=True)(
            spatial_size=shape)
        affine = convert_to_tensor(affine, dtype=torch.float32, track_meta=False)
        grid = (affine @ base.view((base.shape[0], -1))).view([-1, *shape])
        grid = torch.movedim(grid[[2, 1, 0]], 0, -1)
        for i, dim in enumerate(shape[::-1]):  # voxel -> [-1, 1] coordinates, as MONAI's Resample
            grid[..., i] *= 2.0 / max(2, dim)
        return grid[None]


class _Labels:
    """The label-like arrays that follow the spatial transforms: the label (its own dtype), the
    ignore mask (bool) and, with ``label_padding: ignore``, a validity mask (bool, all True until a
    resampling brings voxels in from outside). Resampling stacks them as float32 channels
    (nearest, zeros outside) and splits them back. An ignore mask without a True voxel stays so
    under every spatial transform: it is neither resampled nor flipped."""

    def __init__(self, label, ignore, track_valid: bool):
        self.label, self.ignore, self.track_valid = label, ignore, track_valid
        self.valid = None  # None: all True
        self.ignore_empty = ignore is not None and not bool(ignore.any())

    def _moving(self) -> list:
        return [p for p in (self.label, None if self.ignore_empty else self.ignore) if p is not None]

    def stack(self) -> torch.Tensor:
        parts = [p.float() for p in self._moving()]
        if self.track_valid:
            parts.append(torch.ones((1, *self._shape())) if self.valid is None else self.valid.float())
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def unstack(self, stack: torch.Tensor) -> None:
        i = 0
        if self.label is not None:
            n = self.label.shape[0]
            lab = stack[i:i + n]
            self.label = (lab if self.label.is_floating_point() else torch.round(lab)).to(self.label.dtype)
            i += n
        if self.ignore is not None and not self.ignore_empty:
            self.ignore = stack[i:i + 1] > 0.5
            i += 1
        if self.track_valid:
            self.valid = stack[i:i + 1] > 0.5

    def _shape(self):
        return (self.label if self.label is not None else self.ignore).shape[1:]

    def any(self) -> bool:
        """Whether a resampling has anything to move."""
        return bool(self._moving()) or self.track_valid

    def map(self, f) -> None:
        self.label = None if self.label is None else f(self.label)
        self.ignore = self.ignore if self.ignore is None or self.ignore_empty else f(self.ignore)
        self.valid = None if self.valid is None else f(self.valid)


def intensity_transforms(c: dict[str, Any]) -> list:
    """The MONAI intensity transforms of a resolved config, in nnU-Net's order (steps 3-8 of the
    module docstring), acting on the key ``image``."""
    import monai.transforms as T

    img = ["image"]
    sig = tuple(float(s) for s in c["blur_sigma"])
    b0, b1 = (float(v) for v in c["brightness_range"])
    c0, c1 = (float(v) for v in c["contrast_range"])
    gamma = tuple(float(g) for g in c["gamma_range"])
    return [
        T.RandGaussianNoised(img, prob=float(c["p_noise"]), mean=0.0,
                             std=math.sqrt(float(max(c["noise_variance"]))), sample_std=True),
        T.RandGaussianSmoothd(img, sigma_x=sig, sigma_y=sig, sigma_z=sig, prob=float(c["p_blur"])),
        T.RandScaleIntensityd(img, factors=(b0 - 1.0, b1 - 1.0), prob=float(c["p_brightness"])),
        T.RandScaleIntensityFixedMeand(img, factors=(c0 - 1.0, c1 - 1.0), fixed_mean=True, preserve_range=True,
                                       prob=float(c["p_contrast"])),
        T.RandSimulateLowResolutiond(img, prob=float(c["p_lowres"]), downsample_mode="nearest",
                                     upsample_mode="trilinear", zoom_range=tuple(c["lowres_zoom"])),
        T.RandAdjustContrastd(img, prob=float(c["p_gamma_inverted"]), gamma=gamma, invert_image=True,
                              retain_stats=True),
        T.RandAdjustContrastd(img, prob=float(c["p_gamma"]), gamma=gamma, invert_image=False, retain_stats=True),
    ]


def draw_rotate_scale(R: np.random.RandomState, p_rot: float, p_scale: float, max_angles, scale_range,
                      p_per_axis: float) -> tuple[bool, bool, list[float], list[float]]:
    """(rotate?, scale?, angles, per-axis scale factors) of one crop, drawn from ``R``.

    Every value is drawn whether applied or not, so the stream advances the same way whatever
    is applied; the per-axis factors are drawn only when ``p_per_axis`` > 0, so streams without
    the option are those of nnU-Net's synchronised scaling."""
    do_rot = R.rand() < p_rot
    do_scale = R.rand() < p_scale
    angles = [float(R.uniform(-a, a)) for a in max_angles]
    scale = [float(R.uniform(*scale_range))] * 3
    if p_per_axis > 0:
        per_axis = R.rand() < p_per_axis
        others = [float(R.uniform(*scale_range)) for _ in range(2)]
        if per_axis:
            scale = [scale[0], *others]
    return do_rot, do_scale, angles, scale


def _rotate_scale_transform(c: dict[str, Any]):
    """Rotation (p_rotation) and scaling (p_scaling), one grid for image (linear) and label
    (nearest), float32 ``torch.nn.functional.grid_sample`` (MONAI's default float64 is about twice
    as slow on a 96³ crop on the CPU and changes nothing a float32 training sample can hold beyond
    rounding; two MONAI ``Affine`` calls built the same grid twice)."""
    from monai.transforms import Randomizable

    class RandRotateScale(Randomizable):
        def __init__(self):
            self.p_rot, self.p_scale = float(c["p_rotation"]), float(c["p_scaling"])
            self.max_angles = [math.radians(float(c["rotate_inplane_deg"])),
                               math.radians(float(c["rotate_outofplane_deg"])),
                               math.radians(float(c["rotate_outofplane_deg"]))]
            self.scale_range = tuple(float(s) for s in c["scale_range"])
            self.p_per_axis = float(c["p_scale_per_axis"])
            self.padding = c["image_padding"]
            self.do_rot = self.do_scale = False
            self.angles, self.scale = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
            self.grid = _Grid()

        def randomize(self, data=None) -> None:
            self.do_rot, self.do_scale, self.angles, self.scale = draw_rotate_scale(
                self.R, self.p_rot, self.p_scale, self.max_angles, self.scale_range, self.p_per_axis)

        def __call__(self, img: torch.Tensor, labels: _Labels) -> torch.Tensor:
            self.randomize()
            if not (self.do_rot or self.do_scale):
                return img
            F = torch.nn.functional
            grid = self.grid(tuple(img.shape[1:]), self.angles if self.do_rot else None,
                             list(self.scale) if self.do_scale else None)
            img = F.grid_sample(img[None], grid, mode="bilinear", padding_mode=self.padding, align_corners=False)[0]
            if labels.any():
                labels.unstack(F.grid_sample(labels.stack()[None], grid, mode="nearest", padding_mode="zeros",
                                             align_corners=False)[0])
            return img

    return RandRotateScale()


class _Mirror:
    """Mirroring along each of ``axes`` with probability ``p``: one ``Randomizable`` per axis (each
    draws ``R.rand() < p`` per call, as a MONAI ``RandFlipd``), applied in one ``torch.flip``."""

    def __init__(self, axes: Sequence[int], p: float):
        from monai.transforms import Randomizable

        self.axes, self.p = [int(a) for a in axes], float(p)
        self.draws = [Randomizable() for _ in self.axes]

    def dims(self) -> list[int]:
        flips: dict[int, bool] = {}
        for a, r in zip(self.axes, self.draws):
            if r.R.rand() < self.p:
                d = a + 1 if a >= 0 else a  # channel first (MONAI's map_spatial_axes)
                d = d if d >= 0 else d + 4
                flips[d] = not flips.get(d, False)
        return sorted(d for d, on in flips.items() if on)


def _compose(c: dict[str, Any]):
    """The steps in order: ``(kind, transform)``, kind ``rotate_scale``, ``elastic`` (MONAI dict
    transform on image + label stack), ``intensity`` (MONAI dict transforms on the image) or
    ``mirror``; and the number of random-seed slots each takes (a ``monai.transforms.Compose`` of
    the same transforms draws one per random transform, in order: the seeds are the same)."""
    import monai.transforms as T

    steps: list = [("rotate_scale", _rotate_scale_transform(c))]
    if float(c["p_elastic"]) > 0:
        steps.append(("elastic", T.Rand3DElasticd(
            ["image", "label"], sigma_range=tuple(c["elastic_sigma"]), magnitude_range=tuple(c["elastic_magnitude"]),
            prob=float(c["p_elastic"]), mode=("bilinear", "nearest"), padding_mode=(c["image_padding"], "zeros"),
            allow_missing_keys=True)))
    steps += [("intensity", t) for t in intensity_transforms(c)]
    steps.append(("mirror", _Mirror(c["mirror_axes"], float(c["p_mirror"]))))
    return steps


def _intensity(t, img: torch.Tensor) -> torch.Tensor:
    """A MONAI random intensity dict transform on ``img``, skipped when its probability draw
    (``R.rand() < prob``, its first draw) says no: the stream then advances by that one draw, as
    in MONAI; when it applies, the state is rewound and MONAI draws it again itself."""
    state = t.R.get_state()
    if not t.R.rand() < t.prob:
        return img
    t.R.set_state(state)
    return _plain(t({"image": img})["image"])


class Augmenter:
    """Seeded augmentation callable (see the module docstring); build with :func:`build_augmentation`."""

    def __init__(self, cfg: dict[str, Any] | None = None, spacing: Sequence[float] | None = None, seed: int = 0):
        self.config = resolve_config(cfg, spacing)
        self.steps = _compose(self.config)
        self._reseed: list = []  # one per seed slot, in order
        for kind, t in self.steps:
            if kind == "mirror":
                self._reseed += [_Reseed(r) for r in t.draws]
            else:
                self._reseed.append(_Reseed(t))
        self._master = np.random.RandomState(0)
        self.set_random_state(seed)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> "Augmenter":
        """Reseed every random transform as ``monai.transforms.Compose.set_random_state`` does
        (a master ``RandomState`` from ``seed``, or ``state``, draws one seed per transform)."""
        if seed is not None:
            self._master.seed(int(seed) % MAX_SEED)
            master = self._master
        elif state is not None:
            if not isinstance(state, np.random.RandomState):
                raise TypeError(f"state must be None or a np.random.RandomState but is {type(state).__name__}.")
            master = state
        else:
            master = np.random.RandomState()
        for reseed in self._reseed:
            reseed(int(master.randint(MAX_SEED, dtype="uint32")))
        return self

    def _run(self, img: torch.Tensor, labels: _Labels) -> torch.Tensor:
        for kind, t in self.steps:
            if kind == "rotate_scale":
                img = t(img, labels)
            elif kind == "intensity":
                img = _intensity(t, img)
            elif kind == "elastic":
                d = {"image": img}
                if labels.any():
                    d["label"] = labels.stack()
                d = t(d)
                img = _plain(d["image"])
                if labels.any():
                    labels.unstack(_plain(d["label"]))
            else:  # mirror
                dims = t.dims()
                if dims:
                    img = torch.flip(img, dims)
                    labels.map(lambda x: torch.flip(x, dims))
        return img

    def __call__(self, image, label=None, ignore=None):
        c = self.config
        is_np = isinstance(image, np.ndarray)
        src = torch.as_tensor(np.asarray(image) if is_np else image)
        img = src.float()
        squeeze = img.ndim == 3
        if squeeze:
            img = img[None]
        if img.ndim != 4:
            raise InputError(None, "image (C, z, y, x) or (z, y, x)", f"shape {tuple(img.shape)}")
        spatial = tuple(img.shape[1:])
        lab = ign = None
        lab_squeeze = False
        if label is not None:
            lab = torch.as_tensor(np.asarray(label) if isinstance(label, np.ndarray) else label)
            lab_squeeze = lab.ndim == 3
            lab = lab[None] if lab_squeeze else lab
            if tuple(lab.shape[1:]) != spatial:
                raise InputError(None, f"label of spatial shape {spatial} like the image", f"{tuple(lab.shape)}")
        if ignore is not None:
            ign = torch.as_tensor(np.asarray(ignore) if isinstance(ignore, np.ndarray) else ignore).bool()
            ign = ign[None] if ign.ndim == 3 else ign
            if tuple(ign.shape[1:]) != spatial or ign.shape[0] != 1:
                raise InputError(None, f"ignore mask of shape {spatial}", f"{tuple(ign.shape)}")
        track_valid = c["label_padding"] == "ignore" and (lab is not None or ign is not None)
        if c["label_padding"] == "ignore" and ignore is None and c["ignore_value"] is None:
            raise InputError(None, "label_padding 'ignore' with an ignore mask argument or an ignore_value",
                             "neither")
        labels = _Labels(lab, ign, track_valid)
        img_out = self._run(img, labels).float()
        lab_out, ign_out = labels.label, labels.ignore
        if labels.valid is not None:
            outside = ~labels.valid
            if ign_out is not None:
                ign_out = ign_out | outside
            if c["ignore_value"] is not None and lab_out is not None:
                fill = torch.full_like(lab_out, float(c["ignore_value"]))
                lab_out = torch.where(outside.expand_as(lab_out), fill, lab_out)
        if squeeze:
            img_out = img_out[0]
        if is_np:
            img_ret = _own(img_out, src).numpy()
        else:
            img_ret = _own(img_out, src).to(image.dtype if image.is_floating_point() else torch.float32)
        lab_ret = None
        if label is not None:
            lab_out = _own(lab_out[0] if lab_squeeze else lab_out, lab)
            lab_ret = lab_out.numpy() if isinstance(label, np.ndarray) else lab_out
        if ignore is None:
            return img_ret, lab_ret
        ign_ret = _own(ign_out[0] if np.ndim(ignore) == 3 else ign_out, ign)
        ign_ret = ign_ret.numpy() if isinstance(ignore, np.ndarray) else ign_ret
        return img_ret, lab_ret, ign_ret


def _own(t: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """``t``, copied if it still shares memory with the input ``src`` (nothing applied to it):
    outputs never alias the inputs."""
    if t.untyped_storage().data_ptr() == src.untyped_storage().data_ptr():
        return t.clone()
    return t


def build_augmentation(cfg: dict[str, Any] | None = None, spacing: Sequence[float] | None = None,
                       seed: int = 0) -> Augmenter:
    """The augmentation callable ``aug(image, label[, ignore])`` for a config (subset of
    :data:`DEFAULTS`) and the data's voxel spacing (z, y, x), seeded with ``seed``."""
    return Augmenter(cfg, spacing, seed)
