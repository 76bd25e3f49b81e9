"""The real mini-SELMA3D (config/real_selma.yaml) and the two manifest features it needs:
per-label reading rules (a dataset mixing {0, 1} labels with TRAILMAP's 0 = unlabelled,
1 = background; one volume split by annotated plane) and free-text captions for unannotated
data, carried from the manifest through the patch index and the batch into mae_text."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from helpers import snakemake

from selma3d.core.errors import InputError
from selma3d.core.labels import binarize_label
from selma3d.data.manifest import annotated_pairs, label_rule, read_manifest
from selma3d.io import write_nifti

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "config" / "manifests" / "real_selma.csv"
STRUCTURES = {"cfos_neuron", "AD_plaques", "cell_nuclei", "blood_vessel", "axonalmarker"}
HEADER = "case,role,split,structure,path,ignore_label,background_values,annotated_z,caption\n"


def trailmap_like(shape=(12, 16, 16), planes=(2, 6, 9)):
    """0 = unlabelled, 1 = background, 2 = axon, 4 = axon edge, on ``planes`` only."""
    label = np.zeros(shape, np.uint8)
    for z in planes:
        label[z] = 1
        label[z, 4:8, 4:8] = 2
        label[z, 8, 4:8] = 4
    return label


def test_annotated_z_ignores_every_other_plane():
    label = trailmap_like()
    fg, ignore = binarize_label(label, 0, (1,), annotated_z=(2, 6))
    assert ignore[9].all() and not ignore[2].any() and not ignore[6].any()
    assert fg[9].sum() == 0 and fg[2].sum() == 20 and not (fg.astype(bool) & ignore).any()
    fg_all, _ = binarize_label(label, 0, (1,))
    assert fg_all[9].sum() == 20
    with pytest.raises(ValueError, match="annotated_z"):
        binarize_label(label, 0, (1,), annotated_z=(12,))


def test_label_columns_override_the_config_per_row(tmp_path):
    p = tmp_path / "m.csv"
    p.write_text(HEADER
                 + "a,image,train,cfos_neuron,a.nii.gz,,,,\na,label,train,cfos_neuron,al.nii.gz,,,,\n"
                 + "x,image,train,axonalmarker,x.tif,,,,\n"
                 + 'x,label,train,axonalmarker,xl.tif,0,1,"2,6-7",\n')
    pairs = annotated_pairs(read_manifest(p), "train").set_index("case")
    # the config's settings apply where a row sets nothing; the row's own win
    assert label_rule(pairs.loc["a"], None, (0,)) == (None, (0,), None)
    assert label_rule(pairs.loc["a"], 5, (0, 3)) == (5, (0, 3), None)
    assert label_rule(pairs.loc["x"], None, (0,)) == (0, (1,), (2, 6, 7))
    p.write_text(HEADER + 'x,label,train,axonalmarker,xl.tif,0,1,"2;6",\n')
    with pytest.raises(InputError, match="annotated_z"):
        read_manifest(p)
    p.write_text(HEADER + "x,image,train,axonalmarker,x.tif,0,,,\n")
    with pytest.raises(InputError, match="label rows only"):
        read_manifest(p)


def test_finetuning_and_evaluation_read_one_volume_split_by_plane(tmp_path):
    """Train rows see planes 2 and 6, val/test rows plane 9 of the same TRAILMAP-style volume;
    {0, 1} labels beside them keep the default reading."""
    from selma3d.evaluation.evaluate import evaluate_manifest_split
    from selma3d.training.finetune import load_case

    label = trailmap_like()
    write_nifti(tmp_path / "x.nii.gz", np.random.default_rng(0).random(label.shape).astype(np.float32))
    write_nifti(tmp_path / "xl.nii.gz", label)
    c = np.zeros(label.shape, np.uint8)
    c[3:6, 3:6, 3:6] = 1
    write_nifti(tmp_path / "c.nii.gz", c.astype(np.float32))
    write_nifti(tmp_path / "cl.nii.gz", c)
    rows = ["c,image,{s},cfos_neuron,c.nii.gz,,,,", "c,label,{s},cfos_neuron,cl.nii.gz,,,,",
            "x_{s},image,{s},axonalmarker,x.nii.gz,,,,", "x_{s},label,{s},axonalmarker,xl.nii.gz,0,1,{z},"]
    text = HEADER + "".join(r.format(s=s, z=z) + "\n" for s, z in
                            (("train", '"2,6"'), ("val", "9"), ("test", "9")) for r in rows)
    (tmp_path / "m.csv").write_text(text)
    df = read_manifest(tmp_path / "m.csv")
    train = {r.case: load_case(r, "percentile") for _, r in annotated_pairs(df, "train").iterrows()}
    val = {r.case: load_case(r, "percentile") for _, r in annotated_pairs(df, "val").iterrows()}
    assert train["x_train"].label[2].sum() == 20 and train["x_train"].ignore[9].all()
    assert val["x_val"].label[9].sum() == 20 and val["x_val"].ignore[2].all() and not val["x_val"].ignore[9].any()
    assert train["c"].ignore is None and train["c"].label.sum() == 27
    # a prediction right on plane 9 and wrong everywhere else scores 1 on the axon test case
    pred = tmp_path / "pred"
    wrong = np.ones(label.shape, np.uint8)
    wrong[9] = label[9] >= 2
    write_nifti(pred / "x_test.nii.gz", wrong)
    write_nifti(pred / "c.nii.gz", c)
    for protocol in ("selma3d2024", "selma3d2026"):
        cases = evaluate_manifest_split(pred, tmp_path / "m.csv", protocol, tmp_path / f"{protocol}.csv").set_index("case")
        assert cases.loc["x_test", "dice"] == 1.0 and cases.loc["c", "dice"] == 1.0


def test_a_manifest_caption_reaches_the_text_encoder_of_mae_text(tmp_path, monkeypatch):
    """caption column -> patchset index -> batch meta -> the text mae_text encodes; rows
    without one fall back to the sentence built from their metadata."""
    from selma3d.preprocess.patchsets import collect_patch_files, manifest_patch_files
    from selma3d.strategies import build_strategy
    from selma3d.training.sampling import PatchSampleDataset, collate, read_patch_index

    rng = np.random.default_rng(0)
    for name in ("th", "plain"):
        write_nifti(tmp_path / f"{name}.nii.gz", (rng.random((64, 32, 32)) * 1000).astype(np.uint16))
    text = "Light-sheet patch, tyrosine hydroxylase (TH) in the 639 nm channel, dopaminergic somata."
    # wu_brain is no known structure, so its rows name their category
    (tmp_path / "m.csv").write_text(
        "case,role,split,structure,category,path,caption\n"
        f'th,unannotated,pretrain,wu_brain,isolated_sparse,th.nii.gz,"{text}"\n'
        "plain,unannotated,pretrain,wu_brain,isolated_sparse,plain.nii.gz,\n")
    files, meta = manifest_patch_files(tmp_path / "m.csv", "wu_brain")
    assert [m["caption"] for m in meta] == [text, ""]
    index = collect_patch_files(files, tmp_path / "p.zarr", tmp_path / "p.csv", patch_size=32, min_foreground=0.0,
                                meta_rows=meta, progress=False)
    assert (index.caption[index.volume == "th"] == text).all() and (index.caption[index.volume == "plain"] == "").all()
    ds = PatchSampleDataset(read_patch_index([tmp_path / "p.csv"]), (32, 32, 32))
    first_th = int(np.flatnonzero(ds.index.volume == "th")[0])
    first_plain = int(np.flatnonzero(ds.index.volume == "plain")[0])
    x, batch_meta = collate([ds[(first_th, 0)], ds[(first_plain, 1)]])
    assert batch_meta["caption"] == [text, ""]

    st = build_strategy("mae_text", dict(backbone="unet", patch_size=[32, 32, 32], features=[4, 8, 8, 16, 16, 4],
                                         embed_dim=32, text_width=32, text_vocab=256, mask_cube=4, text_max_len=40))
    seen = []
    encode = type(st.text_encoder).forward
    monkeypatch.setattr(type(st.text_encoder), "forward",
                        lambda self, texts, device: seen.append(list(texts)) or encode(self, texts, device))
    batch_meta.update(stain=["", ""], organism=["mouse", "mouse"])
    loss, _ = st.loss(x, 0, batch_meta)
    assert torch.isfinite(loss)
    assert seen[0][0] == text
    assert seen[0][1].startswith("mouse light-sheet microscopy") and "wu brain" in seen[0][1]
    assert st.text_encoder.tokenize([text], "cpu").shape == (1, 40)


def test_the_real_selma_manifest_describes_the_shared_data(real_data):
    df = read_manifest(MANIFEST)
    raw = pd.read_csv(MANIFEST, dtype=str, keep_default_na=False)
    assert all(p.startswith("../../../shared/data/real/") for p in raw.path), "relative to the manifest, never copied"
    for row in df.itertuples():
        assert Path(row.path).stat().st_size == int(row.size), row.path
    pairs = {s: annotated_pairs(df, s) for s in ("train", "val", "test")}
    for split, p in pairs.items():
        assert set(p.structure) == STRUCTURES, split
        assert len(p[p.structure == "cfos_neuron"]) == 8
    # the test split is the validation split (there is no other annotated real data)
    assert pairs["test"].equals(pairs["val"])
    shared = {Path(f).resolve() for f in pairs["train"].image} & {Path(f).resolve() for f in pairs["val"].image}
    assert shared == {(real_data / "axon_trailmap" / "volume.tif").resolve()}, "only the axon volume, split by plane"
    axon = {s: label_rule(p.set_index("case").iloc[-1]) for s, p in pairs.items()}
    assert axon["train"] == (0, (1,), (17, 48)) and axon["val"] == (0, (1,), (77,))
    captions = json.loads((real_data / "wu_unannotated" / "captions.json").read_text())
    wu = df[df.structure == "wu_brain"]
    assert len(wu) == 10 and sorted(wu.caption) == sorted(" ".join(t.split()) for t in captions.values())


@pytest.mark.slow
def test_real_selma_runs_end_to_end_with_every_structure_on_the_leaderboard(tmp_path, real_data):
    tiny = {"backbone": "unet", "patch_size": [32, 32, 32], "features": [4, 4, 8, 16, 32, 4]}
    fast = {"results_dir": str(tmp_path / "r"),
            "model": tiny,
            "pretrain": {"strategies": ["mae_text"], "steps": 2, "batch_size": 2,
                         "mae_text": dict(tiny, warmup_steps=1, text_max_len=80)},
            "finetune": {"strategies": ["scratch", "mae_text"], "steps": 2, "val_every": 2},
            "infer": {"overlap": 0.25, "sw_batch_size": 8, "mirror_axes": []}}
    (tmp_path / "fast.yaml").write_text(yaml.safe_dump(fast))
    res = snakemake("all", "--nolock", "--cores", "2", "--configfile", "config/real_selma.yaml",
                    str(tmp_path / "fast.yaml"))
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-6000:]
    out = tmp_path / "r"
    index = pd.read_csv(out / "patches" / "wu_brain.csv", dtype=str, keep_default_na=False)
    assert len(index) == 80 and index.caption.str.len().min() > 100, "ten patches x 8 cubes, real captions"
    cases = pd.read_csv(out / "leaderboard" / "cases.csv")
    assert set(cases.strategy) == {"scratch", "mae_text"}
    for (protocol, strategy), group in cases.groupby(["protocol", "strategy"]):
        assert set(group.structure) == STRUCTURES, (protocol, strategy)
        assert len(group) == 12 and group.dice.between(0, 1).all() and np.isfinite(group.dice).all()
    board = pd.read_csv(out / "leaderboard" / "leaderboard.csv")
    assert {"scratch", "mae_text"} <= set(board.astype(str).stack())
    # the axon case was scored on its validation plane z = 77 only
    from selma3d.evaluation.evaluate import ground_truth_mask
    from selma3d.evaluation.metrics import case_metrics
    from selma3d.io import read_volume

    label = read_volume(real_data / "axon_trailmap" / "label.tif").data
    pred = read_volume(out / "predictions" / "scratch" / "full" / "ball_s0" / "axonalmarker_trailmap_z77.nii.gz").data
    gt, ignore = ground_truth_mask(label, 0, (1,), annotated_z=(77,))
    row = cases[(cases.strategy == "scratch") & (cases.protocol == "selma3d2024")
                & (cases.case == "axonalmarker_trailmap_z77")]
    assert row.dice.iloc[0] == pytest.approx(case_metrics(pred, gt, "selma3d2024", ignore=ignore)["dice"], abs=1e-9)
    log = (out / "logs" / "finetune" / "scratch" / "full" / "ball_s0.log").read_text()
    assert "12 cases" in log and "val 12 cases" in log
