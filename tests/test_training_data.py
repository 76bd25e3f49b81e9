"""Label budgets, crops, labels, normalisation, manifests and checkpoints: the pieces the
training loops are built from, on cases whose answer is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from selma3d.training.checkpoint import load_checkpoint, save_checkpoint
from selma3d.core.errors import InputError
from selma3d.core.overlap import dice
from selma3d.data.splits import draw_budget
from selma3d.training.finetune import Case, sample_crop
from selma3d.core.labels import binarize_label
from selma3d.data.manifest import annotated_pairs, read_manifest
from selma3d.preprocess.normalize import normalize, percentile_scale
from selma3d.training.sampling import StepBatchSampler, random_crop


def _pairs():
    rows = [{"case": f"{s}_{i}", "structure": s, "category": "isolated_sparse", "spacing_um": "",
             "image": f"{s}_{i}_0000.nii.gz", "label": f"{s}_{i}.nii.gz"}
            for s, n in (("cfos_neuron", 5), ("blood_vessel", 3)) for i in range(n)]
    return pd.DataFrame(rows)


def test_budget_is_stratified_reproducible_and_seed_dependent():
    pairs = _pairs()
    one = draw_budget(pairs, 1, seed=0)
    assert sorted(one.structure) == ["blood_vessel", "cfos_neuron"]
    assert draw_budget(pairs, 1, seed=0).equals(one)
    picks = {tuple(draw_budget(pairs, 2, seed=s).case) for s in range(10)}
    assert len(picks) > 1, "different seeds must be able to draw different cases"
    four = draw_budget(pairs, 4, seed=3)
    assert (four.structure == "cfos_neuron").sum() == 4 and (four.structure == "blood_vessel").sum() == 3
    assert len(draw_budget(pairs, "all", seed=0)) == len(pairs)
    with pytest.raises(ValueError, match="budget"):
        draw_budget(pairs, 0, seed=0)


def test_foreground_crops_contain_foreground_and_pad_small_cases():
    label = np.zeros((20, 30, 30), np.uint8)
    label[15, 25, 3] = 1
    case = Case("c", "cfos_neuron", "isolated_sparse", np.random.default_rng(0).normal(size=label.shape).astype(np.float32),
                label, None)
    rng = np.random.default_rng(1)
    for _ in range(5):
        x, y, ign = sample_crop(case, (8, 8, 8), rng, fg_prob=1.0)
        assert x.shape == y.shape == (8, 8, 8) and y.sum() == 1 and not ign.any()
    x, y, ign = sample_crop(case, (32, 32, 32), rng, fg_prob=0.0)
    assert x.shape == (32, 32, 32)
    assert ign.sum() == 32**3 - 20 * 30 * 30, "padding is marked ignored so the loss never sees it"


def test_dice_semantics_including_empty_and_ignored_voxels():
    a = np.zeros((4, 4, 4), bool)
    assert dice(a, a) == 1.0
    b = a.copy()
    b[0, 0, 0] = True
    assert dice(a, b) == 0.0
    c = b.copy()
    c[1, 1, 1] = True
    assert dice(c, b) == pytest.approx(2 / 3)
    ignore = np.zeros_like(a)
    ignore[1, 1, 1] = True
    assert dice(c, b, ignore) == 1.0


def test_partial_annotation_labels():
    label = np.array([0, 1, 2, 4, 1, 0]).reshape(1, 1, 6)
    fg, ignore = binarize_label(label, ignore_label=0, background_values=(1,))
    assert fg.ravel().tolist() == [0, 0, 1, 1, 0, 0]
    assert ignore.ravel().tolist() == [True, False, False, False, False, True]
    fg, ignore = binarize_label(np.array([[[0, 255]]]))
    assert fg.ravel().tolist() == [0, 1] and ignore is None
    with pytest.raises(ValueError, match="NaN"):
        binarize_label(np.array([[[0.0, np.nan]]]))


def test_percentile_normalisation_maps_to_unit_range():
    x = np.random.default_rng(0).gamma(2.0, 300.0, size=(10, 20, 20))
    y = percentile_scale(x)
    assert y.min() == -1.0 and y.max() == 1.0 and y.dtype == np.float32
    z = normalize(x, "zscore")
    assert abs(z.mean()) < 1e-5 and abs(z.std() - 1) < 1e-4
    assert not normalize(np.full((3, 3, 3), 7.0)).any()
    with pytest.raises(ValueError, match="unknown normalisation"):
        normalize(x, "minmax")


def test_step_sampler_is_a_function_of_seed_and_step():
    full = list(StepBatchSampler(50, 3, seed=7, start=0, steps=10))
    resumed = list(StepBatchSampler(50, 3, seed=7, start=6, steps=10))
    assert full[6:] == resumed
    assert list(StepBatchSampler(50, 3, seed=8, start=0, steps=10)) != full
    crop = random_crop(np.arange(4 * 5 * 6).reshape(4, 5, 6), (8, 3, 3), np.random.default_rng(0))
    assert crop.shape == (8, 3, 3)


def test_manifest_validation_names_the_row(tmp_path):
    p = tmp_path / "m.csv"
    p.write_text("case,role,split,structure,path\na,image,train,cfos_neuron,a.nii.gz\n"
                 "a,label,train,cfos_neuron,b.nii.gz\n")
    df = read_manifest(p)
    assert df.category.tolist() == ["isolated_sparse"] * 2
    assert annotated_pairs(df, "train").image.iloc[0] == str(tmp_path / "a.nii.gz")
    p.write_text("case,role,split,structure,path\na,image,training,cfos_neuron,a.nii.gz\n")
    with pytest.raises(InputError, match=r"m.csv row 2.*split.*'training'"):
        read_manifest(p)
    p.write_text("case,role,split,structure,path,spacing_um\na,image,train,cfos_neuron,a.nii.gz,1;2\n")
    with pytest.raises(InputError, match="spacing_um"):
        read_manifest(p)
    p.write_text("case,role,split,structure,path\na,image,test,cfos_neuron,a.nii.gz\n")
    with pytest.raises(InputError, match="label row"):
        annotated_pairs(read_manifest(p), "test")


def test_checkpoint_restores_model_optimiser_and_rng(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(net.parameters(), lr=0.1)
    net(torch.randn(4, 3)).sum().backward()
    opt.step()
    save_checkpoint(tmp_path / "last.pt", 5, model=net, optimizer=opt)
    expected = torch.rand(3)
    net2 = torch.nn.Linear(3, 2)
    opt2 = torch.optim.AdamW(net2.parameters(), lr=0.1)
    torch.manual_seed(123)
    assert load_checkpoint(tmp_path / "last.pt", model=net2, optimizer=opt2) == 5
    assert torch.equal(torch.rand(3), expected)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), net2.state_dict().values()))
    assert load_checkpoint(tmp_path / "missing.pt", model=net2) == 0
    assert not list(tmp_path.glob("*.incomplete*"))


def test_a_checkpoint_from_other_settings_is_not_resumed(tmp_path):
    from selma3d.training.checkpoint import run_key

    net = torch.nn.Linear(3, 2)
    old = run_key(config={"patch_size": [64, 64, 64]}, steps=200)
    new = run_key(config={"patch_size": [32, 32, 32]}, steps=200)
    assert old != new and new == run_key(steps=200, config={"patch_size": [32, 32, 32]})
    save_checkpoint(tmp_path / "last.pt", 41, old, model=net)
    fresh = torch.nn.Linear(3, 2)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    assert load_checkpoint(tmp_path / "last.pt", new, model=fresh) == 0
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())
    assert load_checkpoint(tmp_path / "last.pt", old, model=fresh) == 41


def test_pretraining_samples_follow_the_plan_normalisation_per_structure(tmp_path):
    """pretrain.normalize plan: each patch normalised as the plan normalises its structure
    (local contrast for c-Fos, the default for any other), the same crop as a plain method."""
    import zarr

    from selma3d.preprocess.normalize import local_contrast
    from selma3d.training.plan import plan_normalization
    from selma3d.training.sampling import PatchSampleDataset, sample_tensor

    rng = np.random.default_rng(0)
    patches = rng.gamma(2.0, 300.0, size=(2, 16, 16, 16)).astype(np.uint16)
    store = str(tmp_path / "p.zarr")
    arr = zarr.open_array(store, mode="w", shape=patches.shape, dtype=patches.dtype, chunks=(1, 16, 16, 16))
    arr[:] = patches
    index = pd.DataFrame({"store": [store, store], "patch": [0, 1], "structure": ["cfos_neuron", "microglia"]})
    mapping = plan_normalization({"normalization": "percentile", "normalization_by_structure": {"cfos_neuron": "local"}})
    assert mapping == {"*": "percentile", "cfos_neuron": "local"}
    ds = PatchSampleDataset(index, (16, 16, 16), mapping)
    x0, meta0 = ds[(0, 5)]
    x1, _ = ds[(1, 5)]
    assert meta0["structure"] == "cfos_neuron"
    np.testing.assert_array_equal(x0[0].numpy(), local_contrast(patches[0]))
    assert torch.equal(x1, sample_tensor(patches[1], (16, 16, 16), "percentile", 5))
