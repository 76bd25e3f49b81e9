"""SELMA3D per-case metrics, numerically identical to the official evaluators but fast.

All functions take (z, y, x) arrays exactly as SimpleITK's ``GetArrayFromImage`` returns them
(no reorientation) and treat every value > 0 as foreground.

Semantics (see ``SELMA3D.md`` "Official metrics — exact semantics"):

* **Dice.** ``2|P∩G| / (|P|+|G|)``; 1.0 when both are empty. For binary masks the 2024 rule
  (``2·0/(|P|+|G|) = 0`` when exactly one is empty) and the 2026 rule (explicit 0) coincide; the
  2024 evaluator multiplied raw values, we binarise first (it asserted {0, 1} masks anyway).
* **clDice 2024** (official ``centerline_dice``): skeletons by scikit-image's 3D ``skeletonize``;
  ``Tprec = |S(P)∩G|/|S(P)|``, ``Tsens = |S(G)∩P|/|S(G)|``, each 0 when its skeleton is empty;
  ``(2·Tprec·Tsens + 1e-6) / (Tprec + Tsens + 1e-6)``. The smooth term is added once to the
  numerator and once to the denominator, so *whenever both scores are 0* (empty prediction,
  empty ground truth, or non-empty masks with no skeleton overlap) the result is 1.0.
* **clDice 2026** (panoptica 2.1.7 ``_compute_centerline_dice_coefficient``): the same scores
  without any guard or smoothing: ``2·a·b/(a+b)``; NaN when either skeleton is empty (0/0) and
  also when both scores are 0 (non-empty masks whose skeletons miss each other).
* **clDice corrected**: 1 when both masks are empty, 0 when exactly one is, otherwise
  ``2·a·b/(a+b)`` with 0 when ``a + b = 0``. scikit-image's thinning erases some thin
  objects completely (a 2×2-voxel bar has an empty skeleton); when a non-empty mask's skeleton
  is empty, this variant uses the mask itself as its centreline.
* **Betti numbers** (official ``betti_number``): pad by one background voxel; b0 = 26-connected
  foreground components; χ = 26-connectivity Euler characteristic (``skimage.measure.
  euler_number(connectivity=3)``); b2 = 6-connected background components − 1; b1 = b0 + b2 − χ.
  χ is computed here as V − E + F − C of the union of closed unit voxel cubes (the cubical
  complex whose connectivity is exactly 26 for the foreground), counting cells with seven
  shifted ORs instead of a 256-entry 2×2×2 table. Errors are |Δb0|, |Δb1| (0, 0 when both empty).
* **Panoptic quality** (panoptica 2.1.7 as called by the 2026 evaluator): instances are
  26-connected components (cc3d default), naive greedy matching at IoU ≥ 0.3 in panoptica's
  exact pair order (IoU descending, ties by ``pred·(n_ref+1) + ref`` ascending), one-to-one;
  ``pq = mean Dice of matched pairs × RQ`` with ``RQ = TP / (TP + FP/2 + FN/2)`` (the instance
  F1). NaN when neither mask has an instance, 0 when there is no true positive.
  ``instance_recall = TP / n_ref`` (NaN when the ground truth has no instance).

Speed comes from sharing work and from the skeleton: each mask is labelled once (cc3d,
26-connected) and those labels feed b0 and the instance matching; each skeleton is computed once
and its overlap counts feed every clDice variant (``SkeletonOverlap``); the skeleton itself is
scikit-image's thinning run by ``selma3d.evaluation.thinning``, which visits only the voxels that
can change (same voxels as ``skimage.morphology.skeletonize``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cc3d
import numpy as np

from selma3d.core.errors import InputError
from selma3d.core.overlap import dice, dice_from_counts

PROTOCOLS = ("selma3d2024", "selma3d2026")

#: the per-case columns, in output order
METRIC_COLUMNS = (
    "dice",
    "cldice",
    "cldice_corrected",
    "betti0_error",
    "betti1_error",
    "pq",
    "instance_f1",
    "instance_recall",
)

#: panoptica's matching threshold in the 2026 evaluator (NaiveThresholdMatching, IoU)
IOU_THRESHOLD_2026 = 0.3
#: smoothing of the 2024 clDice (added to numerator and denominator)
CLDICE_SMOOTH_2024 = 1e-6


# --------------------------------------------------------------------------------------
# input handling


def binarize(arr: np.ndarray, name: str = "array") -> np.ndarray:
    """Foreground mask (``arr > 0``) as a C-contiguous bool array; NaN is an InputError."""
    a = np.asarray(arr)
    if a.ndim != 3:
        raise InputError(name, "a 3D (z, y, x) array", f"{a.ndim}D array of shape {a.shape}")
    if a.dtype == bool:
        return np.ascontiguousarray(a)
    if a.dtype.kind == "f" and np.isnan(a).any():
        raise InputError(name, "finite values (a mask or probabilities)", f"{int(np.isnan(a).sum())} NaN voxels")
    if a.dtype.kind not in "biuf":
        raise InputError(name, "a numeric array", f"dtype {a.dtype}")
    return np.ascontiguousarray(a > 0)


def _check_pair(pred: np.ndarray, gt: np.ndarray, case: str | None) -> None:
    if pred.shape != gt.shape:
        raise InputError(case, f"prediction shape equal to ground-truth shape {gt.shape}", f"prediction shape {pred.shape}")


# --------------------------------------------------------------------------------------
# Dice


def dice_2024(pred: np.ndarray, gt: np.ndarray) -> float:
    """2024 Dice: ``2|P∩G|/(|P|+|G|)``, 1.0 when both are empty."""
    p, g = binarize(pred, "prediction"), binarize(gt, "ground truth")
    _check_pair(p, g, None)
    return dice(p, g, protocol_year=2024)


def dice_2026(pred: np.ndarray, gt: np.ndarray) -> float:
    """2026 Dice: as 2024 but explicitly 0 when exactly one mask is empty (same numbers)."""
    p, g = binarize(pred, "prediction"), binarize(gt, "ground truth")
    _check_pair(p, g, None)
    return dice(p, g, protocol_year=2026)


# --------------------------------------------------------------------------------------
# skeletons and clDice


def _label26(mask: np.ndarray) -> tuple[np.ndarray, int]:
    labels, n = cc3d.connected_components(mask, connectivity=26, return_N=True)
    return labels, int(n)


def skeleton(mask: np.ndarray) -> np.ndarray:
    """scikit-image's 3D (Lee) skeleton of ``mask > 0``, identical voxel for voxel.

    The official evaluators call ``skimage.morphology.skeletonize`` on the whole mask; this runs
    the same thinning passes with the same tests in the same order, visiting only the voxels whose
    neighbourhood changed (``selma3d.evaluation.thinning``), which is several times faster on
    sparse masks. ``tests/test_skeleton_real.py`` checks the identity on hundreds of real masks.
    """
    from selma3d.evaluation.thinning import thin

    m = binarize(mask, "mask")
    if not m.any():
        return np.zeros(m.shape, dtype=bool)
    return thin(m)


def _bbox(mask: np.ndarray) -> tuple[slice, ...]:
    """Bounding box of the foreground (the whole array when empty)."""
    out = []
    for ax in range(mask.ndim):
        other = tuple(i for i in range(mask.ndim) if i != ax)
        idx = np.flatnonzero(mask.any(axis=other))
        out.append(slice(int(idx[0]), int(idx[-1]) + 1) if idx.size else slice(0, mask.shape[ax]))
    return tuple(out)


@dataclass(frozen=True)
class SkeletonOverlap:
    """Counts behind every clDice variant: |S(P)|, |S(P)∩G|, |S(G)|, |S(G)∩P|, |P|, |G|, |P∩G|."""

    n_sp: int
    sp_in_g: int
    n_sg: int
    sg_in_p: int
    n_p: int
    n_g: int
    inter: int

    @property
    def tprec(self) -> float:
        """|S(P)∩G| / |S(P)| (NaN when S(P) is empty)."""
        return self.sp_in_g / self.n_sp if self.n_sp else math.nan

    @property
    def tsens(self) -> float:
        """|S(G)∩P| / |S(G)| (NaN when S(G) is empty)."""
        return self.sg_in_p / self.n_sg if self.n_sg else math.nan


def skeleton_overlap(pred: np.ndarray, gt: np.ndarray, skel_pred: np.ndarray | None = None,
                     skel_gt: np.ndarray | None = None) -> SkeletonOverlap:
    """Skeleton/volume overlap counts, skeletonising only what is not passed in."""
    p, g = binarize(pred, "prediction"), binarize(gt, "ground truth")
    _check_pair(p, g, None)
    sp = skeleton(p) if skel_pred is None else skel_pred
    sg = skeleton(g) if skel_gt is None else skel_gt
    return SkeletonOverlap(
        n_sp=int(np.count_nonzero(sp)),
        sp_in_g=int(np.count_nonzero(sp & g)),
        n_sg=int(np.count_nonzero(sg)),
        sg_in_p=int(np.count_nonzero(sg & p)),
        n_p=int(np.count_nonzero(p)),
        n_g=int(np.count_nonzero(g)),
        inter=int(np.count_nonzero(p & g)),
    )


def cldice_2024_from(ov: SkeletonOverlap) -> float:
    """Official 2024 formula: scores 0 for empty skeletons, 1e-6 added to both terms."""
    # the official code passes cl_score(pred, S(gt)) first; the formula is symmetric
    a = ov.sg_in_p / ov.n_sg if ov.n_sg else 0.0
    b = ov.sp_in_g / ov.n_sp if ov.n_sp else 0.0
    s = CLDICE_SMOOTH_2024
    return float((2 * a * b + s) / (a + b + s))


def cldice_2026_from(ov: SkeletonOverlap) -> float:
    """panoptica's centerline Dice: ``2ab/(a+b)``, NaN on 0/0 (empty skeleton or no overlap)."""
    a, b = ov.tsens, ov.tprec  # panoptica: tprec = cl_score(pred, S(ref)), tsens = cl_score(ref, S(pred))
    if math.isnan(a) or math.isnan(b) or a + b == 0:
        return math.nan
    return float(2 * a * b / (a + b))


