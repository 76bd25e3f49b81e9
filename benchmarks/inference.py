"""Whole-volume inference: block-wise ``selma3d.inference.volume`` against MONAI's in-memory sliding window.

1. A volume both can hold: MONAI ``sliding_window_inference`` on the whole array (the naive
   path: read all, normalise, infer, hold input, output and count map in memory) and
   ``predict_volume`` streaming from a zarr store to an OME-Zarr. Each runs in its own child
   process, the two alternating ``--repeats`` times (the best time of each counts, so load from
   other work hits both alike); reported: max |probability difference|, voxels/s, windows run
   and peak memory (ru_maxrss of the child; GPU peak on CUDA), and the ratios.
2. A volume ``--large-factor`` times bigger, run block-wise only, beside what the naive path
   would need for it (its measured bytes per voxel above the import baseline, times the voxels).

    python benchmarks/inference.py                       # CPU, small sizes
    python benchmarks/inference.py --shape 256 512 512 --roi 96 --features 32 32 64 128 256 32

Writes ``benchmarks/results/inference_<date>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import load_average, machine, write_results


def make_volume(path: Path, shape, seed: int = 0) -> None:
    """A light-sheet-like uint16 volume (gamma background, bright blobs) as OME-Zarr, slab by slab."""
    from selma3d.io.omezarr import create_ome_zarr

    rng = np.random.default_rng(seed)
    (arr,) = create_ome_zarr(path, [shape], np.uint16, (64, 128, 128), [(4.0, 1.6, 1.6)])
    for z0 in range(0, shape[0], 64):
        z1 = min(shape[0], z0 + 64)
        slab = rng.gamma(2.0, 60.0, size=(z1 - z0, *shape[1:])).astype(np.float32)
        for _ in range(max(1, slab.size // 200_000)):
            c = [int(rng.integers(0, s)) for s in slab.shape]
            slab[max(0, c[0] - 3):c[0] + 3, max(0, c[1] - 4):c[1] + 4, max(0, c[2] - 4):c[2] + 4] += 800
        arr[z0:z1] = slab.astype(np.uint16)


def build_net(features, roi, seed: int = 0):
    import torch

    from selma3d.nets.models import build_segmentation_net

    torch.manual_seed(seed)
    return build_segmentation_net({"backbone": "unet", "patch_size": [roi] * 3, "features": list(features)}).eval()


def child(mode: str, args: dict) -> dict:
    """Runs in a fresh process; returns timings and peak memory."""
    import torch

    from selma3d.inference.volume import predict_volume, volume_normalizer
    from selma3d.io.omezarr import ZarrReader
    from selma3d.training.runtime import autocast, pick_device

    torch.set_num_threads(args["threads"])
    device = pick_device()
    net = build_net(args["features"], args["roi"]).to(device)
    forward = net.forward
    windows = [0]

    def counted(x):
        windows[0] += x.shape[0]
        return forward(x)

    net.forward = counted
    roi = (args["roi"],) * 3
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    if mode == "baseline":
        pass
    elif mode == "naive":
        from monai.inferers import sliding_window_inference

        reader = ZarrReader(args["volume"])
        data = reader.read_slab(0, reader.shape[0])
        norm = volume_normalizer(reader, "percentile")
        x = torch.from_numpy(norm(data))[None, None].to(device)
        with torch.inference_mode(), autocast(device, "auto"):
            logits = sliding_window_inference(x, roi, args["batch"], net, overlap=args["overlap"], mode="gaussian")
        prob = torch.sigmoid(logits.float())[0, 0].cpu().numpy()
        np.save(args["out"], prob.astype(np.float16))
    else:
        predict_volume(net, args["volume"], args["out"], roi, overlap=args["overlap"], block=args["block"],
                       batch=args["batch"], probability=True, prob_dtype="float16", levels=1, device=device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": dt, "maxrss_mib": peak_kib / 1024, "before_mib": base / 1024,
            "gpu_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan"),
            "device": str(device), "windows": windows[0]}


def run_child(mode: str, args: dict) -> dict:
    res = subprocess.run([sys.executable, __file__, "--child", mode, json.dumps(args)], capture_output=True,
                         text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{mode} child failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", type=int, nargs=3, default=[96, 160, 160])
    p.add_argument("--roi", type=int, default=32)
    p.add_argument("--features", type=int, nargs=6, default=[8, 8, 16, 32, 64, 8])
    p.add_argument("--overlap", type=float, default=0.25)
    p.add_argument("--block", type=int, default=96)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--large-factor", type=int, default=4, help="voxels of the block-wise-only volume, x small")
    p.add_argument("--repeats", type=int, default=2, help="alternating runs of each method on the small volume")
    p.add_argument("--no-write", action="store_true", help="print only")
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], json.loads(args.child[1]))))
        return 0

    from selma3d.io.omezarr import ZarrReader

    with tempfile.TemporaryDirectory(prefix="selma3d_bench_") as tmp:
        tmp = Path(tmp)
        shape = tuple(args.shape)
        make_volume(tmp / "small.ome.zarr", shape)
        common = {"roi": args.roi, "features": args.features, "overlap": args.overlap, "block": args.block,
                  "batch": args.batch, "threads": args.threads}
        base = run_child("baseline", {**common, "volume": str(tmp / "small.ome.zarr"), "out": ""})
        runs = {"naive": [], "blockwise": []}
        for _ in range(args.repeats):
            runs["naive"].append(run_child("naive", {**common, "volume": str(tmp / "small.ome.zarr"),
                                                     "out": str(tmp / "naive.npy")}))
            runs["blockwise"].append(run_child("blockwise", {**common, "volume": str(tmp / "small.ome.zarr"),
                                                             "out": str(tmp / "ours.ome.zarr")}))
        naive = min(runs["naive"], key=lambda r: r["seconds"])
        ours = min(runs["blockwise"], key=lambda r: r["seconds"])
        a = np.load(tmp / "naive.npy").astype(np.float32)
        b = ZarrReader(tmp / "ours.ome.zarr").read_slab(0, shape[0]).astype(np.float32)
        diff = float(np.abs(a - b).max())
        n = int(np.prod(shape))

        big = (shape[0] * args.large_factor, shape[1], shape[2])
        make_volume(tmp / "large.ome.zarr", big, seed=1)
        large = run_child("blockwise", {**common, "volume": str(tmp / "large.ome.zarr"),
                                        "out": str(tmp / "large_out.ome.zarr")})

    def extra(r):
        return r["maxrss_mib"] - base["maxrss_mib"]

    where = machine(ours["device"], args.threads)
    load = load_average()
    ratio = naive["seconds"] / ours["seconds"]
    lines = [(f"# Whole-volume prediction: block-wise vs MONAI sliding_window_inference "
              f"({time.strftime('%Y-%m-%d')}, {where})"), "",
             (f"roi {args.roi}^3, UNet features {args.features}, overlap {args.overlap}, block {args.block}, "
              f"window batch {args.batch}, {args.threads} threads, best of {args.repeats} alternating runs; "
              f"process baseline {base['maxrss_mib']:.0f} MiB; load average during the run {load}"), "",
             ("| volume | method | voxels | windows run | seconds | voxels/s | peak RSS MiB | above baseline MiB | "
              "GPU peak MiB |"),
             "|---|---|---|---|---|---|---|---|---|"]
    for vol, r, nv in ((shape, naive, n), (shape, ours, n), (big, large, int(np.prod(big)))):
        method = "MONAI in memory" if r is naive else "selma3d block-wise"
        lines.append(f"| {'x'.join(map(str, vol))} | {method} | {nv:,} | {r['windows']} | {r['seconds']:.2f} | "
                     f"{nv / r['seconds']:.3g} | {r['maxrss_mib']:.0f} | {extra(r):.0f} | {r['gpu_peak_mib']:.0f} |")
    per_voxel = max(extra(naive), 1) * 2**20 / n
    need = per_voxel * np.prod(big) / 2**20
    lines += ["",
              (f"max |p_blockwise - p_monai| = {diff:.2e} (float16 storage; must be < 1e-3: "
               f"{'OK' if diff < 1e-3 else 'FAIL'})"),
              f"speed ratio block-wise / MONAI = {ratio:.2f}x (<1: slower)",
              ("all runs, seconds: MONAI " + ", ".join(f"{r['seconds']:.2f}" for r in runs["naive"])
               + "; block-wise " + ", ".join(f"{r['seconds']:.2f}" for r in runs["blockwise"])),
              (f"memory ratio (above baseline) MONAI / block-wise on the small volume = "
               f"{extra(naive) / max(extra(ours), 1):.2f}x"),
              (f"large volume: the in-memory path would need ~{need:.0f} MiB above baseline "
               f"({per_voxel:.1f} B/voxel); block-wise used {extra(large):.0f} MiB")]
    print("\n".join(lines))
    if not args.no_write:
        write_results("inference", {
            "machine": where, "load_average": load,
            "args": {k: v for k, v in vars(args).items() if k not in ("child", "no_write")},
            "small_shape": list(shape), "large_shape": list(big), "max_abs_prob_diff": diff, "ratio": ratio,
            "monai": naive, "blockwise": ours, "blockwise_large": large, "baseline": base, "runs": runs,
            "monai_bytes_per_voxel": per_voxel}, lines)
    return 0 if diff < 1e-3 else 1


if __name__ == "__main__":
    sys.exit(main())
