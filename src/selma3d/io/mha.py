"""MetaImage (``.mha``, ``.mhd``) and NRRD through SimpleITK, in the (z, y, x) convention
(SimpleITK's ``GetArrayFromImage`` order; its spacing is (x, y, z) and is reversed here)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from selma3d.core.atomic import atomic_path
from selma3d.core.errors import InputError
from selma3d.io.volume import Volume, VolumeReader, swap_xz


def read_mha(path: str | Path) -> Volume:
    """A whole MetaImage/NRRD image in memory as (z, y, x)."""
    import SimpleITK as sitk

    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(path, "a readable MetaImage/NRRD file", str(exc).strip().splitlines()[-1]) from exc
    return Volume(sitk.GetArrayFromImage(img), spacing=swap_xz(img.GetSpacing()), meta={"format": "sitk"})


@dataclass(frozen=True)
class ImageGeometry:
    """An image header as SimpleITK reports it, in SimpleITK's own (x, y, z) order.

    Challenge containers must write masks with their input's exact geometry; this keeps what
    the (z, y, x) :class:`Volume` does not (origin, direction). ``size`` is (x, y, z), so the
    array shape is ``size[::-1]``; ``direction`` is the row-major flattened cosine matrix.
    """

    dimension: int
    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    components: int = 1

    @property
    def shape(self) -> tuple[int, ...]:
        """The (z, y, x) array shape."""
        return tuple(int(s) for s in reversed(self.size))

    def matches(self, other: "ImageGeometry", atol: float = 1e-6) -> list[str]:
        """Names of the fields (size, spacing, origin, direction) in which ``other`` differs."""
        out = []
        if self.dimension != other.dimension or tuple(self.size) != tuple(other.size):
            out.append("size")
        for name in ("spacing", "origin", "direction"):
            a, b = getattr(self, name), getattr(other, name)
            if len(a) != len(b) or not np.allclose(a, b, rtol=0, atol=atol):
                out.append(name)
        return out


def read_geometry(path: str | Path) -> ImageGeometry:
    """The header of any image SimpleITK reads (MHA, NRRD, TIFF, NIfTI), voxels not loaded."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(path, "an image SimpleITK can read", str(exc).strip().splitlines()[-1]) from exc
    return ImageGeometry(int(reader.GetDimension()), tuple(int(v) for v in reader.GetSize()),
                         tuple(float(v) for v in reader.GetSpacing()), tuple(float(v) for v in reader.GetOrigin()),
                         tuple(float(v) for v in reader.GetDirection()), int(reader.GetNumberOfComponents()))


def write_mha(path: str | Path, data: np.ndarray, spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
              geometry: ImageGeometry | None = None) -> Path:
    """Write a (z, y, x) array as compressed MetaImage, atomically.

    ``geometry`` (e.g. the input's :func:`read_geometry`) sets spacing, origin and direction
    exactly, overriding ``spacing``; its size must match the array.
    """
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.asarray(data))
    if geometry is None:
        img.SetSpacing(swap_xz(spacing))  # (z, y, x) -> SimpleITK's (x, y, z): the same reversal
    else:
        if tuple(img.GetSize()) != tuple(geometry.size):
            raise ValueError(f"{path}: array of size (x, y, z) {img.GetSize()} for a geometry of size {geometry.size}")
        img.SetSpacing(geometry.spacing)
        img.SetOrigin(geometry.origin)
        img.SetDirection(geometry.direction)
    with atomic_path(path) as tmp:
        sitk.WriteImage(img, str(tmp), useCompression=True)
    return Path(path)


class SitkReader(VolumeReader):
    """MetaImage/NRRD via SimpleITK: header read up front, voxels loaded whole on first use
    (these come as test-sized patches; MHA has no cheap slab access when compressed)."""

    def __init__(self, path: str | Path, spacing=None):
        import SimpleITK as sitk

        self.path = Path(path)
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(self.path))
        try:
            reader.ReadImageInformation()
        except RuntimeError as exc:
            raise InputError(self.path, "a readable MetaImage/NRRD file", str(exc).strip().splitlines()[-1]) from exc
        size = reader.GetSize()
        if len(size) != 3 or reader.GetNumberOfComponents() != 1:
            raise InputError(self.path, "a 3D single-component image",
                             f"size {size} with {reader.GetNumberOfComponents()} components")
        self.shape = (int(size[2]), int(size[1]), int(size[0]))
        self.set_spacing(spacing, swap_xz(reader.GetSpacing()))
        probe = sitk.Image(1, 1, 1, reader.GetPixelID())
        self.dtype = sitk.GetArrayViewFromImage(probe).dtype
        self._data: np.ndarray | None = None

    def _read(self, z0, z1, y0, y1, x0, x1):
        if self._data is None:
            self._data = read_mha(self.path).data
        return np.array(self._data[z0:z1, y0:y1, x0:x1])

    def close(self) -> None:
        self._data = None
