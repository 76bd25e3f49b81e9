"""SELMA3D: self-supervised learning for 3D light-sheet microscopy segmentation.

The importable library behind the Snakemake workflow. Arrays are (z, y, x); voxel sizes are
(z, y, x) micrometres.
"""

__version__ = "0.1.0"
