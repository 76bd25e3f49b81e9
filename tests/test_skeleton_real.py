"""``metrics.skeleton`` equals a plain whole-volume ``skimage.morphology.skeletonize`` on real masks,
the bit-packed ``metrics.euler_characteristic`` equals ``skimage.measure.euler_number``, and
``case_metrics`` gives the same numbers with its skeletons thinned in background threads.

``skeleton`` runs scikit-image's thinning passes visiting only the voxels whose neighbourhood
changed (``selma3d.evaluation.thinning``); these tests check, voxel for voxel,
that this gives what the official evaluators compute (``skeletonize`` of the whole mask) on the real
ground truths in ``../shared/data/real`` — c-Fos spots (both brains), SELMA3D plaques, nuclei and
vessels, and the TRAILMAP axons (annotated on three z-slices only) — and on seeded perturbations
of each: dilation, erosion, shifts, dropped components, speckle noise and single or sparse z-slices
(the latter give many components one voxel thick along z, the case the crop used to get wrong).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from selma3d.evaluation import metrics as M
from selma3d.io import case_name, read_volume

#: real-data groups: (folder under the real-data root, glob of its masks)
GROUPS = {
    "cfos_brain695": ("cfos_brain695/gt", "*.nii.gz"),
    "cfos_brain753": ("cfos_brain753/gt", "*.nii.gz"),
    "selma_lsmfm_train": ("selma_lsmfm/train", "*_label.nii.gz"),
    "selma_lsmfm_val": ("selma_lsmfm/val", "*_label.nii.gz"),
    "axon_trailmap": ("axon_trailmap", "label.tif"),
}
SEEDS = (0, 1)
FACE = ndi.generate_binary_structure(3, 1)
IN_PLANE = np.zeros((3, 3, 3), bool)
IN_PLANE[1] = ndi.generate_binary_structure(2, 2)  # 8-connected (y, x) disc, one slice thick


def load_masks(real_data: Path, group: str) -> dict[str, np.ndarray]:
    folder, pattern = GROUPS[group]
    paths = sorted((real_data / folder).glob(pattern))
    if not paths:
        pytest.skip(f"no {pattern} under {real_data / folder}")
    out = {}
    for path in paths:
        data = read_volume(path).data  # (z, y, x), as the evaluators read it
        # TRAILMAP labels: 2 = axon, 4 = axon edge (both axon); 0 unlabelled, 1 background
        out[case_name(path)] = np.isin(data, (2, 4)) if group == "axon_trailmap" else data > 0
    return out


def shift(m: np.ndarray, offset) -> np.ndarray:
    """Translate with zero fill (what leaves the volume is lost)."""
    out = np.zeros_like(m)
    src = tuple(slice(max(0, -o), m.shape[a] - max(0, o)) for a, o in enumerate(offset))
    dst = tuple(slice(max(0, o), m.shape[a] - max(0, -o)) for a, o in enumerate(offset))
    out[dst] = m[src]
    return out


def perturbations(m: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Seeded variants of a real mask, each a plausible prediction or annotation."""
    rng = np.random.default_rng(seed)
    lab, n = M._label26(m)
    out = {
        "dilate": ndi.binary_dilation(m, FACE, iterations=1 + seed),
        "dilate_in_plane": ndi.binary_dilation(m, IN_PLANE),
        "erode": ndi.binary_erosion(m, FACE) if seed == 0 else ndi.binary_erosion(m, IN_PLANE),
        "shift": shift(m, rng.integers(-7, 8, size=3)),
        "drop": np.isin(lab, rng.choice(np.arange(1, n + 1), size=n - n // 3, replace=False)) if n else m,
        "speckle": (m & (rng.random(m.shape) > 0.05)) | (rng.random(m.shape) < 3e-4),
        # every third z-slice (a sparsely annotated stack) and the fullest slice alone: many
        # components (or all of them, large ones included) one voxel thick along z
        "sparse_slices": m & (np.arange(m.shape[0]) % 3 == seed)[:, None, None],
        "single_slice": m & (np.arange(m.shape[0]) == np.argsort(m.sum(axis=(1, 2)))[-1 - seed])[:, None, None],
    }
    out["combo"] = shift(ndi.binary_dilation(out["speckle"], IN_PLANE), rng.integers(-3, 4, size=3))
    return out


def cases(masks: dict[str, np.ndarray]):
    for name, m in masks.items():
        yield name, m
        for seed in SEEDS:
            for kind, p in perturbations(m, seed).items():
                yield f"{name}/{kind}/seed{seed}", p


@pytest.mark.parametrize("group", list(GROUPS))
def test_skeleton_identical_to_whole_volume_skeletonize_on_real_masks(real_data, group):
    from skimage.morphology import skeletonize

    differing, n_cases = [], 0
    for name, m in cases(load_masks(real_data, group)):
        n_cases += 1
        ref = skeletonize(m)
        bad = int(np.count_nonzero(M.skeleton(m) != ref))
        if bad:
            differing.append(f"{name}: {bad} voxels")
    assert not differing, f"{len(differing)}/{n_cases} cases differ from skeletonize:\n" + "\n".join(differing)


@pytest.mark.parametrize("group", list(GROUPS))
def test_euler_characteristic_equals_scikit_image_on_real_masks(real_data, group):
    """The Euler characteristic counts bit-packed planes; scikit-image counts 2×2×2 configurations."""
    from skimage.measure import euler_number

    differing, n_cases = [], 0
    for name, m in cases(load_masks(real_data, group)):
        n_cases += 1
        ours, ref = M.euler_characteristic(m), int(euler_number(np.pad(m, 1), connectivity=3))
        if ours != ref:
            differing.append(f"{name}: {ours} != {ref}")
    assert n_cases and not differing, f"{len(differing)}/{n_cases} cases differ:\n" + "\n".join(differing)


@pytest.mark.parametrize("group", ["cfos_brain753", "selma_lsmfm_val", "axon_trailmap"])
def test_case_metrics_threaded_equal_sequential_on_real_masks(real_data, group):
    """``threads=2`` (skeletons thinned beside the labelling) changes no number, NaNs included."""
    for name, m in load_masks(real_data, group).items():
        for kind, p in perturbations(m, 0).items():
            for protocol in M.PROTOCOLS:
                one = M.case_metrics(p, m, protocol)
                two = M.case_metrics(p, m, protocol, threads=2)
                assert one.keys() == two.keys()
                for k in one:
                    assert one[k] == two[k] or (np.isnan(one[k]) and np.isnan(two[k])), (name, kind, protocol, k)


def test_skeleton_of_real_vessels_in_a_larger_volume_and_transposed(real_data):
    """Position in the volume, padding and axis order change nothing but what they should."""
    from skimage.morphology import skeletonize

    for name, m in load_masks(real_data, "selma_lsmfm_val").items():
        big = np.pad(m, ((3, 0), (0, 5), (7, 2)))
        assert np.array_equal(M.skeleton(big), skeletonize(big)), name
        t = np.ascontiguousarray(m.transpose(2, 0, 1))
        assert np.array_equal(M.skeleton(t), skeletonize(t)), name
        assert np.array_equal(M.skeleton(m[::-1]), skeletonize(m[::-1])), name


@pytest.mark.parametrize("shape", [(1, 12, 12), (2, 12, 12), (7, 12, 12)])
@pytest.mark.parametrize("z", [0, -1, 3])
def test_component_one_voxel_thick_along_z(shape, z):
    """A flat component: scikit-image thins a (1, h, w) image in-plane only (4 of its 6 directions);
    a crop of it must not be thinned that way unless the whole volume is one slice thick."""
    from skimage.morphology import skeletonize

    m = np.zeros(shape, bool)
    z = min(z, shape[0] - 1)
    m[z, 2:7, 2:7] = True  # a 5x5 square
    m[z, 9:11, 3:10] = True  # a 2x7 bar
    m[z, 10, 11] = True  # and one diagonal neighbour (same component as the bar)
    assert np.array_equal(M.skeleton(m), skeletonize(m))
