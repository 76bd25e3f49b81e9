"""Whole-volume prediction: block-wise sliding windows equal MONAI's global sliding window,
reads stay block-sized, and the output is a valid OME-Zarr pyramid."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch
from monai.data.utils import dense_patch_slices
from monai.inferers import sliding_window_inference

from selma3d import io
from selma3d.inference.volume import Grid, Normalizer, predict_volume, volume_normalizer, window_starts


def tiny_net(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.GELU(),
                              torch.nn.Conv3d(4, 4, 3, padding=2, dilation=2), torch.nn.GELU(),
                              torch.nn.Conv3d(4, 1, 1))
    return net.eval()


class CountingReader(io.ArrayReader):
    """Remembers the largest block asked for."""

    largest = 0
    calls = 0

    def _read(self, z0, z1, y0, y1, x0, x1):
        self.largest = max(self.largest, (z1 - z0) * (y1 - y0) * (x1 - x0))
        self.calls += 1
        return super()._read(z0, z1, y0, y1, x0, x1)


def volume(shape, seed=0):
    rng = np.random.default_rng(seed)
    v = rng.gamma(2.0, 80.0, size=shape).astype(np.float32)
    v[shape[0] // 3:, 5:15, 4:20] += 600  # some structure so the net output varies
    return v.astype(np.uint16)


def reference(net, data, roi, overlap, norm):
    x = torch.from_numpy(norm(data))[None, None]
    with torch.no_grad():
        logits = sliding_window_inference(x, roi, 4, net, overlap=overlap, mode="gaussian")
    return torch.sigmoid(logits)[0, 0].numpy()


@pytest.mark.parametrize("shape", [(37, 45, 52), (11, 40, 33)])  # the second is thinner than the window
def test_window_grid_is_monais(shape):
    roi = (16, 16, 16)
    g = Grid.build(shape, roi, 0.25)
    padded = [max(s, r) for s, r in zip(shape, roi)]
    interval = [int(r * 0.75) if r != p else r for r, p in zip(roi, padded)]
    monai = sorted(tuple(s.start for s in sl) for sl in dense_patch_slices(padded, roi, interval))
    ours = sorted(tuple(int(v) for v in w) for w in __import__("itertools").product(*g.starts))
    assert ours == monai
    assert list(window_starts(10, 10, 0.5)) == [0]


@pytest.mark.parametrize("shape,block", [((37, 45, 52), 16), ((11, 40, 33), 12)])
def test_blockwise_equals_global_sliding_window(tmp_path, shape, block):
    data = volume(shape)
    net, roi, overlap = tiny_net(), (16, 16, 16), 0.25
    reader = CountingReader(data, spacing=(4.0, 1.6, 1.6))
    out = predict_volume(net, reader, tmp_path / "p.ome.zarr", roi, overlap=overlap, block=block, batch=3,
                         probability=True, prob_dtype="float16", levels=2, device=torch.device("cpu"))
    from selma3d.io.omezarr import ZarrReader

    got = ZarrReader(out).read_slab(0, shape[0]).astype(np.float32)
    norm = volume_normalizer(io.ArrayReader(data), "percentile")
    want = reference(net, data, roi, overlap, norm)
    assert np.abs(got - want).max() < 1e-3  # float16 storage: 5e-4 at p ~ 1
    # the reader was asked for halo'd blocks, never the volume
    assert reader.largest < data.size or data.size <= (block + 2 * 16) ** 3
    assert reader.largest <= np.prod([min(s, block + 2 * 16) for s in shape])


@pytest.mark.parametrize("block,on_disk", [(8, False), (13, True), (40, False)])
def test_logits_match_monai_to_float_precision(tmp_path, block, on_disk):
    data = volume((30, 34, 41), seed=2)
    net, roi = tiny_net(1), (16, 16, 16)
    norm = volume_normalizer(io.ArrayReader(data), "zscore")
    from selma3d.inference.volume import BlockPredictor, SpillStore, iter_blocks

    grid = Grid.build(data.shape, roi, 0.5)
    calls = []

    def counted(x):
        calls.append(x.shape[0])
        return net(x)

    spill = SpillStore(tmp_path) if on_disk else None
    bp = BlockPredictor(counted, grid, torch.device("cpu"), batch=5, block=block, spill=spill)
    got = np.zeros(data.shape, np.float32)
    for b in iter_blocks(data.shape, block):
        box = bp.region(b)
        region = bp.read_region(io.ArrayReader(data), box, norm)
        got[tuple(slice(lo, hi) for lo, hi in b)] = bp.logits(b, box, region).numpy()
    with torch.no_grad():
        want = sliding_window_inference(torch.from_numpy(norm(data))[None, None], roi, 4, net, overlap=0.5,
                                        mode="gaussian")[0, 0].numpy()
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    # every window of the grid ran exactly once, and nothing is left waiting
    assert sum(calls) == bp.windows == grid.n_windows
    assert not bp.spill.held and not list(tmp_path.iterdir())


def test_mask_output_is_ome_zarr_with_pyramid(tmp_path):
    import zarr

    data = volume((33, 40, 36), seed=3)
    net, roi = tiny_net(2), (16, 16, 16)
    out = predict_volume(net, io.ArrayReader(data, spacing=(4.0, 1.6, 1.6)), tmp_path / "m.ome.zarr", roi,
                         overlap=0.25, block=20, levels=2, threshold=0.5, device=torch.device("cpu"))
    group = zarr.open_group(str(out), mode="r")
    ms = group.attrs["ome"]["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["z", "y", "x"]
    assert all(a["unit"] == "micrometer" for a in ms["axes"])
    assert [d["path"] for d in ms["datasets"]] == ["0", "1", "2"]
    assert ms["datasets"][1]["coordinateTransformations"][0]["scale"] == [8.0, 3.2, 3.2]
    assert group.attrs["selma3d"]["kind"] == "mask"
    level0 = np.asarray(group["0"])
    assert level0.dtype == np.uint8 and set(np.unique(level0)) <= {0, 1}
    assert group["1"].shape == (17, 20, 18) and group["2"].shape == (9, 10, 9)
    norm = volume_normalizer(io.ArrayReader(data), "percentile")
    want = reference(net, data, roi, 0.25, norm) > 0.5
    assert (level0.astype(bool) != want).mean() < 1e-4  # voxels exactly at the threshold may flip
    # level 1 is the 2x2x2 max of level 0
    padded = np.pad(level0, [(0, s % 2) for s in level0.shape], mode="edge")
    assert np.array_equal(np.asarray(group["1"]), padded.reshape(17, 2, 20, 2, 18, 2).max(axis=(1, 3, 5)))


def test_normalisation_is_global_from_a_subsample():
    data = volume((64, 48, 48), seed=4)
    exact = volume_normalizer(io.ArrayReader(data), "percentile")
    sub = volume_normalizer(io.ArrayReader(data), "percentile", max_voxels=20000)
    assert abs(sub.a - exact.a) < 0.05 * (exact.b - exact.a)
    assert abs(sub.b - exact.b) < 0.1 * (exact.b - exact.a)
    from selma3d.preprocess.normalize import percentile_scale

    np.testing.assert_array_equal(exact(data), percentile_scale(data))
    assert Normalizer("percentile", 1.0, 1.0)(data).max() == 0


def test_cli_on_a_tiff_series_with_a_finetuned_checkpoint(tmp_path):
    from selma3d.cli import main
    from selma3d.nets.models import build_segmentation_net

    cfg = {"backbone": "unet", "patch_size": [32, 32, 32], "features": [4, 4, 8, 8, 16, 4]}
    torch.manual_seed(0)
    net = build_segmentation_net(cfg)
    torch.save({"config": cfg, "state_dict": net.state_dict(), "normalize": "percentile"}, tmp_path / "model.pt")
    data = volume((36, 40, 34), seed=5)
    io.write_tiff_series(tmp_path / "brain", data)
    rc = main(["predict", "--model", str(tmp_path / "model.pt"), "--input", str(tmp_path / "brain"),
               "--output", str(tmp_path / "pred.ome.zarr"), "--block", "24", "--overlap", "0.25", "--batch", "2",
               "--probability", "--prob-dtype", "uint8", "--spacing", "4", "1.6", "1.6", "--device", "cpu"])
    assert rc == 0
    from selma3d.io.omezarr import ZarrReader

    r = ZarrReader(tmp_path / "pred.ome.zarr")
    assert r.spacing == (4.0, 1.6, 1.6) and r.levels == 3 and r.dtype == np.uint8
    net.eval()
    want = reference(net, data, (32, 32, 32), 0.25, volume_normalizer(io.ArrayReader(data), "percentile"))
    got = r.read_slab(0, 36).astype(np.float32) / 255
    assert np.abs(got - want).max() <= 0.5 / 255 + 1e-3
    attrs = json.loads(json.dumps(r.attrs))
    assert attrs["selma3d"]["model"].endswith("model.pt")


def test_window_streams_split_a_batch_and_give_each_window_its_own_result():
    from selma3d.training.finetune import ParallelWindows, window_streams

    net = tiny_net(3)
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(5, 1, 16, 16, 16)).astype(np.float32))
    seen = []

    def recording(t):
        seen.append(t.shape[0])
        return net(t)

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.no_grad():
            want = net(x)
        with window_streams(recording, "cpu") as model:
            assert isinstance(model, ParallelWindows) and torch.get_num_threads() == 1
            got = model(x)
        assert torch.get_num_threads() == 2
        assert sorted(seen) == [2, 3] and not got.requires_grad
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
        # the stream threads live as long as the context, not one call: reused, then stopped
        threads = []

        def where(t):
            threads.append(threading.get_ident())
            return net(t)

        with window_streams(where, "cpu") as model:
            model(x)
            model(x)
        assert len(threads) == 4 and len(set(threads)) == 2
        seen.clear()  # never a stream of one window (torch's slow CPU kernel for a batch of one)
        with window_streams(recording, "cpu") as model:
            torch.testing.assert_close(model(x[:3]), want[:3], atol=1e-6, rtol=1e-5)
            model(x[:4])
        assert seen == [3, 2, 2]
        assert model._pool._shutdown
        torch.set_num_threads(1)
        with window_streams(net, "cpu") as model:
            assert model is net  # one thread: the net itself
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("shape,block", [((30, 34, 41), 8), ((11, 40, 33), 12), ((4, 18, 40), 8)])
def test_local_normalisation_blockwise_equals_the_whole_volume(tmp_path, shape, block):
    """A local normaliser reads a halo around each region: the block-wise input equals
    local_contrast of the whole volume cut to the region, and so the prediction equals MONAI's on it."""
    from selma3d.inference.volume import BlockPredictor, iter_blocks
    from selma3d.preprocess.normalize import local_contrast

    data = volume(shape, seed=3)
    norm = volume_normalizer(io.ArrayReader(data), "local")
    assert norm.halo == (6, 21, 21)
    whole = local_contrast(data)
    grid = Grid.build(data.shape, (16, 16, 16), 0.25)
    bp = BlockPredictor(tiny_net(), grid, torch.device("cpu"), batch=3, block=block)
    for b in iter_blocks(data.shape, block):
        box = bp.region(b)
        if box is None:
            continue
        region = bp.read_region(io.ArrayReader(data), box, norm)
        # region in padded coordinates; compare its in-volume part
        sl = [slice(max(0, a - p), min(n, bb - p)) for (a, bb), p, n in zip(box, grid.pad_before, shape)]
        inner = tuple(slice(s.start + p - a, s.stop + p - a) for s, (a, _), p in zip(sl, box, grid.pad_before))
        np.testing.assert_array_equal(region[inner], whole[tuple(sl)])
    out = predict_volume(tiny_net(), io.ArrayReader(data), tmp_path / "l.ome.zarr", (16, 16, 16), overlap=0.25,
                         block=block, batch=3, probability=True, prob_dtype="float16", normalization="local",
                         device=torch.device("cpu"))
    from selma3d.io.omezarr import ZarrReader

    got = ZarrReader(out).read_slab(0, shape[0]).astype(np.float32)
    assert np.abs(got - reference(tiny_net(), data, (16, 16, 16), 0.25, local_contrast)).max() < 1e-3