def cldice_corrected_from(ov: SkeletonOverlap) -> float:
    """clDice without the empty-mask flaw: both empty → 1, exactly one empty → 0."""
    if ov.n_p == 0 and ov.n_g == 0:
        return 1.0
    if ov.n_p == 0 or ov.n_g == 0:
        return 0.0
    # an empty skeleton of a non-empty mask (thinning artefact): the mask is its own centreline
    a = ov.sg_in_p / ov.n_sg if ov.n_sg else ov.inter / ov.n_g
    b = ov.sp_in_g / ov.n_sp if ov.n_sp else ov.inter / ov.n_p
    if a + b == 0:
        return 0.0
    return float(2 * a * b / (a + b))


def cldice_2024(pred: np.ndarray, gt: np.ndarray) -> float:
    """Official SELMA3D 2024 clDice (an empty prediction scores 1.0 — the known flaw)."""
    return cldice_2024_from(skeleton_overlap(pred, gt))


def cldice_2026(pred: np.ndarray, gt: np.ndarray) -> float:
    """SELMA3D 2026 clDice = panoptica 2.1.7 centerline Dice (NaN when a skeleton is empty)."""
    return cldice_2026_from(skeleton_overlap(pred, gt))


def cldice_corrected(pred: np.ndarray, gt: np.ndarray) -> float:
    """clDice with empty-vs-non-empty scored 0 and empty-vs-empty scored 1."""
    return cldice_corrected_from(skeleton_overlap(pred, gt))


