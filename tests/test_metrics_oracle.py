"""Our fast metrics against slow references on many random and structured masks.

References: gudhi cubical persistence (Betti numbers), scikit-image ``label``/``euler_number``
(the 2024 evaluator's recipe), scikit-image ``skeletonize`` + the clDice formulas, and panoptica
2.1.7 configured as the 2026 evaluator (PQ). Integers must agree exactly, floats to 1e-9.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import ndimage as ndi

from selma3d.evaluation import metrics as M

# ----------------------------------------------------------------------------- masks


def noise(shape, density, seed):
    return np.random.default_rng(seed).random(shape) < density


def blobs(shape, n, rmin, rmax, seed):
    rng = np.random.default_rng(seed)
    out = np.zeros(shape, bool)
    for _ in range(n):
        c = rng.uniform(0, shape)
        r = rng.uniform(rmin, rmax)
        sl = tuple(slice(max(0, int(c[i] - r - 1)), min(shape[i], int(c[i] + r + 2))) for i in range(3))
        g = np.ogrid[sl]
        out[sl] |= sum(((g[i] - c[i]) / r) ** 2 for i in range(3)) <= 1
    return out


def tubes(shape, n, r, seed, steps=300):
    rng = np.random.default_rng(seed)
    pts = np.zeros(shape, bool)
    for _ in range(n):
        p = rng.uniform(0, shape)
        v = rng.normal(size=3)
        for _ in range(steps):
            v = v + 0.3 * rng.normal(size=3)
            v /= np.linalg.norm(v)
            p = p + v
            if np.any(p < 0) or np.any(p >= shape):
                break
            pts[tuple(p.astype(int))] = True
    return ndi.distance_transform_edt(~pts) <= r


def smooth_noise(shape, density, sigma, seed):
    """Correlated noise: spongy shapes with many tunnels and cavities."""
    f = ndi.gaussian_filter(np.random.default_rng(seed).random(shape), sigma)
    return f > np.quantile(f, 1 - density)


SMALL = [
    *[(f"noise{d}_{s}", noise((13 + s, 17, 11 + 2 * s), d, s)) for s, d in enumerate((0.02, 0.1, 0.25, 0.4, 0.5, 0.6, 0.75, 0.9))],
    *[(f"sponge{d}_{s}", smooth_noise((24, 20, 28), d, 1.5, s)) for s, d in enumerate((0.2, 0.35, 0.5, 0.65))],
    ("blobs", blobs((32, 40, 36), 30, 1, 4, 1)),
    ("tubes", tubes((32, 40, 36), 6, 1.5, 2)),
    ("border_block", np.pad(np.ones((10, 10, 10), bool), ((0, 5), (3, 0), (0, 0)))),
    ("empty", np.zeros((9, 9, 9), bool)),
    ("full", np.ones((7, 9, 8), bool)),
]

LARGE = [
    ("blobs128", blobs((128, 128, 128), 300, 1.5, 6, 3)),
    ("tubes128", tubes((128, 128, 128), 12, 2.5, 4)),
    ("sponge96", smooth_noise((96, 96, 96), 0.3, 2.0, 5)),
]


def _ids(cases):
    return [c[0] for c in cases]


# ------------------------------------------------------------------------ references


def ref_betti_skimage(mask):
    """The 2024 evaluator's recipe with scikit-image (pad, label 26/6, euler_number)."""
    from skimage.measure import euler_number, label

    padded = np.pad(mask.astype(np.uint8), 1)
    _, b0 = label(padded, return_num=True, connectivity=3)
    chi = euler_number(padded, connectivity=3)
    _, n_bg = label(1 - padded, return_num=True, connectivity=1)
    b2 = n_bg - 1
    return b0, b0 + b2 - chi, b2


def ref_betti_gudhi(mask):
    """Betti numbers of the union of closed foreground voxel cubes.

    Top-dimensional cells carry 0 (foreground) or 1 (background); gudhi gives every face the
    minimum of its cofaces, so the sublevel set at 0 is the union of closed cubes, in which
    corner-touching voxels are connected: 26-connectivity, as the official recipe. No padding:
    this also checks that padding in the official recipe changes nothing. b_d = number of
    dimension-d intervals born at 0 that survive to 1 or forever (zero-length pairs dropped).
    """
    import gudhi

    cc = gudhi.CubicalComplex(top_dimensional_cells=np.where(mask, 0.0, 1.0))
    cc.compute_persistence(homology_coeff_field=2)
    out = []
    for d in range(3):
        iv = np.asarray(cc.persistence_intervals_in_dimension(d)).reshape(-1, 2)
        out.append(int(np.sum((iv[:, 0] == 0.0) & (iv[:, 1] > 0.0))))
    return tuple(out)


def ref_cldice_2024(p, g):
    from skimage.morphology import skeletonize

    def score(v, s):
        return 0 if np.sum(s) == 0 else np.sum(v * s) / np.sum(s)

    a = score(p.astype(np.uint8), skeletonize(g))
    b = score(g.astype(np.uint8), skeletonize(p))
    return (2 * a * b + 1e-6) / (a + b + 1e-6)


def ref_cldice_2026(p, g):
    from panoptica.metrics.cldice import _compute_centerline_dice_coefficient

    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore")
        return float(_compute_centerline_dice_coefficient(g.astype(np.uint8), p.astype(np.uint8)))


_EVALUATOR = None


