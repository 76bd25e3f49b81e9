"""Per-case latency of the exported SELMA3D 2026 algorithm (invoke API) against the pipeline.

A model.pt with the demo's network (config/config.yaml: BasicUNet, features 16 16 32 64 128 16,
32³ windows; random weights: the time does not depend on them) is exported with the demo's
infer settings; the build's own ``app.py`` then serves a 100³ patch (a real c-Fos patch when
``../shared/data/real`` is there, else a synthetic one) ``--cases`` times through
``selma3d check-algorithm`` (HTTP round trip: read, segment, write). The reference is
:func:`selma3d.inference.patches.segment_case` on the array in this process (what the infer rule
runs per case). Reported: mean seconds per case and the ratio to the reference.

    python benchmarks/algorithm_latency.py                 # CPU (SELMA3D_DEVICE=cpu)
    python benchmarks/algorithm_latency.py --cases 5 --threads 2
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
REAL = REPO.parent / "shared" / "data" / "real" / "cfos_brain753" / "raw" / "patchvolume_753_1.nii.gz"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--features", type=int, nargs=6, default=[16, 16, 32, 64, 128, 16])
    parser.add_argument("--patch", type=int, default=32)
    parser.add_argument("--size", type=int, default=100)
    args = parser.parse_args()
    os.environ.setdefault("SELMA3D_DEVICE", "cpu")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from selma3d import io
    from selma3d.inference.check import check_algorithm
    from selma3d.inference.export import export_algorithm, infer_settings
    from selma3d.inference.patches import segment_case
    from selma3d.nets.models import build_segmentation_net
    from selma3d.training.finetune import load_model

    cfg = {"backbone": "unet", "patch_size": [args.patch] * 3, "features": args.features}
    settings = infer_settings(REPO / "config" / "config.yaml")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        run = tmp / "finetune" / "scratch" / "full" / "ball_s0"
        run.mkdir(parents=True)
        torch.manual_seed(0)
        torch.save({"config": cfg, "state_dict": build_segmentation_net(cfg).state_dict(), "mode": "full",
                    "normalize": "percentile"}, run / "model.pt")
        build = export_algorithm(run, 2026, tmp / "build", settings, allow_dirty=True)
        if REAL.exists() and args.size == 100:
            data, source = io.read_volume(REAL).data.astype(np.uint16), "real c-Fos patch 753_1"
        else:
            data = np.random.default_rng(0).gamma(2.0, 100.0, (args.size,) * 3).astype(np.uint16)
            source = "synthetic gamma noise"
        images = tmp / "images"
        images.mkdir()
        for i in range(args.cases):
            io.write_mha(images / f"cfos_neuron_case{i}.mha", data)

        net, payload = load_model(run / "model.pt", torch.device("cpu"))
        ref = []
        for _ in range(args.cases):
            t0 = time.perf_counter()
            segment_case(net, payload, data, settings, structure="cfos_neuron")
            ref.append(time.perf_counter() - t0)
        checks = check_algorithm(build, images, bad_inputs=False, timeout=1800)
    bad = [c.detail for c in checks if not c.ok]
    if bad:
        print("check failed:", bad)
        return 1
    rows = [("segment_case in process (reference)", float(np.mean(ref)), float(np.std(ref))),
            ("container /invoke round trip", float(np.mean([c.latency_s for c in checks])),
             float(np.std([c.latency_s for c in checks]))),
            ("  of which inside the container", float(np.mean([c.compute_s for c in checks])),
             float(np.std([c.compute_s for c in checks])))]
    print(f"SELMA3D 2026 algorithm, CPU, {torch.get_num_threads()} torch threads, {args.size}³ {source}, "
          f"UNet features {args.features}, {args.patch}³ windows, infer {settings}, {args.cases} cases")
    print(f"{'path':40s} {'s/case':>8s} {'std':>6s} {'ratio':>6s}")
    for name, mean, std in rows:
        print(f"{name:40s} {mean:8.2f} {std:6.2f} {mean / rows[0][1]:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
