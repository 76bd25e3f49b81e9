"""Batched, device-agnostic augmentations and masks for self-supervised views.

Everything works on (B, C, D, H, W) tensors on any device with per-sample random parameters
drawn from an explicit ``torch.Generator`` (numbers are drawn on the generator's device and
moved to the data, so a CPU generator drives CUDA data reproducibly). No Python loop over
voxels; crops, flips and resizing are one ``grid_sample``, blur one grouped convolution per axis.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F


def _rand(g: torch.Generator | None, shape: Sequence[int], device: torch.device) -> torch.Tensor:
    dev = g.device if g is not None else device
    return torch.rand(tuple(shape), generator=g, device=dev).to(device)


def _uniform(g, n: int, lo: float, hi: float, device) -> torch.Tensor:
    return lo + (hi - lo) * _rand(g, (n,), device)


def random_resized_crop(
    x: torch.Tensor,
    size: Sequence[int],
    scale: tuple[float, float] = (0.3, 1.0),
    flip: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per-sample random sub-cube (volume fraction in ``scale``), flipped per axis with p=0.5,
    resampled (trilinear) to ``size``; one ``affine_grid``/``grid_sample`` for the whole batch."""
    b = x.shape[0]
    dev = x.device
    frac = _uniform(generator, b, scale[0], scale[1], dev).clamp(1e-3, 1.0) ** (1.0 / 3.0)
    theta = torch.zeros(b, 3, 4, device=dev, dtype=torch.float32)
    for ax in range(3):
        sign = torch.ones(b, device=dev)
        if flip:
            sign = torch.where(_rand(generator, (b,), dev) < 0.5, -1.0, 1.0)
        centre = (_rand(generator, (b,), dev) * 2 - 1) * (1 - frac)
        theta[:, ax, ax] = frac * sign
        theta[:, ax, 3] = centre
    grid = F.affine_grid(theta, [b, x.shape[1], *[int(s) for s in size]], align_corners=False)
    return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False).to(x.dtype)


