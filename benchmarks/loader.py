"""Patches/s that one CPU worker delivers to pretraining and finetuning, stage by stage.

One process, one torch thread (what a ``DataLoader`` worker gets), 96³ patches:

* pretraining (``training.sampling.PatchSampleDataset`` + ``collate``): **read** a patch from a
  patch store written as patchify writes it (zarr v3, one zstd chunk per patch, uint16),
  **crop + normalise** (``random_crop``, percentile scaling, to a tensor), **collate**; then the
  **SSL views** the strategies draw on the batch (``augment.views.augment_view``, two views per
  sample, here on the CPU; in a GPU run they run on the GPU);
* finetuning (``training.recipe.AugmentedBatches``): **crop** from in-memory cases
  (``crop_case``), **augment** (``augment.pipeline``, nnU-Net's transforms: MONAI's intensity
  transforms, rotation/scaling as one shared-grid ``grid_sample`` pass), **collate**.

Each stage is timed with the library's path and with the reference path (the code before this
benchmark's fixes, kept callable below and, for the augmentation, in ``_augment_ref.py``: the
MONAI ``Compose`` with two ``Affine`` calls) in the same run, on the same items, and the outputs
are checked equal (augmentation: image max |diff| and label / ignore voxels differing, both 0
expected). Writes ``benchmarks/results/loader_<date>.{json,md}`` (``--no-save`` to skip).

    python benchmarks/loader.py            # 64 patches, batch 4
    python benchmarks/loader.py --quick    # 16 patches (smoke test)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from scipy import ndimage as ndi

from selma3d.augment.views import augment_view
from selma3d.io.omezarr import create_patch_array
from selma3d.preprocess import normalize as N
from selma3d.training import sampling as S

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _augment_ref import Augmenter as RefAugmenter  # noqa: E402

SIZE = (96, 96, 96)


# ----------------------------------------------------------------------------- data


def lsm_like(n: int, seed: int) -> np.ndarray:
    """(n, 96, 96, 96) uint16: smooth background, noise and bright blobs (light-sheet-like)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, *SIZE), np.uint16)
    for i in range(n):
        bg = ndi.gaussian_filter(rng.random(SIZE, dtype=np.float32), 4) * 800 + 100
        spots = ndi.gaussian_filter((rng.random(SIZE) < 2e-4).astype(np.float32), 2) * 4e5
        out[i] = np.clip(bg + spots + rng.normal(0, 30, SIZE), 0, 65535).astype(np.uint16)
    return out


def write_store(path: Path, patches: np.ndarray) -> None:
    arr = create_patch_array(path, len(patches), SIZE, patches.dtype)
    for i, p in enumerate(patches):
        arr[i] = p


# ------------------------------------------------------------------- reference paths


def ref_item(patch: np.ndarray, seed: int) -> torch.Tensor:
    """``PatchSampleDataset.__getitem__``'s crop + normalise before the fixes."""
    crop = S.random_crop(patch, SIZE, np.random.default_rng(seed))
    return torch.from_numpy(N.percentile_scale(crop)[None].copy())


# ------------------------------------------------------------------------------ runs


def clock(f, *a):
    t = time.perf_counter()
    out = f(*a)
    return out, time.perf_counter() - t


def pretrain_stages(store: Path, n: int, batch: int, seed: int) -> dict:
    import zarr

    arr = zarr.open_array(str(store), mode="r")
    rng = np.random.default_rng(seed)
    seeds = rng.integers(0, 2**31 - 1, n)
    t = {"read": 0.0, "crop_normalize": 0.0, "crop_normalize_ref": 0.0, "collate": 0.0, "views": 0.0}
    same, items = True, []
    for i in range(n):
        patch, dt = clock(lambda k=i % arr.shape[0]: np.asarray(arr[k]))
        t["read"] += dt
        x, dt = clock(S.sample_tensor, patch, SIZE, "percentile", int(seeds[i]))
        t["crop_normalize"] += dt
        x_ref, dt = clock(ref_item, patch, int(seeds[i]))
        t["crop_normalize_ref"] += dt
        same &= bool(torch.equal(x, x_ref))
        items.append((x, {"volume": "v"}))
    g = torch.Generator().manual_seed(seed)
    for b in range(0, n, batch):
        (xb, _), dt = clock(S.collate, items[b:b + batch])
        t["collate"] += dt
        _, dt = clock(lambda xb=xb: [augment_view(xb, SIZE, g) for _ in range(2)])
        t["views"] += dt
    return {"times_s": t, "same": same}


