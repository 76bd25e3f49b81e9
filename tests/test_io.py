"""selma3d.io: axis order through every format, the streaming readers, and bad-input errors."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import tifffile

from selma3d import io
from selma3d.core.errors import InputError

SPACING = (4.0, 2.0, 0.5)  # z, y, x: all different, so a swapped axis shows


@pytest.fixture
def vol() -> np.ndarray:
    """(z, y, x) = (5, 7, 9), value encodes its own position, plus one off-centre marker."""
    z, y, x = np.meshgrid(np.arange(5), np.arange(7), np.arange(9), indexing="ij")
    a = (z * 100 + y * 10 + x).astype(np.uint16)
    a[1, 2, 3] = 4000
    return a


def _all_blocks_match(reader: io.VolumeReader, a: np.ndarray) -> None:
    assert reader.shape == a.shape
    assert np.array_equal(reader.read_slab(0, a.shape[0]), a)
    assert np.array_equal(reader.read_slab(2, 4), a[2:4])
    assert np.array_equal(reader.read_block(1, 4, 2, 6, 3, 8), a[1:4, 2:6, 3:8])


def test_nifti_round_trip_is_lps_and_zyx(tmp_path, vol):
    path = io.write_nifti(tmp_path / "v.nii.gz", vol, spacing=SPACING)
    img = nib.load(str(path))
    assert img.shape == (9, 7, 5)  # nibabel sees (x, y, z)
    assert np.asarray(img.dataobj)[3, 2, 1] == 4000
    assert np.allclose(img.affine, np.diag([-0.5, -2.0, 4.0, 1.0]))  # LPS, spacing on the diagonal
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(path))), vol)  # the evaluators' view
    back = io.read_volume(path)
    assert np.array_equal(back.data, vol) and back.spacing == SPACING
    with io.open_reader(path) as r:
        assert isinstance(r, io.NiftiReader) and r.spacing == SPACING and r.dtype == np.uint16
        _all_blocks_match(r, vol)


def test_mha_round_trip(tmp_path, vol):
    path = io.write_mha(tmp_path / "v.mha", vol, spacing=SPACING)
    img = sitk.ReadImage(str(path))
    assert img.GetSize() == (9, 7, 5) and img.GetSpacing() == (0.5, 2.0, 4.0)
    back = io.read_volume(path)
    assert np.array_equal(back.data, vol) and back.spacing == SPACING
    with io.open_reader(path) as r:
        assert isinstance(r, io.SitkReader) and r.spacing == SPACING and r.dtype == np.uint16
        _all_blocks_match(r, vol)


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_multipage_tiff_round_trip(tmp_path, vol, compression):
    path = tmp_path / "v.tif"
    tifffile.imwrite(path, vol, compression=compression)
    assert tifffile.imread(path).shape == (5, 7, 9)
    assert np.array_equal(io.read_volume(path).data, vol)
    with io.open_reader(path) as r:
        assert isinstance(r, io.TiffStackReader)
        assert (r.row_chunk is None) == (compression is not None)  # compressed: page-wise decode
        _all_blocks_match(r, vol)


def test_imagej_tiff_spacing(tmp_path, vol):
    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, vol, imagej=True, resolution=(1 / SPACING[2], 1 / SPACING[1]),
                     metadata={"spacing": SPACING[0], "unit": "um", "axes": "ZYX"})
    with io.open_reader(path) as r:
        assert r.spacing == pytest.approx(SPACING) and r.spacing_source == "file"
        _all_blocks_match(r, vol)


@pytest.mark.parametrize("dtype", [np.uint16, np.int16])
def test_tiff_series_round_trip(tmp_path, vol, dtype):
    a = vol.astype(dtype)
    if dtype == np.int16:
        a[0, 0, 0] = -5
    io.write_tiff_series(tmp_path / "s", a, spacing=SPACING)
    assert tifffile.imread(sorted((tmp_path / "s").iterdir())[1]).shape == (7, 9)  # one (y, x) slice per file
    assert np.array_equal(io.read_volume(tmp_path / "s").data, a)
    with io.open_reader(tmp_path / "s") as r:
        assert isinstance(r, io.TiffSeriesReader) and r.dtype == dtype
        assert r.spacing[1:] == pytest.approx(SPACING[1:])  # TIFF resolution holds y/x only
        _all_blocks_match(r, a)
    with io.open_reader(tmp_path / "s", spacing=SPACING) as r:
        assert r.spacing == SPACING and r.spacing_source == "argument"


def test_tiff_series_natural_sort_and_big_endian(tmp_path, vol):
    folder = tmp_path / "s"
    folder.mkdir()
    for z in range(vol.shape[0]):  # z1..z5 unpadded, written in scrambled order, big-endian
        tifffile.imwrite(folder / f"img_z{z + 8}.tif", vol[z], byteorder=">")
    files = io.list_tiff_series(folder)
    assert [f.name for f in files][:3] == ["img_z8.tif", "img_z9.tif", "img_z10.tif"]
    with io.open_reader(folder) as r:
        _all_blocks_match(r, vol)


def test_compressed_tiff_series(tmp_path, vol):
    folder = tmp_path / "s"
    folder.mkdir()
    for z in range(vol.shape[0]):
        tifffile.imwrite(folder / f"s_{z:03d}.tif", vol[z], compression="zlib")
    with io.open_reader(folder) as r:
        assert r.row_chunk is None
        _all_blocks_match(r, vol)


def test_array_reader_and_read_block_bounds(vol):
    r = io.open_reader(vol, spacing=SPACING)
    _all_blocks_match(r, vol)
    with pytest.raises(IndexError):
        r.read_block(0, 6)


# ---------------------------------------------------------------------------------------------
# Bad inputs: each error names the offending file


def _series(tmp_path, vol, name="s") -> Path:
    io.write_tiff_series(tmp_path / name, vol)
    return tmp_path / name


def test_truncated_slice_is_named(tmp_path, vol):
    folder = _series(tmp_path, vol)
    bad = sorted(folder.iterdir())[3]
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) - 40])
    with pytest.raises(InputError, match=bad.name) as err:
        io.open_reader(folder)
    assert "truncated" in str(err.value)


def test_corrupt_slice_is_named(tmp_path, vol):
    folder = _series(tmp_path, vol)
    bad = sorted(folder.iterdir())[2]
    bad.write_bytes(b"this is not a tiff" * 10)
    with pytest.raises(InputError, match=bad.name):
        io.read_volume(folder)


def test_missing_slice_is_an_error(tmp_path, vol):
    folder = _series(tmp_path, vol)
    gone = sorted(folder.iterdir())[2]
    gone.unlink()
    with pytest.raises(InputError, match="gap") as err:
        io.open_reader(folder)
    assert "slice_z0001.tif" in str(err.value) and "slice_z0003.tif" in str(err.value)
    assert "[2]" in str(err.value)


def test_mismatched_slice_shape_and_dtype(tmp_path, vol):
    folder = _series(tmp_path, vol)
    files = sorted(folder.iterdir())
    tifffile.imwrite(files[3], vol[3, :, :8])
    with pytest.raises(InputError, match=files[3].name) as err:
        io.open_reader(folder)
    assert "(7, 9)" in str(err.value) and "(7, 8)" in str(err.value)
    tifffile.imwrite(files[3], vol[3].astype(np.float32))
    with pytest.raises(InputError, match=files[3].name) as err:
        io.open_reader(folder)
    assert "uint16" in str(err.value) and "float32" in str(err.value)


def test_nan_is_rejected(tmp_path, vol):
    a = vol.astype(np.float32)
    a[2, 3, 4] = np.nan
    tifffile.imwrite(tmp_path / "f.tif", a)
    with io.open_reader(tmp_path / "f.tif") as r:
        assert np.array_equal(r.read_slab(0, 2), a[:2])  # clean slabs still read
        with pytest.raises(InputError, match="f.tif") as err:
            r.read_slab(0, 5)
    assert "z=2" in str(err.value)
    folder = tmp_path / "fs"
    a[2, 3, 4] = np.inf
    io.write_tiff_series(folder, a)
    with io.open_reader(folder) as r, pytest.raises(InputError, match="slice_z0002.tif"):
        r.read_slab(0, 5)


def test_check_pair(tmp_path, vol):
    img = io.write_nifti(tmp_path / "raw.nii.gz", vol, spacing=SPACING)
    io.check_pair(img, io.write_nifti(tmp_path / "ok.nii.gz", (vol > 500).astype(np.uint8), spacing=SPACING))
    shape_bad = io.write_nifti(tmp_path / "shape.nii.gz", vol[:, :, :8], spacing=SPACING)
    with pytest.raises(InputError, match="shape.nii.gz") as err:
        io.check_pair(img, shape_bad)
    assert "raw.nii.gz" in str(err.value)
    aff_bad = io.write_nifti(tmp_path / "aff.nii.gz", vol, spacing=(4.0, 2.0, 1.0))
    with pytest.raises(InputError, match="aff.nii.gz") as err:
        io.check_pair(img, aff_bad)
    assert "affine" in str(err.value)
    mha_bad = io.write_mha(tmp_path / "lab.mha", vol[:4], spacing=SPACING)
    with pytest.raises(InputError, match="lab.mha"):
        io.check_pair(io.write_mha(tmp_path / "raw.mha", vol, spacing=SPACING), mha_bad)


def test_unknown_suffix_and_missing_path(tmp_path):
    (tmp_path / "x.png").write_bytes(b"")
    with pytest.raises(InputError, match="x.png"):
        io.open_reader(tmp_path / "x.png")
    with pytest.raises(InputError, match="nope"):
        io.open_reader(tmp_path / "nope.nii.gz")


def test_registry_picks_the_format_by_suffix_or_folder(tmp_path, vol):
    written = {
        "nifti": io.write_volume(tmp_path / "v.nii.gz", vol, spacing=SPACING),
        "mha": io.write_volume(tmp_path / "v.nrrd", vol, spacing=SPACING),
        "tiff": io.write_volume(tmp_path / "v.TIF", vol),
        "zarr": io.write_volume(tmp_path / "v.ome.zarr", vol, spacing=SPACING),
    }
    io.write_tiff_series(tmp_path / "series", vol)
    written["tiff-series"] = tmp_path / "series"
    for name, path in written.items():
        assert io.format_of(path).name == name
        assert np.array_equal(io.read_volume(path).data, vol), name
    assert io.read_volume(written["zarr"]).spacing == SPACING
    plain = tmp_path / "store_without_suffix"  # a zarr store is known by its metadata too
    written["zarr"].rename(plain)
    assert io.format_of(plain).name == "zarr"
    with io.open_reader(plain) as r:
        assert isinstance(r, io.ZarrReader) and r.spacing == SPACING
    with pytest.raises(ValueError, match="x.png"):
        io.write_volume(tmp_path / "x.png", vol)


def test_format_modules_share_one_volume_type():
    from selma3d.io import mha, nifti, omezarr, tiff, volume

    for module in (mha, nifti, omezarr, tiff):
        readers = [v for v in vars(module).values() if isinstance(v, type) and issubclass(v, volume.VolumeReader)]
        assert readers and all(r.__module__ in (module.__name__, volume.__name__) for r in readers)
    assert io.Volume is volume.Volume and io.read_volume.__module__ == "selma3d.io.registry"


# ---------------------------------------------------------------------------------------------
# Real data (read from ../shared/data/real, never copied)


def test_real_nifti_and_tiff_readers(real_data):
    raw = real_data / "cfos_brain695" / "raw"
    path = sorted(raw.glob("*.nii.gz"))[0] if raw.exists() else sorted(real_data.rglob("*.nii.gz"))[0]
    full = io.read_volume(path)
    with io.open_reader(path) as r:
        assert r.shape == full.data.shape
        assert np.array_equal(r.read_slab(10, 30), full.data[10:30])
        assert np.array_equal(r.read_block(5, 9, 20, 40, 60, 100), full.data[5:9, 20:40, 60:100])
    tif = real_data / "axon_trailmap" / "volume.tif"
    with io.open_reader(tif) as r:
        ref = tifffile.imread(tif)
        assert r.shape == ref.shape == (101, 120, 120)
        assert np.array_equal(r.read_slab(40, 60), ref[40:60])


def test_no_machine_paths_in_package():
    for path in Path(io.__file__).parent.glob("*.py"):
        src = path.read_text()
        assert "/work/" not in src and os.path.expanduser("~") not in src, path.name