def test_mask_with_component_filtering_equals_postprocessing_the_whole_array(tmp_path):
    """min_size and peak on a whole volume: the slab-wise component pass gives what
    apply_postprocess gives on MONAI's whole-volume probability, pyramid included."""
    import zarr

    from selma3d.inference.postprocess import apply_postprocess

    data = volume((41, 40, 36), seed=6)
    net, roi = tiny_net(4), (16, 16, 16)
    norm = volume_normalizer(io.ArrayReader(data), "percentile")
    prob = reference(net, data, roi, 0.25, norm)
    thr = float(np.quantile(prob, 0.8))
    peak = float(np.quantile(prob, 0.97))
    want = apply_postprocess(prob, thr, 6, peak)
    assert 0 < want.sum() < (prob > thr).sum()  # the filter removes something and keeps something
    out = predict_volume(net, io.ArrayReader(data), tmp_path / "m.ome.zarr", roi, overlap=0.25, block=12, levels=1,
                         threshold=thr, min_size=6, peak=peak, device=torch.device("cpu"))
    group = zarr.open_group(str(out), mode="r")
    level0 = np.asarray(group["0"])
    assert (level0 != want).sum() <= 5  # voxels within float rounding of the threshold may flip (242 filtered)
    padded = np.pad(level0, [(0, s % 2) for s in level0.shape], mode="edge")
    assert np.array_equal(np.asarray(group["1"]), padded.reshape(21, 2, 20, 2, 18, 2).max(axis=(1, 3, 5)))
    attrs = group.attrs["selma3d"]
    assert (attrs["threshold"], attrs["min_component_size"], attrs["peak"]) == (thr, 6, peak)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.ome.zarr"]  # the probability store is gone


