"""Geometry of the synthetic structures, built in micrometres and sampled on the voxel grid.

Objects are defined in physical (isotropic) coordinates and rasterised onto the anisotropic
(z, y, x) grid, voxel centre ``index * spacing``. Each generator returns a :class:`Scene`: the
binary ground-truth mask and the fluorophore density (0 = none, ~1 = a typical object) before
optics. Rendering is vectorised: blobs in batches of equal-sized boxes, tubes by nearest-sample
queries on a KD-tree over densely sampled centre lines.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import binary_dilation, gaussian_filter1d
from scipy.spatial import cKDTree

Array = np.ndarray

#: elements per vectorised batch of blob boxes (bounds peak memory to ~100 MB)
_BATCH_ELEMENTS = 2_000_000


@dataclass
class Scene:
    """Ground truth and fluorophore density of one field of view, (z, y, x)."""

    label: Array  # uint8 {0,1}
    density: Array  # float32 >= 0

    @classmethod
    def empty(cls, shape) -> "Scene":
        return cls(np.zeros(shape, np.uint8), np.zeros(shape, np.float32))


def extent_um(shape, spacing) -> Array:
    """Physical size of the grid in µm, (z, y, x)."""
    return np.asarray(shape, float) * np.asarray(spacing, float)


def random_rotations(rng: np.random.Generator, n: int) -> Array:
    """n uniformly random 3x3 rotation matrices (QR of Gaussian matrices, sign-fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((n, 3, 3)))
    q = q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]
    det = np.linalg.det(q)
    q[:, :, 0] *= det[:, None]
    return q


