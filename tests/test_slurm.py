"""The SLURM profile, driven through the real snakemake-executor-plugin-slurm.

Stand-in ``sbatch``/``srun``/``sacct``/``squeue``/``scancel``/``sinfo``/``scontrol``/
``sacctmgr`` programs on PATH record every command line; the stand-in ``sbatch`` runs the
job script it was given (the plugin's ``--wrap`` command, which starts Snakemake's
slurm-jobstep executor, which calls ``srun``) and ``sacct`` reports the outcome. So the whole
path a cluster takes runs: submission string, job step, rule script, status polling.
Checked: GPU rules (pretrain, segment_volume) ask for GPUs, CPU rules (split) do not, and
partitions, memory, runtime and CPU counts come from the profile and config.
"""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from helpers import make_patch_store

REPO = Path(__file__).resolve().parents[1]

FAKE = r'''#!{python}
"""Stand-in for the SLURM command {name}: records its command line; sbatch runs the job."""
import fcntl, json, os, subprocess, sys
state = os.environ["FAKE_SLURM_DIR"]
name = os.path.basename(sys.argv[0])
with open(os.path.join(state, "calls.jsonl"), "a") as fh:
    fcntl.flock(fh, fcntl.LOCK_EX)
    fh.write(json.dumps({{"prog": name, "argv": sys.argv[1:]}}) + "\n")
jobs = os.path.join(state, "jobs")
os.makedirs(jobs, exist_ok=True)
if name == "sbatch":
    args = sys.argv[1:]
    opt = lambda flag: next((args[i + 1] for i, a in enumerate(args[:-1]) if a == flag), None)
    wrap = next(a[len("--wrap="):] for a in args if a.startswith("--wrap="))
    with open(os.path.join(state, "counter"), "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        jobid = str(1000 + len(fh.read()))
        fh.write("x")
    env = dict(os.environ, SLURM_JOB_ID=jobid, SLURM_JOBID=jobid)
    gpus = next((a.split("=", 1)[1] for a in args if a.startswith("--gpus=")), None)
    if gpus:
        env["SLURM_GPUS"] = gpus
    log = opt("--output").replace("%j", jobid)
    os.makedirs(os.path.dirname(log), exist_ok=True)
    state_file = os.path.join(jobs, jobid)
    with open(state_file, "w") as fh:
        fh.write("RUNNING")
    # run the job in the background, like a cluster; its last act records the outcome
    script = wrap + f"\nif [ $? -eq 0 ]; then s=COMPLETED; else s=FAILED; fi; echo $s > '{{state_file}}'"
    subprocess.Popen(["sh", "-c", script], cwd=opt("-D"), env=env, stdout=open(log, "w"),
                     stderr=subprocess.STDOUT, start_new_session=True)
    print(jobid)
elif name == "srun":
    args = sys.argv[1:]
    while args and args[0].startswith("-"):
        args.pop(0)
    os.execvp(args[0], args)
elif name in ("sacct", "squeue"):
    if "-o" in sys.argv and "Account%256" in sys.argv:
        sys.exit(0)
    for jobid in sorted(os.listdir(jobs)):
        print(f"{{jobid}}|{{open(os.path.join(jobs, jobid)).read().strip()}}")
elif name == "sacctmgr":
    print("your_account")
elif name == "sinfo":
    print("PARTITION\ncpu*\ngpu")
'''

TINY_NET = {"backbone": "unet", "patch_size": [32, 32, 32], "features": [4, 4, 8, 8, 16, 4]}


def install_fakes(bin_dir: Path) -> None:
    bin_dir.mkdir()
    for name in ("sbatch", "srun", "sacct", "squeue", "scancel", "sinfo", "scontrol", "sacctmgr"):
        path = bin_dir / name
        path.write_text(FAKE.format(python=sys.executable, name=name))
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def prefill(results: Path, volume_names: list[str], brain: Path) -> None:
    """Upstream outputs as earlier runs would have left them (so only the jobs under test run)."""
    import torch

    from selma3d.nets.models import build_segmentation_net
    from selma3d.io.omezarr import write_zarr_volume

    rng = np.random.default_rng(0)
    (results / "data").mkdir(parents=True)
    rows = [{"case": f"c{i}", "role": role, "split": "train", "structure": "cfos", "category": "isolated_sparse",
             "spacing_um": "4,1.6,1.6", "path": f"c{i}_{role}.nii.gz"} for i in range(3) for role in ("image", "label")]
    pd.DataFrame(rows).to_csv(results / "data" / "manifest.csv", index=False)
    (results / "patches").mkdir()
    for seed, name in enumerate(volume_names):
        make_patch_store(results / "patches", n=2, seed=seed, name=name)
    (results / "splits").mkdir()
    pd.DataFrame(rows[:2]).to_csv(results / "splits" / "b1_s0.csv", index=False)
    run = results / "finetune" / "scratch" / "full" / "b1_s0"
    run.mkdir(parents=True)
    torch.manual_seed(0)
    net = build_segmentation_net(TINY_NET)
    torch.save({"config": TINY_NET, "state_dict": net.state_dict(), "normalize": "percentile"}, run / "model.pt")
    (run / "train_log.csv").write_text("step,loss\n0,1.0\n")
    write_zarr_volume(brain, rng.gamma(2.0, 100.0, size=(40, 44, 36)).astype(np.uint16), spacing=(4.0, 1.6, 1.6))