def test_a_checkpoints_calibrated_postprocessing_reaches_whole_volumes(tmp_path, caplog):
    from selma3d.inference.volume import predict_from_checkpoint
    from selma3d.nets.models import build_segmentation_net

    cfg = {"backbone": "unet", "patch_size": [32, 32, 32], "features": [4, 4, 8, 8, 16, 4]}
    torch.manual_seed(0)
    net = build_segmentation_net(cfg)
    calibrated = {"threshold": 0.3, "min_size": 4, "peak": 0.45}
    torch.save({"config": cfg, "state_dict": net.state_dict(), "normalize": "percentile",
                "postprocess": {"per": "structure", "values": {"cfos_neuron": calibrated}}}, tmp_path / "model.pt")
    data = volume((36, 34, 34), seed=7)
    import zarr

    def attrs(name, **kw):
        out = predict_from_checkpoint(tmp_path / "model.pt", io.ArrayReader(data), tmp_path / name,
                                      device=torch.device("cpu"), block=24, levels=0, **kw)
        a = zarr.open_group(str(out), mode="r").attrs["selma3d"]
        return a["threshold"], a["min_component_size"], a["peak"]

    assert attrs("a.ome.zarr", structure="cfos_neuron") == (0.3, 4, 0.45)
    assert attrs("b.ome.zarr", structure="cfos_neuron", use_stored_postprocess=False, threshold=0.6) == (0.6, 0, 0.0)
    with caplog.at_level("WARNING"):
        assert attrs("c.ome.zarr", structure="vessel", min_size=2) == (0.5, 2, 0.0)
    assert "calibrated for ['cfos_neuron'], not for structure 'vessel'" in caplog.text


