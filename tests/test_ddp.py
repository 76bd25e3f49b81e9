"""Data-parallel pretraining: 2 torchrun processes (gloo, CPU) train the same weights as one
process that cuts the same global batch into the same 2 shards.

Why shards and not "one process, batch 4": each shard draws its own masks and computes its
own batch statistics / contrastive negatives, so DDP can only equal a single process that
sees the same shards. With ``shards`` fixed, the weights no longer depend on the number of
GPUs, for every strategy (BatchNorm running buffers aside; they are not exported weights
of the segmentation net's encoder). The test uses ``mae``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from helpers import make_patch_store

CONFIG = {"backbone": "unet", "patch_size": [32, 32, 32], "features": [4, 4, 8, 8, 16, 4], "lr": 1e-3,
          "warmup_steps": 1, "mask_ratio": 0.5, "mask_cube": 8}


def run(tmp_path, index, name, **kw):
    from selma3d.training.pretrain import pretrain

    out = tmp_path / name
    pretrain("mae", CONFIG, [index], out / "encoder.pt", out / "loss.csv", steps=4, batch_size=4, seed=1,
             log_every=1, **kw)
    payload = torch.load(out / "encoder.pt", weights_only=False)
    return payload, pd.read_csv(out / "loss.csv")


def test_two_gloo_ranks_equal_one_process_with_the_same_shards(tmp_path, monkeypatch):
    monkeypatch.setenv("SELMA3D_DEVICE", "cpu")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    index = make_patch_store(tmp_path)
    ddp, ddp_curve = run(tmp_path, index, "ddp", gpus=2, ddp_log_dir=tmp_path / "ranks")
    assert ddp["shards"] == 2
    single, single_curve = run(tmp_path, index, "single", shards=2)
    plain, _ = run(tmp_path, index, "plain")  # one shard: other masks, so other weights

    init = __import__("selma3d.strategies", fromlist=["x"]).build_strategy("mae", CONFIG)
    init_w = init.export_weights()
    moved = max(float((single["weights"][k] - init_w[k]).abs().max()) for k in init_w)
    assert moved > 1e-3, "training did not change the weights"
    # A conv bias right before an instance norm is cancelled by the norm: its true gradient is 0
    # and what it gets is rounding noise, which Adam scales up to full-size steps of random
    # sign. Those tensors differ between any two summation orders, so they are left out.
    cancelled = {k for k in single["weights"] if k.endswith(".conv.bias")}
    checked = [k for k in single["weights"] if k not in cancelled]
    assert len(checked) > 20
    for k in checked:
        torch.testing.assert_close(ddp["weights"][k], single["weights"][k], rtol=1e-4, atol=1e-5,
                                   msg=lambda m, k=k: f"{k} differs under DDP: {m}")
    np.testing.assert_allclose(ddp_curve["loss"], single_curve["loss"], rtol=1e-4)
    assert any(not torch.allclose(plain["weights"][k], single["weights"][k], atol=1e-5) for k in init_w)
    # both ranks ran and joined the gloo group
    logs = "".join(p.read_text() for p in (tmp_path / "ranks").rglob("*.log"))
    assert "rank 1/2 joined the gloo process group" in logs, logs[-2000:]
