"""Component filtering of a volume too large for memory: exact, slab by slab.

The post-processing a model calibrates on validation (:mod:`selma3d.inference.postprocess`)
keeps a 26-connected component of ``prob > threshold`` when it has at least ``min_size`` voxels
and a voxel of probability above ``peak``. On a test patch that is one ``cc3d`` call; a whole
brain does not fit in memory, and a component (an axon, a vessel) may cross any slab.

:func:`filter_components` reads the probability in slabs of whole planes, twice:

1. per slab, ``cc3d`` labels; per label, its voxel count and whether it holds a peak voxel;
   labels on the two planes either side of each slab face that touch (the 9 in-plane offsets of
   26-connectivity) are joined by an edge;
2. the connected components of that label graph (``scipy.sparse.csgraph``) are the volume's
   components: sizes are summed and peaks or-ed over each, and a second read labels each slab
   again (``cc3d`` is deterministic) and writes the kept labels.

The result equals :func:`selma3d.inference.postprocess.apply_postprocess` on the whole array
(``tests/test_components.py``). Memory: one slab of probabilities and labels, two planes of
labels, and a few bytes per label of the volume.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from tqdm import tqdm


def face_edges(below: np.ndarray, above: np.ndarray) -> np.ndarray:
    """(n, 2) unique pairs of labels (both non-zero) of two adjacent planes that are
    26-neighbours: a voxel of ``below`` at (y, x) touches ``above`` at (y + dy, x + dx) for
    dy, dx in {-1, 0, 1}."""
    Y, X = below.shape
    pairs = []
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            a = below[max(0, -dy):Y - max(0, dy), max(0, -dx):X - max(0, dx)]
            b = above[max(0, dy):Y - max(0, -dy), max(0, dx):X - max(0, -dx)]
            both = (a != 0) & (b != 0)
            if both.any():
                pairs.append(np.stack([a[both], b[both]], axis=1))
    if not pairs:
        return np.zeros((0, 2), dtype=np.int64)
    return np.unique(np.concatenate(pairs).astype(np.int64), axis=0)


def filter_components(read: Callable[[int, int], np.ndarray], shape: Sequence[int], write: Callable[[int, np.ndarray], None],
                      threshold: float, min_size: int = 0, peak: float = 0.0, slab: int = 32,
                      progress: bool = False) -> dict:
    """Write ``prob > threshold`` without the 26-connected components of fewer than ``min_size``
    voxels or with no voxel of ``prob > peak``, slab by slab.

    Args:
        read: ``read(z0, z1)`` returns the probabilities of planes ``z0:z1`` (all of y and x).
        shape: the volume's (z, y, x).
        write: ``write(z0, mask)`` stores the uint8 mask of planes ``z0:z0 + len(mask)``; called in
            order of ``z0``, with slabs of ``slab`` planes (the last may be thinner).
        threshold, min_size, peak: the post-processing (``min_size`` <= 1 and ``peak`` 0: none).
        slab: planes per read (memory is about ``slab * y * x * 9`` bytes).
    Returns:
        ``{"components": found, "kept": kept}``.
    """
    import cc3d
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    Z = int(shape[0])
    if slab < 1:
        raise ValueError(f"slab: expected at least 1 plane, found {slab}")
    starts = list(range(0, Z, int(slab)))

    def labelled(z0):
        prob = np.asarray(read(z0, min(Z, z0 + slab)))
        mask = prob > threshold  # as apply_postprocess compares (the scalar takes the array's dtype)
        labels, n = cc3d.connected_components(mask.view(np.uint8), connectivity=26, return_N=True)
        return prob, mask, labels.astype(np.int64, copy=False), int(n)

    offsets, counts, sizes, peaked, edges = [], [], [np.zeros(1, np.int64)], [np.zeros(1, bool)], []
    total, last = 0, None
    for z0 in tqdm(starts, desc="components, pass 1", unit="slab", disable=not progress):
        prob, mask, labels, n = labelled(z0)

        def glob(plane, offset=total):  # a face plane's labels, numbered across the volume
            return np.where(plane > 0, plane + offset, 0)

        sizes.append(np.bincount(labels.ravel(), minlength=n + 1)[1:])
        seed = np.zeros(n + 1, dtype=bool)
        seed[labels[mask & (prob > peak)]] = True
        peaked.append(seed[1:])
        if last is not None:
            edges.append(face_edges(last, glob(labels[0])))
        last = glob(labels[-1])
        offsets.append(total)
        counts.append(n)
        total += n
    size = np.concatenate(sizes)  # index = global label (0: background)
    seed = np.concatenate(peaked)
    pairs = np.concatenate(edges) if edges else np.zeros((0, 2), dtype=np.int64)
    graph = coo_matrix((np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])), shape=(total + 1,) * 2)
    n_comp, comp = connected_components(graph, directed=False)
    comp_size = np.bincount(comp, weights=size, minlength=n_comp)
    comp_seed = np.bincount(comp, weights=seed.astype(np.float64), minlength=n_comp) > 0
    keep = (comp_size[comp] >= max(1, int(min_size))) & comp_seed[comp]
    keep[0] = False
    for z0, offset, n in tqdm(list(zip(starts, offsets, counts)), desc="components, pass 2", unit="slab",
                              disable=not progress):
        _, _, labels, _ = labelled(z0)
        local = np.concatenate([[False], keep[offset + 1:offset + n + 1]])  # this slab's labels, 0 dropped
        write(z0, local[labels].astype(np.uint8))
    found = int(n_comp - 1)  # label 0 is a component of its own
    kept = int(len(np.unique(comp[keep]))) if keep.any() else 0
    return {"components": found, "kept": kept}
