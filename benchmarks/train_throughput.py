"""Pretraining throughput of every registered SSL strategy: samples/s, FLOPs/sample and MFU.

Each strategy is built from its team defaults (backbone, patch size), one training step
(strategy loss, backward, AdamW) is timed after a warm-up, on CPU in fp32 and, when CUDA is
present, in bf16 autocast. FLOPs per sample come from ``torch.utils.flop_counter`` over the
forward and backward of one step; MFU is achieved FLOP/s over the peak (``--peak-tflops`` or
detected: H100/H200 989, A100 312 TFLOP/s bf16 dense).

    python benchmarks/train_throughput.py                          # configured sizes
    python benchmarks/train_throughput.py --patch 64 --batch 1     # small CPU run
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from selma3d import strategies  # noqa: E402
from selma3d.training.pretrain import resolve_strategy_config  # noqa: E402
from selma3d.training.runtime import autocast  # noqa: E402

PEAKS_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A6000": 155e12}


def detect_peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAKS_BF16.items() if k in name), None)


def measure(name: str, device: torch.device, precision: str, patch: int | None, batch: int | None, steps: int,
            channels_last: bool) -> dict:
    cfg = resolve_strategy_config(name, {}, {})
    if patch:
        cfg["patch_size"] = [patch] * 3
    bs = batch or int(cfg.get("batch_size", 2))
    torch.manual_seed(0)
    model = strategies.build_strategy(name, cfg).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-4)
    x = torch.randn(bs, 1, *cfg["patch_size"], device=device).clamp_(-1, 1)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)

    def step(i: int) -> None:
        with autocast(device, precision):
            loss, _ = model.loss(x, i, {"structure": ["cfos"] * bs})
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        model.after_step(i)

    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step(0)
    flops = counter.get_total_flops() / bs
    step(1)  # warm-up (allocator, cudnn autotune)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for i in range(steps):
        step(2 + i)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    dt = time.perf_counter() - t0
    rate = steps * bs / dt
    mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {"strategy": name, "backbone": cfg.get("backbone"), "patch": "x".join(map(str, cfg["patch_size"])),
            "batch": bs, "device": device.type, "precision": "bf16" if device.type == "cuda" and precision != "fp32"
            else "fp32", "samples_per_s": rate, "gflop_per_sample": flops / 1e9,
            "achieved_tflops": flops * rate / 1e12, "peak_gib": mem}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--strategies", nargs="*", default=None, help="default: every registered strategy")
    p.add_argument("--patch", type=int, help="override every strategy's patch side (voxels)")
    p.add_argument("--batch", type=int, help="override every strategy's batch size")
    p.add_argument("--steps", type=int, default=3, help="timed steps per strategy")
    p.add_argument("--peak-tflops", type=float, help="device peak for MFU (default: detected on known GPUs)")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 0) or 0) or None)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--no-cpu", action="store_true", help="skip the CPU rows when CUDA is present")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = [] if (args.no_cpu and torch.cuda.is_available()) else [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    rows = []
    for device in devices:
        peak = args.peak_tflops * 1e12 if args.peak_tflops else detect_peak(device)
        for name in args.strategies or strategies.available():
            try:
                r = measure(name, device, "auto", args.patch, args.batch, args.steps, args.channels_last)
            except Exception as exc:  # one strategy failing must not hide the others' numbers
                print(f"{name} on {device}: {type(exc).__name__}: {exc}", file=sys.stderr)
                continue
            r["mfu"] = r["achieved_tflops"] * 1e12 / peak if peak else float("nan")
            rows.append(r)
            print(f"  measured {name} on {device}: {r['samples_per_s']:.2f} samples/s", file=sys.stderr)
    head = ["strategy", "backbone", "patch", "batch", "device", "precision", "samples/s", "GFLOP/sample",
            "TFLOP/s", "MFU", "peak GiB"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] == r["mfu"] else "n/a"
        mem = f"{r['peak_gib']:.2f}" if r["peak_gib"] == r["peak_gib"] else "n/a"
        print(f"| {r['strategy']} | {r['backbone']} | {r['patch']} | {r['batch']} | {r['device']} | "
              f"{r['precision']} | {r['samples_per_s']:.2f} | {r['gflop_per_sample']:.1f} | "
              f"{r['achieved_tflops']:.3f} | {mfu} | {mem} |")
    cpu = {r["strategy"]: r for r in rows if r["device"] == "cpu"}
    gpu = {r["strategy"]: r for r in rows if r["device"] == "cuda"}
    for name in sorted(set(cpu) & set(gpu)):
        print(f"{name}: CUDA bf16 / CPU fp32 speed-up {gpu[name]['samples_per_s'] / cpu[name]['samples_per_s']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