def ref_panoptica(p, g):
    """panoptica configured as the SELMA3D 2026 evaluator: (pq_dsc, rq, tp, n_pred, n_ref)."""
    global _EVALUATOR
    from panoptica import (
        ConnectedComponentsInstanceApproximator,
        InputType,
        NaiveThresholdMatching,
        Panoptica_Evaluator,
    )
    from panoptica.metrics import Metric

    if _EVALUATOR is None:
        _EVALUATOR = Panoptica_Evaluator(
            expected_input=InputType.SEMANTIC,
            instance_approximator=ConnectedComponentsInstanceApproximator(cca_backend=None),
            instance_matcher=NaiveThresholdMatching(matching_threshold=0.3),
            instance_metrics=[Metric.DSC],
            log_times=False,
            verbose=False,
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = _EVALUATOR.evaluate(p.astype(np.uint8), g.astype(np.uint8), verbose=False)["ungrouped"]
        return r.pq_dsc, r.rq, r.tp, r.n_pred_instances, r.n_ref_instances


def same(a, b, tol=1e-9):
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return abs(a - b) <= tol


# ------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("name, mask", SMALL + LARGE, ids=_ids(SMALL + LARGE))
def test_betti_and_euler_equal_scikit_image(name, mask):
    from skimage.measure import euler_number

    assert M.euler_characteristic(mask) == euler_number(np.pad(mask, 1), connectivity=3)
    assert M.betti_numbers(mask) == ref_betti_skimage(mask)


@pytest.mark.parametrize("name, mask", SMALL, ids=_ids(SMALL))
def test_betti_equal_gudhi_persistence(name, mask):
    assert M.betti_numbers(mask) == ref_betti_gudhi(mask)


def test_gudhi_oracle_itself_uses_26_connectivity():
    chain = np.zeros((4, 4, 4), bool)
    for i in range(4):
        chain[i, i, i] = True
    assert ref_betti_gudhi(chain) == (1, 0, 0)


@pytest.mark.parametrize("name, mask", SMALL + LARGE, ids=_ids(SMALL + LARGE))
def test_skeleton_equals_scikit_image(name, mask):
    from skimage.morphology import skeletonize

    assert np.array_equal(M.skeleton(mask), skeletonize(mask))


def test_skeleton_equals_scikit_image_on_random_small_masks():
    """Many tiny random masks, one or two voxels thick along some axis included (scikit-image
    thins a mask one slice thick along axis 0 in-plane only)."""
    from skimage.morphology import skeletonize

    rng = np.random.default_rng(7)
    differ = []
    for i in range(400):
        shape = tuple(int(v) for v in rng.integers(1, 11, 3))
        mask = rng.random(shape) < rng.uniform(0.05, 0.95)
        if not np.array_equal(M.skeleton(mask), skeletonize(mask)):
            differ.append(f"{i}: shape {shape}")
    assert not differ, differ


def _pairs():
    """(name, pred, gt) pairs: perturbed copies, independent masks and empty sides."""
    out = []
    for name, g in SMALL[8:15] + LARGE[:2]:
        rng = np.random.default_rng(len(name))
        shifted = np.roll(g, 1, axis=int(rng.integers(3)))
        out.append((f"{name}_shift", shifted, g))
        out.append((f"{name}_dilate", ndi.binary_dilation(g), g))
        out.append((f"{name}_erode", ndi.binary_erosion(g), g))
        out.append((f"{name}_flip", g ^ (rng.random(g.shape) < 0.02), g))
    out.append(("independent_blobs", blobs((40, 40, 40), 40, 1, 5, 7), blobs((40, 40, 40), 40, 1, 5, 8)))
    out.append(("dense_noise", noise((30, 30, 30), 0.3, 9), noise((30, 30, 30), 0.3, 10)))
    z = np.zeros((20, 20, 20), bool)
    b = blobs((20, 20, 20), 5, 2, 4, 11)
    out += [("empty_pred", z, b), ("empty_gt", b, z), ("both_empty", z, z)]
    return out


PAIRS = _pairs()


@pytest.mark.parametrize("name, p, g", PAIRS, ids=[x[0] for x in PAIRS])
def test_cldice_equals_reference_formulas(name, p, g):
    assert same(M.cldice_2024(p, g), float(ref_cldice_2024(p, g)))
    assert same(M.cldice_2026(p, g), ref_cldice_2026(p, g))
    r24 = M.case_metrics(p, g, "selma3d2024")
    r26 = M.case_metrics(p, g, "selma3d2026")
    assert same(r24["cldice"], float(ref_cldice_2024(p, g)))
    assert same(r26["cldice"], ref_cldice_2026(p, g))


@pytest.mark.parametrize("name, p, g", PAIRS, ids=[x[0] for x in PAIRS])
def test_instances_equal_panoptica(name, p, g):
    pq, rq, tp, n_pred, n_ref = ref_panoptica(p, g)
    s = M.instance_scores(p, g)
    assert (s.tp, s.n_pred, s.n_ref) == (tp, n_pred, n_ref)
    assert same(float(s.rq), float(rq))
    assert same(float(s.pq), float(pq))
    r = M.case_metrics(p, g, "selma3d2026")
    assert same(r["pq"], float(pq)) and same(r["instance_f1"], float(rq))


@pytest.mark.parametrize("name, p, g", PAIRS[::3], ids=[x[0] for x in PAIRS[::3]])
def test_case_betti_errors_equal_official_recipe(name, p, g):
    r = M.case_metrics(p, g, "selma3d2024")
    if not p.any() and not g.any():
        expected = (0, 0)
    else:
        bp, bg = ref_betti_skimage(p), ref_betti_skimage(g)
        expected = (abs(bp[0] - bg[0]), abs(bp[1] - bg[1]))
    assert (r["betti0_error"], r["betti1_error"]) == expected
    inter = np.count_nonzero(p & g)
    n = np.count_nonzero(p) + np.count_nonzero(g)
    assert same(r["dice"], 1.0 if n == 0 else 2 * inter / n)
