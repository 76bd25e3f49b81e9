"""Test-patch inference (the ``infer`` rule's ``segment_case``) against the path it replaced.

Reference, measured in the same run on the same patches: what ``predict_probability`` did before
(MONAI ``sliding_window_inference`` under ``torch.no_grad``, window batch 4, reflect padding,
Gaussian blending), thresholded at 0.5. New: ``selma3d.inference.patches.probability`` and
``segment_case`` with the ``infer`` block's schema defaults (overlap set to ``--overlap``, no
test-time mirroring). Reference and new alternate patch by patch, so load from other work hits
both alike; reported: seconds per patch, the ratio, max |probability difference| and whether the
binary masks are identical. Then the cost of test-time mirroring (8 flips) on one patch, and
with ``--sweep ROI:OVERLAP ...`` other window grids on the same patches (the net is fully
convolutional: a larger window, or less overlap, runs fewer windows): seconds per patch, Dice of
the mask against the reference grid's mask and against the ground truth, so the cost of a
faster grid is measured, not assumed. Whether the goal can be met at equal output at all: the
work of one patch (torch's FLOP counter) against this machine's fp32 matrix-multiply rate at the
same thread count.

The patches are real: the c-Fos brain 753 images of ``config/manifests/real_selma.csv``.
``--model`` takes a finetuned ``model.pt`` (recommended: a random net's probabilities sit near
0.5, where float rounding flips voxels); without it, a seeded random half-width UNet.

    python benchmarks/patch_inference.py --model results/real_selma/finetune/scratch/full/ball_s0/model.pt \
        --sweep 32:0.5 48:0.25 64:0.25 100:0
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import load_average, machine, write_results


def reference_probability(net, image: np.ndarray, roi, device, overlap: float) -> np.ndarray:
    """The pre-change path: MONAI sliding window, batch 4, ``torch.no_grad``."""
    import torch
    from monai.inferers import sliding_window_inference

    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None].to(device)
    with torch.no_grad():
        logits = sliding_window_inference(x, roi, 4, net, overlap=overlap, mode="gaussian",
                                          padding_mode="reflect" if min(image.shape) > 1 else "constant")
    return torch.sigmoid(logits.float())[0, 0].cpu().numpy()


def matmul_gflops(threads: int, n: int = 1024, repeat: int = 5) -> float:
    """This machine's fp32 matrix-multiply rate at ``threads`` torch threads (GFLOP/s, best of
    ``repeat``): the practical ceiling of a convolution net's forward on the CPU."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def patch_gflop(net, norm: np.ndarray, roi, device, overlap: float, settings: dict) -> float:
    """Floating-point work (GFLOP, torch's FLOP counter: convolutions and matrix products) of
    one patch's sliding-window probability on the reference grid."""
    from torch.utils.flop_counter import FlopCounterMode

    from selma3d.inference.patches import probability

    with FlopCounterMode(display=False) as counter:
        probability(net, norm, roi, device, overlap, int(settings["sw_batch_size"]), settings["blend"])
    return counter.get_total_flops() / 1e9


def forward_variants(net, roi, batch: int, repeat: int = 8) -> dict:
    """Milliseconds per window of one batch of ``batch`` windows (best of ``repeat``, variants
    alternating): the eager net (what the pipeline runs), TorchScript traced and frozen, and the
    same with oneDNN graph fusion; max |logit difference| to eager. Measured, not adopted: the
    question is how much a compiled graph could buy at the same output."""
    import warnings

    import torch

    x = torch.randn(batch, 1, *roi, generator=torch.Generator().manual_seed(0))
    variants = {"eager": net}
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's warnings on shape checks (fixed window size)
        try:
            variants["frozen"] = torch.jit.freeze(torch.jit.trace(net, x))
            torch.jit.enable_onednn_fusion(True)
            variants["frozen_onednn"] = torch.jit.freeze(torch.jit.trace(net, x))
        except Exception as err:  # noqa: BLE001 - a net TorchScript cannot trace: eager only
            print(f"TorchScript variants skipped: {err}")
        ref = net(x)
        for f in variants.values():  # warm-up: oneDNN fuses on the first calls
            f(x), f(x)
        out = {k: {"max_abs_logit_diff": float((f(x) - ref).abs().max()), "ms_per_window": float("inf")}
               for k, f in variants.items()}
        for _ in range(repeat):
            for k, f in variants.items():
                t = time.perf_counter()
                f(x)
                out[k]["ms_per_window"] = min(out[k]["ms_per_window"], (time.perf_counter() - t) * 1000 / batch)
        torch.jit.enable_onednn_fusion(False)
    return out


