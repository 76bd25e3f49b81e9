"""Slab-wise component filtering equals the whole-array post-processing, on real and synthetic
probabilities, whatever the slab thickness."""

from __future__ import annotations

import numpy as np
import pytest

from selma3d.inference.components import face_edges, filter_components
from selma3d.inference.postprocess import apply_postprocess


def run_slabs(prob, threshold, min_size, peak, slab):
    out = np.full(prob.shape, 7, dtype=np.uint8)
    calls = []

    def write(z0, mask):
        calls.append(z0)
        out[z0:z0 + len(mask)] = mask

    stats = filter_components(lambda a, b: prob[a:b], prob.shape, write, threshold, min_size, peak, slab=slab)
    assert calls == list(range(0, prob.shape[0], slab))  # every slab written once, in order
    return out, stats


def blobs(shape, seed):
    """Smoothed noise: components of every size that wander across planes, diagonals included."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    p = gaussian_filter(rng.random(shape, dtype=np.float32), 1.2)
    return ((p - p.min()) / (p.max() - p.min())).astype(np.float32)


@pytest.mark.parametrize("slab", [1, 2, 5, 16, 64])
@pytest.mark.parametrize("threshold,min_size,peak", [(0.55, 0, 0.0), (0.55, 6, 0.0), (0.5, 0, 0.7), (0.5, 20, 0.66)])
def test_slabs_equal_the_whole_array(slab, threshold, min_size, peak):
    prob = blobs((23, 30, 28), seed=slab)
    want = apply_postprocess(prob, threshold, min_size, peak)
    got, stats = run_slabs(prob, threshold, min_size, peak, slab)
    np.testing.assert_array_equal(got, want)
    import cc3d

    assert stats["components"] == cc3d.connected_components(prob > threshold, connectivity=26, return_N=True)[1]
    assert stats["kept"] == cc3d.connected_components(want, connectivity=26, return_N=True)[1]


def test_diagonal_contacts_across_a_face_join_components():
    """Two voxels touching only by a corner across the slab face are one component (26-connectivity)."""
    prob = np.zeros((4, 5, 5), np.float32)
    prob[1, 1, 1] = prob[2, 2, 2] = 0.9  # corner contact across the face between planes 1 and 2
    prob[2, 4, 0] = 0.9  # alone
    got, stats = run_slabs(prob, 0.5, 2, 0.0, slab=2)
    assert got[1, 1, 1] == got[2, 2, 2] == 1 and got[2, 4, 0] == 0 and stats == {"components": 2, "kept": 1}
    assert face_edges(np.array([[1, 0], [0, 0]]), np.array([[0, 0], [0, 3]])).tolist() == [[1, 3]]


@pytest.mark.parametrize("name", ["cfos_brain753/raw/patchvolume_753_0.nii.gz",
                                  "selma_lsmfm/val/vessels_patch_017_vol006_ch1.nii.gz"])
def test_real_patches_filter_exactly(real_data, name):
    """Real c-Fos cells and real vessels (components that cross many slabs): the normalised
    intensity as the score, thresholds and peaks at its upper quantiles."""
    import nibabel as nib

    from selma3d.preprocess.normalize import percentile_scale

    img = np.asarray(nib.load(str(real_data / name)).dataobj, dtype=np.float32)
    prob = ((percentile_scale(img) + 1) / 2).astype(np.float32)
    thr = float(np.quantile(prob, 0.95))
    for min_size, peak in ((0, 0.0), (8, 0.0), (3, float(np.quantile(prob, 0.995)))):
        want = apply_postprocess(prob, thr, min_size, peak)
        assert 0 < want.sum() < (prob > thr).sum() or min_size == 0
        got, _ = run_slabs(prob, thr, min_size, peak, slab=7)
        np.testing.assert_array_equal(got, want)