def rot90_yx(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Rotate sample i by ``k[i]`` quarter turns in the (y, x) plane (the isotropic plane of LSM)."""
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"rotation needs square (y, x) planes, found {tuple(x.shape[-2:])}")
    out = x.clone()
    for r in range(1, 4):
        idx = (k == r).nonzero(as_tuple=True)[0]
        if idx.numel():
            out[idx] = torch.rot90(x[idx], r, dims=(3, 4))
    return out


def random_intensity(
    x: torch.Tensor,
    generator: torch.Generator | None = None,
    contrast: tuple[float, float] = (0.7, 1.3),
    brightness: float = 0.1,
    gamma: tuple[float, float] = (0.7, 1.5),
    p_gamma: float = 0.8,
) -> torch.Tensor:
    """Contrast change: per-sample gamma on the min–max-rescaled patch, then linear contrast
    about the mean and a brightness shift (in units of the patch's std)."""
    b, dev = x.shape[0], x.device
    xf = x.float()
    flat = xf.flatten(1)
    lo = flat.min(1).values.view(b, 1, 1, 1, 1)
    hi = flat.max(1).values.view(b, 1, 1, 1, 1)
    u = (xf - lo) / (hi - lo).clamp_min(1e-6)
    gam = _uniform(generator, b, *gamma, dev).view(b, 1, 1, 1, 1)
    use = (_rand(generator, (b,), dev) < p_gamma).view(b, 1, 1, 1, 1)
    u = torch.where(use, u.clamp_min(0).pow(gam), u)
    xf = u * (hi - lo) + lo
    mean = xf.mean(dim=(1, 2, 3, 4), keepdim=True)
    std = xf.std(dim=(1, 2, 3, 4), keepdim=True).clamp_min(1e-6)
    c = _uniform(generator, b, *contrast, dev).view(b, 1, 1, 1, 1)
    s = _uniform(generator, b, -brightness, brightness, dev).view(b, 1, 1, 1, 1)
    return ((xf - mean) * c + mean + s * std).to(x.dtype)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with a per-sample ``sigma`` (voxels; 0 leaves the sample as is)."""
    b, c = x.shape[:2]
    sig = sigma.to(x.device, torch.float32).clamp_min(0)
    radius = max(1, int(math.ceil(3 * float(sig.max()))))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float32)
    k = torch.exp(-0.5 * (t[None] / sig.clamp_min(1e-3)[:, None]) ** 2)
    k = torch.where(sig[:, None] < 1e-3, (t[None] == 0).float(), k)
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (B*C, K)
    y = x.float().reshape(1, b * c, *x.shape[2:])
    n = 2 * radius + 1
    for ax in range(3):
        shape = [b * c, 1, 1, 1, 1]
        shape[2 + ax] = n
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - ax)] = pad[2 * (2 - ax) + 1] = radius
        y = F.conv3d(F.pad(y, pad, mode="replicate"), k.view(shape), groups=b * c)
    return y.reshape(x.shape).to(x.dtype)


def random_blur(x: torch.Tensor, generator: torch.Generator | None = None, p: float = 0.5,
                sigma: tuple[float, float] = (0.1, 1.5)) -> torch.Tensor:
    """Blur each sample with probability ``p`` and sigma drawn from ``sigma``."""
    b, dev = x.shape[0], x.device
    s = _uniform(generator, b, *sigma, dev)
    s = torch.where(_rand(generator, (b,), dev) < p, s, torch.zeros_like(s))
    return gaussian_blur(x, s)


def gaussian_noise(x: torch.Tensor, generator: torch.Generator | None = None, std: float = 0.05) -> torch.Tensor:
    """Additive Gaussian noise with per-sample std drawn from [0, ``std``] (data units)."""
    b = x.shape[0]
    dev = generator.device if generator is not None else x.device
    noise = torch.randn(tuple(x.shape), generator=generator, device=dev).to(x.device, x.dtype)
    return x + noise * _uniform(generator, b, 0.0, std, x.device).view(b, 1, 1, 1, 1).to(x.dtype)


def augment_view(
    x: torch.Tensor,
    size: Sequence[int] | None = None,
    generator: torch.Generator | None = None,
    crop_scale: tuple[float, float] = (0.3, 1.0),
    blur_p: float = 0.5,
    blur_sigma: tuple[float, float] = (0.1, 1.5),
    noise_std: float = 0.05,
    intensity: bool = True,
) -> torch.Tensor:
    """One SimCLR/BYOL-style view: resized crop + flips, contrast/gamma, blur, noise."""
    size = tuple(size) if size is not None else tuple(x.shape[2:])
    v = random_resized_crop(x, size, crop_scale, flip=True, generator=generator)
    if intensity:
        v = random_intensity(v, generator)
    if blur_p > 0:
        v = random_blur(v, generator, blur_p, blur_sigma)
    if noise_std > 0:
        v = gaussian_noise(v, generator, noise_std)
    return v


def cube_mask(
    shape: Sequence[int],
    ratio: float,
    cube: int | Sequence[int],
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Random cube masking: bool (B, 1, D, H, W), True = masked, exactly ``round(ratio·n)`` of the
    ``n`` cubes per sample (cube grid from ``cube`` voxels per side; edge cubes are cropped)."""
    b, d, h, w = (int(s) for s in shape)
    cz, cy, cx = (int(cube),) * 3 if isinstance(cube, int) else tuple(int(c) for c in cube)
    gz, gy, gx = -(-d // cz), -(-h // cy), -(-w // cx)
    n = gz * gy * gx
    k = int(round(ratio * n))
    scores = _rand(generator, (b, n), torch.device(device))
    order = scores.argsort(1)
    m = torch.zeros(b, n, dtype=torch.bool, device=device)
    m.scatter_(1, order[:, :k], True)
    m = m.view(b, 1, gz, gy, gx)
    m = m.repeat_interleave(cz, 2).repeat_interleave(cy, 3).repeat_interleave(cx, 4)
    return m[:, :, :d, :h, :w]


def token_mask(
    b: int,
    n: int,
    ratio: tuple[float, float],
    p_sample: float = 0.5,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """iBOT-style token mask (B, N) bool: a fraction ``p_sample`` of samples gets a random ratio
    in ``ratio`` of its tokens masked (at least one), the rest none."""
    dev = torch.device(device)
    r = _uniform(generator, b, ratio[0], ratio[1], dev)
    use = _rand(generator, (b,), dev) < p_sample
    k = torch.where(use, (r * n).round().clamp(1, n), torch.zeros_like(r)).long()
    order = _rand(generator, (b, n), dev).argsort(1)
    rank = order.argsort(1)
    return rank < k[:, None]