def finetune_stages(n: int, batch: int, seed: int) -> dict:
    from selma3d.training.recipe import AugmentedBatches

    rng = np.random.default_rng(seed)
    img = N.percentile_scale(lsm_like(1, seed + 1)[0]).astype(np.float32)
    img = np.pad(img, ((10, 10), (20, 20), (20, 20)), mode="reflect")
    lab = (ndi.gaussian_filter(rng.random(img.shape, dtype=np.float32), 3) > 0.56).astype(np.uint8)
    case = SimpleNamespace(image=img, label=lab, ignore=None, structure="vessel", category="contiguous_sparse",
                           spacing=(1.0, 1.0, 1.0))
    batches = AugmentedBatches([case], SIZE, batch, seed, 0.33, None)
    t = {"crop": 0.0, "augment": 0.0, "augment_ref": 0.0, "collate": 0.0}
    aug = batches._augmenter(case.spacing)
    ref = RefAugmenter(batches.augmentation, case.spacing)  # the path before the fixes
    diff, label_diff, ignore_diff = 0.0, 0, 0
    for step in range(n // batch):
        srng = S.step_rng(seed, step, stream=2)
        srng.integers(0, 1, size=batch)
        outs = []
        for _ in range(batch):
            (x, y, ign), dt = clock(S.crop_case, case, SIZE, srng, 0.33)
            t["crop"] += dt
            aug_seed = int(srng.integers(0, 2**31 - 1))
            args = np.ascontiguousarray(x), np.ascontiguousarray(y), np.ascontiguousarray(ign)
            out, dt = clock(aug.set_random_state(aug_seed), *args)
            t["augment"] += dt
            out_ref, dt = clock(ref.set_random_state(aug_seed), *args)
            t["augment_ref"] += dt
            diff = max(diff, float(np.abs(out[0] - out_ref[0]).max()))
            label_diff += int(np.count_nonzero(out[1] != out_ref[1]))
            ignore_diff += int(np.count_nonzero(out[2] != out_ref[2]))
            outs.append(out)
        _, dt = clock(lambda outs=outs: (np.stack([o[0] for o in outs])[:, None].astype(np.float32),
                                         np.stack([o[1] for o in outs])[:, None].astype(np.float32),
                                         np.stack([o[2] for o in outs])[:, None].astype(bool)))
        t["collate"] += dt
    return {"times_s": t, "image_max_abs_diff": diff, "label_voxels_differing": label_diff,
            "ignore_voxels_differing": ignore_diff,
            "label_voxels": n // batch * batch * int(np.prod(SIZE))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patches", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="16 patches")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)
    n = 16 if args.quick else args.patches
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as d:
        store = Path(d) / "patches.zarr"
        write_store(store, lsm_like(min(n, 16), args.seed))
        # more items than stored patches: cycle through the store (each read is a chunk read)
        pre = pretrain_stages(store, n, args.batch, args.seed)
    fine = finetune_stages(n, args.batch, args.seed)
    rows = report(pre, fine, n)
    if not args.no_save:
        save(rows, pre, fine, args, n)
    fine_ok = (fine["image_max_abs_diff"] <= 1e-5 and fine["label_voxels_differing"] == 0
               and fine["ignore_voxels_differing"] == 0)
    return 0 if pre["same"] and fine_ok else 1


def report(pre: dict, fine: dict, n: int) -> list[dict]:
    tp, tf = pre["times_s"], fine["times_s"]
    rows = []
    loader_new = tp["read"] + tp["crop_normalize"] + tp["collate"]
    loader_ref = tp["read"] + tp["crop_normalize_ref"] + tp["collate"]
    for name, new, ref in (
        ("pretrain: read (zarr chunk)", tp["read"], tp["read"]),
        ("pretrain: crop + normalise", tp["crop_normalize"], tp["crop_normalize_ref"]),
        ("pretrain: collate", tp["collate"], tp["collate"]),
        ("pretrain: loader total", loader_new, loader_ref),
        ("pretrain: SSL views x2 (CPU)", tp["views"], tp["views"]),
        ("pretrain: loader + views", loader_new + tp["views"], loader_ref + tp["views"]),
        ("finetune: crop", tf["crop"], tf["crop"]),
        ("finetune: augment", tf["augment"], tf["augment_ref"]),
        ("finetune: collate", tf["collate"], tf["collate"]),
        ("finetune: total", tf["crop"] + tf["augment"] + tf["collate"], tf["crop"] + tf["augment_ref"] + tf["collate"]),
    ):
        rows.append({"stage": name, "ms_per_patch": 1e3 * new / n, "ref_ms_per_patch": 1e3 * ref / n,
                     "patches_per_s": n / new, "ref_patches_per_s": n / ref, "ratio": ref / new})
    print(f"{'stage':<32} {'ms/patch':>9} {'ref ms':>9} {'patches/s':>10} {'ref p/s':>9} {'ratio':>6}")
    for r in rows:
        print(f"{r['stage']:<32} {r['ms_per_patch']:9.2f} {r['ref_ms_per_patch']:9.2f} {r['patches_per_s']:10.1f} "
              f"{r['ref_patches_per_s']:9.1f} {r['ratio']:5.2f}x")
    print(f"crop + normalise identical to the reference: {pre['same']}")
    print(f"finetune augmentation vs the reference: image max |diff| {fine['image_max_abs_diff']:.2e}, "
          f"label voxels differing {fine['label_voxels_differing']} of {fine['label_voxels']}, "
          f"ignore voxels differing {fine['ignore_voxels_differing']}")
    return rows


def save(rows: list[dict], pre: dict, fine: dict, args: argparse.Namespace, n: int) -> None:
    stamp = datetime.date.today().isoformat()
    from _results import machine as machine_name  # benchmarks/ is the script's folder

    machine = machine_name()
    lines = [f"# Data loader: 96³ patches/s per CPU worker ({stamp}, {machine})", "",
             (f"{n} patches, batch {args.batch}, one process with one torch thread; reference = the path before "
              f"this benchmark's fixes, same run, same items; pretraining samples identical: {pre['same']}; "
              f"finetuning augmentation (one shared grid_sample grid, plain tensors, fast reseeding; reference: "
              f"MONAI Compose with two float32 Affine calls) image max |diff| "
              f"{fine['image_max_abs_diff']:.2e}, label voxels differing {fine['label_voxels_differing']} of "
              f"{fine['label_voxels']}, ignore voxels differing {fine['ignore_voxels_differing']}."), "",
             "| stage | ms/patch | ref ms/patch | patches/s | ref patches/s | ratio |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['stage']} | {r['ms_per_patch']:.2f} | {r['ref_ms_per_patch']:.2f} | "
                     f"{r['patches_per_s']:.1f} | {r['ref_patches_per_s']:.1f} | {r['ratio']:.2f}x |")
    out = REPO / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"loader_{stamp}.md").write_text("\n".join(lines) + "\n")
    (out / f"loader_{stamp}.json").write_text(json.dumps(
        {"date": stamp, "machine": machine, "args": vars(args), "patches": n, "identical": pre["same"],
         "rows": rows, "pretrain_s": pre["times_s"], "finetune": fine}, indent=1))
    print(f"wrote benchmarks/results/loader_{stamp}.md and .json")


if __name__ == "__main__":
    sys.exit(main())
