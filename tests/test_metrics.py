"""Metrics on hand-made masks whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from selma3d.evaluation import metrics as M
from selma3d.core.errors import InputError


def ball(shape, center, r):
    g = np.indices(shape)
    return sum((g[i] - center[i]) ** 2 for i in range(3)) <= r * r


def torus(shape=(12, 24, 24), R=7, r=2.5):
    z, y, x = np.indices(shape).astype(float)
    cz, cy, cx = (s / 2 - 0.5 for s in shape)
    q = np.sqrt((y - cy) ** 2 + (x - cx) ** 2) - R
    return q**2 + (z - cz) ** 2 <= r * r


def hollow_cube(n=10):
    m = np.zeros((n, n, n), bool)
    m[1:-1, 1:-1, 1:-1] = True
    m[3:-3, 3:-3, 3:-3] = False
    return m


# ------------------------------------------------------------------------- Betti numbers


@pytest.mark.parametrize(
    "mask, expected",
    [
        (np.zeros((5, 5, 5), bool), (0, 0, 0)),
        (ball((15, 15, 15), (7, 7, 7), 5), (1, 0, 0)),
        (ball((15, 15, 30), (7, 7, 7), 4) | ball((15, 15, 30), (7, 7, 21), 4), (2, 0, 0)),
        (torus(), (1, 1, 0)),
        (hollow_cube(), (1, 0, 1)),
        (np.eye(6, dtype=bool)[:, :, None] & np.eye(6, dtype=bool)[None, :, :], (1, 0, 0)),  # diagonal chain
        (np.ones((6, 7, 8), bool), (1, 0, 0)),  # fills the array, touches every border
    ],
    ids=["empty", "ball", "two_islands", "torus", "hollow_cube", "diagonal_chain", "full"],
)
def test_betti_numbers_known_shapes(mask, expected):
    assert M.betti_numbers(mask) == expected


def test_diagonal_chain_is_one_26_component_but_many_6_components():
    chain = np.zeros((6, 6, 6), bool)
    for i in range(6):
        chain[i, i, i] = True
    assert M.betti_numbers(chain)[0] == 1
    assert M.euler_characteristic(chain) == 1


def test_ring_touching_the_border_keeps_its_hole():
    """A square ring cut by the array border on all sides: padding must close nothing."""
    m = np.ones((3, 9, 9), bool)
    m[:, 2:-2, 2:-2] = False
    assert M.betti_numbers(m) == (1, 1, 0)
    # a ring open at the border is still a ring once padded with background
    open_ring = np.zeros((1, 5, 5), bool)
    open_ring[0, 0, :] = open_ring[0, -1, :] = open_ring[0, :, 0] = open_ring[0, :, -1] = True
    assert M.betti_numbers(open_ring) == (1, 1, 0)


def test_cavity_is_6_connected_background():
    """A cavity touching the shell only diagonally stays closed: background is 6-connected."""
    m = hollow_cube(9)  # cavity voxels 3..5 on each axis
    m[2, 2, 2] = False  # touches the cavity only at a corner: a second cavity
    assert M.betti_numbers(m)[2] == 2
    m[2, 2, 3] = m[2, 3, 3] = False  # a face-connected path (2,2,2)-(2,2,3)-(2,3,3)-(3,3,3)
    assert M.betti_numbers(m)[2] == 1
    # two cavities separated by a wall
    m = np.ones((5, 5, 9), bool)
    m[2, 2, 2] = False
    m[2, 2, 6] = False
    assert M.betti_numbers(m) == (1, 0, 2)


def test_euler_of_two_tori_and_ball():
    two = np.concatenate([torus(), torus()], axis=2)
    assert M.betti_numbers(two) == (2, 2, 0)
    assert M.euler_characteristic(two) == 0


def test_betti_errors():
    assert M.betti_errors(np.zeros((4, 4, 4)), np.zeros((4, 4, 4))) == (0, 0)
    t = torus()
    assert M.betti_errors(np.zeros_like(t), t) == (1, 1)
    assert M.betti_errors(t, t) == (0, 0)


# ------------------------------------------------------------------------- Dice


def test_dice_edge_cases():
    z = np.zeros((4, 4, 4), np.uint8)
    o = np.ones((4, 4, 4), np.uint8)
    for f in (M.dice_2024, M.dice_2026):
        assert f(z, z) == 1.0
        assert f(z, o) == 0.0
        assert f(o, z) == 0.0
        assert f(o, o) == 1.0
    half = o.copy()
    half[:2] = 0
    assert M.dice_2026(half, o) == pytest.approx(2 * 32 / (32 + 64))


def test_dice_binarises_255_and_probabilities():
    g = np.zeros((6, 6, 6), np.uint8)
    g[1:4, 1:4, 1:4] = 1
    assert M.dice_2026(g * 255, g) == 1.0
    prob = g * 0.7 + (1 - g) * 0.0
    assert M.dice_2024(prob, g) == 1.0
    prob[0, 0, 0] = 0.01  # everything > 0 is foreground, also a tiny probability
    assert M.dice_2024(prob, g) < 1.0


# ------------------------------------------------------------------------- clDice


def test_cldice_empty_cases():
    z = np.zeros((8, 8, 8), bool)
    tube = np.zeros((8, 8, 8), bool)
    tube[3:6, 3:6, :] = True
    # official 2024 flaw: an empty prediction scores 1.0
    assert M.cldice_2024(z, tube) == pytest.approx(1.0)
    assert M.cldice_2024(z, z) == pytest.approx(1.0)
    assert math.isnan(M.cldice_2026(z, tube))
    assert math.isnan(M.cldice_2026(z, z))
    assert M.cldice_corrected(z, tube) == 0.0
    assert M.cldice_corrected(tube, z) == 0.0
    assert M.cldice_corrected(z, z) == 1.0
    assert M.cldice_2024(tube, tube) == pytest.approx(1.0)
    assert M.cldice_2026(tube, tube) == 1.0


def test_cldice_disjoint_masks():
    a = np.zeros((8, 8, 16), bool)
    b = a.copy()
    a[1:4, 1:4, :] = True
    b[5:8, 5:8, :] = True
    assert M.cldice_2024(a, b) == pytest.approx(1.0)  # both scores 0 -> smooth/smooth
    assert math.isnan(M.cldice_2026(a, b))  # panoptica: 0/0
    assert M.cldice_corrected(a, b) == 0.0


def test_cldice_partial_tube_known_value():
    """Prediction = half of a 1-voxel line: Tprec = 1, Tsens = 1/2 -> clDice = 2/3."""
    g = np.zeros((3, 3, 20), bool)
    g[1, 1, :] = True
    p = g.copy()
    p[1, 1, 10:] = False
    assert M.cldice_2026(p, g) == pytest.approx(2 / 3)
    assert M.cldice_corrected(p, g) == pytest.approx(2 / 3)
    assert M.cldice_2024(p, g) == pytest.approx((2 * 0.5 + 1e-6) / (1.5 + 1e-6))


def test_two_voxel_thick_bar_loses_its_skeleton_as_in_scikit_image():
    """scikit-image's Lee thinning erases 2x2 bars; the official variants inherit that, the
    corrected one falls back to the mask itself."""
    bar = np.zeros((6, 6, 12), bool)
    bar[2:4, 2:4, 1:11] = True
    assert not M.skeleton(bar).any()
    assert math.isnan(M.cldice_2026(bar, bar))
    assert M.cldice_2024(bar, bar) == pytest.approx(1.0)
    assert M.cldice_corrected(bar, bar) == 1.0
    half = bar.copy()
    half[:, :, 6:] = False
    assert M.cldice_corrected(half, bar) == pytest.approx(2 * 1 * 0.5 / 1.5)


def test_skeleton_of_single_voxels_and_lines():
    m = np.zeros((9, 9, 9), bool)
    m[1, 1, 1] = m[7, 7, 7] = True
    assert np.array_equal(M.skeleton(m), m)


# ------------------------------------------------------------------------- instances


def test_instance_scores_hand_example():
    g = np.zeros((10, 10, 30), bool)
    g[2:6, 2:6, 2:6] = True  # A: 64 voxels
    g[2:6, 2:6, 12:16] = True  # B: 64 voxels
    g[2:6, 2:6, 22:26] = True  # C: missed
    p = np.zeros_like(g)
    p[2:6, 2:6, 2:6] = True  # exact A
    p[2:6, 2:6, 13:17] = True  # B shifted by 1: I=48, IoU=48/80=0.6, Dice=0.75
    p[8:9, 8:9, 8:9] = True  # false positive
    s = M.instance_scores(p, g)
    assert (s.tp, s.n_pred, s.n_ref) == (2, 3, 3)
    assert s.rq == pytest.approx(2 / (2 + 0.5 + 0.5))
    assert s.sq_dsc == pytest.approx((1.0 + 0.75) / 2)
    assert s.pq == pytest.approx(0.875 * 2 / 3)
    assert s.recall == pytest.approx(2 / 3)


def test_iou_threshold_is_inclusive():
    g = np.zeros((1, 1, 20), bool)
    g[0, 0, 0:10] = True
    p = np.zeros_like(g)
    p[0, 0, 7:10] = True  # I=3, union=10 -> IoU exactly 0.3
    assert M.instance_scores(p, g).tp == 1
    p[0, 0, 7] = False  # IoU 0.2
    assert M.instance_scores(p, g).tp == 0


def test_greedy_matching_is_one_to_one():
    g = np.zeros((1, 3, 20), bool)
    g[0, 0, 0:10] = True
    g[0, 2, 0:10] = True
    p = np.zeros_like(g)
    p[0, :, 0:10] = True  # one prediction covering both references (IoU 1/3 each)
    s = M.instance_scores(p, g)
    assert (s.tp, s.n_pred, s.n_ref) == (1, 1, 2)


def test_instance_edge_cases():
    z = np.zeros((5, 5, 5), bool)
    o = z.copy()
    o[1:3, 1:3, 1:3] = True
    s = M.instance_scores(z, z)
    assert math.isnan(s.pq) and math.isnan(s.f1) and math.isnan(s.recall)
    s = M.instance_scores(o, z)
    assert (s.pq, s.f1) == (0.0, 0.0) and math.isnan(s.recall)
    s = M.instance_scores(z, o)
    assert (s.pq, s.f1, s.recall) == (0.0, 0.0, 0.0)


# ------------------------------------------------------------------------- case_metrics


def test_case_metrics_keys_and_protocol_variants():
    t = torus()
    p = t.copy()
    p[:, :, : t.shape[2] // 2] = False
    r24 = M.case_metrics(p, t, "selma3d2024")
    r26 = M.case_metrics(p, t, "selma3d2026")
    assert tuple(r24) == M.METRIC_COLUMNS == tuple(r26)
    assert r24["dice"] == r26["dice"]
    assert r24["betti1_error"] == 1 and r24["betti0_error"] == 0
    assert r26["cldice"] == pytest.approx(r26["cldice_corrected"])
    assert r24["cldice"] != r26["cldice"]  # smoothing differs
    assert r24["cldice"] == pytest.approx(r26["cldice"], abs=1e-5)


def test_case_metrics_empty_pred():
    g = ball((12, 12, 12), (6, 6, 6), 3)
    r = M.case_metrics(np.zeros_like(g), g, "selma3d2024")
    assert r["dice"] == 0.0 and r["cldice"] == pytest.approx(1.0) and r["cldice_corrected"] == 0.0
    assert (r["betti0_error"], r["betti1_error"]) == (1, 0)
    r = M.case_metrics(np.zeros_like(g), np.zeros_like(g), "selma3d2026")
    assert r["dice"] == 1.0 and math.isnan(r["cldice"]) and r["cldice_corrected"] == 1.0
    assert math.isnan(r["pq"]) and (r["betti0_error"], r["betti1_error"]) == (0, 0)


def test_case_metrics_ignore_mask():
    g = np.zeros((6, 6, 6), np.uint8)
    g[1:3, 1:3, 1:3] = 1
    p = g.copy()
    p[4:6, 4:6, 4:6] = 1  # a false positive, but in unannotated voxels
    ignore = np.zeros(g.shape, bool)
    ignore[4:, 4:, 4:] = True
    assert M.case_metrics(p, g, "selma3d2026")["dice"] < 1.0
    r = M.case_metrics(p, g, "selma3d2026", ignore=ignore)
    assert r["dice"] == 1.0 and r["pq"] == 1.0
    assert p[5, 5, 5] == 1  # the caller's array is untouched
    with pytest.raises(InputError, match="ignore mask"):
        M.case_metrics(p, g, "selma3d2026", ignore=ignore[:-1])


def test_case_metrics_input_errors():
    g = np.zeros((4, 4, 4))
    p = g.copy()
    p[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        M.case_metrics(p, g, "selma3d2024", case="c1")
    with pytest.raises(InputError, match="c7.*shape"):
        M.case_metrics(np.zeros((4, 4, 5)), g, "selma3d2026", case="c7")
    with pytest.raises(InputError, match="protocol"):
        M.case_metrics(g, g, "selma3d2099")
    with pytest.raises(InputError, match="3D"):
        M.case_metrics(np.zeros((4, 4)), np.zeros((4, 4)), "selma3d2026")
