"""Synthetic chest CT cut-outs around one lung nodule (the paper's lung nodule task).

A case is a small non-contrast CT volume centred (with jitter) on a nodule:

* lung parenchyma around -850 HU with smooth texture and a gravity-dependent gradient;
* pulmonary vessels: branching, curving tubes (radius 0.4-3 mm, +20..+110 HU, contrast-free)
  that mostly run across slices, so their cross-sections look like small nodules on axial slices;
  bronchi with an air lumen and a soft-tissue wall;
* often a chest wall (a curved pleural surface, intercostal muscle, ribs with cortex and marrow,
  subcutaneous fat);
* the nodule: diameter 3-30 mm (log-normal, median 9 mm, so about one in seven is under 5 mm; the
  range is cut to what the field of view holds: 75% of the slab height), shape round /
  lobulated / spiculated, density solid / part-solid / ground-glass (ground-glass and the halo of
  part-solid nodules have fuzzy borders), position isolated / juxta-vascular (a vessel of similar
  density runs into it) / juxta-pleural (it sits on the pleura, the chest wall has the same
  density; the mask stops at the pleural surface);
* slice-thickness partial volume (nodule, vessels and bronchi are drawn on 3 sub-slices per 1.25 mm
  slice and averaged), scanner point-spread blur and correlated noise of 15-60 HU (low-dose).

The mask is the nodule (label 1): slice-averaged occupancy >= 0.5 of the drawn shape, before blur and
noise.
"""

from __future__ import annotations

import numpy as np

from model_export.data.synth.common import (
    FineGrid,
    SynthCase,
    blend,
    grid_box,
    log_uniform,
    mm_grid,
    paint_capsules,
    random_unit,
    rotation_matrix,
    scanner,
    smooth_noise,
    to_hu_int16,
)

TASK_CODE = 1
CLASSES = [{"value": 1, "name": "nodule"}]
SHAPES = ("round", "lobulated", "spiculated")
DENSITIES = ("solid", "part-solid", "ground-glass")
POSITIONS = ("isolated", "juxta-vascular", "juxta-pleural")
SHAPE_P = (0.4, 0.35, 0.25)
DENSITY_P = (0.5, 0.2, 0.3)
POSITION_P = (0.4, 0.3, 0.3)
SLICE_MM = 1.25
PIXEL_MM = (0.55, 0.7)
DIAMETER_MM = (3.0, 30.0)
#: log-normal diameter: median and sigma of ln(diameter)
DIAMETER_MEDIAN_MM, DIAMETER_LOG_SIGMA = 9.0, 0.5
#: thin structures are drawn on 3 sub-slices per slice and averaged (slice-thickness partial volume)
Z_SUPERSAMPLE = 3


def _trace_vessel(
    rng: np.random.Generator,
    start: np.ndarray,
    direction: np.ndarray,
    radius: float,
    lo: np.ndarray,
    hi: np.ndarray,
    *,
    wiggle: float = 0.08,
    branch_p: float = 0.03,
    depth: int = 0,
    out: list,
) -> None:
    """Trace a curving tube from ``start`` both ways until it leaves [lo, hi]; branches recursively.

    Appends (points (N, 3), radii (N,)) polylines to ``out``.
    """
    for sign in (1.0, -1.0) if depth == 0 else (1.0,):
        p, d, r = start.copy(), sign * direction, radius
        pts, rad = [p.copy()], [r]
        for _ in range(400):
            step = max(0.9, 1.2 * r)
            d = d + rng.normal(0.0, wiggle, 3)
            d /= np.linalg.norm(d)
            p = p + step * d
            r = max(0.25, r * (1.0 - 0.004 * step))
            pts.append(p.copy())
            rad.append(r)
            if np.any(p < lo) or np.any(p > hi):
                break
            if depth < 3 and r > 0.6 and rng.random() < branch_p:
                child = d + random_unit(rng)[0] * rng.uniform(0.5, 1.2)
                _trace_vessel(
                    rng,
                    p.copy(),
                    child / np.linalg.norm(child),
                    r * rng.uniform(0.5, 0.8),
                    lo,
                    hi,
                    wiggle=wiggle,
                    branch_p=branch_p,
                    depth=depth + 1,
                    out=out,
                )
        if len(pts) > 1:
            out.append((np.array(pts), np.array(rad)))


def _diameter(rng: np.random.Generator, d_max: float) -> float:
    """A log-normal diameter truncated to [DIAMETER_MM[0], d_max] by redrawing."""
    d = DIAMETER_MEDIAN_MM
    for _ in range(200):
        d = float(np.exp(rng.normal(np.log(DIAMETER_MEDIAN_MM), DIAMETER_LOG_SIGMA)))
        if DIAMETER_MM[0] <= d <= d_max:
            return d
    return float(np.clip(d, DIAMETER_MM[0], d_max))