def random_directions(rng: np.random.Generator, n: int) -> Array:
    v = rng.standard_normal((n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def packed_centres(rng: np.random.Generator, lo: Array, hi: Array, n: int, min_dist: float) -> Array:
    """Up to n points uniform in the box [lo, hi) µm, no two closer than min_dist (dart throwing).

    Why: dense nuclei and microglia territories must not merge into one object, as real
    cells rarely do.
    """
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    if n <= 0:
        return np.zeros((0, 3))
    cand = lo + rng.random((3 * n, 3)) * (hi - lo)
    if min_dist <= 0:
        return cand[:n]
    neighbours = cKDTree(cand).query_ball_point(cand, min_dist)
    removed = np.zeros(len(cand), bool)
    keep = []
    for i, nb in enumerate(neighbours):
        if removed[i]:
            continue
        keep.append(i)
        removed[nb] = True
        if len(keep) == n:
            break
    return cand[keep]


def _half_voxel_along(d: Array, spacing: Array, norm: Array) -> Array:
    """Half the voxel's extent (µm) along the unit direction d/|d|; the partial-volume width."""
    safe = np.where(norm > 0, norm, 1.0)
    h = 0.5 * np.sqrt(sum((spacing[i] * d[i] / safe) ** 2 for i in range(3)))
    return np.where(norm > 0, h, 0.5 * spacing.min())


def render_blobs(scene: Scene, spacing, centres: Array, radii: Array, rotations: Array,
                 brightness: Array, kind: str = "plain", rng: np.random.Generator | None = None,
                 margin: float = 1.0) -> None:
    """Rasterise ellipsoidal objects into ``scene`` (label: inside; density: max of profiles).

    Args:
        centres: (n, 3) µm; radii: (n, 3) semi-axes µm in the object frame;
        rotations: (n, 3, 3) object-to-grid rotations; brightness: (n,) relative.
        kind: intensity profile — ``plain`` (flat, slightly brighter centre), ``plaque``
            (irregular outline, dense core, fuzzy halo beyond the mask).
        margin: box size in units of the largest semi-axis (halo room for plaques).
    """
    n = len(centres)
    if n == 0:
        return
    spacing = np.asarray(spacing, float)
    shape = np.asarray(scene.label.shape)
    rmax = radii.max() * margin + spacing.max()
    half = np.ceil(rmax / spacing).astype(int)
    box = 2 * half + 1
    offs = [np.arange(-half[i], half[i] + 1) for i in range(3)]
    if kind == "plaque":
        if rng is None:
            raise ValueError("kind='plaque' needs an rng for its irregular outline")
        # irregular outline: per object, radial modulation by a few random cosine waves
        n_waves = 5
        wave_dir = random_directions(rng, n * n_waves).reshape(n, n_waves, 3)
        wave_k = rng.uniform(1.5, 4.0, (n, n_waves))
        wave_phase = rng.uniform(0, 2 * np.pi, (n, n_waves))
        wave_amp = rng.uniform(0.04, 0.12, (n, n_waves))
    per = int(np.prod(box))
    step = max(1, _BATCH_ELEMENTS // per)
    lab_flat = scene.label.reshape(-1)
    den_flat = scene.density.reshape(-1)
    for s in range(0, n, step):
        sl = slice(s, min(n, s + step))
        c = centres[sl]
        base = np.rint(c / spacing).astype(int)  # (b, 3)
        idx = [base[:, i, None] + offs[i][None, :] for i in range(3)]  # (b, box_i)
        # displacement from centre, µm, broadcast to (b, bz, by, bx)
        dz = (idx[0] * spacing[0] - c[:, 0, None])[:, :, None, None]
        dy = (idx[1] * spacing[1] - c[:, 1, None])[:, None, :, None]
        dx = (idx[2] * spacing[2] - c[:, 2, None])[:, None, None, :]
        R = rotations[sl]
        a = radii[sl]
        rho2 = np.zeros((len(c),) + tuple(box), np.float32)
        for k in range(3):  # object-frame coordinate k = sum_j R[j, k] d_j
            u = R[:, 0, k, None, None, None] * dz + R[:, 1, k, None, None, None] * dy \
                + R[:, 2, k, None, None, None] * dx
            rho2 += (u / a[:, k, None, None, None]) ** 2
        rho = np.sqrt(rho2)
        dist = np.sqrt(dz ** 2 + dy ** 2 + dx ** 2)
        if kind == "plaque":
            safe = np.where(dist > 0, dist, 1.0)
            mod = np.ones_like(rho)
            for w in range(n_waves):
                wd = wave_dir[sl, w]
                proj = (wd[:, 0, None, None, None] * dz + wd[:, 1, None, None, None] * dy
                        + wd[:, 2, None, None, None] * dx) / safe
                mod += wave_amp[sl, w, None, None, None] * np.cos(
                    wave_k[sl, w, None, None, None] * np.pi * proj + wave_phase[sl, w, None, None, None])
            rho = rho / mod
        # partial-volume edge width in rho units: half a voxel along the radial direction
        h = _half_voxel_along((dz, dy, dx), spacing, dist) / a.mean(axis=1)[:, None, None, None]
        inside = rho <= 1.0
        edge = np.clip((1.0 - rho) / (2 * h) + 0.5, 0.0, 1.0)
        b = brightness[sl, None, None, None]
        if kind == "plaque":
            core = np.exp(-(rho / 0.45) ** 2)
            halo = 0.45 * np.exp(-((rho / 1.15) ** 4))
            val = b * (core + halo * (0.6 + 0.4 * edge))
        else:
            val = b * edge * (1.0 - 0.25 * np.minimum(rho, 1.0) ** 2)
        valid = np.ones(val.shape, bool)
        for i, ax in enumerate((1, 2, 3)):
            ok = (idx[i] >= 0) & (idx[i] < shape[i])
            valid &= np.expand_dims(ok, [d for d in (1, 2, 3) if d != ax])
        flat = (idx[0][:, :, None, None] * shape[1] + idx[1][:, None, :, None]) * shape[2] \
            + idx[2][:, None, None, :]
        flat = np.broadcast_to(flat, val.shape)
        lab_flat[flat[valid & inside]] = 1
        keep = valid & (val > 1e-3)
        np.maximum.at(den_flat, flat[keep], val[keep].astype(np.float32))


@dataclass
class Curve:
    """A sampled centre line: points (n, 3) µm, radius (n,) µm, brightness (n,)."""

    points: Array
    radius: Array
    brightness: Array


def tortuous_path(rng: np.random.Generator, start: Array, direction: Array, length: float,
                  step: float, tortuosity: float, correlation_um: float = 15.0) -> Array:
    """Points of a smooth meandering path heading along ``direction`` overall.

    The local direction is ``direction + tortuosity * g(s)``, with g a stationary, smooth
    (Gaussian-correlated over ``correlation_um``) random vector of unit sd per component, so
    the path wiggles like a spline around a straight line instead of drifting away.
    """
    n = max(2, int(np.ceil(length / step)) + 1)
    sigma = max(correlation_um / step, 1.0)
    pad = int(3 * sigma)
    g = gaussian_filter1d(rng.standard_normal((n + 2 * pad, 3)), sigma, axis=0, mode="wrap")[pad:pad + n]
    sd = g.std(axis=0, keepdims=True)
    g = g / np.where(sd > 1e-9, sd, 1.0)
    d0 = np.asarray(direction, float)
    dirs = d0[None, :] / np.linalg.norm(d0) + tortuosity * g
    dirs /= np.maximum(np.linalg.norm(dirs, axis=1, keepdims=True), 1e-9)
    steps = np.concatenate([np.zeros((1, 3)), dirs[:-1] * step])
    return np.asarray(start, float) + np.cumsum(steps, axis=0)


def _smooth_noise_1d(rng: np.random.Generator, n: int, sigma_samples: float) -> Array:
    v = gaussian_filter1d(rng.standard_normal(n), max(sigma_samples, 1.0), mode="nearest")
    v = v - v.mean()
    sd = v.std()
    return v / sd if sd > 1e-6 else np.zeros(n)


def branching_tree(rng: np.random.Generator, start: Array, direction: Array, radius: float,
                   length: float, step: float, tortuosity: float, *, generations: int,
                   branches: tuple[int, int], angle_deg: tuple[float, float], child_ratio: tuple[float, float],
                   length_ratio: float, min_radius: float, brightness: float, taper: float = 0.85,
                   correlation_um: float = 15.0) -> list[Curve]:
    """A random tree of tortuous tubes: each branch tapers and spawns children along its length.

    Why: vessels and glial processes branch with shrinking radius; children start on the
    parent's centre line so the tree is one connected object.
    """
    out: list[Curve] = []
    stack = [(np.asarray(start, float), np.asarray(direction, float), radius, length, 0)]
    while stack:
        p0, d0, r0, L, gen = stack.pop()
        pts = tortuous_path(rng, p0, d0, L, step, tortuosity, correlation_um)
        n = len(pts)
        t = np.linspace(0.0, 1.0, n)
        rad = r0 * (1.0 - (1.0 - taper) * t) * np.exp(0.08 * _smooth_noise_1d(rng, n, 10.0 / step))
        rad = np.maximum(rad, min_radius)
        bright = brightness * np.exp(0.15 * _smooth_noise_1d(rng, n, 20.0 / step))
        out.append(Curve(pts, rad, bright))
        if gen + 1 >= generations:
            continue
        for _ in range(int(rng.integers(branches[0], branches[1] + 1))):
            j = int(rng.integers(int(0.2 * n), n))
            tangent = pts[min(j + 1, n - 1)] - pts[max(j - 1, 0)]
            tangent /= max(np.linalg.norm(tangent), 1e-9)
            ortho = random_directions(rng, 1)[0]
            ortho -= ortho.dot(tangent) * tangent
            ortho /= max(np.linalg.norm(ortho), 1e-9)
            ang = np.deg2rad(rng.uniform(*angle_deg))
            child_dir = np.cos(ang) * tangent + np.sin(ang) * ortho
            r_child = rad[j] * rng.uniform(*child_ratio)
            if r_child < min_radius:
                continue
            stack.append((pts[j], child_dir, r_child, L * length_ratio * rng.uniform(0.7, 1.3), gen + 1))
    return out


def render_tubes(scene: Scene, spacing, curves: list[Curve], wall: float = 0.0) -> None:
    """Rasterise tubes: label = voxels the centre line passes through or whose centre lies
    within the radius; density = partial-volume profile (thin fibres stay visible).

    The "passes through" test (a sample within half a voxel, Chebyshev, in voxel units)
    keeps fibres thinner than a voxel connected, as an annotator would trace them.
    ``wall`` > 0 brightens the tube wall (lectin/CD31-stained vessels look hollow-ish).
    """
    curves = [c for c in curves if len(c.points)]
    if not curves:
        return
    spacing = np.asarray(spacing, float)
    shape = np.asarray(scene.label.shape)
    P = np.concatenate([c.points for c in curves])
    rad = np.concatenate([c.radius for c in curves])
    bri = np.concatenate([c.brightness for c in curves])
    vox = P / spacing
    inb = np.all((vox > -3) & (vox < shape + 2), axis=1)
    if not inb.any():
        return
    P, rad, bri, vox = P[inb], rad[inb], bri[inb], vox[inb]
    reach = float(rad.max()) + 1.5 * spacing.max()  # density < 1 % beyond
    # candidate voxels: coarse blocks holding a sample, dilated by one block
    block = np.maximum(np.ceil(reach / spacing).astype(int), 1)
    cshape = shape // block + 1
    cb = np.clip(np.floor(vox / block).astype(int), 0, cshape - 1)
    coarse = np.zeros(tuple(cshape), bool)
    coarse[cb[:, 0], cb[:, 1], cb[:, 2]] = True
    coarse = binary_dilation(coarse, np.ones((3, 3, 3), bool))
    fine = coarse.repeat(block[0], 0).repeat(block[1], 1).repeat(block[2], 2)
    fine = fine[: shape[0], : shape[1], : shape[2]]
    cand = np.flatnonzero(fine)
    if cand.size == 0:
        return
    cz, rem = np.divmod(cand, shape[1] * shape[2])
    cy, cx = np.divmod(rem, shape[2])
    q = np.stack([cz, cy, cx], axis=1).astype(float)
    tree = cKDTree(P)
    dist, nearest = tree.query(q * spacing, k=1, distance_upper_bound=reach)
    hit = np.isfinite(dist)
    # a sample within half a voxel (Chebyshev) is within 0.5*|spacing| µm (Euclidean)
    near = np.flatnonzero(dist <= 0.5 * np.linalg.norm(spacing) + 1e-6)
    cover_d, _ = cKDTree(vox).query(q[near], k=1, p=np.inf, distance_upper_bound=0.5 + 1e-6)
    through = np.zeros(len(q), bool)
    through[near[np.isfinite(cover_d)]] = True
    j = np.where(hit, nearest, 0)
    d = (q * spacing - P[j]).T
    h = _half_voxel_along(d, spacing, np.where(hit, dist, 0.0))
    r = rad[j]
    dd = np.where(hit, dist, np.inf)
    inside = (dd <= r) | through
    outside = np.maximum(dd - r, 0.0)
    val = bri[j] * np.minimum(1.0, r / h) * np.exp(-0.5 * (outside / h) ** 2)
    if wall > 0:
        val *= (1.0 - wall) + wall * np.clip(dd / np.maximum(r, 1e-6), 0.0, 1.0) ** 2
    val = np.where(hit, val, 0.0)
    lab = scene.label.reshape(-1)
    den = scene.density.reshape(-1)
    lab[cand[inside]] = 1
    den[cand] = np.maximum(den[cand], val.astype(np.float32))


# ----------------------------------------------------------------------------------------
# the structures


def _count(rate_per_mm3: float, volume_um3: float, density: float, rng: np.random.Generator) -> int:
    return int(rng.poisson(rate_per_mm3 * volume_um3 * 1e-9 * density))


def _padded_box(E: Array, pad: float) -> tuple[Array, Array]:
    return -np.full(3, pad), E + pad


def cfos_neuron(shape, spacing, rng, density: float = 1.0) -> Scene:
    """Isolated sparse: small bright, roughly spherical nuclei of active neurons (r 3.5–6 µm)."""
    scene = Scene.empty(shape)
    E = extent_um(shape, spacing)
    lo, hi = _padded_box(E, 6.0)
    n = _count(4000, np.prod(hi - lo), density, rng)
    c = packed_centres(rng, lo, hi, n, 14.0)
    r0 = rng.uniform(3.5, 6.0, len(c))
    radii = r0[:, None] * rng.uniform(0.85, 1.15, (len(c), 3))
    bright = rng.lognormal(0.0, 0.35, len(c))
    # a few very bright cells: real c-Fos data saturates the camera on some nuclei
    bright = np.where(rng.random(len(c)) < 0.04, bright * rng.uniform(6, 14, len(c)), bright)
    render_blobs(scene, spacing, c, radii, random_rotations(rng, len(c)), bright, margin=1.2)
    return scene


def cell_nuclei(shape, spacing, rng, density: float = 1.0) -> Scene:
    """Isolated dense: many packed ellipsoidal nuclei (semi-axes 2.5–5.5 µm)."""
    scene = Scene.empty(shape)
    E = extent_um(shape, spacing)
    lo, hi = _padded_box(E, 5.0)
    n = _count(700_000, np.prod(hi - lo), density, rng)
    c = packed_centres(rng, lo, hi, n, 9.0)
    a = rng.uniform(3.0, 4.3, len(c))
    radii = np.stack([a * rng.uniform(1.0, 1.35, len(c)), a, a * rng.uniform(0.75, 1.0, len(c))], axis=1)
    bright = rng.lognormal(0.0, 0.25, len(c))
    render_blobs(scene, spacing, c, radii, random_rotations(rng, len(c)), bright, margin=1.15)
    return scene


def ad_plaques(shape, spacing, rng, density: float = 1.0) -> Scene:
    """Isolated sparse: larger irregular amyloid-β plaques, dense core and fuzzy halo (r 6–18 µm)."""
    scene = Scene.empty(shape)
    E = extent_um(shape, spacing)
    lo, hi = _padded_box(E, 12.0)
    n = _count(2500, np.prod(hi - lo), density, rng)
    c = packed_centres(rng, lo, hi, n, 40.0)
    r0 = rng.lognormal(np.log(9.0), 0.3, len(c)).clip(5.0, 18.0)
    radii = r0[:, None] * rng.uniform(0.8, 1.2, (len(c), 3))
    bright = rng.lognormal(0.3, 0.4, len(c))
    render_blobs(scene, spacing, c, radii, random_rotations(rng, len(c)), bright, kind="plaque",
                 rng=rng, margin=1.7)
    return scene


def _through_interior(rng: np.random.Generator, E: Array, direction: Array, length: float) -> Array:
    """Start point of a straight-ish path of ``length`` whose middle is a random interior point."""
    return rng.random(3) * E - 0.5 * length * direction


def blood_vessel(shape, spacing, rng, density: float = 1.0) -> Scene:
    """Contiguous dense: a branching network of tortuous tubes, radius 7 µm down to 2 µm."""
    scene = Scene.empty(shape)
    E = extent_um(shape, spacing)
    step = 0.5 * float(np.min(spacing))
    vol = float(np.prod(E + 60.0))
    n_trees = max(1, int(rng.poisson(vol * 1e-9 * 3500 * density)))
    curves: list[Curve] = []
    for _ in range(n_trees):
        d = random_directions(rng, 1)[0]
        L = float(rng.uniform(100, 180))
        p = _through_interior(rng, E, d, 0.6 * L)
        r = float(rng.uniform(2.5, 7.0))
        curves += branching_tree(rng, p, d, r, length=L, step=step,
                                 tortuosity=0.35, generations=4, branches=(1, 3), angle_deg=(35, 80),
                                 child_ratio=(0.6, 0.85), length_ratio=0.7, min_radius=2.0,
                                 brightness=float(rng.lognormal(0, 0.2)))
    render_tubes(scene, spacing, curves, wall=0.3)
    return scene


def axonalmarker(shape, spacing, rng, density: float = 1.0) -> Scene:
    """Contiguous sparse: long thin tortuous fibres (r 0.5–1.2 µm) with varicosities."""
    scene = Scene.empty(shape)
    E = extent_um(shape, spacing)
    step = 0.5 * float(np.min(spacing))
    area = float(np.prod(np.sort(E)[1:]))  # fibres cross the volume: count scales with a face
    n = max(1, int(rng.poisson(area * 1e-6 * 900 * density)))
    # a preferred tract direction per field of view, as in real fibre bundles
    tract = random_directions(rng, 1)[0]
    curves: list[Curve] = []
    for _ in range(n):
        d = tract + 0.7 * random_directions(rng, 1)[0]
        d /= np.linalg.norm(d)
        L = float(np.linalg.norm(E)) * rng.uniform(1.0, 1.8)
        p = _through_interior(rng, E, d, L)
        pts = tortuous_path(rng, p, d, L, step, tortuosity=0.45, correlation_um=12.0)
        m = len(pts)
        s = np.arange(m) * step
        period = rng.uniform(4.0, 9.0)
        bead = np.maximum(0.0, np.sin(2 * np.pi * s / period + rng.uniform(0, 2 * np.pi))) ** 6
        r0 = rng.uniform(0.5, 1.2)
        radius = r0 * (1.0 + 0.5 * bead)
        bright = rng.lognormal(0.0, 0.3) * np.exp(0.2 * _smooth_noise_1d(rng, m, 15.0 / step)) * (1 + 0.3 * bead)
        curves.append(Curve(pts, radius, bright))
        if rng.random() < 0.3:  # a collateral branch
            j = int(rng.integers(m // 4, max(m // 4 + 1, 3 * m // 4)))
            cd = random_directions(rng, 1)[0]
            cp = tortuous_path(rng, pts[j], cd, L * 0.4, step, tortuosity=0.45, correlation_um=12.0)
            k = len(cp)
            curves.append(Curve(cp, np.full(k, r0 * 0.8), np.full(k, bright.mean() * 0.8)))
    render_tubes(scene, spacing, curves)
    return scene


def microglia(shape, spacing, rng, density: float = 1.0) -> Scene:
    """Isolated (tree-like) microglia: soma 3–5 µm with 4–7 thin branching processes."""
    scene = Scene.empty(shape)
    E = extent_um(shape, spacing)
    lo, hi = _padded_box(E, 10.0)
    n = _count(9000, np.prod(hi - lo), density, rng)
    c = packed_centres(rng, lo, hi, n, 55.0)
    if len(c) == 0:
        return scene
    a = rng.uniform(3.0, 4.5, len(c))
    radii = np.stack([a * 1.2, a, a * 0.85], axis=1)
    bright = rng.lognormal(0.0, 0.25, len(c))
    render_blobs(scene, spacing, c, radii, random_rotations(rng, len(c)), bright, margin=1.2)
    step = 0.5 * float(np.min(spacing))
    curves: list[Curve] = []
    for centre, b in zip(c, bright):
        for _ in range(int(rng.integers(4, 8))):
            curves += branching_tree(rng, centre, random_directions(rng, 1)[0], float(rng.uniform(0.8, 1.2)),
                                     length=float(rng.uniform(12, 26)), step=step, tortuosity=0.6,
                                     generations=3, branches=(1, 2), angle_deg=(30, 70),
                                     child_ratio=(0.6, 0.85), length_ratio=0.6, min_radius=0.35,
                                     brightness=0.9 * b, taper=0.5, correlation_um=6.0)
    render_tubes(scene, spacing, curves)
    return scene


#: structure name -> geometry generator(shape, spacing, rng, density) -> Scene
GENERATORS = {
    "cfos_neuron": cfos_neuron,
    "cell_nuclei": cell_nuclei,
    "AD_plaques": ad_plaques,
    "blood_vessel": blood_vessel,
    "axonalmarker": axonalmarker,
    "microglia": microglia,
}
