"""Dataset configs and patch sets: shipped manifests describe what their configs say, patch
files become patchify-format stores without one job per file, and bad bytes stop the workflow
before anything that looks complete is written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import snakemake

from selma3d.data.download import download_manifest
from selma3d.core.errors import InputError
from selma3d.io import read_volume, write_mha, write_nifti, write_volume
from selma3d.data.manifest import read_manifest
from selma3d.preprocess.patchify import INDEX_COLUMNS, load_patch_index, patchify_volume, read_patch
from selma3d.preprocess.patchsets import collect_patch_files, list_patch_files, manifest_patch_files

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = REPO / "config" / "manifests"


def job_counts(stdout: str) -> dict[str, int]:
    return {line.split()[0]: int(line.split()[1]) for line in stdout.splitlines()
            if len(line.split()) == 2 and line.split()[1].isdigit()}


# --------------------------------------------------------------------------- patch sets


def _patch(rng, shape, bright: bool) -> np.ndarray:
    """uint16 noise around 100 a.u.; a bright patch has a 6-voxel-thick slab at 2000 a.u."""
    data = rng.normal(100, 10, shape).clip(0).astype(np.uint16)
    if bright:
        data[: max(1, shape[0] // 3)] = 2000
    return data


def test_patch_files_are_filtered_into_one_store_in_patchify_format(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "task1" / "cfos_neuron"
    folder.mkdir(parents=True)
    truth = {}
    writers = [lambda p, d: write_nifti(p, d, (6, 1.625, 1.625)), lambda p, d: write_mha(p, d, (6, 1.625, 1.625)),
               lambda p, d: write_volume(p, d)]
    suffixes = [".nii.gz", ".mha", ".tif"]
    for k in range(23):
        bright = k in (2, 9, 17)
        data = _patch(rng, (12, 16, 20), bright)
        path = folder / f"cfos_neuron_{k}{suffixes[k % 3]}"
        writers[k % 3](path, data)
        truth[path.name] = data
    files = list_patch_files(folder)
    assert [f.name for f in files][:3] == ["cfos_neuron_0.nii.gz", "cfos_neuron_1.mha", "cfos_neuron_2.tif"]
    meta = [{"volume": f.name, "structure": "cfos_neuron", "category": "isolated_sparse", "spacing_um": "6,1.625,1.625"}
            for f in files]
    out, index = tmp_path / "patches" / "cfos_neuron.zarr", tmp_path / "patches" / "cfos_neuron.csv"
    df = collect_patch_files(files, out, index, min_foreground=0.2, intensity_threshold=500,
                             background_share=0.1, seed=3, meta_rows=meta, progress=False)
    assert list(df.columns) == INDEX_COLUMNS
    # the three bright patches, then round(0.1 * 20) = 2 background ones
    assert df.volume[~df.background].tolist() == ["cfos_neuron_2.tif", "cfos_neuron_9.nii.gz", "cfos_neuron_17.tif"]
    assert df.background.sum() == 2 and df.patch.tolist() == list(range(5))
    assert (df.foreground_fraction[~df.background] >= 0.2).all() and (df.foreground_fraction[df.background] < 0.2).all()
    back = load_patch_index(index)
    for row in back.itertuples():
        np.testing.assert_array_equal(read_patch(row.store, row.patch), truth[row.volume])
    assert set(back.spacing_um) == {"6,1.625,1.625"} and set(back.level) == {0}


def test_patch_set_equals_patchify_of_the_volume_the_patches_were_cut_from(tmp_path):
    """Cubes cut from a volume in grid order and collected give patchify's store, row for row."""
    rng = np.random.default_rng(1)
    vol = rng.normal(100, 10, (24, 32, 48)).clip(0).astype(np.uint16)
    vol[:10, :20, 10:30] = 900
    vol[14:, 18:, 30:] = 700
    p = 8
    files = []
    for z in range(0, 24, p):
        for y in range(0, 32, p):
            for x in range(0, 48, p):
                f = tmp_path / "cut" / f"cube_{z:02d}_{y:02d}_{x:02d}.nii.gz"
                f.parent.mkdir(exist_ok=True)
                write_nifti(f, vol[z:z + p, y:y + p, x:x + p])
                files.append(f)
    settings = dict(min_foreground=0.5, intensity_threshold=500, background_share=0.3, seed=7)
    ref = patchify_volume(vol, tmp_path / "ref.zarr", tmp_path / "ref.csv", patch_size=p, progress=False, **settings)
    got = collect_patch_files(files, tmp_path / "set.zarr", tmp_path / "set.csv", progress=False, **settings)
    assert len(got) == len(ref) and ref.background.sum() > 0
    got_corners = [tuple(int(v) for v in name.split("_")[1:]) for name in got.volume]
    assert got_corners == list(zip(ref.z, ref.y, ref.x))
    np.testing.assert_array_equal(got.background.to_numpy(), ref.background.to_numpy())
    np.testing.assert_allclose(got.foreground_fraction, ref.foreground_fraction)
    for a, b in zip(load_patch_index(tmp_path / "set.csv").itertuples(), load_patch_index(tmp_path / "ref.csv").itertuples()):
        np.testing.assert_array_equal(read_patch(a.store, a.patch), read_patch(b.store, b.patch))