def load_net(model: str | None, features, roi: int, device):
    import torch

    from selma3d.nets.models import build_segmentation_net
    from selma3d.training.finetune import load_model

    if model:
        net, payload = load_model(model, device)
        return net, payload, "finetuned model.pt (given with --model)"
    torch.manual_seed(0)
    cfg = {"backbone": "unet", "patch_size": [roi] * 3, "features": list(features)}
    net = build_segmentation_net(cfg).to(device).eval()
    return net, {"config": cfg, "normalize": "percentile"}, "random init (seed 0)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", default=str(REPO / "config" / "manifests" / "real_selma.csv"))
    p.add_argument("--cases", default="cfos_neuron_753_", help="case-name prefix of the patches (test split)")
    p.add_argument("--n", type=int, default=3, help="patches to time")
    p.add_argument("--model", help="finetuned model.pt (default: random half-width UNet)")
    p.add_argument("--features", type=int, nargs=6, default=[16, 16, 32, 64, 128, 16])
    p.add_argument("--roi", type=int, default=32)
    p.add_argument("--overlap", type=float, default=None, help="window overlap (default: infer.overlap's)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (Snakemake gives each job one per core)")
    p.add_argument("--no-tta", action="store_true", help="skip the test-time mirroring measurement")
    p.add_argument("--no-write", action="store_true", help="print only")
    p.add_argument("--sweep", nargs="*", default=[], metavar="ROI:OVERLAP",
                   help="other window grids to time on the same patches (e.g. 32:0.25 64:0.25 100:0)")
    args = p.parse_args(argv)
    try:
        sweep = [(int(r), float(o)) for r, o in (item.split(":") for item in args.sweep)]
    except ValueError:
        p.error(f"--sweep: expected ROI:OVERLAP items such as 64:0.25, found {args.sweep}")

    import torch

    from selma3d import io
    from selma3d.core.schema import schema_default
    from selma3d.data.manifest import read_manifest
    from selma3d.inference.patches import probability, segment_case
    from selma3d.evaluation.metrics import dice_2026 as dice
    from selma3d.inference.postprocess import apply_postprocess
    from selma3d.training.finetune import normalize_image

    if args.overlap is None:
        args.overlap = float(schema_default("infer.overlap"))
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    t0 = time.perf_counter()
    net, payload, model_kind = load_net(args.model, args.features, args.roi, device)
    load_s = time.perf_counter() - t0
    roi = tuple(int(r) for r in payload["config"]["patch_size"])
    settings = {**schema_default("infer"), "overlap": args.overlap, "mirror_axes": []}
    table = read_manifest(args.manifest)
    rows = table[(table.split == "test") & (table.role == "image") & table.case.str.startswith(args.cases)]
    rows = rows.sort_values("case").head(args.n)
    if rows.empty:
        raise SystemExit(f"no test images whose case starts with {args.cases!r} in the manifest")

    truth = {r.case: r.path for r in table[(table.split == "test") & (table.role == "label")].itertuples()}
    per, grids, first_norm = [], [], None
    for _, row in rows.iterrows():
        raw = np.asarray(io.read_volume(row.path).data, dtype=np.float32)
        norm = normalize_image(raw, payload["normalize"], payload.get("normalize_stats"))
        first_norm = norm if first_norm is None else first_norm
        t = time.perf_counter()
        ref = reference_probability(net, norm, roi, device, args.overlap)
        t_ref = time.perf_counter() - t
        t = time.perf_counter()
        new = probability(net, norm, roi, device, args.overlap, int(settings["sw_batch_size"]), settings["blend"])
        t_new = time.perf_counter() - t
        t = time.perf_counter()
        mask = segment_case(net, payload, raw, {**settings, "use_stored_postprocess": False})
        t_case = time.perf_counter() - t
        ref_mask = ref > float(settings["threshold"])
        per.append({"case": row.case, "shape": list(raw.shape), "reference_s": t_ref, "new_s": t_new,
                    "segment_case_s": t_case, "max_abs_prob_diff": float(np.abs(ref - new).max()),
                    "masks_identical": bool(np.array_equal(mask.astype(bool), ref_mask)),
                    "foreground_voxels": int(ref_mask.sum())})
        print(f"{row.case} {raw.shape}: reference {t_ref:.2f} s, new {t_new:.2f} s (segment_case {t_case:.2f} s), "
              f"max |dp| {per[-1]['max_abs_prob_diff']:.1e}, masks identical {per[-1]['masks_identical']}",
              flush=True)
        gt = np.asarray(io.read_volume(truth[row.case]).data) > 0 if row.case in truth else None
        stored = (payload.get("postprocess") or {}).get("values", {}).get(row.structure)
        for i, (size, overlap) in enumerate([(roi[0], args.overlap)] + sweep):
            grid_roi = tuple(min(size, n) if size > roi[0] else size for n in raw.shape)
            if i == 0:  # the reference grid: the probability timed above
                prob, t_grid = new, t_new
            else:
                t = time.perf_counter()
                prob = probability(net, norm, grid_roi, device, overlap, int(settings["sw_batch_size"]),
                                   settings["blend"])
                t_grid = time.perf_counter() - t
            m = prob > float(settings["threshold"])
            calibrated = None if stored is None or gt is None else dice(apply_postprocess(
                prob, stored["threshold"], stored["min_size"], stored.get("peak", 0.0)).astype(bool), gt)
            grids.append({"case": row.case, "roi": list(grid_roi), "overlap": overlap, "seconds": t_grid,
                          "dice_vs_reference": dice(m, ref_mask),
                          "dice_vs_truth": None if gt is None else dice(m, gt),
                          "dice_vs_truth_stored_postprocess": calibrated,
                          "stored_postprocess": stored and {k: stored.get(k, 0.0) for k in ("threshold", "min_size", "peak")}})

    # is the goal reachable at equal output? the work of one patch against what this machine computes
    gflop = patch_gflop(net, first_norm, roi, device, args.overlap, settings)
    peak = matmul_gflops(args.threads)
    bound = {"gflop_per_patch": gflop, "matmul_gflops": peak,
             "achieved_gflops": gflop / float(np.mean([r["new_s"] for r in per])),
             "gflops_needed_for_3s": gflop / 3.0, "seconds_at_matmul_rate": gflop / peak}
    print(f"work per patch {gflop:.0f} GFLOP: {bound['achieved_gflops']:.0f} GFLOP/s achieved; 3 s/patch needs "
          f"{bound['gflops_needed_for_3s']:.0f} GFLOP/s; fp32 matmul at {args.threads} thread(s) reaches {peak:.0f} "
          f"GFLOP/s ({bound['seconds_at_matmul_rate']:.1f} s/patch at that rate)", flush=True)

    forward = forward_variants(net, roi, int(settings["sw_batch_size"]))
    print("forward per window: " + ", ".join(f"{k} {v['ms_per_window']:.1f} ms (max |dlogit| "
                                              f"{v['max_abs_logit_diff']:.1e})" for k, v in forward.items()),
          flush=True)

    tta = None
    if not args.no_tta:
        row = rows.iloc[0]
        raw = np.asarray(io.read_volume(row.path).data, dtype=np.float32)
        t = time.perf_counter()
        segment_case(net, payload, raw, {**settings, "mirror_axes": [0, 1, 2], "use_stored_postprocess": False})
        tta = {"case": row.case, "seconds": time.perf_counter() - t, "flips": 8}
        print(f"{row.case} with test-time mirroring (8 flips): {tta['seconds']:.2f} s", flush=True)

    ref_s = float(np.mean([r["reference_s"] for r in per]))
    new_s = float(np.mean([r["new_s"] for r in per]))
    case_s = float(np.mean([r["segment_case_s"] for r in per]))
    ok = all(r["masks_identical"] for r in per) and max(r["max_abs_prob_diff"] for r in per) < 1e-4
    where = machine(str(device), args.threads)
    load = load_average()
    lines = [f"# Test-patch inference: segment_case vs the MONAI reference ({time.strftime('%Y-%m-%d')}, {where})",
             "",
             (f"model: {model_kind}, roi {roi}, overlap {args.overlap}, window batch reference 4 / new "
              f"{settings['sw_batch_size']}, {args.threads} torch thread(s); load average during the run {load}; "
              f"model load {load_s:.2f} s"), "",
             "| case | shape | reference s | new s | segment_case s | ratio | max abs prob diff | masks identical |",
             "|---|---|---|---|---|---|---|---|"]
    for r in per:
        lines.append(f"| {r['case']} | {'x'.join(map(str, r['shape']))} | {r['reference_s']:.2f} | {r['new_s']:.2f} | "
                     f"{r['segment_case_s']:.2f} | {r['reference_s'] / r['new_s']:.2f}x | "
                     f"{r['max_abs_prob_diff']:.1e} | {r['masks_identical']} |")
    lines += ["", (f"mean per patch: reference {ref_s:.2f} s, new {new_s:.2f} s (segment_case with post-processing "
                   f"{case_s:.2f} s); speed ratio reference / new = {ref_s / new_s:.2f}x; equal output: "
                   f"{'OK' if ok else 'FAIL'}")]
    lines.append(f"work per patch on this grid: {bound['gflop_per_patch']:.0f} GFLOP (torch's FLOP counter); achieved "
                 f"{bound['achieved_gflops']:.0f} GFLOP/s; 3 s/patch at equal output needs "
                 f"{bound['gflops_needed_for_3s']:.0f} GFLOP/s, while fp32 matrix multiplication on "
                 f"{args.threads} thread(s) of this machine reaches {bound['matmul_gflops']:.0f} GFLOP/s "
                 f"(= {bound['seconds_at_matmul_rate']:.1f} s/patch if every FLOP ran at that rate)")
    eager_ms = forward["eager"]["ms_per_window"]
    lines.append("forward pass per window (batch of " + str(settings["sw_batch_size"]) + ", best of 8, alternating): "
                 + "; ".join(f"{k} {v['ms_per_window']:.1f} ms ({eager_ms / v['ms_per_window']:.2f}x eager, max "
                             f"|logit diff| {v['max_abs_logit_diff']:.1e})" for k, v in forward.items())
                 + " — TorchScript variants measured, not used by the pipeline")
    if tta:
        lines.append(f"test-time mirroring (8 flips) on {tta['case']}: {tta['seconds']:.2f} s per patch "
                     f"({tta['seconds'] / case_s:.1f}x the unmirrored segment_case)")
    if sweep:
        frame = pd.DataFrame(grids)
        frame["grid"] = frame.apply(lambda r: f"{'x'.join(map(str, r.roi))}:{r.overlap:g}", axis=1)
        summary = frame.groupby("grid", sort=False).agg(seconds=("seconds", "mean"),
                                                        vs_ref=("dice_vs_reference", "mean"),
                                                        vs_truth=("dice_vs_truth", "mean"),
                                                        vs_truth_pp=("dice_vs_truth_stored_postprocess", "mean"))
        base = summary.iloc[0]
        pp = next((g["stored_postprocess"] for g in grids if g["stored_postprocess"]), None)
        pp_text = (f"the model's stored post-processing (threshold {pp['threshold']}, min size {pp['min_size']}, "
                   "calibrated on the reference grid)") if pp else "no stored post-processing"
        lines += ["", f"window grids on the same {len(per)} patches (first row: the reference grid; seconds: the "
                      f"probability only; Dice in % of the mask at threshold {settings['threshold']} against the "
                      f"reference grid's mask and against the ground truth, and with {pp_text} against the "
                      "ground truth; a grid's own calibration is not redone here):", "",
                  "| roi:overlap | s/patch | speed-up | Dice vs reference mask | Dice vs truth | "
                  "Dice vs truth, stored post-processing |", "|---|---|---|---|---|---|"]

        def pct(v):
            return "–" if v != v or v is None else f"{100 * v:.1f}"

        for grid, r in summary.iterrows():
            lines.append(f"| {grid} | {r.seconds:.2f} | {base.seconds / r.seconds:.2f}x | {pct(r.vs_ref)} | "
                         f"{pct(r.vs_truth)} | {pct(r.vs_truth_pp)} |")
    print("\n".join(lines))
    if not args.no_write:
        write_results("patch_inference", {
            "machine": where, "load_average": load, "model": model_kind, "roi": list(roi), "overlap": args.overlap,
            "threads": args.threads, "sw_batch_size": {"reference": 4, "new": int(settings["sw_batch_size"])},
            "model_load_s": load_s, "patches": per, "reference_s_per_patch": ref_s, "new_s_per_patch": new_s,
            "segment_case_s_per_patch": case_s, "ratio": ref_s / new_s, "equal_output": ok, "tta": tta,
            "compute_bound": bound, "forward_variants": forward,
            "grids": grids}, lines)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
