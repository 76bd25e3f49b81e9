"""The light-sheet imaging model applied to a fluorophore density.

Order, following the physics: tissue autofluorescence is added to the labelled density; the
excitation sheet enters along x and is attenuated with distance and shadowed into stripes by
absorbers (multiplicative, constant along x after the absorber); emitted light is attenuated
with depth z and blurred by a z-elongated Gaussian PSF (the sheet thickness dominates the axial
resolution); the camera adds shot (Poisson) and read (Gaussian) noise, an offset, and clips at
its saturation level.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

Array = np.ndarray


def smooth_field(shape, spacing, rng: np.random.Generator, scale_um: float) -> Array:
    """Zero-mean, unit-sd random field varying on ``scale_um``.

    A sum of Gaussian bumps with random weights on a coarse lattice (spacing scale/2), built
    separably (three small matrix products): cheap even for large volumes.
    """
    mats = []
    for n, sp in zip(shape, spacing):
        x = np.arange(n) * float(sp)
        c = np.arange(-scale_um, n * float(sp) + scale_um + 1e-9, scale_um / 2.0)
        mats.append(np.exp(-0.5 * ((x[:, None] - c[None, :]) / (scale_um / 2.0)) ** 2).astype(np.float32))
    g = rng.standard_normal(tuple(m.shape[1] for m in mats)).astype(np.float32)
    f = np.einsum("abc,za->zbc", g, mats[0])
    f = np.einsum("zbc,yb->zyc", f, mats[1])
    f = np.einsum("zyc,xc->zyx", f, mats[2])
    sd = float(f.std())
    return ((f - f.mean()) / sd if sd > 0 else f * 0).astype(np.float32)


def texture(shape, spacing, rng: np.random.Generator, scale_um: float = 1.5) -> Array:
    """Unit-sd fine-grained noise (cellular texture of tissue and chromatin)."""
    sigma = np.maximum(scale_um / np.asarray(spacing, float), 0.3)
    t = gaussian_filter(rng.standard_normal(tuple(shape)).astype(np.float32), sigma)
    sd = float(t.std())
    return t / sd if sd > 0 else t


def autofluorescence(shape, spacing, rng: np.random.Generator, level: float, variation: float = 0.3,
                     grain: float = 0.12) -> Array:
    """Uneven tissue background: log-normal low-frequency field times a fine texture."""
    low = np.exp(variation * smooth_field(shape, spacing, rng, 70.0))
    fine = 1.0 + grain * texture(shape, spacing, rng, 2.0)
    return (level * low * np.clip(fine, 0.2, None)).astype(np.float32)


def tissue_mask(shape, spacing, rng: np.random.Generator) -> Array:
    """Soft (0..1) mask of brain tissue: a wavy elliptic cross-section, cut by the volume's edge.

    Why: whole-brain volumes contain empty clearing medium around the brain, which patch
    extraction has to filter out.
    """
    E = np.asarray(shape) * np.asarray(spacing, float)
    y = (np.arange(shape[1]) * spacing[1] - E[1] * rng.uniform(0.4, 0.6)) / (E[1] * rng.uniform(0.42, 0.55))
    x = (np.arange(shape[2]) * spacing[2] - E[2] * rng.uniform(0.4, 0.6)) / (E[2] * rng.uniform(0.42, 0.55))
    z = (np.arange(shape[0]) * spacing[0] - E[0] * rng.uniform(0.3, 0.7)) / max(E[0] * 2.5, 1.0)
    g = 1.0 - (y[None, :, None] ** 2 + x[None, None, :] ** 2 + z[:, None, None] ** 2)
    g = g + 0.08 * smooth_field(shape, spacing, rng, 60.0)
    width = 4.0 / float(min(E[1], E[2]))  # ~4 µm soft edge
    return (1.0 / (1.0 + np.exp(-g / width))).astype(np.float32)


def stripes(shape, spacing, rng: np.random.Generator, strength: float, axis: int = 2,
            per_100um: float = 6.0) -> Array:
    """Multiplicative shadow stripes of the light sheet, running along ``axis`` (y=1 or x=2).

    Each stripe is an absorber's shadow: narrow across (1–5 µm), a limited z extent, and it
    starts at the absorber's position along the illumination axis, then persists.
    """
    if axis not in (1, 2):
        raise ValueError(f"stripe axis must be 1 (y) or 2 (x), found {axis}")
    if strength <= 0:
        return np.ones(shape, np.float32)
    sp = np.asarray(spacing, float)
    across = 3 - axis  # the other in-plane axis
    L_across = shape[across] * sp[across]
    L_along = shape[axis] * sp[axis]
    k = max(1, int(rng.poisson(per_100um * L_across / 100.0 * max(1.0, shape[0] * sp[0] / 100.0))))
    c_across = rng.uniform(0, L_across, k)
    w_across = rng.uniform(1.0, 5.0, k)
    depth = strength * rng.uniform(0.3, 1.0, k)
    c_z = rng.uniform(0, shape[0] * sp[0], k)
    w_z = rng.uniform(10.0, 60.0, k)
    start = rng.uniform(-0.6 * L_along, 0.8 * L_along, k)
    a = np.arange(shape[across]) * sp[across]
    b = np.arange(shape[axis]) * sp[axis]
    zz = np.arange(shape[0]) * sp[0]
    Gz = depth[:, None] * np.exp(-0.5 * ((zz[None] - c_z[:, None]) / w_z[:, None]) ** 2)
    Ga = np.exp(-0.5 * ((a[None] - c_across[:, None]) / w_across[:, None]) ** 2)
    Gb = 1.0 / (1.0 + np.exp(-(b[None] - start[:, None]) / 4.0))
    if axis == 2:
        optical_depth = np.einsum("kz,ky,kx->zyx", Gz, Ga, Gb, optimize=True)
    else:
        optical_depth = np.einsum("kz,ky,kx->zyx", Gz, Gb, Ga, optimize=True)
    return np.exp(-optical_depth).astype(np.float32)


def attenuation(shape, spacing, depth_um: float, length_z_um: float, length_x_um: float) -> Array:
    """Exponential intensity decay with imaging depth z (detection) and along x (excitation)."""
    z = (depth_um + np.arange(shape[0]) * spacing[0])[:, None, None]
    x = (np.arange(shape[2]) * spacing[2])[None, None, :]
    return np.exp(-z / length_z_um - x / length_x_um).astype(np.float32)


def psf_blur(img: Array, spacing, sigma_um) -> Array:
    """Gaussian PSF with per-axis sigma in µm (z larger: the light-sheet thickness)."""
    sigma = np.asarray(sigma_um, float) / np.asarray(spacing, float)
    return gaussian_filter(img, sigma, mode="nearest", truncate=3.0)


def camera(expected: Array, rng: np.random.Generator, gain: float, read_noise: float, offset: float,
           saturation: int, noise: bool = True) -> Array:
    """Poisson–Gaussian detector: ADU = offset + gain·Poisson(signal/gain) + N(0, read_noise)."""
    expected = np.maximum(expected, 0.0)
    if noise:
        electrons = rng.poisson(expected / gain).astype(np.float32)
        adu = offset + gain * electrons + rng.normal(0.0, read_noise, expected.shape).astype(np.float32)
    else:
        adu = offset + expected
    return np.clip(np.rint(adu), 0, saturation).astype(np.uint16)