def test_patch_size_cuts_a_centred_grid_and_otsu_is_one_threshold_for_the_set(tmp_path):
    rng = np.random.default_rng(2)
    files = []
    for k in range(6):
        data = rng.normal(100, 5, (40, 40, 40)).clip(0).astype(np.uint16)
        if k % 2:
            data[:, :20, :] = 3000  # half of it bright: in a 2x2x2 grid the y < 20 cubes
        files.append(write_nifti(tmp_path / f"p{k}.nii.gz", data))
    df = collect_patch_files(files, tmp_path / "s.zarr", tmp_path / "s.csv", patch_size=16, min_foreground=0.5,
                             intensity_threshold="otsu", background_share=0.0, progress=False)
    assert 100 < df.attrs["threshold"] < 3000
    assert df.attrs["grid"] == 6 * 8 and len(df) == 3 * 4  # 3 bright files x 4 cubes with y = 4
    assert set(df.z) == {4, 20} and set(df.y) == {4} and set(df.x) == {4, 20}
    assert set(df.volume) == {"p1", "p3", "p5"}


def test_bad_patch_files_are_errors_naming_the_file_and_write_nothing(tmp_path):
    a = write_nifti(tmp_path / "a.nii.gz", np.zeros((8, 8, 8), np.uint16))
    b = write_nifti(tmp_path / "b.nii.gz", np.zeros((8, 8, 9), np.uint16))
    out, index = tmp_path / "o.zarr", tmp_path / "o.csv"
    with pytest.raises(InputError, match=r"b\.nii\.gz.*shape \(8, 8, 8\)"):
        collect_patch_files([a, b], out, index, progress=False)
    with pytest.raises(InputError, match=r"a\.nii\.gz.*at least \(16, 16, 16\)"):
        collect_patch_files([a, b], out, index, patch_size=16, progress=False)
    broken = tmp_path / "c.nii.gz"
    broken.write_bytes(b"not a nifti")
    with pytest.raises(InputError, match=r"c\.nii\.gz"):
        collect_patch_files([a, broken], out, index, progress=False)
    assert not out.exists() and not index.exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="without any"):
        list_patch_files(tmp_path / "empty")


def test_manifest_folder_rows_expand_to_their_files(tmp_path):
    folder = tmp_path / "data" / "AD_plaques"
    folder.mkdir(parents=True)
    for k in (10, 2, 1):
        write_nifti(folder / f"AD_plaques_{k}.nii.gz", np.zeros((4, 4, 4), np.uint16))
    single = write_nifti(tmp_path / "data" / "extra.nii.gz", np.zeros((4, 4, 4), np.uint16))
    m = tmp_path / "m.csv"
    pd.DataFrame([
        {"case": "AD_plaques_patches", "role": "unannotated", "split": "pretrain", "structure": "AD_plaques",
         "spacing_um": "4,1.63,1.63", "path": "data/AD_plaques"},
        {"case": "AD_extra", "role": "unannotated", "split": "pretrain", "structure": "AD_plaques",
         "spacing_um": "4,1.63,1.63", "path": "data/extra.nii.gz"},
    ]).to_csv(m, index=False)
    files, meta = manifest_patch_files(m, "AD_plaques")
    assert [f.name for f in files] == ["AD_plaques_1.nii.gz", "AD_plaques_2.nii.gz", "AD_plaques_10.nii.gz",
                                       single.name]
    assert [x["volume"] for x in meta] == ["AD_plaques_patches/AD_plaques_1", "AD_plaques_patches/AD_plaques_2",
                                           "AD_plaques_patches/AD_plaques_10", "AD_extra"]
    assert {x["category"] for x in meta} == {"isolated_sparse"}
    with pytest.raises(InputError, match="cfos_neuron"):
        manifest_patch_files(m, "cfos_neuron")