def test_slurm_profile_submits_gpu_and_cpu_rules_correctly(tmp_path):
    from selma3d.data.synth import volume_names

    results, state, brain = tmp_path / "results", tmp_path / "slurm", tmp_path / "brain.ome.zarr"
    state.mkdir()
    install_fakes(tmp_path / "bin")
    prefill(results, volume_names({}), brain)
    config = {
        "results_dir": str(results),
        "model": TINY_NET,
        "pretrain": {"strategies": ["mae"], "steps": 2, "num_workers": 0, "checkpoint_every": 1,
                     "mae": {**TINY_NET, "batch_size": 2, "warmup_steps": 1}},
        "finetune": {"strategies": ["scratch"]},
        "segment": {"volumes": {"brain": str(brain)}, "runs": ["scratch/full/b1_s0"], "block": 32, "batch": 2,
                    "levels": 1},
        "resources": {"gpu_rule": {"cpus_per_gpu": 4, "mem_mb": 16000, "runtime": 60, "infer_runtime": 30}},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    targets = [results / "pretrain" / "mae" / "encoder.pt", results / "splits" / "b3_s0.csv",
               results / "segment" / "scratch" / "full" / "b1_s0" / "brain.ome.zarr"]
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}",
           "FAKE_SLURM_DIR": str(state), "SELMA3D_DEVICE": "cpu", "OMP_NUM_THREADS": "1"}
    env.pop("SLURM_JOB_ID", None)
    res = subprocess.run(
        [sys.executable, "-m", "snakemake", *map(str, targets), "--profile", "profiles/slurm", "--configfile",
         str(tmp_path / "config.yaml"), "--nolock", "--latency-wait", "1", "--retries", "0",
         "--slurm-init-seconds-before-status-checks", "1", "--seconds-between-status-checks", "1",
         "--slurm-logdir", str(tmp_path / "slurm_logs"), "--slurm-keep-successful-logs"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    logs = "\n".join(p.read_text() for p in (tmp_path / "slurm_logs").rglob("*.log"))
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:] + logs[-4000:]
    for t in targets:
        assert t.exists(), t

    calls = [json.loads(line) for line in (state / "calls.jsonl").read_text().splitlines()]
    sbatch = {}
    for c in calls:
        if c["prog"] == "sbatch":
            argv = c["argv"]
            rule = argv[argv.index("--comment") + 1].split("_wildcards_")[0].removeprefix("rule_")
            sbatch[rule] = " ".join(shlex.quote(a) for a in argv if not a.startswith("--wrap="))
    assert set(sbatch) == {"pretrain", "split", "segment_volume"}, sbatch
    for rule in ("pretrain", "segment_volume"):
        cmd = sbatch[rule]
        assert "--gpus=1" in cmd and "-p gpu" in cmd and "--cpus-per-gpu=4" in cmd, cmd
        assert "--mem 16000" in cmd and "-A your_account" in cmd and "--requeue" in cmd, cmd
    assert "-t 60" in sbatch["pretrain"] and "-t 30" in sbatch["segment_volume"]
    assert "--ntasks-per-gpu" not in sbatch["pretrain"]  # one task: torchrun spreads over the GPUs
    assert "--ntasks-per-gpu=1" in sbatch["segment_volume"]
    cpu = sbatch["split"]
    assert not any(flag in cpu for flag in ("--gpus", "--gres", "--cpus-per-gpu", "--ntasks-per-gpu")), cpu
    assert "-p cpu" in cpu and "--mem 8000" in cpu and "-t 240" in cpu and "--cpus-per-task=1" in cpu, cpu
    # the job steps: srun with the GPU for GPU rules only
    sruns = [" ".join(c["argv"][:6]) for c in calls if c["prog"] == "srun"]
    assert len(sruns) == 3 and sum("--gpus=1" in s for s in sruns) == 2, sruns
    assert any(c["prog"] == "sacct" for c in calls), "status was never polled"