def _z_biased_direction(rng: np.random.Generator, bias: float = 2.0) -> np.ndarray:
    v = random_unit(rng)[0]
    v[0] *= bias
    return v / np.linalg.norm(v)


def _nodule_occupancy(
    rng: np.random.Generator,
    grid: FineGrid,
    centre: np.ndarray,
    radius: float,
    kind: str,
    edge: float,
) -> np.ndarray:
    """Slice-averaged occupancy (float32, coarse volume) of a round / lobulated / spiculated nodule."""
    occ = grid.zeros()
    shape, spacing = grid.shape, grid.spacing
    rot = rotation_matrix(rng)
    ratios = rng.uniform(0.8, 1.2, 3) if kind == "round" else rng.uniform(0.75, 1.25, 3)
    ratios /= np.cbrt(ratios.prod())
    lobes = []
    if kind in ("lobulated", "spiculated"):
        n = int(rng.integers(3, 7)) if kind == "lobulated" else int(rng.integers(2, 5))
        amp = (0.15, 0.4) if kind == "lobulated" else (0.05, 0.2)
        lobes = [(random_unit(rng)[0], rng.uniform(*amp), rng.uniform(2.0, 6.0)) for _ in range(n)]
    # Normalise lobes so the equivalent radius stays near ``radius``.
    dirs = random_unit(np.random.default_rng(0), 256)
    mean_s = 1.0 + sum(a * np.mean(np.maximum(dirs @ w, 0) ** p) for w, a, p in lobes)
    extent = radius * float(ratios.max()) * (1.0 + sum(a for _, a, _ in lobes)) / mean_s + edge
    box = grid_box(shape, spacing, centre - extent, centre + extent, grid.offset)
    if box is not None:
        sl, (gz, gy, gx) = box
        v = (gz - centre[0], gy - centre[1], gx - centre[2])
        q = [(v[0] * rot[0, k] + v[1] * rot[1, k] + v[2] * rot[2, k]) / (ratios[k] * radius) for k in range(3)]
        rho = np.sqrt(q[0] ** 2 + q[1] ** 2 + q[2] ** 2) + np.float32(1e-6)
        s = np.ones_like(rho)
        for w, a, p in lobes:
            # lobe directions live in the nodule frame (q coordinates)
            cos = (q[0] * w[0] + q[1] * w[1] + q[2] * w[2]) / rho
            s += np.float32(a) * np.maximum(cos, 0) ** np.float32(p)
        s /= np.float32(mean_s)
        occ[sl] = np.clip(0.5 + (s - rho) * np.float32(radius) / np.float32(edge), 0.0, 1.0)
    if kind == "spiculated":
        n = int(rng.integers(5, 15))
        p0, p1, r0, r1 = [], [], [], []
        for _ in range(n):
            u = random_unit(rng)[0]
            length = rng.uniform(0.4, 1.1) * radius + rng.uniform(1.0, 4.0)
            r_base = min(rng.uniform(0.6, 1.3), 0.4 * radius)
            a = centre + 0.6 * radius * u
            mid = centre + (radius + 0.5 * length) * u + rng.normal(0, 0.6, 3)
            b = centre + (radius + length) * u + rng.normal(0, 1.0, 3)
            p0 += [a, mid]
            p1 += [mid, b]
            r0 += [r_base, 0.55 * r_base]
            r1 += [0.55 * r_base, 0.3]
        paint_capsules(
            occ, spacing, np.array(p0), np.array(p1), np.array(r0), np.array(r1), edge=edge, offset=grid.offset
        )
    return grid.slab_mean(occ)