def test_segment_volume_rule_script_passes_the_segment_block(tmp_path, repo):
    """The rule script with the schema's segment block, in its own process as Snakemake runs it:
    the model's calibrated post-processing for the volume's structure reaches the mask."""
    import os
    import subprocess
    import sys

    import zarr

    from helpers import schema_config
    from selma3d.nets.models import build_segmentation_net

    cfg = {"backbone": "unet", "patch_size": [32, 32, 32], "features": [4, 4, 8, 8, 16, 4]}
    torch.manual_seed(1)
    torch.save({"config": cfg, "state_dict": build_segmentation_net(cfg).state_dict(), "normalize": "percentile",
                "postprocess": {"per": "category", "values": {"isolated_sparse": {"threshold": 0.4, "min_size": 3,
                                                                                   "peak": 0.0}}}},
               tmp_path / "model.pt")
    io.write_tiff_series(tmp_path / "brain", volume((34, 33, 40), seed=8))
    settings = {k: v for k, v in schema_config()["segment"].items() if k not in ("volumes", "runs", "structures")}
    job = {"input": {"model": str(tmp_path / "model.pt"), "volume": str(tmp_path / "brain")},
           "output": {"prediction": str(tmp_path / "pred.ome.zarr")},
           "params": {"settings": settings, "structure": "cfos_neuron"}, "log": [str(tmp_path / "segment.log")]}
    driver = (
        "import json, runpy, sys\n"
        "from types import SimpleNamespace as NS\n"
        "job = json.loads(sys.argv[2])\n"
        "smk = NS(input=NS(**job['input']), output=NS(**job['output']), params=NS(**job['params']), log=job['log'])\n"
        "runpy.run_path(sys.argv[1], init_globals={'snakemake': smk})\n")
    res = subprocess.run([sys.executable, "-c", driver, str(repo / "workflow" / "scripts" / "segment_volume.py"),
                          json.dumps(job)], capture_output=True, text=True, check=False,
                         env={**os.environ, "PYTHONPATH": str(repo / "src"), "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    attrs = zarr.open_group(str(tmp_path / "pred.ome.zarr"), mode="r").attrs["selma3d"]
    assert (attrs["kind"], attrs["threshold"], attrs["min_component_size"]) == ("mask", 0.4, 3)
    assert "components of at least 3 voxels" in (tmp_path / "segment.log").read_text()