# --------------------------------------------------------------------------------------
# Euler characteristic and Betti numbers


def _popcount(packed: np.ndarray) -> int:
    """Set bits of a bit-packed array."""
    return int(np.bitwise_count(packed).sum(dtype=np.int64))


def _or_next_x(packed: np.ndarray) -> np.ndarray:
    """OR of each voxel with its +x neighbour on rows bit-packed along x (``np.packbits``, first
    voxel in the high bit): entry x is voxel x OR voxel x + 1 (the last entry is voxel X − 1 alone)."""
    out = packed | (packed << 1)
    out[..., :-1] |= packed[..., 1:] >> 7
    return out


def euler_characteristic(mask: np.ndarray) -> int:
    """Euler characteristic of ``mask > 0`` with 26-connected foreground.

    Equals ``skimage.measure.euler_number(mask, connectivity=3)``: χ = V − E + F − C of the
    union of closed voxel cubes, a vertex/edge/face being present when any voxel touching it is
    foreground. Computed on the foreground's bounding box, padded by one voxel, with the rows
    bit-packed along x: a face, edge or vertex plane is the OR of neighbouring voxel planes, eight
    voxels per byte, and the counts are popcounts. Padding makes the last entry of every x-OR
    (voxel X − 1 of the pad, background) zero, so each count is exactly that of the unpacked planes.
    """
    m = binarize(mask, "mask")
    if not m.any():
        return 0
    packed = np.packbits(np.pad(m[_bbox(m)], 1), axis=2)
    cubes = _popcount(packed)
    a0 = packed[:-1] | packed[1:]  # faces normal to z
    a1 = packed[:, :-1] | packed[:, 1:]  # faces normal to y
    faces = _popcount(a0) + _popcount(a1) + _popcount(_or_next_x(packed))
    a01 = a0[:, :-1] | a0[:, 1:]
    edges = _popcount(a01) + _popcount(_or_next_x(a0)) + _popcount(_or_next_x(a1))  # along x, y, z
    del a0, a1
    verts = _popcount(_or_next_x(a01))
    return int(verts - edges + faces - cubes)


