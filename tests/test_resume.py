"""Pretraining resumes exactly: a run stopped by real signals (SIGTERM: checkpoint and exit;
SIGKILL: die) and started again exports the same weights, bit for bit, as a run that went
straight through (the interrupted one with DataLoader workers, the reference without)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import make_patch_store

STEPS = 24
CONFIG = {"backbone": "unet", "patch_size": [32, 32, 32], "features": [4, 4, 8, 8, 16, 4], "lr": 1e-3,
          "warmup_steps": 3, "mask_ratio": 0.5, "mask_cube": 8}

RUNNER = textwrap.dedent("""
    import json, sys, time
    import torch
    from selma3d.training import pretrain as P
    args = json.loads(sys.argv[1])
    slow = args.pop("slow")
    if slow:  # a little time per step so the test can kill the run in the middle
        loss = P._LossModule.forward
        def forward(self, *a, **k):
            time.sleep(slow)
            return loss(self, *a, **k)
        P._LossModule.forward = forward
    P.pretrain("mae", **args)
""")


def start(tmp_path: Path, index: Path, name: str, workers: int, slow: float = 0.0) -> subprocess.Popen:
    out = tmp_path / name
    args = {"config": CONFIG, "patch_indexes": [str(index)], "weights_out": str(out / "encoder.pt"),
            "curve_out": str(out / "loss.csv"), "steps": STEPS, "batch_size": 2, "seed": 3,
            "num_workers": workers, "checkpoint_dir": str(out / "ckpt"), "checkpoint_every": 4,
            "log_every": 100, "slow": slow}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SELMA3D_DEVICE": "cpu"}
    script = tmp_path / "runner.py"
    script.write_text(RUNNER)
    return subprocess.Popen([sys.executable, str(script), json.dumps(args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen) -> None:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]


def test_killed_run_resumes_to_identical_weights(tmp_path):
    index = make_patch_store(tmp_path)
    reference = start(tmp_path, index, "straight", workers=0)

    ckpt = tmp_path / "resumed" / "ckpt" / "last.pt"

    def wait_for_checkpoint(proc, after: int) -> None:
        deadline = time.time() + 240
        while not (ckpt.exists() and torch.load(ckpt, weights_only=False)["step"] > after):
            assert proc.poll() is None, "the run ended before writing a checkpoint"
            assert time.time() < deadline, "no checkpoint appeared"
            time.sleep(0.05)

    # 1. SIGTERM (SLURM preemption / time limit): the step finishes, a checkpoint is written
    #    at that step (not only every checkpoint_every) and the process exits with 128 + 15
    victim = start(tmp_path, index, "resumed", workers=2, slow=0.3)
    wait_for_checkpoint(victim, 0)
    time.sleep(0.5)
    victim.send_signal(signal.SIGTERM)
    out, _ = victim.communicate(timeout=120)
    assert victim.returncode == 128 + signal.SIGTERM, out[-2000:]
    assert "stopping on a signal" in out
    first = torch.load(ckpt, weights_only=False)["step"]
    assert 0 < first < STEPS

    # 2. SIGKILL (no chance to clean up) after the resumed run wrote a later checkpoint
    victim = start(tmp_path, index, "resumed", workers=2, slow=0.3)
    wait_for_checkpoint(victim, first)
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=60)
    assert victim.returncode == -signal.SIGKILL
    state = torch.load(ckpt, weights_only=False)
    assert first < state["step"] < STEPS
    assert not (tmp_path / "resumed" / "encoder.pt").exists()
    # the ssl strategy's EMA teachers etc. live in the model state dict; optimiser state too
    assert state["optimizer"]["state"], "optimiser moments must be in the checkpoint"

    finish(start(tmp_path, index, "resumed", workers=2))
    finish(reference)

    a = torch.load(tmp_path / "straight" / "encoder.pt", weights_only=False)["weights"]
    b = torch.load(tmp_path / "resumed" / "encoder.pt", weights_only=False)["weights"]
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"
    curve_a = pd.read_csv(tmp_path / "straight" / "loss.csv")
    curve_b = pd.read_csv(tmp_path / "resumed" / "loss.csv")
    assert list(curve_b["step"]) == list(range(STEPS))
    np.testing.assert_allclose(curve_a["loss"], curve_b["loss"], rtol=1e-6)


def test_reseeding_makes_strategy_randomness_a_function_of_step_and_shard():
    from selma3d import strategies as ssl
    from selma3d.training.distributed import shard_seed
    from selma3d.training.pretrain import _reseed

    model = ssl.build_strategy("mae", CONFIG)
    x = torch.randn(2, 1, 32, 32, 32)
    _reseed(model, shard_seed(0, 5, 0), torch.device("cpu"))
    first = model.loss(x, 5)[0]
    model.loss(x, 6)  # advances the generator
    _reseed(model, shard_seed(0, 5, 0), torch.device("cpu"))
    assert torch.equal(model.loss(x, 5)[0], first)
    _reseed(model, shard_seed(0, 5, 1), torch.device("cpu"))
    assert not torch.equal(model.loss(x, 5)[0], first)


def test_uneven_shards_are_refused():
    from selma3d.training.distributed import plan_shards

    assert plan_shards(8, 2, None) == (2, 1)
    assert plan_shards(8, 2, 4) == (4, 2)
    with pytest.raises(ValueError, match="multiple of pretrain.gpus"):
        plan_shards(8, 2, 3)
    with pytest.raises(ValueError, match="divisible"):
        plan_shards(6, 1, 4)
