"""Window batch size on CPU: torch's convolution kernel choice, and how ``window_streams`` splits a batch.

For a batch of one small-channel 3D input torch's CPU convolution leaves oneDNN for its im2col
kernel (``slow_conv3d``). This measures, for the c-Fos UNet at 32³ (``config/real_cfos.yaml``'s
net, random weights), the time a window at one thread for batches of 1..8, and a window batch of
2 on two threads run as two streams of one window (the split before) against one stream of two
(:class:`selma3d.training.finetune.ParallelWindows` now), best of ``--repeats``.

    python benchmarks/window_batch.py

Writes ``benchmarks/results/window_batch_<date>.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import load_average, machine, write_results


def best(fn, repeats: int) -> float:
    fn()  # oneDNN builds its kernels for a shape on the first call
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--features", type=int, nargs=6, default=[16, 16, 32, 64, 128, 16])
    p.add_argument("--roi", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-write", action="store_true", help="print only")
    args = p.parse_args(argv)

    import torch

    from selma3d.nets.models import build_segmentation_net
    from selma3d.training.finetune import ParallelWindows

    torch.manual_seed(0)
    net = build_segmentation_net({"backbone": "unet", "patch_size": [args.roi] * 3,
                                  "features": list(args.features)}).eval()
    torch.set_num_threads(1)
    per_window = {}
    for b in (1, 2, 4, 8):
        x = torch.randn(b, 1, *(args.roi,) * 3)
        with torch.inference_mode():
            per_window[b] = best(lambda: net(x), args.repeats) / b

    x = torch.randn(2, 1, *(args.roi,) * 3)
    pool = ThreadPoolExecutor(2)

    def one_each():  # the split before: each of two streams one window
        def run(t):
            with torch.no_grad():
                return net(t)
        return torch.cat(list(pool.map(run, torch.tensor_split(x, 2))))

    streams = ParallelWindows(net, 2)
    with torch.inference_mode():
        before = best(one_each, args.repeats)
        now = best(lambda: streams(x), args.repeats)
    streams.close()
    pool.shutdown()

    where = machine("cpu", 1)
    lines = [f"# Window batch size on CPU ({time.strftime('%Y-%m-%d')}, {where})", "",
             (f"UNet features {args.features} at {args.roi}^3, random weights, best of {args.repeats}; "
              f"load average {load_average()}"), "",
             "| windows per forward (1 thread) | ms per window | vs a batch of 4 |", "|---|---|---|"]
    lines += [f"| {b} | {t * 1e3:.1f} | {t / per_window[4]:.2f}x |" for b, t in per_window.items()]
    lines += ["", "| a window batch of 2 on 2 threads | ms |", "|---|---|",
              f"| two streams of one window (before) | {before * 1e3:.1f} |",
              f"| one stream of two windows (ParallelWindows now) | {now * 1e3:.1f} |",
              "", f"ratio before / now = {before / now:.2f}x"]
    print("\n".join(lines))
    if not args.no_write:
        write_results("window_batch", {"machine": where, "load_average": load_average(), "args": vars(args),
                                       "ms_per_window_one_thread": {str(b): t * 1e3 for b, t in per_window.items()},
                                       "batch2_two_streams_of_one_ms": before * 1e3,
                                       "batch2_one_stream_of_two_ms": now * 1e3, "ratio": before / now}, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