def betti_numbers(mask: np.ndarray, labels: tuple[np.ndarray, int] | None = None) -> tuple[int, int, int]:
    """(b0, b1, b2) of ``mask > 0`` by the official recipe (26-connected fg, 6-connected bg)."""
    m = binarize(mask, "mask")
    if not m.any():
        return 0, 0, 0
    b0 = labels[1] if labels is not None else _label26(m)[1]
    chi = euler_characteristic(m)
    # background components outside the padded bounding box all join the outer one
    bg = ~np.pad(m[_bbox(m)], 1)
    _, n_bg = cc3d.connected_components(bg, connectivity=6, return_N=True)
    b2 = int(n_bg) - 1
    b1 = b0 + b2 - chi
    return int(b0), int(b1), int(b2)


def betti_errors(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int]:
    """(|Δb0|, |Δb1|); (0, 0) when both masks are empty."""
    p, g = binarize(pred, "prediction"), binarize(gt, "ground truth")
    _check_pair(p, g, None)
    bp, bg = betti_numbers(p), betti_numbers(g)
    return abs(bp[0] - bg[0]), abs(bp[1] - bg[1])


# --------------------------------------------------------------------------------------
# instances: panoptic quality


@dataclass(frozen=True)
class InstanceScores:
    """Outcome of the one-to-one instance matching (panoptica naive threshold matching)."""

    tp: int
    n_pred: int
    n_ref: int
    sq_dsc: float
    rq: float

    @property
    def pq(self) -> float:
        """panoptica ``pq_dsc`` = mean Dice of matched pairs × RQ."""
        return self.sq_dsc * self.rq

    @property
    def f1(self) -> float:
        """Instance F1 (= RQ)."""
        return self.rq

    @property
    def recall(self) -> float:
        """TP / number of reference instances (NaN without reference instances)."""
        return self.tp / self.n_ref if self.n_ref else math.nan


def instance_scores(pred: np.ndarray, gt: np.ndarray, iou_threshold: float = IOU_THRESHOLD_2026,
                    pred_labels: tuple[np.ndarray, int] | None = None,
                    gt_labels: tuple[np.ndarray, int] | None = None) -> InstanceScores:
    """Match 26-connected components of P and G exactly as panoptica's NaiveThresholdMatching.

    Overlaps come from one ``np.unique`` over the encoded (pred, ref) label pairs of the voxels
    where both are foreground, never from per-instance full-volume masks.
    """
    p, g = binarize(pred, "prediction"), binarize(gt, "ground truth")
    _check_pair(p, g, None)
    lp, n_p = pred_labels if pred_labels is not None else _label26(p)
    lg, n_g = gt_labels if gt_labels is not None else _label26(g)
    if n_p == 0 and n_g == 0:
        return InstanceScores(0, 0, 0, math.nan, math.nan)
    tp, dices = 0, []
    if n_p and n_g:
        both = np.flatnonzero((lp.ravel() > 0) & (lg.ravel() > 0))
        max_ref = n_g + 1
        enc = lg.ravel()[both].astype(np.int64) + lp.ravel()[both].astype(np.int64) * max_ref
        values, inter = np.unique(enc, return_counts=True)
        pair_ref, pair_pred = values % max_ref, values // max_ref
        # areas from the foreground voxels only: a full-volume bincount casts every label to int64
        area_ref = np.bincount(lg.ravel()[g.ravel()], minlength=max_ref).astype(np.float64)
        area_pred = np.bincount(lp.ravel()[p.ravel()], minlength=n_p + 1).astype(np.float64)
        inter_f = inter.astype(np.float64)
        iou = inter_f / (area_ref[pair_ref] + area_pred[pair_pred] - inter_f)
        order = np.lexsort((values, -iou))  # IoU descending, then panoptica's encoded order
        keep = order[iou[order] >= iou_threshold]
        used_p: set[int] = set()
        used_r: set[int] = set()
        for i in keep.tolist():
            pp, rr = int(pair_pred[i]), int(pair_ref[i])
            if pp in used_p or rr in used_r:
                continue
            used_p.add(pp)
            used_r.add(rr)
            # panoptica: 2 * sum(intersection) / (ref_area + pred_area) on integer counts
            dices.append((rr, 2 * int(inter[i]) / (int(area_ref[rr]) + int(area_pred[pp]))))
        tp = len(dices)
    if tp == 0:
        return InstanceScores(0, n_p, n_g, 0.0, 0.0)
    dices.sort()  # panoptica averages in reference-label order
    sq = float(np.average([d for _, d in dices]))
    fp, fn = n_p - tp, n_g - tp
    rq = tp / (tp + 0.5 * fp + 0.5 * fn)
    return InstanceScores(tp, n_p, n_g, sq, rq)