# --------------------------------------------------------------------------- workflow


def test_task1_dry_run_has_one_patchset_job_per_structure_and_no_ingest(tmp_path):
    res = snakemake("all", "-n", "--nolock", "--profile", "profiles/slurm", "--configfile",
                    "config/selma3d_2026_task1.yaml", "--config", f"results_dir={tmp_path / 'r'}")
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = job_counts(res.stdout)
    structures = read_manifest(MANIFESTS / "selma3d_2026_task1.csv").query("role == 'unannotated'").structure.nunique()
    assert jobs["patchset"] == structures == 9
    assert not {"ingest", "downsample", "patchify"} & set(jobs)
    assert jobs["pretrain"] == 5


def test_patches_mode_on_the_synthetic_dataset_is_refused(tmp_path):
    res = snakemake("all", "-n", "--nolock", "--config", "preprocess={'unannotated': 'patches'}",
                    f"results_dir={tmp_path / 'r'}")
    assert res.returncode != 0
    assert "synthetic dataset holds whole volumes" in res.stdout + res.stderr


def test_patchset_rule_builds_the_store_pretraining_reads(tmp_path):
    rng = np.random.default_rng(4)
    for structure in ("cfos_neuron", "blood_vessel"):
        (tmp_path / "data" / structure).mkdir(parents=True)
        for k in range(4):
            write_nifti(tmp_path / "data" / structure / f"{structure}_{k}.nii.gz", _patch(rng, (16, 16, 16), k < 2))
    write_nifti(tmp_path / "data" / "img.nii.gz", _patch(rng, (16, 16, 16), True))
    write_nifti(tmp_path / "data" / "lab.nii.gz", np.zeros((16, 16, 16), np.uint8))
    rows = [{"case": f"{s}_patches", "role": "unannotated", "split": "pretrain", "structure": s,
             "path": f"data/{s}"} for s in ("cfos_neuron", "blood_vessel")]
    rows += [{"case": "c0", "role": r, "split": "train", "structure": "cfos_neuron", "path": f"data/{p}"}
             for r, p in (("image", "img.nii.gz"), ("label", "lab.nii.gz"))]
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    cfg = {"results_dir": str(tmp_path / "r"), "dataset": {"source": "manifest", "manifest": str(tmp_path / "m.csv")},
           "preprocess": {"unannotated": "patches", "min_foreground": 0.2, "intensity_threshold": 500,
                          "background_share": 0.5}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    targets = [str(tmp_path / "r" / "patches" / f"{s}.csv") for s in ("cfos_neuron", "blood_vessel")]
    res = snakemake(*targets, "--nolock", "--cores", "1", "--configfile", str(tmp_path / "c.yaml"))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "rule patchset" in res.stdout + res.stderr and "rule ingest" not in res.stdout + res.stderr
    index = load_patch_index(targets)
    assert len(index) == 2 * (2 + 1) and set(index.structure) == {"cfos_neuron", "blood_vessel"}
    assert (tmp_path / "r" / "logs" / "patchset" / "cfos_neuron.log").exists()


@pytest.mark.parametrize("field,value,expected", [("sha256", "0" * 64, "0" * 64), ("size", "123", "123 bytes")])
def test_wrong_checksum_or_size_stops_the_workflow_naming_the_file(tmp_path, real_data, field, value, expected):
    """A row whose bytes do not match fails in the download rule, before the local manifest
    (the output every later rule waits for) exists."""
    rows = pd.read_csv(MANIFESTS / "custom_axon.csv", dtype=str, keep_default_na=False)
    rows["path"] = [str((MANIFESTS / p).resolve()) for p in rows.path]
    rows.loc[rows.role == "label", field] = value
    rows.to_csv(tmp_path / "bad.csv", index=False)
    cfg = {"results_dir": str(tmp_path / "r"), "dataset": {"manifest": str(tmp_path / "bad.csv")}}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    res = snakemake(str(tmp_path / "r" / "data" / "manifest.csv"), "--nolock", "--cores", "1",
                    "--configfile", "config/custom.yaml", str(tmp_path / "bad.yaml"))
    assert res.returncode != 0
    log = (tmp_path / "r" / "logs" / "download.log").read_text()
    assert "label.tif" in log and expected in log, log[-2000:]
    assert not (tmp_path / "r" / "data" / "manifest.csv").exists()


# --------------------------------------------------------------------------- shipped manifests


def test_2024_manifest_matches_the_published_counts_and_reuses_the_nuclei_rows():
    df = read_manifest(MANIFESTS / "selma3d_2024.csv")
    un = df[df.role == "unannotated"]
    assert un.structure.value_counts().to_dict() == {"cfos_neuron": 18, "blood_vessel": 9, "cell_nuclei": 4,
                                                     "AD_plaques": 4}
    assert all("/unannotated_" in p for p in un.path)
    images = df[(df.role == "image") & df.split.isin(["train", "val"])]
    assert images.structure.value_counts().to_dict() == {"AD_plaques": 34, "blood_vessel": 24, "cfos_neuron": 19,
                                                         "cell_nuclei": 12}
    test = df[(df.role == "image") & (df.split == "test")]
    assert test.structure.value_counts().to_dict() == {"microglia": 85, "cfos_neuron": 23}
    assert set(df.split) == {"pretrain", "train", "val", "test"}
    spacing = dict(zip(un.structure, un.spacing_um))
    assert spacing == {"blood_vessel": "3,1.625,1.625", "cfos_neuron": "6,1.625,1.625", "cell_nuclei": "5,0.54,0.54",
                       "AD_plaques": "4,1.63,1.63"}
    nuclei = pd.read_csv(MANIFESTS / "selma3d_2024_nuclei.csv", dtype=str, keep_default_na=False)
    raw = pd.read_csv(MANIFESTS / "selma3d_2024.csv", dtype=str, keep_default_na=False)
    merged = raw[raw.url != ""]
    assert sorted(zip(merged.url, merged.sha256)) == sorted(zip(nuclei.url, nuclei.sha256))


def test_2025_and_2026_task1_manifests_have_their_formats():
    m25 = read_manifest(MANIFESTS / "selma3d_2025.csv")
    un = m25[m25.role == "unannotated"]
    assert len(un) == 66 and not any(Path(p).suffix for p in un.path)  # TIFF slice folders
    test_images = m25[(m25.role == "image") & (m25.split == "test")]
    assert len(test_images) and all(p.endswith(".mha") for p in test_images.path)
    assert "blood_vessel_patchvolume_030.mha" in {Path(p).name for p in test_images.path}
    m26 = read_manifest(MANIFESTS / "selma3d_2026_task1.csv")
    un = m26[m26.role == "unannotated"]
    assert un.structure.is_unique and len(un) == 9
    annotated = m26[m26.role != "unannotated"]
    assert set(annotated.category) == {"isolated_sparse", "isolated_dense", "contiguous_sparse", "contiguous_dense"}
    assert all(Path(c).name.startswith(s) for c, s in zip(annotated.case, annotated.structure))


def test_custom_axon_manifest_verifies_against_the_shared_data(real_data, tmp_path):
    df = download_manifest(MANIFESTS / "custom_axon.csv", tmp_path / "out", progress=False)
    assert set(df.split) == {"pretrain", "train", "val", "test"}
    assert all(Path(p).resolve().is_relative_to(real_data.resolve()) for p in df.path)
    assert df.sha256.str.fullmatch(r"[0-9a-f]{64}").all() and (df["size"] != "").all()
    label = read_volume(df[df.role == "label"].path.iloc[0]).data
    assert set(np.unique(label)) == {0, 1, 2, 4}
