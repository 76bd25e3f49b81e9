"""Benchmark: the rules' preprocessing path (downsample -> patchify) against the previous
path (staged ingest -> downsample -> patchify), in the same run, on the same TIFF series.

Generates a synthetic whole-brain-like TIFF slice series (uint16, uncompressed: an ellipsoidal
"brain" of textured tissue with bright spots on a dim background; a few random base slices
tiled with shifts so generation is disk-bound), then runs each approach in its own child
process and reports wall time, GB/s of raw input, CPU seconds and peak RSS (``ru_maxrss`` of
the child):

* ``rules``: what ``workflow/rules/preprocess.smk`` runs, with the scripts' arguments: the
  pyramid straight from the TIFF slices (:func:`selma3d.preprocess.pyramid.downsample_volume`,
  defaults: exact integer block-mean kernel, 16 MiB blocks, zstd level 1), then
  :func:`selma3d.preprocess.patchify.patchify_volume`.
* ``staged`` (the reference: what the rules ran before): :func:`selma3d.preprocess.ingest.ingest_volume`
  (canonical full-resolution zarr) -> ``downsample_volume`` from that zarr with the separable
  float32 operators (``fast=False``), 128 MiB blocks and zstd level 3 -> patchify (zstd 3).
* ``fused`` / ``direct`` (optional, ``--kinds``): the previous fused ingest + pyramid and the
  previous direct-from-TIFF downsampling, with the previous settings.
* ``naive`` (optional, ``--naive-gib``): the whole stack in memory, ``skimage`` block mean,
  numpy patches (a volume the naive way can hold).

The rules' pyramid (every level) and patches are checked to equal the reference's bit for bit
before the outputs are deleted. Results go to ``benchmarks/results/preprocess_<date>.{json,md}``.

Usage: python benchmarks/preprocess.py [--size-gib 16] [--kinds rules,staged] [--workdir DIR]
The work folder is deleted afterwards unless --keep. Numbers are noisy on a shared machine;
the ratio compares runs of the same run.
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
KINDS = ["rules", "staged", "fused", "direct"]
REFERENCE = "staged"


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
    from selma3d.preprocess.blocks import DEFAULT_BLOCK_BYTES
    from selma3d.preprocess.ingest import ingest_volume
    from selma3d.preprocess.patchify import patchify_volume
    from selma3d.preprocess.pyramid import downsample_volume

    times = {}
    t = time.perf_counter()
    pyramid = out / "pyramid.ome.zarr"
    # the previous path's settings: float operators, 128 MiB blocks, zstd level 3
    previous = {"fast": False, "max_block_bytes": DEFAULT_BLOCK_BYTES, "clevel": 3}
    if kind == "rules":  # as workflow/scripts/downsample.py calls it
        downsample_volume(src, pyramid, target_spacing_um=TARGET_SPACING, spacing=SOURCE_SPACING, levels=3,
                          workers=workers, progress=False)
        times["downsample"] = time.perf_counter() - t
    elif kind == "fused":  # full-resolution copy and pyramid in one pass
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
                          spacing=SOURCE_SPACING, **previous)
        times["downsample"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    codec = {} if kind == "rules" else {"clevel": 3}
    df = patchify_volume(pyramid, out / "patches.zarr", out / "patches.csv", PATCH, level=0, min_foreground=0.1,
                         intensity_threshold=500, background_share=0.05, seed=0, progress=False, workers=workers,
                         **codec)
    times["patchify"] = time.perf_counter() - t2
    times["total"] = time.perf_counter() - t
    return {"times": times, "patches": int(len(df)), "background": int(df["background"].sum()),
            "peak_rss_gib": _rss_gib(), "cpu_s": _cpu_s()}


def same_outputs(a: Path, b: Path) -> bool:
    """Every pyramid level and the patch array of two streaming runs are equal."""
    import zarr

    from selma3d.io.omezarr import read_zarr_volume

    pa, pb = a / "pyramid.ome.zarr", b / "pyramid.ome.zarr"
    levels = len(list(zarr.open_group(str(pa), mode="r").array_keys()))
    for level in range(levels):
        if not np.array_equal(read_zarr_volume(pa, level).data, read_zarr_volume(pb, level).data):
            return False
    return bool(np.array_equal(zarr.open_array(str(a / "patches.zarr"), mode="r")[:],
                               zarr.open_array(str(b / "patches.zarr"), mode="r")[:]))


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
    """Run one approach in a fresh process (its own peak RSS); ``out`` is left for the caller."""
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, __file__, "--child", kind, "--src", str(src), "--out", str(out), "--workers", str(workers)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        return {"error": (res.stderr or res.stdout).strip().splitlines()[-1] if (res.stderr or res.stdout) else
                f"exit {res.returncode}", "returncode": res.returncode}
    result = json.loads(res.stdout.strip().splitlines()[-1])
    result["output_bytes"] = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    return result


def table(rows: list[dict]) -> list[str]:
    lines = ["| volume | approach | time s | GB/s raw | CPU s | peak RSS GiB | patches | stages (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        vol = f"{r['raw_bytes'] / GiB:.2f} GiB"
        if "error" in r:
            lines.append(f"| {vol} | {r['kind']} | failed: {r['error']} | | | | | |")
            continue
        t = r["times"]["total"]
        stages = " ".join(f"{k}={v:.1f}" for k, v in r["times"].items() if k != "total")
        lines.append(f"| {vol} | {r['kind']} | {t:.1f} | {r['raw_bytes'] / t / 1e9:.2f} | {r['cpu_s']:.1f} | "
                     f"{r['peak_rss_gib']:.2f} | {r['patches']} | {stages} |")
    return lines


def ratios(rows: list[dict]) -> list[str]:
    out = []
    for size in dict.fromkeys(r["size"] for r in rows):
        here = {r["kind"]: r for r in rows if r["size"] == size and "error" not in r}
        ref = here.get(REFERENCE)
        for kind, r in here.items():
            if ref is None or kind == REFERENCE:
                continue
            same = r.get("same_as_reference")
            out.append(f"{kind} vs {REFERENCE} ({r['raw_bytes'] / GiB:.2f} GiB): speed x"
                       f"{ref['times']['total'] / r['times']['total']:.2f}, CPU x{ref['cpu_s'] / r['cpu_s']:.2f}, "
                       f"peak RSS x{r['peak_rss_gib'] / ref['peak_rss_gib']:.2f}"
                       + ("" if same is None else f", outputs identical: {same}"))
    return out


def write_results(rows: list[dict], args) -> Path:
    import datetime
    import os
    import platform

    stamp = datetime.date.today().isoformat()
    machine = f"{platform.node() or 'unknown'} ({platform.machine()}, {os.cpu_count()} cores)"
    sizes = sorted({r["raw_bytes"] / GiB for r in rows})
    lines = [f"# Streaming preprocessing ({stamp}, {machine})", "",
             (f"Synthetic uint16 TIFF slice series ({args.plane}² planes, {', '.join(f'{g:.2f}' for g in sizes)} GiB; "
             "the issue's reference size is 16 GiB, smaller here so one run fits a ~10 min turn on the shared "
             "2-core machine). Source spacing "
             f"{SOURCE_SPACING} µm -> level 0 at {TARGET_SPACING} µm, 3 levels, {PATCH}³ patches, {args.workers} "
             "workers; slices in the page cache (just generated). `rules` is what the workflow runs now, "
             f"`{REFERENCE}` what it ran before (reference)."), ""] + table(rows) + [""] + ratios(rows)
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"preprocess_{stamp}.md").write_text("\n".join(lines) + "\n")
    payload = {"date": stamp, "machine": machine, "reference": REFERENCE,
               "args": {k: v for k, v in vars(args).items() if k in ("size_gib", "naive_gib", "plane", "workers", "kinds")},
               "rows": rows}
    (out / f"preprocess_{stamp}.json").write_text(json.dumps(payload, indent=1) + "\n")
    return out / f"preprocess_{stamp}.md"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-gib", type=float, default=16.0, help="size of the large synthetic volume")
    ap.add_argument("--naive-gib", type=float, default=0.0, help="size the naive approach is compared on (0: skip)")
    ap.add_argument("--plane", type=int, default=2048, help="slice edge in pixels")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the generated data")
    ap.add_argument("--kinds", default="rules,staged", help=f"streaming variants to run (of {','.join(KINDS)})")
    ap.add_argument("--no-results", action="store_true", help="print only; write nothing to benchmarks/results")
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

    kinds = [k for k in args.kinds.split(",") if k]
    if any(k not in KINDS for k in kinds):
        ap.error(f"--kinds: expected some of {KINDS}, found {args.kinds}")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="selma3d_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
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
            outs = {}
            for kind in kinds_here:
                outs[kind] = work / f"out_{label}_{kind}"
                r = run_child(kind, src, outs[kind], args.workers)
                r.update(kind=kind, size=label, raw_bytes=raw, shape=list(shape))
                rows.append(r)
                print("# " + json.dumps(r), flush=True)
            for r in rows:
                if r["size"] == label and r["kind"] not in (REFERENCE, "naive") and REFERENCE in outs \
                        and "error" not in r:
                    r["same_as_reference"] = same_outputs(outs[r["kind"]], outs[REFERENCE])
            for folder in outs.values():
                shutil.rmtree(folder, ignore_errors=True)
            shutil.rmtree(src, ignore_errors=True) if not args.keep else None
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    print()
    print("\n".join(table(rows)))
    print()
    print("\n".join(ratios(rows)))
    small = {r["kind"]: r for r in rows if r.get("size") == "small" and "error" not in r}
    if "naive" in small:
        for kind in KINDS:
            if kind in small:
                s, n = small[kind], small["naive"]
                print(f"ratio {kind}/naive on {s['raw_bytes'] / GiB:.1f} GiB: speed x"
                      f"{n['times']['total'] / s['times']['total']:.2f}, peak RSS x"
                      f"{s['peak_rss_gib'] / n['peak_rss_gib']:.2f}")
    if not args.no_results:
        print(f"wrote {write_results(rows, args).name} (and .json) in benchmarks/results")
    return 0


if __name__ == "__main__":
    sys.exit(main())
