"""Time selma3d.evaluation.metrics against official-style references on synthetic c-Fos and vessel cases.

References, measured in the same run:
  2024 evaluator recipe — Dice on raw arrays, Betti numbers with scikit-image ``label`` +
  ``euler_number`` on padded masks (both masks), clDice with scikit-image ``skeletonize``;
  2026 evaluator recipe — Dice, panoptica 2.1.7 centerline Dice, panoptica PQ
  (connected components, naive IoU ≥ 0.3 matching).
Ours: each metric alone, and ``case_metrics`` (all eight columns, work shared), on one thread and
with ``threads=2`` (the two skeletons thinned in a background thread while the main thread labels,
counts Betti numbers and matches instances; the references have no parallel mode). The "full set"
ratio compares ``case_metrics`` with the sum of the references for dice + Betti + clDice + PQ.
The "skeleton" row times ``metrics.skeleton`` against scikit-image's ``skeletonize`` (what both
evaluators call) on the prediction and the ground truth, and checks the voxels are identical.
The thinning is compiled (numba) on first use: that one-off cost is measured apart, untimed in
the rows.
Every timed call runs ``--repeat`` times (default 3), ours and the references alike, and the
fastest run counts: a single run of the 512³ case moved by a factor of two with what ran before it.
Peak memory of ``case_metrics`` is the VmHWM of a fresh subprocess that loads the two masks and
scores them ("peak", inputs and interpreter included); "base" is the same process's VmHWM after
imports and loading, before scoring.

    python benchmarks/metrics.py            # 200³ c-Fos-like, 200³ vessel-like, 512³ vessel-like
    python benchmarks/metrics.py --quick    # 96³ cases only (smoke test)

Writes ``benchmarks/results/metrics_<date>.{json,md}`` (``--no-save`` to skip).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from selma3d.evaluation import metrics as M

REPO = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------- data


def _stamp(out: np.ndarray, c, r: float) -> None:
    sl = tuple(slice(max(0, int(c[i] - r - 1)), min(out.shape[i], int(c[i] + r + 2))) for i in range(3))
    if any(s.start >= s.stop for s in sl):
        return
    g = np.ogrid[sl]
    out[sl] |= sum((g[i] - c[i]) ** 2 for i in range(3)) <= r * r


def cfos_like(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sparse blobs (r 2–5 voxels); the prediction misses 20 %, shifts the rest, adds false positives."""
    rng = np.random.default_rng(seed)
    shape = (n, n, n)
    k = int(600 * (n / 200) ** 3)
    centers, radii = rng.uniform(0, n, (k, 3)), rng.uniform(2, 5, k)
    gt, pred = np.zeros(shape, bool), np.zeros(shape, bool)
    for c, r in zip(centers, radii):
        _stamp(gt, c, r)
        if rng.random() < 0.8:
            _stamp(pred, c + rng.normal(0, 1, 3), r * rng.uniform(0.7, 1.2))
    for _ in range(k // 4):
        _stamp(pred, rng.uniform(0, n, 3), rng.uniform(1, 4))
    return pred, gt


def vessel_like(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random-walk tubes (r ≈ 2.5); the prediction is thinner, drops 15 % of tubes, adds speckle."""
    rng = np.random.default_rng(seed)
    shape = (n, n, n)
    gt, pred = np.zeros(shape, bool), np.zeros(shape, bool)
    for _ in range(int(25 * (n / 200) ** 2)):
        p = rng.uniform(0, n, 3)
        v = rng.normal(size=3)
        keep = rng.random() > 0.15
        for _ in range(3 * n):
            v = v + 0.25 * rng.normal(size=3)
            v /= np.linalg.norm(v)
            p = p + v
            if np.any(p < 0) or np.any(p >= n):
                break
            _stamp(gt, p, 2.5)
            if keep:
                _stamp(pred, p + rng.normal(0, 0.3, 3), 2.0)
    pred |= rng.random(shape) < 2e-5
    return pred, gt


# ------------------------------------------------------------------------ references


def ref_dice(p, g):
    inter, s = np.sum(p * g), np.sum(p) + np.sum(g)
    return 1.0 if s == 0 else 2.0 * float(inter) / float(s)


def ref_betti(mask):
    from skimage.measure import euler_number, label

    padded = np.pad(mask.astype(np.uint8), 1)
    _, b0 = label(padded, return_num=True, connectivity=3)
    chi = euler_number(padded, connectivity=3)
    _, n_bg = label(1 - padded, return_num=True, connectivity=1)
    return b0, b0 + n_bg - 1 - chi


def ref_betti_errors(p, g):
    if not p.any() and not g.any():
        return 0, 0
    bp, bg = ref_betti(p), ref_betti(g)
    return abs(bp[0] - bg[0]), abs(bp[1] - bg[1])


def ref_cldice_2024(p, g):
    from skimage.morphology import skeletonize

    def score(v, s):
        return 0 if np.sum(s) == 0 else np.sum(v * s) / np.sum(s)

    a, b = score(p.astype(np.uint8), skeletonize(g)), score(g.astype(np.uint8), skeletonize(p))
    return float((2 * a * b + 1e-6) / (a + b + 1e-6))


def ref_cldice_2026(p, g):
    from panoptica.metrics.cldice import _compute_centerline_dice_coefficient

    with np.errstate(invalid="ignore", divide="ignore"):
        return float(_compute_centerline_dice_coefficient(g.astype(np.uint8), p.astype(np.uint8)))


_EV = None


def ref_pq(p, g):
    global _EV
    from panoptica import (
        ConnectedComponentsInstanceApproximator,
        InputType,
        NaiveThresholdMatching,
        Panoptica_Evaluator,
    )
    from panoptica.metrics import Metric

    if _EV is None:
        _EV = Panoptica_Evaluator(expected_input=InputType.SEMANTIC,
                                  instance_approximator=ConnectedComponentsInstanceApproximator(cca_backend=None),
                                  instance_matcher=NaiveThresholdMatching(matching_threshold=0.3),
                                  instance_metrics=[Metric.DSC], log_times=False, verbose=False)
    r = _EV.evaluate(p.astype(np.uint8), g.astype(np.uint8), verbose=False)["ungrouped"]
    return float(r.pq_dsc), float(r.rq)


# ------------------------------------------------------------------------------ runs


#: runs per timed call (``--repeat``): the fastest is reported, for ours and the references alike
REPEAT = 1


def timed(f, *a):
    """(result, fastest of REPEAT runs in seconds), garbage collected before each run so one
    call does not pay for what an earlier one left behind."""
    best = math.inf
    for _ in range(REPEAT):
        gc.collect()
        t = time.perf_counter()
        out = f(*a)
        best = min(best, time.perf_counter() - t)
    return out, best


def same(a, b) -> bool:
    if isinstance(a, tuple):
        return all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return abs(float(a) - float(b)) <= 1e-9


def peak_rss_mib(p: np.ndarray, g: np.ndarray, protocol: str) -> float:
    """(before, after) peak resident memory (MiB) of a fresh process that loads p, g and runs case_metrics."""
    with tempfile.TemporaryDirectory() as d:
        np.save(Path(d) / "p.npy", p)
        np.save(Path(d) / "g.npy", g)
        # VmHWM (not ru_maxrss, which Linux carries over from the forking parent) after exec
        code = (
            "import numpy as np, sys\n"
            "def hwm():\n"
            "    for line in open('/proc/self/status'):\n"
            "        if line.startswith('VmHWM:'):\n"
            "            return int(line.split()[1])\n"
            "from selma3d.evaluation.metrics import case_metrics\n"
            f"p = np.load({str(Path(d) / 'p.npy')!r}); g = np.load({str(Path(d) / 'g.npy')!r})\n"
            "base = hwm()\n"
            f"case_metrics(p, g, {protocol!r})\n"
            "print(base, hwm())\n"
        )
        out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    base, peak = (int(v) / 1024.0 for v in out.stdout.strip().splitlines()[-1].split())
    return base, peak


def bench_case(name: str, p: np.ndarray, g: np.ndarray, with_memory: bool) -> list[dict]:
    from skimage.morphology import skeletonize

    rows = []
    print(f"\n== {name}: shape {p.shape}, fg pred {p.mean():.3%}, fg gt {g.mean():.3%}", flush=True)
    (sp, sg), t_sk = timed(lambda: (M.skeleton(p), M.skeleton(g)))
    (rp, rg), t_sk_ref = timed(lambda: (skeletonize(p), skeletonize(g)))
    rows.append({"case": name, "protocol": "both", "metric": "skeleton (P and G)", "ours_s": t_sk,
                 "ref_s": t_sk_ref, "same": bool(np.array_equal(sp, rp) and np.array_equal(sg, rg))})
    _print_row(rows[-1])
    for protocol in M.PROTOCOLS:
        ours, t_ours = {}, {}
        ref, t_ref = {}, {}
        ours["dice"], t_ours["dice"] = timed(M.dice_2026 if protocol == "selma3d2026" else M.dice_2024, p, g)
        ref["dice"], t_ref["dice"] = timed(ref_dice, p, g)
        ours["betti"], t_ours["betti"] = timed(M.betti_errors, p, g)
        ref["betti"], t_ref["betti"] = timed(ref_betti_errors, p, g)
        f_cl = M.cldice_2024 if protocol == "selma3d2024" else M.cldice_2026
        ours["cldice"], t_ours["cldice"] = timed(f_cl, p, g)
        ref["cldice"], t_ref["cldice"] = timed(ref_cldice_2024 if protocol == "selma3d2024" else ref_cldice_2026, p, g)
        s, t_ours["pq"] = timed(M.instance_scores, p, g)
        ours["pq"] = (float(s.pq), float(s.rq))
        ref["pq"], t_ref["pq"] = timed(ref_pq, p, g)
        full, t_full = timed(M.case_metrics, p, g, protocol)
        full_vals = {"dice": full["dice"], "betti": (full["betti0_error"], full["betti1_error"]),
                     "cldice": full["cldice"], "pq": (full["pq"], full["instance_f1"])}
        for m in ("dice", "betti", "cldice", "pq"):
            rows.append({"case": name, "protocol": protocol, "metric": m, "ours_s": t_ours[m], "ref_s": t_ref[m],
                         "same": same(ours[m], ref[m]) and same(full_vals[m], ref[m])})
        ref_total = sum(t_ref.values())
        base, rss = peak_rss_mib(p, g, protocol) if with_memory else (math.nan, math.nan)
        rows.append({"case": name, "protocol": protocol, "metric": "FULL case_metrics", "ours_s": t_full,
                     "ref_s": ref_total, "same": all(r["same"] for r in rows[-4:]), "peak_mib": rss,
                     "base_mib": base})
        full2, t_full2 = timed(lambda: M.case_metrics(p, g, protocol, threads=2))
        rows.append({"case": name, "protocol": protocol, "metric": "FULL case_metrics, 2 threads", "ours_s": t_full2,
                     "ref_s": ref_total, "same": rows[-1]["same"] and all(same(full[k], full2[k]) for k in full)})
        for r in rows[-6:]:
            _print_row(r)
    return rows


def _print_row(r: dict) -> None:
    ratio = r["ref_s"] / r["ours_s"] if r["ours_s"] > 0 else math.inf
    mem = (f"{r['peak_mib']:9.0f} {r['base_mib']:9.0f}" if not math.isnan(r.get("peak_mib", math.nan))
           else " " * 19)
    print(f"{r['case']:<16} {r['protocol']:<12} {r['metric']:<28} {r['ours_s']:9.3f} {r['ref_s']:9.3f} "
          f"{ratio:7.1f}x {'yes' if r['same'] else 'NO':>5} {mem}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="96³ cases only")
    ap.add_argument("--no-large", action="store_true", help="skip the 512³ case")
    ap.add_argument("--no-save", action="store_true", help="do not write benchmarks/results/metrics_<date>.*")
    ap.add_argument("--repeat", type=int, default=3,
                    help="runs per timed call, ours and the references alike; the fastest is reported (default 3)")
    args = ap.parse_args(argv)
    global REPEAT
    REPEAT = max(1, args.repeat)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    n = 96 if args.quick else 200
    cases = [(f"cfos_{n}", *cfos_like(n, 0)), (f"vessel_{n}", *vessel_like(n, 1))]
    if not (args.quick or args.no_large):
        cases.append(("vessel_512", *vessel_like(512, 2)))
    print(f"{'case':<16} {'protocol':<12} {'metric':<28} {'ours [s]':>9} {'ref [s]':>9} {'ratio':>8} "
          f"{'same':>5} {'peak MiB':>9} {'base MiB':>9}")
    # panoptica's first call pays for imports and its citation banner: warm it up untimed
    z = np.zeros((8, 8, 8), bool)
    z[2:4, 2:4, 2:4] = True
    ref_pq(z, z)
    ref_cldice_2024(z, z)
    t = time.perf_counter()
    M.skeleton(z)  # numba: compile, or load its cache
    t_compile = time.perf_counter() - t
    print(f"thinning first call (compile or cache load, untimed below): {t_compile:.2f} s")
    rows = []
    for name, p, g in cases:
        rows += bench_case(name, p, g, with_memory=True)
    ok = all(r["same"] for r in rows)
    print(f"\nall numbers identical to the references: {ok}")
    if not args.no_save:
        save(rows, ok, t_compile, args)
    return 0 if ok else 1


def save(rows: list[dict], ok: bool, t_compile: float, args: argparse.Namespace) -> None:
    """benchmarks/results/metrics_<date>.{json,md}: the rows, the machine, no paths."""
    stamp = datetime.date.today().isoformat()
    from _results import machine as machine_name  # benchmarks/ is the script's folder

    machine = machine_name()
    for r in rows:
        r["ratio"] = r["ref_s"] / r["ours_s"] if r["ours_s"] > 0 else math.inf
    lines = [f"# Official metrics vs the reference implementations ({stamp}, {machine})", "",
             (f"Times in seconds, one thread unless the metric says otherwise, the fastest of {args.repeat} runs each, reference and ours in "
              "the same run; \"same\" = identical "
              "numbers (skeleton: identical voxels). FULL = `case_metrics` (all columns) vs the sum of the "
              f"references. Thinning first call (numba compile or cache load, once per process): {t_compile:.2f} s."),
             "", "| case | protocol | metric | ours [s] | reference [s] | ratio | same | peak MiB |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        peak = r.get("peak_mib", math.nan)
        lines.append(f"| {r['case']} | {r['protocol']} | {r['metric']} | {r['ours_s']:.3f} | {r['ref_s']:.3f} | "
                     f"{r['ratio']:.1f}x | {'yes' if r['same'] else 'NO'} | "
                     f"{'' if math.isnan(peak) else f'{peak:.0f}'} |")
    lines += ["", f"all numbers identical to the references: {ok}"]
    out = REPO / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"metrics_{stamp}.md").write_text("\n".join(lines) + "\n")
    (out / f"metrics_{stamp}.json").write_text(json.dumps(
        {"date": stamp, "machine": machine, "args": vars(args), "thinning_first_call_s": t_compile,
         "all_identical": ok, "rows": rows}, indent=1, default=float))
    print(f"wrote benchmarks/results/metrics_{stamp}.md and .json")


if __name__ == "__main__":
    sys.exit(main())