def make_case(rng: np.random.Generator, *, size: int = 192, slices: int = 32) -> SynthCase:
    """Draw one lung nodule case; see the module docstring.

    Args:
        rng: the case's random stream (``common.case_rng``); everything drawn comes from it.
        size: in-plane pixels (Y = X).
        slices: axial slices.

    Returns:
        The case: int16 HU image, uint8 mask, spacing, DICOM origin and ``meta`` (what was drawn).
    """
    px = float(rng.uniform(*PIXEL_MM))
    spacing = (SLICE_MM, px, px)
    shape = (int(slices), int(size), int(size))
    ext = (np.array(shape) - 1) * np.array(spacing)
    shape_kind = str(rng.choice(SHAPES, p=SHAPE_P))
    density = str(rng.choice(DENSITIES, p=DENSITY_P))
    position = str(rng.choice(POSITIONS, p=POSITION_P))

    d_max = min(DIAMETER_MM[1], 0.75 * ext[0], 0.45 * ext[1])
    diameter = _diameter(rng, max(d_max, DIAMETER_MM[0] + 0.5))
    radius = diameter / 2
    room = np.maximum(ext / 2 - radius * 1.3 - 1.0, 0.0)
    centre = ext / 2 + rng.uniform(-1, 1, 3) * np.minimum(room, [2.5, 0.18 * ext[1], 0.18 * ext[2]])

    img = np.empty(shape, dtype=np.float32)
    fine = FineGrid.of(shape, spacing, Z_SUPERSAMPLE)
    # --- parenchyma
    lung_hu = rng.uniform(-880, -800)
    img[:] = lung_hu
    img += np.float32(rng.uniform(12, 30)) * smooth_noise(rng, shape, (1.2 / spacing[0], 1.6 / px, 1.6 / px))
    _, gy, _ = mm_grid(shape, spacing)
    img += np.float32(rng.uniform(0, 45)) * (gy / np.float32(ext[1]))

    # --- bronchi (painted first: a nodule covers them)
    lo, hi = -np.full(3, 4.0), ext + 4.0
    bronchi: list = []
    for _ in range(int(rng.integers(0, 3))):
        _trace_vessel(
            rng,
            rng.uniform(lo, hi),
            _z_biased_direction(rng),
            log_uniform(rng, 1.5, 4.0),
            lo,
            hi,
            wiggle=0.04,
            branch_p=0.01,
            out=bronchi,
        )
    if bronchi:
        wall, lumen = fine.zeros(), fine.zeros()
        for pts, rad in bronchi:
            t = rng.uniform(0.4, 1.0)
            paint_capsules(
                wall, fine.spacing, pts[:-1], pts[1:], rad[:-1] + t, rad[1:] + t, edge=px, offset=fine.offset
            )
            paint_capsules(lumen, fine.spacing, pts[:-1], pts[1:], rad[:-1], rad[1:], edge=px, offset=fine.offset)
        blend(img, fine.slab_mean(wall), rng.uniform(-120, 30))
        blend(img, fine.slab_mean(lumen), -1000.0)

    # --- nodule
    edge_solid = max(px, 0.6)
    fuzzy = rng.uniform(0.9, 2.2)
    nod = _nodule_occupancy(rng, fine, centre, radius, shape_kind, edge_solid if density == "solid" else fuzzy)
    if density == "solid":
        hu = rng.uniform(-20, 60) + rng.uniform(5, 20) * smooth_noise(rng, shape, (0.5, 1.0, 1.0))
        blend(img, nod, hu)
    else:
        ggo = rng.uniform(-720, -380)
        hu = ggo + rng.uniform(25, 70) * smooth_noise(rng, shape, (0.8, 1.5, 1.5))
        blend(img, nod, hu)
        if density == "part-solid":
            core_r = radius * rng.uniform(0.3, 0.65)
            core_c = centre + random_unit(rng)[0] * (radius - core_r) * rng.uniform(0, 0.6)
            core = _nodule_occupancy(rng, fine, core_c, core_r, "lobulated", edge_solid)
            np.minimum(core, nod, out=core)
            blend(img, core, rng.uniform(-30, 50))

    # --- vessels
    vessel_hu = rng.uniform(20, 110)
    vessels: list = []
    for _ in range(int(rng.integers(14, 30))):
        _trace_vessel(
            rng, rng.uniform(lo, hi), _z_biased_direction(rng), log_uniform(rng, 0.4, 2.8), lo, hi, out=vessels
        )
    if position == "juxta-vascular":
        r_v = rng.uniform(0.6, 1.0) * min(2.6, max(1.0, 0.6 * radius))
        d = _z_biased_direction(rng, 1.5)
        off = random_unit(rng)[0]
        off -= d * (off @ d)
        off /= np.linalg.norm(off)
        start = centre + off * (radius + r_v * rng.uniform(-0.6, 0.4))
        _trace_vessel(rng, start, d, r_v, lo, hi, wiggle=0.03, branch_p=0.02, out=vessels)
    ves = fine.zeros()
    for pts, rad in vessels:
        paint_capsules(ves, fine.spacing, pts[:-1], pts[1:], rad[:-1], rad[1:], edge=px, offset=fine.offset)
    blend(img, fine.slab_mean(ves), vessel_hu)

    # --- chest wall
    has_wall = position == "juxta-pleural" or rng.random() < 0.5
    if has_wall:
        wall_occ = _chest_wall(rng, img, spacing, centre, radius, position == "juxta-pleural")
        nod *= 1.0 - wall_occ

    mask = (nod >= 0.5).astype(np.uint8)
    if not mask.any():  # a tiny nodule between voxel centres: keep its densest voxel
        mask[np.unravel_index(int(np.argmax(nod)), shape)] = 1

    noise_hu = log_uniform(rng, 15, 60)
    img = scanner(rng, img, spacing, psf_mm=(rng.uniform(0.35, 0.6), rng.uniform(0.2, 0.4)), noise_hu=noise_hu)
    img += np.float32(rng.uniform(-10, 10))
    meta = {
        "diameter_mm": round(diameter, 2),
        "shape": shape_kind,
        "density": density,
        "position": position,
        "volume_mm3": round(float(mask.sum()) * float(np.prod(spacing)), 1),
        "noise_hu": round(noise_hu, 1),
        "chest_wall": bool(has_wall),
        "centre_voxel": [int(round(centre[i] / spacing[i])) for i in range(3)],
    }
    origin = (-ext[2] / 2, -ext[1] / 2, -100.0)
    return SynthCase(to_hu_int16(img), mask, spacing, origin, meta)


