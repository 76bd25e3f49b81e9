"""Deterministic synthetic light-sheet microscopy data in the SELMA3D formats.

The pipeline's default dataset: whole "brains" as TIFF slice folders for self-supervised
pretraining, and annotated NIfTI patches (raw ``_0000`` + binary gt) for finetuning and testing,
of the five seen structures (c-Fos neurons, cell nuclei, Aβ plaques, blood vessels, axons) plus
microglia as the unseen test structure. Objects are built in µm and sampled on an anisotropic
grid; the imaging model adds a z-elongated PSF, Poisson–Gaussian noise, uneven
autofluorescence, light-sheet stripes and depth attenuation, with parameters varying between
brains. See ``dataset`` (layout, config), ``render`` (one field of view), ``shapes`` (geometry)
and ``imaging`` (optics and camera).
"""

from selma3d.data.synth.dataset import (DEFAULTS, MANIFEST_NAME, configure_parser, load_config, resolve_config, run,
                      synthesize_dataset, volume_names)
from selma3d.data.synth.render import IMAGING_DEFAULTS, draw_specimen, render_structure
from selma3d.data.synth.shapes import GENERATORS

STRUCTURES = tuple(GENERATORS)

__all__ = ["DEFAULTS", "IMAGING_DEFAULTS", "MANIFEST_NAME", "STRUCTURES", "configure_parser", "draw_specimen",
           "load_config", "render_structure", "resolve_config", "run", "synthesize_dataset", "volume_names"]
