"""One field of view: geometry of a structure, then the light-sheet imaging model.

``render_structure`` is the single-patch generator other modules' tests can use; ``draw_specimen``
draws the per-brain parameters (stain brightness, autofluorescence, optics, camera) that make
volumes from different brains differ, so that cross-brain generalisation is not free.
"""

from __future__ import annotations

import numpy as np

from selma3d.data.synth import imaging
from selma3d.data.synth.shapes import GENERATORS

Array = np.ndarray

#: imaging parameters of ``render_structure`` (a typical specimen) — see its docstring
IMAGING_DEFAULTS: dict = {
    "density": 1.0,
    "signal": 1800.0,
    "background": 350.0,
    "background_variation": 0.3,
    "psf_sigma_um": (3.0, 0.8, 0.8),
    "stripe_strength": 0.25,
    "stripe_axis": 2,
    "attenuation_z_um": 1500.0,
    "attenuation_x_um": 4000.0,
    "depth_um": 0.0,
    "gain": 2.0,
    "read_noise": 4.0,
    "offset": 100.0,
    "saturation": 32767,
    "tissue": False,
    "noise": True,
}

#: stain brightness of each structure relative to ``signal`` (thin fibres lose to partial volume)
STRUCTURE_SIGNAL = {
    "cfos_neuron": 1.4,
    "cell_nuclei": 0.8,
    "AD_plaques": 1.6,
    "blood_vessel": 1.0,
    "axonalmarker": 1.5,
    "microglia": 1.3,
}


def render_structure(structure: str, shape_zyx, spacing, rng: np.random.Generator,
                     **params) -> tuple[Array, Array]:
    """Render one (z, y, x) field of view of ``structure``; returns (image uint16, label uint8).

    Args:
        structure: one of ``GENERATORS`` (cfos_neuron, cell_nuclei, AD_plaques, blood_vessel,
            axonalmarker, microglia).
        shape_zyx: grid shape; spacing: voxel size (z, y, x) µm. Objects are built in µm.
        rng: the only source of randomness (same generator state -> same arrays).
        params: overrides of ``IMAGING_DEFAULTS``:
            density (object count multiplier), signal (ADU of a typical object at depth 0),
            background (autofluorescence ADU), background_variation (log-sd of its slow field),
            psf_sigma_um (z, y, x), stripe_strength (peak optical depth of shadows, 0 = none),
            stripe_axis (1 = y, 2 = x: the illumination axis the stripes run along),
            attenuation_z_um / attenuation_x_um (1/e lengths), depth_um (depth of the first
            slice), gain (ADU per photo-electron), read_noise (ADU sd), offset (ADU),
            saturation (max ADU), tissue (draw a brain outline with empty medium around it),
            noise (False: expected image without shot/read noise).
    """
    if structure not in GENERATORS:
        raise ValueError(f"unknown structure {structure!r}; expected one of {sorted(GENERATORS)}")
    unknown = sorted(set(params) - set(IMAGING_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown render parameters {unknown}; expected some of {sorted(IMAGING_DEFAULTS)}")
    p = {**IMAGING_DEFAULTS, **params}
    shape = tuple(int(s) for s in shape_zyx)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape_zyx must be three positive sizes, found {shape_zyx!r}")
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must be three positive µm values (z, y, x), found {spacing!r}")
    if not 0 < int(p["saturation"]) <= 65535:
        raise ValueError(f"saturation must be in 1..65535, found {p['saturation']!r}")

    scene = GENERATORS[structure](shape, spacing, rng, float(p["density"]))
    dens = scene.density
    dens *= np.clip(1.0 + 0.2 * imaging.texture(shape, spacing, rng, 1.0), 0.0, None)
    af = imaging.autofluorescence(shape, spacing, rng, float(p["background"]), float(p["background_variation"]))
    if p["tissue"]:
        m = imaging.tissue_mask(shape, spacing, rng)
        dens *= m
        scene.label[m < 0.5] = 0
        af *= 0.06 + 0.94 * m
    emitted = dens * np.float32(p["signal"] * STRUCTURE_SIGNAL[structure]) + af
    emitted *= imaging.stripes(shape, spacing, rng, float(p["stripe_strength"]), int(p["stripe_axis"]))
    emitted *= imaging.attenuation(shape, spacing, float(p["depth_um"]), float(p["attenuation_z_um"]),
                                   float(p["attenuation_x_um"]))
    expected = imaging.psf_blur(emitted, spacing, p["psf_sigma_um"])
    image = imaging.camera(expected, rng, float(p["gain"]), float(p["read_noise"]), float(p["offset"]),
                           int(p["saturation"]), bool(p["noise"]))
    return image, scene.label


def draw_specimen(rng: np.random.Generator) -> dict:
    """Parameters of one brain: stain, autofluorescence, clearing quality, optics and camera.

    Why: in real SELMA3D data intensity, contrast and density differ between brains far more
    than within one; models must generalise across brains, not memorise one.
    """
    return {
        "density": float(rng.lognormal(0.0, 0.3)),
        "signal": float(IMAGING_DEFAULTS["signal"] * rng.lognormal(0.0, 0.35)),
        "background": float(rng.uniform(150.0, 600.0)),
        "background_variation": float(rng.uniform(0.15, 0.45)),
        "psf_sigma_um": (float(rng.uniform(2.5, 4.5)),) + (float(rng.uniform(0.7, 1.1)),) * 2,
        "stripe_strength": float(rng.uniform(0.08, 0.4)),
        "attenuation_z_um": float(rng.uniform(800.0, 3000.0)),
        "attenuation_x_um": float(rng.uniform(2000.0, 8000.0)),
        "gain": float(rng.uniform(1.5, 3.0)),
        "read_noise": float(rng.uniform(2.0, 6.0)),
    }


def draw_field(rng: np.random.Generator, specimen: dict) -> dict:
    """Per-patch variation inside one brain: imaging depth and local object density."""
    return {**specimen,
            "depth_um": float(rng.uniform(0.0, 1200.0)),
            "density": float(specimen["density"] * rng.lognormal(0.0, 0.25))}
