"""Benchmark: streaming ingest -> downsample -> patchify against the naive in-memory script.

Generates a synthetic whole-brain-like TIFF slice series (uint16, uncompressed: an ellipsoidal
"brain" of textured tissue with bright spots on a dim background; a few random base slices
tiled with shifts so generation is disk-bound), then runs each approach in its own child
process and reports wall time, GB/s of raw input and peak RSS (``ru_maxrss`` of the child):

* ``staged``: :func:`selma3d.preprocess.ingest.ingest_volume` (canonical full-resolution zarr) ->
  :func:`selma3d.preprocess.pyramid.downsample_volume` (3-level OME-Zarr, read from that zarr) ->
  :func:`selma3d.preprocess.patchify.patchify_volume` (one patch store + index).
* ``fused``: ingest writes the full-resolution zarr and the pyramid in one pass
  (``ingest_volume(..., pyramid=...)``), then patchify.
* ``direct``: no full-resolution copy: downsample straight from the TIFFs, then patchify.
* ``naive``: read the whole stack into memory (tifffile), ``skimage`` block-mean rescale,
  cut and filter patches with numpy, save one ``.npy`` of patches. Run on a volume the
  naive way can hold (``--naive-gib``, default 2); the streaming pipeline runs on it too, so
  the ratio compares like with like.

Usage: python benchmarks/preprocess.py [--size-gib 16] [--naive-gib 2] [--workdir DIR]
The work folder is deleted afterwards unless --keep. Numbers are noisy on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

SOURCE_SPACING = (3.25, 1.625, 1.625)  # z, y, x µm (typical LSM: finer in-plane than in z)
TARGET_SPACING = (6.5, 6.5, 6.5)  # isotropic level 0: factors (2, 4, 4)
PATCH = 64
GiB = 1 << 30
KINDS = ["staged", "fused", "direct"]


def generate(folder: Path, size_gib: float, plane: int = 2048, seed: int = 0, workers: int = 2) -> tuple:
    """Write a (z, plane, plane) uint16 slice series of about ``size_gib``; returns the shape."""
    import tifffile

    rng = np.random.default_rng(seed)
    nz = max(8, int(round(size_gib * GiB / (plane * plane * 2))))
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.ogrid[:plane, :plane]
    r2 = (((yy - plane / 2) / (0.42 * plane)) ** 2 + ((xx - plane / 2) / (0.47 * plane)) ** 2).astype(np.float32)
    from scipy.ndimage import zoom

    bases = []
    for _ in range(4):
        background = rng.normal(110, 12, (plane, plane))
        regions = zoom(rng.random((16, 16)), plane / 16, order=1)[:plane, :plane]  # brain regions
        tissue = 200 + 900 * regions + rng.gamma(2.0, 60.0, (plane, plane))
        spots = rng.random((plane, plane)) < 0.002
        tissue[spots] += rng.uniform(1500, 20000, spots.sum())
        bases.append((background.clip(0, 65535).astype(np.uint16), tissue.clip(0, 65535).astype(np.uint16)))

    def write(z: int) -> None:
        bg, tis = bases[z % len(bases)]
        shift = (z * 7) % 64
        radius = 1.0 - ((z - nz / 2) / (0.55 * nz)) ** 2  # ellipsoid cross-section
        mask = r2 < max(radius, 0.0)
        img = np.where(mask, np.roll(tis, shift, axis=1), bg)
        tifffile.imwrite(folder / f"brain_z{z:05d}.tif", img, resolution=(1 / SOURCE_SPACING[2], 1 / SOURCE_SPACING[1]),
                         resolutionunit="NONE")

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(write, range(nz)))
    return (nz, plane, plane)


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GiB


def _cpu_s() -> float:
    """CPU seconds of this process, all threads: steadier than wall time on a shared machine."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def child_streaming(src: Path, out: Path, kind: str, workers: int) -> dict:
    from selma3d.preprocess.pyramid import downsample_volume
    from selma3d.preprocess.ingest import ingest_volume
    from selma3d.preprocess.patchify import patchify_volume

    times = {}
    t = time.perf_counter()
    pyramid = out / "pyramid.ome.zarr"
    if kind == "fused":  # full-resolution copy and pyramid in one pass
        ingest_volume(src, out / "full.zarr", spacing=SOURCE_SPACING, workers=workers, progress=False,
                      pyramid=pyramid, target_spacing_um=TARGET_SPACING, levels=3)
        times["ingest+downsample"] = time.perf_counter() - t
    else:
        source = src
        if kind == "staged":
            source = ingest_volume(src, out / "full.zarr", spacing=SOURCE_SPACING, workers=workers, progress=False)
            times["ingest"] = time.perf_counter() - t
        t1 = time.perf_counter()
        downsample_volume(source, pyramid, TARGET_SPACING, levels=3, workers=workers, progress=False,
                          spacing=SOURCE_SPACING)
        times["downsample"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    df = patchify_volume(pyramid, out / "patches.zarr", out / "patches.csv", PATCH, level=0, min_foreground=0.1,
                         intensity_threshold=500, background_share=0.05, seed=0, progress=False, workers=workers)
    times["patchify"] = time.perf_counter() - t2
    times["total"] = time.perf_counter() - t
    return {"times": times, "patches": int(len(df)), "background": int(df["background"].sum()),
            "peak_rss_gib": _rss_gib(), "cpu_s": _cpu_s()}


def child_naive(src: Path, out: Path) -> dict:
    import tifffile
    from skimage.transform import downscale_local_mean

    t = time.perf_counter()
    files = sorted(src.glob("*.tif"))
    vol = tifffile.imread(files)  # the whole stack in memory
    t_read = time.perf_counter()
    small = downscale_local_mean(vol, (2, 4, 4))  # float64
    del vol
    small = np.rint(small).astype(np.uint16)
    t_rescale = time.perf_counter()
    rng = np.random.default_rng(0)
    keep, rejected = [], []
    Z, Y, X = small.shape
    for z in range(0, Z - PATCH + 1, PATCH):
        for y in range(0, Y - PATCH + 1, PATCH):
            for x in range(0, X - PATCH + 1, PATCH):
                cube = small[z:z + PATCH, y:y + PATCH, x:x + PATCH]
                (keep if (cube > 500).mean() >= 0.1 else rejected).append(cube)
    n_bg = int(np.floor(0.05 * len(rejected) + 0.5))
    keep += [rejected[i] for i in sorted(rng.choice(len(rejected), n_bg, replace=False))] if n_bg else []
    np.save(out / "patches.npy", np.stack(keep))
    t_end = time.perf_counter()
    return {"times": {"read": t_read - t, "rescale": t_rescale - t_read, "cut": t_end - t_rescale, "total": t_end - t},
            "patches": len(keep), "background": n_bg, "peak_rss_gib": _rss_gib(), "cpu_s": _cpu_s()}


def run_child(kind: str, src: Path, out: Path, workers: int) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, __file__, "--child", kind, "--src", str(src), "--out", str(out), "--workers", str(workers)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        return {"error": (res.stderr or res.stdout).strip().splitlines()[-1] if (res.stderr or res.stdout) else
                f"exit {res.returncode}", "returncode": res.returncode}
    result = json.loads(res.stdout.strip().splitlines()[-1])
    result["output_bytes"] = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    shutil.rmtree(out, ignore_errors=True)
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-gib", type=float, default=16.0, help="size of the large synthetic volume")
    ap.add_argument("--naive-gib", type=float, default=2.0, help="size the naive approach is compared on (0: skip)")
    ap.add_argument("--plane", type=int, default=2048, help="slice edge in pixels")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the generated data")
    ap.add_argument("--kinds", default=",".join(KINDS), help=f"streaming variants to run (of {','.join(KINDS)})")
    ap.add_argument("--child", choices=KINDS + ["naive"], help=argparse.SUPPRESS)
    ap.add_argument("--src", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        if args.child == "naive":
            result = child_naive(args.src, args.out)
        else:
            result = child_streaming(args.src, args.out, args.child, args.workers)
        print(json.dumps(result))
        return 0

    work = args.workdir or Path(tempfile.mkdtemp(prefix="selma3d_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    kinds = [k for k in args.kinds.split(",") if k]
    if any(k not in KINDS for k in kinds):
        ap.error(f"--kinds: expected some of {KINDS}, found {args.kinds}")
    try:
        sizes = []
        if args.naive_gib > 0:
            sizes.append(("small", args.naive_gib, kinds + ["naive"]))
        if args.size_gib > 0 and args.size_gib != args.naive_gib:
            sizes.append(("large", args.size_gib, kinds))
        for label, gib, kinds_here in sizes:
            src = work / f"tiff_{label}"
            t = time.perf_counter()
            shape = generate(src, gib, args.plane, workers=args.workers)
            raw = sum(f.stat().st_size for f in src.glob("*.tif"))
            print(f"# generated {label}: {shape} uint16, {raw / GiB:.2f} GiB in {time.perf_counter() - t:.1f} s",
                  flush=True)
            for kind in kinds_here:
                r = run_child(kind, src, work / f"out_{label}_{kind}", args.workers)
                r.update(kind=kind, size=label, raw_bytes=raw, shape=list(shape))
                rows.append(r)
                print("# " + json.dumps(r), flush=True)
            shutil.rmtree(src, ignore_errors=True) if not args.keep else None
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    print()
    print(f"{'volume':>10} {'approach':>10} {'time s':>8} {'GB/s raw':>9} {'CPU s':>7} {'CPU s/GB':>9} "
          f"{'peak RSS GiB':>13} {'patches':>8}  stages (s)")
    for r in rows:
        vol = f"{r['raw_bytes'] / GiB:.1f} GiB"
        if "error" in r:
            print(f"{vol:>10} {r['kind']:>10}  failed: {r['error']}")
            continue
        t = r["times"]["total"]
        stages = " ".join(f"{k}={v:.1f}" for k, v in r["times"].items() if k != "total")
        cpu = r.get("cpu_s", float("nan"))
        print(f"{vol:>10} {r['kind']:>10} {t:8.1f} {r['raw_bytes'] / t / 1e9:9.2f} {cpu:7.1f} "
              f"{cpu / (r['raw_bytes'] / 1e9):9.2f} {r['peak_rss_gib']:13.2f} {r['patches']:8d}  {stages}")
    small = {r["kind"]: r for r in rows if r.get("size") == "small" and "error" not in r}
    if "naive" in small:
        print()
        for kind in KINDS:
            if kind in small:
                s, n = small[kind], small["naive"]
                print(f"ratio {kind}/naive on {s['raw_bytes'] / GiB:.1f} GiB: speed x"
                      f"{n['times']['total'] / s['times']['total']:.2f}, peak RSS x"
                      f"{s['peak_rss_gib'] / n['peak_rss_gib']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
