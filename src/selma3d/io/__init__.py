"""Readers and writers for the formats light-sheet data comes in, in one axis convention.

Every array leaves this package as (z, y, x) with a voxel size (z, y, x) in µm. NIfTI is
converted *without reorientation*: the array equals SimpleITK's ``GetArrayFromImage`` (nibabel's
data transposed (2, 1, 0)), as the official SELMA3D evaluators see it; the affine is kept so
predictions can be written back with the input's geometry.

Volumes too large for memory are read through :func:`open_reader`, which returns a
:class:`VolumeReader` (``shape``, ``dtype``, ``spacing``, ``read_slab(z0, z1)``,
``read_block(...)``) for TIFF slice folders, multi-page TIFF, NIfTI, MHA/NRRD and (OME-)Zarr.
Readers validate as they open (slice headers, numbering, shapes, dtypes) and reject NaN/inf.

Layout: one module per format on top of :mod:`~selma3d.io.volume` (the shared types), and
:mod:`~selma3d.io.registry`, which dispatches by suffix or folder content:

- :mod:`~selma3d.io.volume`: :class:`Volume`, :class:`VolumeReader`, :class:`ArrayReader`,
  :func:`case_name`, :func:`natural_key`, the suffix constants;
- :mod:`~selma3d.io.tiff`: TIFF slice folders and multi-page stacks, slice numbering checks;
- :mod:`~selma3d.io.nifti`: NIfTI, the (x, y, z) <-> (z, y, x) conversion, the LPS affine;
- :mod:`~selma3d.io.mha`: MetaImage/NRRD through SimpleITK, and any image's full SimpleITK header
  (:func:`read_geometry`: spacing, origin, direction) for writing masks in their input's geometry;
- :mod:`~selma3d.io.omezarr`: (OME-)Zarr stores, pyramids and patch arrays;
- :mod:`~selma3d.io.registry`: :func:`read_volume`, :func:`write_volume`, :func:`open_reader`,
  :func:`check_pair`.

Format modules import :mod:`selma3d.io.volume`, never this package; this package only
re-exports their public names.
"""

from selma3d.core.errors import InputError
from selma3d.io.mha import ImageGeometry, SitkReader, read_geometry, read_mha, write_mha
from selma3d.io.nifti import NiftiReader, check_nifti_pair, lps_affine, read_nifti, write_nifti
from selma3d.io.omezarr import ZarrReader, is_zarr_store, read_zarr_volume, write_zarr_volume
from selma3d.io.registry import FORMATS, Format, check_pair, format_of, open_reader, read_volume, write_volume
from selma3d.io.tiff import (TiffSeriesReader, TiffStackReader, check_series_numbering, list_tiff_series,
                             write_tiff_series, write_tiff_stack)
from selma3d.io.volume import (MHA_SUFFIXES, NIFTI_SUFFIXES, TIFF_SUFFIXES, ZARR_SUFFIXES, ArrayReader,
                               SpacingSource, Volume, VolumeReader, case_name, natural_key)

__all__ = [
    "ArrayReader", "FORMATS", "Format", "ImageGeometry", "InputError", "MHA_SUFFIXES", "NIFTI_SUFFIXES",
    "NiftiReader", "SitkReader", "SpacingSource", "TIFF_SUFFIXES", "TiffSeriesReader", "TiffStackReader", "Volume",
    "VolumeReader", "ZARR_SUFFIXES", "ZarrReader", "case_name", "check_nifti_pair", "check_pair",
    "check_series_numbering", "format_of", "is_zarr_store", "list_tiff_series", "lps_affine", "natural_key",
    "open_reader", "read_geometry", "read_mha", "read_nifti", "read_volume", "read_zarr_volume", "write_mha",
    "write_nifti", "write_tiff_series", "write_tiff_stack", "write_volume", "write_zarr_volume",
]
