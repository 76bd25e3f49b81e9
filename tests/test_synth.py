"""The synthetic light-sheet dataset: geometry statistics, imaging model, formats, manifest."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cc3d
import nibabel as nib
import numpy as np
import pytest
from scipy.ndimage import gaussian_filter1d

from selma3d import io
from selma3d.cli import main as cli_main
from selma3d.core.errors import InputError
from selma3d.data.manifest import annotated_pairs, parse_spacing, read_manifest
from selma3d.core.structures import STRUCTURE_CATEGORY
from selma3d.data.synth import (DEFAULTS, STRUCTURES, render_structure, resolve_config, synthesize_dataset,
                           volume_names)
from selma3d.data.synth import dataset as synth_dataset

SPACING = (4.0, 1.6, 1.6)
PATCH = (32, 64, 64)
SEEDS = (0, 1, 2)
CONTIGUOUS = {"blood_vessel", "axonalmarker"}
SPARSE = {"cfos_neuron", "AD_plaques", "axonalmarker", "microglia"}
DENSE = {"cell_nuclei", "blood_vessel"}

TINY = {
    "unannotated": [{"structure": "cfos_neuron", "count": 1, "shape": [8, 48, 48]},
                    {"structure": "blood_vessel", "count": 1, "shape": [8, 48, 48]}],
    "patch_shape": [12, 32, 32],
    "train": {"cfos_neuron": 2, "blood_vessel": 1},
    "val": {"cfos_neuron": 1},
    "test": {"cfos_neuron": 1, "microglia": 1},
}


@pytest.fixture(scope="module")
def renders() -> dict:
    """(structure, seed) -> (image, label) at the default patch shape and imaging defaults."""
    return {(s, seed): render_structure(s, PATCH, SPACING, np.random.default_rng(seed))
            for s in STRUCTURES for seed in SEEDS}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return synthesize_dataset(tmp_path_factory.mktemp("tiny"), TINY, seed=7, progress=False)


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------- render


@pytest.mark.parametrize("structure", STRUCTURES)
def test_render_dtypes_shapes_and_determinism(structure):
    img, lab = render_structure(structure, (12, 40, 48), SPACING, np.random.default_rng(3))
    assert img.dtype == np.uint16 and lab.dtype == np.uint8
    assert img.shape == lab.shape == (12, 40, 48)
    assert set(np.unique(lab)) <= {0, 1}
    img2, lab2 = render_structure(structure, (12, 40, 48), SPACING, np.random.default_rng(3))
    assert np.array_equal(img, img2) and np.array_equal(lab, lab2)
    img3, _ = render_structure(structure, (12, 40, 48), SPACING, np.random.default_rng(4))
    assert not np.array_equal(img, img3)


def test_render_rejects_bad_arguments():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="unknown structure"):
        render_structure("neurons", PATCH, SPACING, rng)
    with pytest.raises(ValueError, match="unknown render parameters"):
        render_structure("cfos_neuron", PATCH, SPACING, rng, brightnes=2)
    with pytest.raises(ValueError, match="spacing"):
        render_structure("cfos_neuron", PATCH, (4.0, 0.0, 1.6), rng)


def test_foreground_fraction_by_category(renders):
    frac = {s: np.mean([renders[s, k][1].mean() for k in SEEDS]) for s in STRUCTURES}
    for s in SPARSE:
        assert 2e-4 < frac[s] < 0.015, (s, frac[s])
    for s in DENSE:
        assert 0.03 < frac[s] < 0.35, (s, frac[s])
    assert max(frac[s] for s in SPARSE) < min(frac[s] for s in DENSE)


def _components(label: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """Number of 26-connected components, their voxel counts and bounding-box diagonals (µm)."""
    cc, n = cc3d.connected_components(label, connectivity=26, return_N=True)
    st = cc3d.statistics(cc)
    boxes = st["bounding_boxes"][1:]
    diag = np.array([np.linalg.norm([(b[i].stop - b[i].start) * SPACING[i] for i in range(3)]) for b in boxes])
    return n, np.asarray(st["voxel_counts"][1:]), diag


@pytest.mark.parametrize("structure", STRUCTURES)
def test_connected_components_match_category(renders, structure):
    patch_diag = float(np.linalg.norm(np.asarray(PATCH) * SPACING))
    for seed in SEEDS:
        n, sizes, diag = _components(renders[structure, seed][1])
        assert n >= 1
        if structure in CONTIGUOUS:  # few components, one spanning most of the patch
            assert n <= 20, (structure, seed, n)
            assert diag.max() > 0.6 * patch_diag, (structure, seed, diag.max())
            assert sizes.max() > 0.3 * sizes.sum()
        else:  # many objects, each small against the patch
            assert diag.max() < 0.5 * patch_diag, (structure, seed, diag.max())
    if structure == "cell_nuclei":
        assert _components(renders[structure, 0][1])[0] > 100


@pytest.mark.parametrize("structure", STRUCTURES)
def test_foreground_brighter_than_background(renders, structure):
    for seed in SEEDS:
        img, lab = renders[structure, seed]
        fg, bg = img[lab > 0].astype(float), img[lab == 0].astype(float)
        snr = (np.median(fg) - np.median(bg)) / bg.std()
        assert snr > 2.0, (structure, seed, snr)


def _autocorrelation_width_um(a: np.ndarray, axis: int) -> float:
    """Lag (µm) where the autocorrelation along ``axis`` falls to one half."""
    a = a.astype(float) - a.mean()
    f = np.fft.rfftn(a, axes=(0, 1, 2))
    ac = np.fft.irfftn(f * np.conj(f), s=a.shape, axes=(0, 1, 2))
    index = [0, 0, 0]
    index[axis] = slice(0, a.shape[axis] // 2)
    prof = ac[tuple(index)] / ac[0, 0, 0]
    k = int(np.argmax(prof < 0.5))
    return ((k - 1) + (prof[k - 1] - 0.5) / (prof[k - 1] - prof[k])) * SPACING[axis]


def test_psf_is_elongated_along_z():
    def ratio(psf):
        img, lab = render_structure("cfos_neuron", (32, 96, 96), SPACING, np.random.default_rng(5), density=4.0,
                                    psf_sigma_um=psf, stripe_strength=0.0, background_variation=0.0)
        return (_autocorrelation_width_um(img, 0) / _autocorrelation_width_um(img, 2),
                _autocorrelation_width_um(lab, 0) / _autocorrelation_width_um(lab, 2))

    elongated, objects = ratio((3.5, 0.8, 0.8))
    isotropic, _ = ratio((1.0, 1.0, 1.0))
    assert 0.8 < objects < 1.25  # objects are built isotropic in µm
    assert elongated > 1.4 * objects
    assert elongated > 1.4 * isotropic


def _stripe_score(img: np.ndarray) -> float:
    """High-pass variance of the x-averaged profile along y over that of the y-averaged along x."""
    a = img.astype(float)
    py, px = a.mean(axis=2), a.mean(axis=1)
    hy = py - gaussian_filter1d(py, 6, axis=1)
    hx = px - gaussian_filter1d(px, 6, axis=1)
    return float(hy.var() / hx.var())


def test_stripes_run_along_the_illumination_axis():
    def render(**kw):
        return render_structure("cfos_neuron", (8, 128, 128), SPACING, np.random.default_rng(11),
                                density=0.0, **kw)[0]

    assert _stripe_score(render(stripe_strength=0.4)) > 3.0
    assert _stripe_score(render(stripe_strength=0.0)) < 2.0
    assert _stripe_score(render(stripe_strength=0.4, stripe_axis=1)) < 0.5


def test_depth_attenuation_and_offset():
    img, _ = render_structure("cfos_neuron", (20, 32, 32), SPACING, np.random.default_rng(2), density=0.0,
                              background=1000.0, background_variation=0.0, stripe_strength=0.0, noise=False,
                              attenuation_z_um=100.0, attenuation_x_um=1e9, offset=100.0)
    top = img[2].astype(float).mean() - 100.0
    bottom = img[17].astype(float).mean() - 100.0
    assert bottom / top == pytest.approx(np.exp(-15 * SPACING[0] / 100.0), rel=0.1)


def test_saturation_clips_without_wrapping():
    img, lab = render_structure("cfos_neuron", PATCH, SPACING, np.random.default_rng(1), density=3.0,
                                signal=1e6, saturation=32767)
    assert img.max() == 32767
    assert img[lab > 0].min() > 1000  # saturated cells stay bright, no overflow to small values


def test_noise_is_poisson_gaussian():
    """Variance of a flat field grows with the mean like gain * mean + read_noise²."""
    kw = dict(density=0.0, background_variation=0.0, stripe_strength=0.0, attenuation_z_um=1e9,
              attenuation_x_um=1e9, gain=2.0, read_noise=5.0, offset=100.0)
    for level in (200.0, 2000.0):
        img, _ = render_structure("cfos_neuron", (16, 64, 64), SPACING, np.random.default_rng(0),
                                  background=level, **kw)
        clean, _ = render_structure("cfos_neuron", (16, 64, 64), SPACING, np.random.default_rng(0),
                                    background=level, noise=False, **kw)
        var = (img.astype(float) - clean).var()
        expected = 2.0 * (clean.astype(float).mean() - 100.0) + 25.0
        assert var == pytest.approx(expected, rel=0.15), (level, var, expected)


# --------------------------------------------------------------------------------- dataset


def test_default_config_shape():
    cfg = resolve_config()
    assert set(cfg["train"]) == set(cfg["val"]) == {"cfos_neuron", "cell_nuclei", "AD_plaques",
                                                    "blood_vessel", "axonalmarker"}
    assert "microglia" in cfg["test"]
    structures = {j["structure"] for j in synth_dataset._jobs(cfg) if j["split"] != "test"}
    assert "microglia" not in structures
    assert cfg["spacing_um"] == [4.0, 1.6, 1.6] and DEFAULTS["patch_shape"] == [32, 64, 64]
    assert volume_names() == [f"{s}_vol_0" for s in ("cfos_neuron", "cell_nuclei", "AD_plaques",
                                                     "blood_vessel", "axonalmarker")]


def test_manifest_lists_every_file_with_checksums(tiny):
    out = tiny.parent
    df = read_manifest(tiny)
    assert set(df.role) == {"unannotated", "image", "label"}
    listed: set[Path] = set()
    for _, row in df.iterrows():
        p = Path(row.path)
        assert p.exists(), p
        assert parse_spacing(row.spacing_um) == SPACING
        assert row.category == STRUCTURE_CATEGORY[row.structure]
        if row.role == "unannotated":
            assert row.split == "pretrain" and p.is_dir()
            slices = io.list_tiff_series(p)
            listing = "".join(f"{_sha(s)}  {s.name}\n" for s in slices)
            assert row.sha256 == hashlib.sha256(listing.encode()).hexdigest()
            assert int(row["size"]) == sum(s.stat().st_size for s in slices)
            listed.update(s.resolve() for s in slices)
        else:
            assert row.sha256 == _sha(p) and int(row["size"]) == p.stat().st_size
            listed.add(p.resolve())
    on_disk = {p.resolve() for p in out.rglob("*") if p.is_file() and p.name != tiny.name}
    assert on_disk == listed
    names = {Path(p).name for p in df.path}
    assert "cfos_neuron_patch_000_0000.nii.gz" in names and "cfos_neuron_patch_000.nii.gz" in names
    for split, n in (("train", 3), ("val", 1), ("test", 2)):
        pairs = annotated_pairs(df, split)
        assert len(pairs) == n
        assert all(Path(p).parent.parent.name == split for p in pairs.image)
    assert set(df[df.structure == "microglia"].split) == {"test"}
    assert volume_names(TINY) == list(df[df.role == "unannotated"].case)


def test_nifti_patches_are_int16_lps_with_spacing(tiny):
    pairs = annotated_pairs(read_manifest(tiny), "train")
    for _, row in pairs.iterrows():
        for path in (row.image, row.label):
            img = nib.load(path)
            assert img.get_data_dtype() == np.int16
            assert np.allclose(img.affine, np.diag([-1.6, -1.6, 4.0, 1.0]))
            assert img.header.get_zooms()[:3] == pytest.approx((1.6, 1.6, 4.0))
            vol = io.read_volume(path)
            assert vol.spacing == pytest.approx(SPACING)
            assert vol.data.shape == tuple(TINY["patch_shape"])
        assert set(np.unique(io.read_volume(row.label).data)) <= {0, 1}


def test_files_hold_what_the_renderer_made(tiny):
    cfg = resolve_config(TINY)
    jobs = {j["case"]: j for j in synth_dataset._jobs(cfg)}
    df = read_manifest(tiny)
    vol_row = df[df.role == "unannotated"].iloc[0]
    image, _ = synth_dataset.render_job(7, jobs[vol_row.case], cfg)
    tiff = io.read_volume(vol_row.path).data
    assert tiff.dtype == np.uint16 and np.array_equal(tiff, image)
    pair = annotated_pairs(df, "test").iloc[0]
    image, label = synth_dataset.render_job(7, jobs[pair.case], cfg)
    assert np.array_equal(io.read_volume(pair.image).data, image.astype(np.int16))
    assert np.array_equal(io.read_volume(pair.label).data, label)


def test_same_seed_identical_bytes_other_seed_differs(tiny, tmp_path):
    again = synthesize_dataset(tmp_path / "again", TINY, seed=7, progress=False)
    other = synthesize_dataset(tmp_path / "other", TINY, seed=8, progress=False)
    a, b, c = (read_manifest(m) for m in (tiny, again, other))
    assert list(a.sha256) == list(b.sha256)
    for pa, pb in zip(a.path, b.path):
        files = sorted(Path(pa).iterdir()) if Path(pa).is_dir() else [Path(pa)]
        for f in files:
            assert f.read_bytes() == (Path(pb) / f.name if Path(pb).is_dir() else Path(pb)).read_bytes()
    assert tiny.read_bytes() == again.read_bytes()
    image_rows = c.role != "label"
    assert not set(a.sha256[image_rows]) & set(c.sha256[image_rows])


def test_brains_differ_in_intensity():
    cfg = resolve_config({"train": {"cfos_neuron": 6}, "val": {}, "test": {}, "unannotated": [],
                          "patch_shape": [8, 32, 32], "specimens": {"train": 6}})
    medians = [float(np.median(synth_dataset.render_job(0, j, cfg)[0])) for j in synth_dataset._jobs(cfg)]
    assert max(medians) / min(medians) > 1.3


def test_failure_leaves_no_manifest(tiny, tmp_path, monkeypatch):
    out = tmp_path / "ds"
    manifest = synthesize_dataset(out, TINY, seed=1, progress=False)
    assert manifest.exists()
    calls = {"n": 0}
    real = synth_dataset.render_job

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(synth_dataset, "render_job", flaky)
    with pytest.raises(RuntimeError, match="disk full"):
        synthesize_dataset(out, TINY, seed=2, progress=False)
    assert not manifest.exists()
    assert not list(out.rglob("*.incomplete*"))


def test_rerun_with_smaller_config_removes_stale_files(tmp_path):
    out = tmp_path / "ds"
    synthesize_dataset(out, TINY, seed=1, progress=False)
    small = {**TINY, "unannotated": TINY["unannotated"][:1], "train": {"cfos_neuron": 1}}
    manifest = synthesize_dataset(out, small, seed=1, progress=False)
    df = read_manifest(manifest)
    listed = {Path(p).resolve() for p in df.path}
    top = {p.resolve() for sub in ("unannotated", "train/raw", "train/gt", "val/gt", "test/raw")
           for p in (out / sub).iterdir()}
    assert top <= listed
    assert not (out / "unannotated" / "blood_vessel_vol_0").exists()


@pytest.mark.parametrize("bad, match", [
    ({"trian": {}}, "unknown"),
    ({"train": {"neurons": 1}}, "structure"),
    ({"patch_shape": [32, 64]}, "three positive"),
    ({"spacing_um": [4.0, -1.0, 1.6]}, "spacing_um"),
    ({"imaging": {"saturation": 65535}}, "int16"),
    ({"imaging": {"tissue": True}}, "render parameters"),
    ({"unannotated": [{"structure": "cfos_neuron", "count": -1}]}, "count"),
])
def test_config_errors_name_the_problem(bad, match):
    with pytest.raises(InputError, match=match):
        resolve_config(bad, "my.yaml")


def test_cli_writes_dataset_and_reports_bad_config(tmp_path, capsys):
    import yaml

    cfg = tmp_path / "synth.yaml"
    cfg.write_text(yaml.safe_dump({**TINY, "unannotated": [], "test": {"microglia": 1}}))
    out = tmp_path / "cli"
    assert cli_main(["synthesize", str(out), "--config", str(cfg), "--seed", "3", "--quiet"]) == 0
    df = read_manifest(out / "manifest.csv")
    assert len(df) == 2 * (3 + 1 + 1)
    bad = tmp_path / "bad.yaml"
    bad.write_text("patch_shape: [1, 2]\n")
    assert cli_main(["synthesize", str(tmp_path / "x"), "--config", str(bad), "--quiet"]) == 2
    assert "bad.yaml" in capsys.readouterr().err