def _chest_wall(
    rng: np.random.Generator,
    img: np.ndarray,
    spacing: tuple[float, float, float],
    centre: np.ndarray,
    radius: float,
    attached: bool,
) -> np.ndarray:
    """Paint a chest wall (pleura on a tilted cylinder around the lung) into ``img``; return its occupancy."""
    shape = img.shape
    px = spacing[1]
    body_r = rng.uniform(110, 190)
    theta = rng.uniform(0, 2 * np.pi)
    n = np.array([np.sin(theta), np.cos(theta)])  # in-plane outward normal (y, x) at the nodule
    delta = radius * rng.uniform(0.3, 0.85) if attached else radius + rng.uniform(4, 45)
    axis = centre[1:] - (body_r - delta) * n
    tilt = rng.normal(0, 0.08, 2)
    gz, gy, gx = mm_grid(shape, spacing)
    ay = axis[0] + tilt[0] * (gz - centre[0])
    ax = axis[1] + tilt[1] * (gz - centre[0])
    dist = np.sqrt((gy - ay) ** 2 + (gx - ax) ** 2) - np.float32(body_r)  # > 0 outside the lung
    occ = np.clip(0.5 + dist / np.float32(max(px, 0.6)), 0, 1).astype(np.float32)
    muscle = rng.uniform(4, 12)
    fat_start = muscle + rng.uniform(4, 12)
    fat_end = fat_start + rng.uniform(10, 40)
    blend(img, occ, rng.uniform(25, 60) + 8 * smooth_noise(rng, shape, (0.5, 1.5, 1.5)))
    fat = np.clip(0.5 + (dist - fat_start) / 1.0, 0, 1) * np.clip(0.5 + (fat_end - dist) / 1.0, 0, 1)
    blend(img, fat.astype(np.float32), rng.uniform(-120, -80))
    air = np.clip(0.5 + (dist - fat_end - 2.0) / 0.8, 0, 1).astype(np.float32)
    blend(img, air, -1000.0)
    # Ribs: flattened tubes along arcs just outside the pleura, every ~20 mm along z.
    cortex, marrow = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    ext_z = (shape[0] - 1) * spacing[0]
    half_arc = min(np.pi, 1.2 * max(shape[1], shape[2]) * px / body_r)
    slope = rng.choice([-1.0, 1.0]) * rng.uniform(0.3, 0.6)
    slope_span = abs(slope) * half_arc * body_r + 6.0
    z0 = -slope_span - rng.uniform(0, 20)
    while z0 < ext_z + slope_span + 5:
        r_rib = rng.uniform(2.5, 4.0)
        depth = body_r + muscle * 0.4 + r_rib
        ang = theta + np.linspace(-half_arc, half_arc, 60)
        arc = depth * ang
        for dz in (-1.3, 1.3):
            pts = np.stack(
                [z0 + dz + slope * (arc - arc.mean()), axis[0] + depth * np.sin(ang), axis[1] + depth * np.cos(ang)],
                axis=1,
            )
            paint_capsules(cortex, spacing, pts[:-1], pts[1:], r_rib, r_rib, edge=px)
            paint_capsules(marrow, spacing, pts[:-1], pts[1:], r_rib - 1.2, r_rib - 1.2, edge=px)
        z0 += rng.uniform(15, 22)
    blend(img, cortex, rng.uniform(700, 1200))
    blend(img, marrow, rng.uniform(150, 350))
    return occ
