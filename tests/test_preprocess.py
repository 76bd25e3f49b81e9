"""ingest -> downsample -> patchify: correctness against references, metadata, bounded reads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr
from skimage.measure import block_reduce
from skimage.transform import resize

from selma3d import io
from selma3d.preprocess.pyramid import (AxisStream, apply_op, axis_op, downsample_array, downsample_volume,
                                exact_mean_factors, plan_pyramid, pyramid_arrays)
from selma3d.core.errors import InputError
from selma3d.preprocess.ingest import ingest_volume
from selma3d.preprocess.patchify import PatchDataset, load_patch_index, patchify_volume, read_patch, resolve_threshold
from selma3d.io.omezarr import ChunkIO, ZarrReader, blosc_codec, read_zarr_volume, write_zarr_volume

SPACING = (2.0, 1.0, 0.5)


@pytest.fixture
def brain() -> np.ndarray:
    """A small asymmetric uint16 volume: smooth gradient + noise + bright blobs."""
    rng = np.random.default_rng(1)
    z, y, x = np.meshgrid(np.arange(21), np.arange(34), np.arange(47), indexing="ij")
    a = 100 + 20 * z + 7 * y + 3 * x + rng.integers(0, 50, z.shape)
    a[5:9, 10:14, 30:40] = 3000
    return a.astype(np.uint16)


class RecordingReader(io.ArrayReader):
    """An in-memory reader that behaves like a chunked store and logs every block read."""

    def __init__(self, data, spacing, z_chunk=4, row_chunk=8):
        super().__init__(data, spacing, path="recorded.zarr", z_chunk=z_chunk, row_chunk=row_chunk)
        self.calls: list[tuple[int, int, int, int, int, int]] = []

    def _read(self, z0, z1, y0, y1, x0, x1):
        self.calls.append((z0, z1, y0, y1, x0, x1))
        return super()._read(z0, z1, y0, y1, x0, x1)


def _no_leftovers(folder: Path) -> bool:
    return not any(".incomplete" in p.name for p in folder.iterdir())


# ---------------------------------------------------------------------------------------------
# NGFF metadata check (the parts napari-ome-zarr relies on, per the 0.4 / 0.5 specs)


def check_ngff(path: Path, version: str) -> list[dict]:
    if version == "0.5":
        meta = json.loads((path / "zarr.json").read_text())
        assert meta["zarr_format"] == 3 and meta["node_type"] == "group"
        ome = meta["attributes"]["ome"]
        assert ome["version"] == "0.5"
        ms = ome["multiscales"]
    else:
        assert json.loads((path / ".zgroup").read_text())["zarr_format"] == 2
        ms = json.loads((path / ".zattrs").read_text())["multiscales"]
        assert ms[0]["version"] == "0.4"
    assert len(ms) == 1
    axes = ms[0]["axes"]
    assert [a["name"] for a in axes] == ["z", "y", "x"]
    assert all(a["type"] == "space" and a["unit"] == "micrometer" for a in axes)
    group = zarr.open_group(str(path), mode="r")
    for ds in ms[0]["datasets"]:
        ct = ds["coordinateTransformations"]
        assert ct[0]["type"] == "scale" and len(ct[0]["scale"]) == 3 and min(ct[0]["scale"]) > 0
        assert len(ct) == 1 or (len(ct) == 2 and ct[1]["type"] == "translation" and len(ct[1]["translation"]) == 3)
        arr = group[ds["path"]]
        assert arr.ndim == 3
        if version == "0.5":
            assert tuple(arr.metadata.dimension_names) == ("z", "y", "x")
    return ms[0]["datasets"]


# ---------------------------------------------------------------------------------------------
# ingest


def test_ingest_tiff_series_round_trip(tmp_path, brain):
    io.write_tiff_series(tmp_path / "s", brain)
    out = ingest_volume(tmp_path / "s", tmp_path / "b.zarr", spacing=SPACING, chunks=(8, 16, 16),
                        progress=False, max_block_bytes=8 * 16 * 47 * 2)
    check_ngff(out, "0.5")
    vol = io.read_volume(out)
    assert np.array_equal(vol.data, brain) and vol.spacing == SPACING
    assert zarr.open_group(str(out), mode="r")["0"].chunks == (8, 16, 16)
    attrs = zarr.open_group(str(out), mode="r").attrs["selma3d"]
    assert attrs["spacing_source"] == "argument" and attrs["shape"] == list(brain.shape)
    assert _no_leftovers(tmp_path)


@pytest.mark.parametrize("suffix", [".nii.gz", ".tif", ".mha"])
def test_ingest_other_formats(tmp_path, brain, suffix):
    src = io.write_volume(tmp_path / f"v{suffix}", brain, spacing=SPACING)
    out = ingest_volume(src, tmp_path / "v.zarr", spacing=SPACING, chunks=(8, 16, 16), progress=False)
    assert np.array_equal(read_zarr_volume(out).data, brain)


def test_ingest_reads_slab_by_slab(tmp_path, brain):
    reader = RecordingReader(brain, SPACING, z_chunk=1, row_chunk=8)
    ingest_volume(reader, tmp_path / "b.zarr", chunks=(4, 8, 16), progress=False, max_block_bytes=4 * 16 * 47 * 2)
    sizes = [(z1 - z0) * (y1 - y0) * (x1 - x0) for z0, z1, y0, y1, x0, x1 in reader.calls]
    assert max(sizes) <= 4 * 16 * 47  # one chunk-deep band, never the volume
    assert sum(sizes) == brain.size  # every voxel read exactly once
    assert np.array_equal(read_zarr_volume(tmp_path / "b.zarr").data, brain)


@pytest.mark.parametrize("damage", ["truncate", "gap", "shape", "dtype", "nan"])
def test_bad_input_leaves_no_output(tmp_path, brain, damage):
    data = brain.astype(np.float32) if damage == "nan" else brain
    io.write_tiff_series(tmp_path / "s", data)
    files = sorted((tmp_path / "s").iterdir())
    bad = files[7]
    if damage == "truncate":
        bad.write_bytes(bad.read_bytes()[:-100])
    elif damage == "gap":
        bad.unlink()
    elif damage == "shape":
        import tifffile

        tifffile.imwrite(bad, brain[7, :30])
    elif damage == "dtype":
        import tifffile

        tifffile.imwrite(bad, brain[7].astype(np.int32))
    else:
        data[7, 3, 3] = np.nan
        import tifffile

        tifffile.imwrite(bad, data[7])
    with pytest.raises(InputError) as err:
        ingest_volume(tmp_path / "s", tmp_path / "out.zarr", spacing=SPACING, chunks=(4, 16, 16), progress=False)
    named = files[6].name if damage == "gap" else bad.name
    assert named in str(err.value)
    assert not (tmp_path / "out.zarr").exists() and _no_leftovers(tmp_path)


# ---------------------------------------------------------------------------------------------
# downsample


def test_gaussian_operator_matches_skimage_resize():
    rng = np.random.default_rng(0)
    a = (rng.random((24, 30, 45)) * 1000).astype(np.float32)
    factors = (1.5, 2.5, 3.0)
    ours = downsample_array(a, factors, method="gaussian")
    ref = resize(a, (16, 12, 15), order=1, anti_aliasing=True, preserve_range=True, mode="reflect")
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, atol=1e-2)


def test_block_mean_matches_block_reduce():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 60000, (12, 20, 24)).astype(np.uint16)
    ours = downsample_array(a, (2, 4, 3))  # auto: integer factors -> block mean
    np.testing.assert_allclose(ours, block_reduce(a.astype(np.float64), (2, 4, 3), np.mean), rtol=1e-6)
    odd = downsample_array(a[:11, :19], (2, 4, 1))  # partial last blocks average what they have
    assert odd.shape == (6, 5, 24)
    np.testing.assert_allclose(odd[5, 4], a[10, 16:19].mean(axis=0), rtol=1e-6)


def test_factor_at_most_one_leaves_axis_alone():
    op = axis_op(17, 0.5)
    assert op.kind == "identity" and op.n_out == 17
    plan = plan_pyramid((10, 20, 30), (4.0, 1.0, 1.0), (2.0, 2.0, 2.0), levels=1)
    assert plan[0].shape == (10, 10, 15) and plan[0].spacing == (4.0, 2.0, 2.0)


@pytest.mark.parametrize("method,factor", [("gaussian", 2.5), ("auto", 3.0), ("gaussian", 4.0)])
def test_axis_stream_equals_whole_array(method, factor):
    rng = np.random.default_rng(2)
    a = rng.random((41, 5, 3)).astype(np.float32)
    op = axis_op(41, factor, method)
    whole = apply_op(a, op, 0)
    for step in (1, 4, 7):
        stream = AxisStream(op, 0)
        parts = [p for k in range(0, 41, step) if (p := stream.push(a[k:k + step])) is not None]
        assert stream.done
        assert np.array_equal(np.concatenate(parts), whole)
        assert stream.peak_rows <= step + 2 * int(4 * (factor - 1) / 2 + 0.5) + int(np.ceil(factor)) + 2  # halo only


@pytest.mark.parametrize("target,method", [((4.0, 3.0, 2.0), "auto"), ((3.0, 1.5, 1.25), "auto"),
                                           ((4.0, 2.0, 1.0), "gaussian")])
def test_streamed_pyramid_equals_in_memory(tmp_path, brain, target, method):
    reader = RecordingReader(brain, SPACING, z_chunk=4, row_chunk=8)
    out = downsample_volume(reader, tmp_path / "p.ome.zarr", target, levels=3, method=method,
                            chunks=(4, 8, 8), progress=False, max_block_bytes=4 * 8 * 47 * 2)
    ref = pyramid_arrays(brain, SPACING, target, levels=3, method=method)
    datasets = check_ngff(out, "0.5")
    plan = plan_pyramid(brain.shape, SPACING, target, 3, method)
    for level in range(3):
        got = read_zarr_volume(out, level)
        assert np.array_equal(got.data, ref[level]), level
        assert got.data.dtype == np.uint16
        assert got.spacing == pytest.approx(plan[level].spacing)
        assert datasets[level]["coordinateTransformations"][0]["scale"] == pytest.approx(plan[level].spacing)
    assert read_zarr_volume(out, 0).spacing == pytest.approx(
        tuple(max(t, s) for t, s in zip(target, SPACING)))
    # bounded memory: the reader was asked for chunk-sized blocks only, each voxel once
    sizes = [(z1 - z0) * (y1 - y0) * (x1 - x0) for z0, z1, y0, y1, x0, x1 in reader.calls]
    assert max(sizes) <= 4 * 8 * 47 and sum(sizes) == brain.size


def test_pyramid_levels_spacing_and_translation(tmp_path, brain):
    out = downsample_volume(brain, tmp_path / "p.ome.zarr", (4.0, 2.0, 2.0), levels=3, spacing=SPACING,
                            chunks=(8, 8, 8), progress=False)
    ds = check_ngff(out, "0.5")
    scales = [d["coordinateTransformations"][0]["scale"] for d in ds]
    assert scales == [[4.0, 2.0, 2.0], [4.0, 4.0, 4.0], [8.0, 8.0, 8.0]]  # z joins once isotropic
    translations = [d["coordinateTransformations"][1]["translation"] for d in ds]
    assert translations[0] == [1.0, 0.5, 0.75]  # (f - 1) / 2 source voxels: block centres
    shapes = [read_zarr_volume(out, k).data.shape for k in range(3)]
    assert shapes == [(11, 17, 12), (11, 9, 6), (6, 5, 3)]


def test_ngff_04_output(tmp_path, brain):
    out = downsample_volume(brain, tmp_path / "p.ome.zarr", (4.0, 2.0, 2.0), levels=2, spacing=SPACING,
                            chunks=(8, 8, 8), progress=False, ngff_version="0.4")
    check_ngff(out, "0.4")
    assert np.array_equal(read_zarr_volume(out, 1).data,
                          pyramid_arrays(brain, SPACING, (4.0, 2.0, 2.0), 2)[1])


def test_downsample_from_tiff_series_directly(tmp_path, brain):
    io.write_tiff_series(tmp_path / "s", brain)
    out = downsample_volume(tmp_path / "s", tmp_path / "p.ome.zarr", (4.0, 2.0, 2.0), levels=1,
                            spacing=SPACING, progress=False, max_block_bytes=3 * 47 * 34 * 2)
    assert np.array_equal(read_zarr_volume(out).data, pyramid_arrays(brain, SPACING, (4.0, 2.0, 2.0), 1)[0])


def test_chunkio_is_zarr_compatible(tmp_path, brain):
    write_zarr_volume(tmp_path / "a.zarr", brain, SPACING, chunks=(8, 16, 16))  # zarr writes
    arr = zarr.open_group(str(tmp_path / "a.zarr"), mode="r")["0"]
    fast = ChunkIO.for_array(arr)
    assert fast is not None
    assert np.array_equal(fast.read((8, 16, 0), (21, 34, 47)), brain[8:, 16:])  # we read zarr's chunks
    g = zarr.open_group(str(tmp_path / "b.zarr"), mode="w")
    arr2 = g.create_array("0", shape=brain.shape, chunks=(8, 16, 16), dtype=brain.dtype,
                          compressors=blosc_codec("zstd", 3))
    ChunkIO.for_array(arr2).write((0, 0, 0), brain)  # zarr reads ours, edge chunks included
    assert np.array_equal(zarr.open_group(str(tmp_path / "b.zarr"), mode="r")["0"][:], brain)
    assert not fast.aligned((0, 1, 0), (8, 16, 16))
    other = g.create_array("1", shape=(4, 4, 4), chunks=(2, 2, 2), dtype="u2")  # zarr's default zstd codec
    assert ChunkIO.for_array(other) is None  # not ours: plain zarr is used


# ---------------------------------------------------------------------------------------------
# patchify


@pytest.fixture
def patch_volume(tmp_path) -> tuple[Path, np.ndarray, set]:
    """4 x 5 x 6 grid of 8^3 cubes; 13 chosen cubes have 25 % of voxels at 1000 a.u."""
    a = np.full((32, 40, 48), 100, np.uint16)
    rng = np.random.default_rng(3)
    cells = set()
    while len(cells) < 13:
        cells.add(tuple(int(v) for v in rng.integers(0, (4, 5, 6))))
    for z, y, x in cells:
        a[z * 8:z * 8 + 8, y * 8:y * 8 + 2, x * 8:x * 8 + 8] = 1000
    a[0:8, 0:8, 40:48][:, :1] = 1000  # 12.5 %: above 10 %, kept
    cells.add((0, 0, 5))
    a[24:32, 32:40, 0:8][:, :, :1] = 600  # 12.5 % at 600 a.u.: kept at threshold 500, not at 20 %
    path = write_zarr_volume(tmp_path / "v.zarr", a, (6.5, 6.5, 6.5), chunks=(16, 16, 16))
    return path, a, cells


def test_patchify_filter_and_background_share(tmp_path, patch_volume):
    path, a, cells = patch_volume
    df = patchify_volume(path, tmp_path / "p.zarr", tmp_path / "p.csv", 8, min_foreground=0.1,
                         intensity_threshold=500, background_share=0.2, seed=7,
                         meta={"structure": "nuclei", "category": "isolated_dense"}, progress=False)
    fg = df[~df.background]
    expected = cells | {(3, 4, 0)}  # the 600 a.u. cube passes at threshold 500
    assert {(z // 8, y // 8, x // 8) for z, y, x in zip(fg.z, fg.y, fg.x)} == expected
    assert len(fg) == len(expected) == 15
    n_rejected = 4 * 5 * 6 - 15
    assert df.background.sum() == 21 == round(0.2 * n_rejected)
    assert (df[df.background].foreground_fraction < 0.1).all()
    assert list(df.columns[:10]) == ["volume", "structure", "category", "spacing_um", "patch", "z", "y", "x",
                                     "foreground_fraction", "background"]
    assert (df.volume == "v").all() and (df.spacing_um == "6.5,6.5,6.5").all() and (df.structure == "nuclei").all()
    store = zarr.open_array(str(tmp_path / "p.zarr"), mode="r")
    assert store.shape == (36, 8, 8, 8) and store.chunks == (1, 8, 8, 8) and store.dtype == np.uint16
    for row in df.itertuples():
        cube = a[row.z:row.z + 8, row.y:row.y + 8, row.x:row.x + 8]
        assert np.array_equal(store[row.patch], cube)
        assert row.foreground_fraction == pytest.approx((cube > 500).mean())
    # the same seed gives the same sample; another seed another one
    again = patchify_volume(path, tmp_path / "q.zarr", tmp_path / "q.csv", 8, background_share=0.2, seed=7,
                            progress=False)
    other = patchify_volume(path, tmp_path / "r.zarr", tmp_path / "r.csv", 8, background_share=0.2, seed=8,
                            progress=False)
    key = ["z", "y", "x"]
    assert again[again.background][key].values.tolist() == df[df.background][key].values.tolist()
    assert other[other.background][key].values.tolist() != df[df.background][key].values.tolist()
    strict = patchify_volume(path, tmp_path / "s.zarr", tmp_path / "s.csv", 8, min_foreground=0.2,
                             background_share=0.0, progress=False)
    assert len(strict) == 13 and not strict.background.any()


def test_patch_index_reader(tmp_path, patch_volume):
    path, a, _ = patch_volume
    sub = tmp_path / "idx"
    sub.mkdir()
    patchify_volume(path, tmp_path / "p.zarr", sub / "p.csv", (8, 8, 16), background_share=0.2, progress=False)
    patchify_volume(path, tmp_path / "q.zarr", tmp_path / "q.csv", 16, stride=8, progress=False)
    index = load_patch_index([sub / "p.csv", tmp_path / "q.csv"])
    assert Path(index.store[0]).is_absolute() and index.background.dtype == bool
    ds = PatchDataset(index)
    assert len(ds) == len(index)
    for k in (0, len(ds) // 2, len(ds) - 1):
        row = index.iloc[k]
        shape = np.asarray(ds[k]).shape
        assert np.array_equal(ds[k], a[row.z:row.z + shape[0], row.y:row.y + shape[1], row.x:row.x + shape[2]])
    assert np.array_equal(read_patch(index.store[0], 0), ds[0])
    with pytest.raises(IndexError):
        read_patch(index.store[0], 10_000)


def test_patchify_pyramid_level_and_thresholds(tmp_path, brain):
    pyr = downsample_volume(brain, tmp_path / "p.ome.zarr", (2.0, 1.0, 1.0), levels=2, spacing=SPACING,
                            chunks=(8, 8, 8), progress=False)
    with ZarrReader(pyr, level=1) as r:
        assert resolve_threshold(r, 1234) == 1234.0
        level1 = r.read_slab(0, r.shape[0])
        assert resolve_threshold(r, "p50") == pytest.approx(np.percentile(level1, 50))
        assert resolve_threshold(r, "percentile:90") == pytest.approx(np.percentile(level1, 90))
        otsu = resolve_threshold(r, "otsu")
        assert level1.min() < otsu < level1.max()
        with pytest.raises(ValueError):
            resolve_threshold(r, "median")
    df = patchify_volume(pyr, tmp_path / "x.zarr", tmp_path / "x.csv", 4, level=1, intensity_threshold="otsu",
                         progress=False)
    assert (df.level == 1).all() and (df.spacing_um == "2,2,2").all()
    with pytest.raises(InputError, match="p.ome.zarr"):
        patchify_volume(pyr, tmp_path / "y.zarr", tmp_path / "y.csv", 64, progress=False)
    assert not (tmp_path / "y.zarr").exists() and not (tmp_path / "y.csv").exists()


def test_csv_is_plain_table(tmp_path, patch_volume):
    path, _, _ = patch_volume
    patchify_volume(path, tmp_path / "p.zarr", tmp_path / "p.csv", 8, progress=False)
    raw = pd.read_csv(tmp_path / "p.csv")
    assert raw.store.iloc[0] == "p.zarr"  # relative to the CSV: results folders can move


def test_ingest_builds_pyramid_in_the_same_pass(tmp_path, brain):
    io.write_tiff_series(tmp_path / "s", brain)
    ingest_volume(tmp_path / "s", tmp_path / "b.zarr", spacing=SPACING, chunks=(4, 8, 16), progress=False,
                  max_block_bytes=4 * 8 * 47 * 2, pyramid=tmp_path / "fused.ome.zarr",
                  target_spacing_um=(4.0, 3.0, 2.0), levels=3)
    staged = downsample_volume(tmp_path / "b.zarr", tmp_path / "staged.ome.zarr", (4.0, 3.0, 2.0), levels=3,
                               progress=False)
    check_ngff(tmp_path / "fused.ome.zarr", "0.5")
    for level in range(3):
        fused = read_zarr_volume(tmp_path / "fused.ome.zarr", level)
        assert np.array_equal(fused.data, read_zarr_volume(staged, level).data)
        assert fused.spacing == read_zarr_volume(staged, level).spacing
    # a bad slice found mid-stream (NaN) leaves neither output behind
    bad = brain.astype(np.float32)
    bad[15, 0, 0] = np.nan
    io.write_tiff_series(tmp_path / "f", bad)
    with pytest.raises(InputError, match="slice_z0015.tif"):
        ingest_volume(tmp_path / "f", tmp_path / "f.zarr", spacing=SPACING, chunks=(4, 8, 16), progress=False,
                      pyramid=tmp_path / "f.ome.zarr", target_spacing_um=(4.0, 3.0, 2.0))
    assert not (tmp_path / "f.zarr").exists() and not (tmp_path / "f.ome.zarr").exists()
    assert _no_leftovers(tmp_path)


# ---------------------------------------------------------------------------------------------
# The fast path the rules run: exact integer block means, straight from the TIFF slices


@pytest.mark.parametrize("dtype,factors,fast", [
    (np.uint16, (2, 4, 4), (2, 4, 4)), (np.uint8, (1, 8, 2), (1, 8, 2)), (np.int16, (4, 1, 2), (4, 1, 2)),
    (np.uint16, (4, 8, 8), (4, 8, 8)),  # 16 + log2(256) = 24 bits: still exact in float32
    (np.uint16, (8, 8, 8), None),  # 25 bits: the float32 reference rounds, so it is not taken
    (np.uint16, (3, 2, 2), None), (np.int32, (2, 2, 2), None), (np.float32, (2, 2, 2), None)])
def test_exact_mean_factors(dtype, factors, fast):
    ops = [axis_op(n, f) for n, f in zip((9, 10, 11), factors)]
    assert exact_mean_factors(dtype, ops) == fast


@pytest.mark.parametrize("shape,dtype,target", [
    ((21, 34, 47), np.uint16, (4.0, 4.0, 4.0)),  # partial blocks on every axis
    ((20, 32, 48), np.uint16, (4.0, 4.0, 4.0)),  # none
    ((13, 37, 29), np.uint8, (2.0, 8.0, 2.0)),
    ((9, 31, 33), np.int16, (2.0, 4.0, 0.5))])  # x left alone
def test_block_mean_path_is_bit_identical_to_the_operators(tmp_path, shape, dtype, target):
    info = np.iinfo(dtype)
    data = np.random.default_rng(3).integers(info.min, info.max, shape, endpoint=True).astype(dtype)
    spacing = (2.0, 1.0, 0.5)
    ref = pyramid_arrays(data, spacing, target, levels=3)
    builder_factors = exact_mean_factors(dtype, [axis_op(n, f) for n, f in
                                                 zip(shape, plan_pyramid(shape, spacing, target, 3)[0].factors)])
    assert builder_factors is not None  # the case under test takes the fast path
    for k, block_bytes in enumerate((1 << 24, 3000, 9000)):
        reader = RecordingReader(data, spacing, z_chunk=1, row_chunk=4)
        out = downsample_volume(reader, tmp_path / f"p{k}.ome.zarr", target, levels=3, chunks=(4, 8, 8),
                                progress=False, max_block_bytes=block_bytes)
        plain = downsample_volume(data, tmp_path / f"r{k}.ome.zarr", target, levels=3, spacing=spacing,
                                  chunks=(4, 8, 8), progress=False, max_block_bytes=block_bytes, fast=False)
        for level in range(3):
            got = read_zarr_volume(out, level).data
            assert got.dtype == dtype and np.array_equal(got, ref[level]), (block_bytes, level)
            assert np.array_equal(got, read_zarr_volume(plain, level).data)
        # blocks start on the factor grid and every voxel is read once
        assert all(z0 % builder_factors[0] == 0 and y0 % builder_factors[1] == 0
                   for z0, _, y0, _, _, _ in reader.calls)
        assert sum((z1 - z0) * (y1 - y0) * (x1 - x0) for z0, z1, y0, y1, x0, x1 in reader.calls) == data.size


def test_rules_path_equals_staged_reference(tmp_path, brain):
    """What the rules run (pyramid straight from the TIFF slices, block-mean kernel, then
    patchify) against the plain staged path (full-resolution zarr, then the float operators)."""
    io.write_tiff_series(tmp_path / "s", brain)
    target = (4.0, 2.0, 2.0)  # factors (2, 2, 4)
    rules = downsample_volume(tmp_path / "s", tmp_path / "rules.ome.zarr", target, levels=2, spacing=SPACING,
                              chunks=(4, 8, 8), progress=False)
    full = ingest_volume(tmp_path / "s", tmp_path / "full.zarr", spacing=SPACING, chunks=(4, 8, 16), progress=False)
    staged = downsample_volume(full, tmp_path / "staged.ome.zarr", target, levels=2, chunks=(4, 8, 8),
                               progress=False, fast=False, clevel=3)
    for level in range(2):
        a, b = read_zarr_volume(rules, level), read_zarr_volume(staged, level)
        assert np.array_equal(a.data, b.data) and a.spacing == b.spacing
        assert a.meta["translation"] == b.meta["translation"]
    kw = {"level": 0, "min_foreground": 0.3, "intensity_threshold": 400, "background_share": 0.5, "seed": 0,
          "progress": False}
    df_rules = patchify_volume(rules, tmp_path / "a.zarr", tmp_path / "a.csv", 4, **kw)
    df_staged = patchify_volume(staged, tmp_path / "b.zarr", tmp_path / "b.csv", 4, clevel=3, **kw)
    assert len(df_rules) > 2 and df_rules.background.any()
    named = ["volume", "store"]  # from the output names
    pd.testing.assert_frame_equal(df_rules.drop(columns=named), df_staged.drop(columns=named))
    assert np.array_equal(zarr.open_array(str(tmp_path / "a.zarr"))[:], zarr.open_array(str(tmp_path / "b.zarr"))[:])