def panoptic_quality(pred: np.ndarray, gt: np.ndarray, iou_threshold: float = IOU_THRESHOLD_2026) -> float:
    """SELMA3D 2026 PQ (panoptica ``pq_dsc`` with CC instances and IoU ≥ 0.3 matching)."""
    return instance_scores(pred, gt, iou_threshold).pq


# --------------------------------------------------------------------------------------
# one case


def case_metrics(pred: np.ndarray, gt: np.ndarray, protocol: str, ignore: np.ndarray | None = None,
                 case: str | None = None, threads: int = 1) -> dict[str, float]:
    """Every per-case metric of ``protocol`` ('selma3d2024' or 'selma3d2026'), whatever the category.

    ``ignore`` marks voxels without annotation; they become background in both masks first.
    ``cldice`` is the protocol's official variant; ``cldice_corrected`` the fixed one.
    ``threads`` > 1 thins the two masks in ``min(2, threads - 1)`` background threads (the compiled
    thinning releases the GIL) while this thread labels, counts Betti numbers and matches
    instances (cc3d and numpy hold it): the same numbers, in about 0.6 of the one-thread time on
    a 512³ vessel case (``benchmarks/metrics.py``).
    """
    if protocol not in PROTOCOLS:
        raise InputError(case, f"protocol in {PROTOCOLS}", repr(protocol))
    where = case or "case"
    p = binarize(pred, f"{where} (prediction)")
    g = binarize(gt, f"{where} (ground truth)")
    _check_pair(p, g, case)
    if ignore is not None:
        ign = np.asarray(ignore)
        if ign.shape != g.shape:
            raise InputError(case, f"ignore mask of shape {g.shape}", f"shape {ign.shape}")
        keep = ~ign.astype(bool)
        p = p & keep  # new arrays: never mutate the caller's masks
        g = g & keep
    n_p, n_g = int(np.count_nonzero(p)), int(np.count_nonzero(g))
    inter = int(np.count_nonzero(p & g))
    dice_value = dice_from_counts(inter, n_p, n_g, 2024 if protocol == "selma3d2024" else 2026)

    pool = None
    if threads > 1:
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(max_workers=min(2, threads - 1))
        skeletons = [pool.submit(skeleton, m) for m in (p, g)]
    try:
        lab_p, lab_g = _label26(p), _label26(g)
        bp, bg = betti_numbers(p, lab_p), betti_numbers(g, lab_g)
        inst = instance_scores(p, g, IOU_THRESHOLD_2026, lab_p, lab_g)
        sp, sg = (f.result() for f in skeletons) if pool else (skeleton(p), skeleton(g))
    finally:
        if pool:
            pool.shutdown(wait=True)
    ov = SkeletonOverlap(
        n_sp=int(np.count_nonzero(sp)), sp_in_g=int(np.count_nonzero(sp & g)),
        n_sg=int(np.count_nonzero(sg)), sg_in_p=int(np.count_nonzero(sg & p)), n_p=n_p, n_g=n_g,
        inter=inter,
    )
    del sp, sg
    cl = cldice_2024_from(ov) if protocol == "selma3d2024" else cldice_2026_from(ov)

    b_err = (abs(bp[0] - bg[0]), abs(bp[1] - bg[1]))
    return {
        "dice": dice_value,
        "cldice": cl,
        "cldice_corrected": cldice_corrected_from(ov),
        "betti0_error": int(b_err[0]),
        "betti1_error": int(b_err[1]),
        "pq": float(inst.pq),
        "instance_f1": float(inst.f1),
        "instance_recall": float(inst.recall),
    }
