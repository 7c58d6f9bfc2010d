"""Full-size synthetic chest CT series with 0-4 lung nodules (generator version 5, task ``lung``).

Where version 4 draws a cut-out centred on one nodule, version 5 draws a whole axial chest series, the
way a detector and a whole-series pipeline meet it:

* air around an elliptical body (subcutaneous fat, muscle), a spine with vertebral bodies, ribs as
  bone arcs every ~20 mm just outside the pleura, a mediastinum (soft tissue with a heart/aorta
  block) between two lungs whose outlines taper towards the apex;
* lung parenchyma around -850 HU with smooth texture and a gravity-dependent gradient, pulmonary
  vessels branching out of each hilum (radius 0.5-4 mm, +20..+110 HU) and a few bronchi, all
  clipped to the lungs;
* 0-4 nodules per case (P = 0.15, 0.35, 0.25, 0.15, 0.10; a nodule-free case has an empty mask),
  each drawn like version 4 (diameter 3-30 mm log-normal, round / lobulated / spiculated, solid /
  part-solid / ground-glass, isolated / juxta-vascular / juxta-pleural) at a position inside a lung:
  isolated ones at least their radius + 3 mm from the pleura, juxta-pleural ones cut by the pleural
  surface (the mask stops there), juxta-vascular ones touched by a vessel of similar density;
* slice-thickness partial volume for the nodules (3 sub-slices per 1.25 mm slice), scanner blur and
  correlated noise of 15-60 HU.

Field of view 280-360 mm: pixel spacing = FOV / size (0.55-0.7 mm at 512, 1.1-1.4 mm at 256), 1.25 mm
slices. The mask is the nodules (label 1, all of them); ``meta["nodules"]`` lists each nodule with its
centre (voxel, z y x), diameter (mm), shape, density, position and 3D box ``[x1, y1, z1, x2, y2, z2]``
of its mask voxels (exclusive ends), and ``meta["nodule_count"]`` how many there are. Nodules do not
touch each other (centres at least the sum of their radii + 4 mm apart), so each box holds one nodule.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from model_export.data.synth.common import (
    FineGrid,
    SynthCase,
    blend,
    log_uniform,
    mm_grid,
    paint_capsules,
    scanner,
    smooth_noise,
    to_hu_int16,
)
from model_export.data.synth.lung import (
    DENSITIES,
    DENSITY_P,
    POSITION_P,
    POSITIONS,
    SHAPE_P,
    SHAPES,
    SLICE_MM,
    Z_SUPERSAMPLE,
    _diameter,
    _nodule_occupancy,
    _trace_vessel,
    _z_biased_direction,
)

#: number of nodules per case 0..4 and their probabilities
NODULE_COUNT_P = (0.15, 0.35, 0.25, 0.15, 0.10)
FOV_MM = (280.0, 360.0)
#: slices drawn when the caller does not fix them
SLICES_RANGE = (80, 160)
MIN_SLICES = 16


def _lung_fields(
    shape: tuple[int, int, int], spacing: tuple[float, float, float], geo: dict
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Body and lung occupancies (Z, Y, X) float32 and the lung's signed depth (mm, > 0 inside)."""
    z, y, x = mm_grid(shape, spacing)
    cy, cx = geo["centre"]
    body = ((y - cy) / geo["body"][0]) ** 2 + ((x - cx) / geo["body"][1]) ** 2
    body_occ = np.clip(0.5 + (1.0 - np.sqrt(body)) * geo["body"][0] / 1.5, 0, 1).astype(np.float32)
    body_occ = np.broadcast_to(body_occ, shape).copy()
    zf = z / np.float32(max((shape[0] - 1) * spacing[0], 1.0))  # 0 at the feet end, 1 at the apex
    taper = np.float32(1.0) - np.float32(geo["taper"]) * zf**2
    depth = np.full(shape, -1e3, np.float32)
    for side in (-1.0, 1.0):
        ly, lx = cy + geo["lung_dy"], cx + side * geo["lung_dx"]
        ay, ax = geo["lung"][0] * taper, geo["lung"][1] * taper
        rho = np.sqrt(((y - ly) / ay) ** 2 + ((x - lx) / ax) ** 2)
        # approximate signed distance to the ellipse outline (exact on the axes)
        d = (1.0 - rho) * np.minimum(ay, ax)
        np.maximum(depth, d, out=depth)
    lung_occ = np.clip(0.5 + depth / 1.0, 0, 1).astype(np.float32)
    return body_occ, lung_occ, depth


def paint_tubes(shape, spacing, groups: list[list], *, edge: float) -> list[np.ndarray]:
    """Occupancies (Z, Y, X) float32 of groups of tapered tubes, each tube a (points (N, 3) mm, radii (N,))
    polyline; a group whose tubes are given thicker (``(p, r + t)``) draws a wall around another.

    One distance transform for all groups instead of one box per segment: the polylines are resampled
    every 0.4 voxel, each sample marks its voxel with its radius (per group, and which group it is), and
    a voxel's occupancy in group g is ``clip(0.5 + (r - d) / edge)`` where the nearest marked voxel
    (distance d mm) belongs to g, with r its radius in g.
    """
    sp = np.asarray(spacing, dtype=np.float64)
    radii = [np.zeros(shape, np.float32) for _ in groups]
    step = 0.4 * float(sp.min())
    for radius, polylines in zip(radii, groups, strict=True):
        for pts, rad in polylines:
            seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
            t = np.concatenate([[0.0], np.cumsum(seg)])
            if t[-1] <= 0:
                continue
            s = np.arange(0.0, t[-1] + step, step)
            p = np.stack([np.interp(s, t, pts[:, k]) for k in range(3)], axis=1)
            r = np.interp(s, t, rad)
            idx = np.rint(p / sp).astype(np.int64)
            ok = np.all((idx >= 0) & (idx < np.asarray(shape)), axis=1)
            np.maximum.at(radius, tuple(idx[ok].T), r[ok].astype(np.float32))
    seeds = np.zeros(shape, bool)
    for radius in radii:
        seeds |= radius > 0
    if not seeds.any():
        return [np.zeros(shape, np.float32) for _ in groups]
    dist, ind = ndimage.distance_transform_edt(~seeds, sampling=sp, return_indices=True)
    ind = tuple(ind)
    dist = dist.astype(np.float32)
    return [np.clip(0.5 + (radius[ind] - dist) / np.float32(edge), 0.0, 1.0) for radius in radii]


def _place(
    rng: np.random.Generator, depth: np.ndarray, spacing, radius: float, position: str, taken: list
) -> np.ndarray | None:
    """A nodule centre (mm, z y x) inside a lung fitting ``position``, clear of ``taken`` nodules."""
    sp = np.asarray(spacing)
    z_margin = radius + 1.0
    if position == "juxta-pleural":
        lo, hi = radius * 0.15, radius * 0.7
    else:
        lo, hi = radius + 3.0, np.inf
    cand = np.argwhere((depth[::2, ::4, ::4] > lo) & (depth[::2, ::4, ::4] < hi)) * np.array([2, 4, 4])
    if not len(cand):
        return None
    for _ in range(60):
        c = (cand[int(rng.integers(len(cand)))] + rng.uniform(-0.5, 0.5, 3)) * sp
        if c[0] < z_margin or c[0] > (depth.shape[0] - 1) * sp[0] - z_margin:
            continue
        if all(np.linalg.norm(c - t) > radius + r + 4.0 for t, r in taken):
            return c
    return None


def make_case(rng: np.random.Generator, *, size: int = 512, slices: int | None = None) -> SynthCase:
    """Draw one full-size chest series; see the module docstring.

    Args:
        rng: the case's random stream; everything drawn comes from it.
        size: in-plane pixels (Y = X).
        slices: axial slices; drawn in 80..160 when None.
    """
    if slices is None:
        slices = int(rng.integers(SLICES_RANGE[0], SLICES_RANGE[1] + 1))
    fov = float(rng.uniform(*FOV_MM))
    px = fov / size
    spacing = (SLICE_MM, px, px)
    shape = (int(slices), int(size), int(size))
    ext = (np.array(shape) - 1) * np.array(spacing)
    n_nodules = int(rng.choice(len(NODULE_COUNT_P), p=NODULE_COUNT_P))

    body_a = np.array([rng.uniform(0.30, 0.36), rng.uniform(0.42, 0.47)]) * fov  # (y, x) semi-axes
    geo = {
        "centre": (ext[1] / 2 + rng.uniform(-0.03, 0.03) * fov, ext[2] / 2 + rng.uniform(-0.02, 0.02) * fov),
        "body": body_a,
        "lung": (body_a[0] * rng.uniform(0.72, 0.8), body_a[1] * rng.uniform(0.38, 0.43)),
        "lung_dx": body_a[1] * rng.uniform(0.47, 0.53),
        "lung_dy": -body_a[0] * rng.uniform(0.0, 0.06),
        "taper": rng.uniform(0.15, 0.45),
    }
    body_occ, lung_occ, depth = _lung_fields(shape, spacing, geo)
    gz, gy, gx = mm_grid(shape, spacing)
    cy, cx = geo["centre"]

    img = np.full(shape, -1000.0, np.float32)
    # body: fat shell, muscle inside it
    blend(img, body_occ, rng.uniform(-120, -80))
    muscle_r = np.sqrt(((gy - cy) / (body_a[0] - 12)) ** 2 + ((gx - cx) / (body_a[1] - 14)) ** 2)
    muscle = np.clip(0.5 + (1.0 - muscle_r) * (body_a[0] - 12) / 1.5, 0, 1).astype(np.float32)
    blend(img, np.broadcast_to(muscle, shape), rng.uniform(30, 60) + 6 * smooth_noise(rng, shape, (0.5, 2, 2)))
    # mediastinum block (heart/aorta) between the lungs is the muscle value; a denser aorta tube
    aorta = np.zeros(shape, np.float32)
    a_y, a_x = cy + body_a[0] * rng.uniform(0.0, 0.25), cx + rng.uniform(-12, 12)
    paint_capsules(aorta, spacing, [0, a_y, a_x], [ext[0], a_y, a_x], rng.uniform(11, 16), rng.uniform(11, 16), edge=px)
    blend(img, aorta, rng.uniform(35, 55))
    # spine: vertebral body (cortex + marrow) posterior
    s_y, s_x = cy + body_a[0] * rng.uniform(0.62, 0.7), cx
    r_v = rng.uniform(14, 19)
    cortex, marrow = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    paint_capsules(cortex, spacing, [-5, s_y, s_x], [ext[0] + 5, s_y, s_x], r_v, r_v, edge=px)
    paint_capsules(marrow, spacing, [-5, s_y, s_x], [ext[0] + 5, s_y, s_x], r_v - 2.5, r_v - 2.5, edge=px)
    blend(img, cortex, rng.uniform(700, 1100))
    blend(img, marrow, rng.uniform(180, 320))

    # lungs
    lung_hu = rng.uniform(-880, -800)
    parenchyma = lung_hu + rng.uniform(12, 30) * smooth_noise(rng, shape, (1.2 / spacing[0], 1.6 / px, 1.6 / px))
    parenchyma += np.float32(rng.uniform(20, 60)) * np.clip((gy - (cy - body_a[0])) / np.float32(2 * body_a[0]), 0, 1)
    blend(img, lung_occ, parenchyma)

    # ribs: bone arcs just outside the pleura, every 15-22 mm along z
    ribs_c, ribs_m = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    z0 = -rng.uniform(0, 20)
    while z0 < ext[0] + 10:
        r_rib = rng.uniform(2.5, 4.0)
        for side in (-1.0, 1.0):
            ly, lx = cy + geo["lung_dy"], cx + side * geo["lung_dx"]
            ang = np.linspace(-2.6, 2.6, 40) if side > 0 else np.linspace(np.pi - 2.6, np.pi + 2.6, 40)
            ry, rx = geo["lung"][0] + r_rib + 1.5, geo["lung"][1] + r_rib + 1.5
            slope = rng.uniform(0.05, 0.15)
            pts = np.stack([z0 + slope * ry * (np.sin(ang) + 1), ly + ry * np.sin(ang), lx + rx * np.cos(ang)], 1)
            keep = ((pts[:, 2] - cx) * side) > geo["lung_dx"] * 0.2  # stay lateral of the mediastinum
            pts = pts[keep]
            if len(pts) > 1:
                paint_capsules(ribs_c, spacing, pts[:-1], pts[1:], r_rib, r_rib, edge=px)
                paint_capsules(ribs_m, spacing, pts[:-1], pts[1:], r_rib - 1.1, r_rib - 1.1, edge=px)
        z0 += rng.uniform(15, 22)
    outside = 1.0 - lung_occ
    blend(img, ribs_c * outside, rng.uniform(700, 1200))
    blend(img, ribs_m * outside, rng.uniform(150, 350))

    # nodules: positions first (vessels of juxta-vascular ones are traced with the tree)
    fine = FineGrid.of(shape, spacing, Z_SUPERSAMPLE)
    taken: list = []
    drawn: list[dict] = []
    for _ in range(n_nodules):
        position = str(rng.choice(POSITIONS, p=POSITION_P))
        diameter = _diameter(rng, 30.0)
        radius = diameter / 2
        centre = _place(rng, depth, spacing, radius, position, taken)
        if centre is None:
            continue
        taken.append((centre, radius))
        drawn.append(
            {
                "centre": centre,
                "radius": radius,
                "diameter_mm": round(diameter, 2),
                "shape": str(rng.choice(SHAPES, p=SHAPE_P)),
                "density": str(rng.choice(DENSITIES, p=DENSITY_P)),
                "position": position,
                "fuzzy": float(rng.uniform(0.9, 2.2)),
            }
        )

    # vessels and bronchi out of each hilum, clipped to the lungs
    lo, hi = np.array([-4.0, 0, 0]), ext + 4.0
    vessels: list = []
    bronchi: list = []
    for side in (-1.0, 1.0):
        hilum = np.array([ext[0] * rng.uniform(0.4, 0.6), cy + geo["lung_dy"], cx + side * geo["lung_dx"] * 0.55])
        for _ in range(int(rng.integers(7, 11))):
            d = _z_biased_direction(rng, 1.0)
            d[2] = abs(d[2]) * side
            _trace_vessel(
                rng,
                hilum + rng.normal(0, 4, 3),
                d / np.linalg.norm(d),
                log_uniform(rng, 1.5, 4.0),
                lo,
                hi,
                wiggle=0.06,
                branch_p=0.04,
                out=vessels,
            )
        for _ in range(int(rng.integers(1, 3))):
            d = _z_biased_direction(rng, 1.0)
            d[2] = abs(d[2]) * side
            _trace_vessel(
                rng,
                hilum,
                d / np.linalg.norm(d),
                log_uniform(rng, 2.0, 4.0),
                lo,
                hi,
                wiggle=0.04,
                branch_p=0.02,
                out=bronchi,
            )
    for nod in drawn:
        if nod["position"] != "juxta-vascular":
            continue
        r_v = rng.uniform(0.6, 1.0) * min(2.6, max(1.0, 0.6 * nod["radius"]))
        d = _z_biased_direction(rng, 1.5)
        off = rng.normal(size=3)
        off -= d * (off @ d)
        off /= np.linalg.norm(off)
        start = nod["centre"] + off * (nod["radius"] + r_v * rng.uniform(-0.6, 0.4))
        _trace_vessel(rng, start, d, r_v, lo, hi, wiggle=0.03, branch_p=0.0, out=vessels)
    t_wall = rng.uniform(0.4, 1.0)
    wall, lumen, ves = paint_tubes(shape, spacing, [[(p, r + t_wall) for p, r in bronchi], bronchi, vessels], edge=px)
    if bronchi:
        blend(img, wall * lung_occ, rng.uniform(-120, 30))
        blend(img, lumen * lung_occ, -1000.0)

    # nodule occupancies (fine grid, partial volume), painted before the vessels like version 4
    nod_occ = []
    edge_solid = max(px, 0.6)
    for nod in drawn:
        edge = edge_solid if nod["density"] == "solid" else nod["fuzzy"]
        occ = _nodule_occupancy(rng, fine, nod["centre"], nod["radius"], nod["shape"], edge)
        occ *= lung_occ  # juxta-pleural: the mask stops at the pleural surface
        nod_occ.append(occ)
        if nod["density"] == "solid":
            blend(img, occ, rng.uniform(-20, 60) + rng.uniform(5, 20) * float(rng.normal()))
        else:
            blend(img, occ, rng.uniform(-720, -380))
            if nod["density"] == "part-solid":
                core_r = nod["radius"] * rng.uniform(0.3, 0.65)
                core_c = nod["centre"] + rng.normal(0, 0.3, 3) * (nod["radius"] - core_r)
                core = _nodule_occupancy(rng, fine, core_c, core_r, "lobulated", edge_solid)
                np.minimum(core, occ, out=core)
                blend(img, core, rng.uniform(-30, 50))

    blend(img, ves * lung_occ, rng.uniform(20, 110))

    mask = np.zeros(shape, np.uint8)
    nodules_meta = []
    for nod, occ in zip(drawn, nod_occ, strict=True):
        m = occ >= 0.5
        if not m.any():
            m[np.unravel_index(int(np.argmax(occ)), shape)] = True
        mask[m] = 1
        zs, ys, xs = ndimage.find_objects(m.astype(np.uint8))[0]
        nodules_meta.append(
            {
                "centre_voxel": [int(round(nod["centre"][i] / spacing[i])) for i in range(3)],
                "diameter_mm": nod["diameter_mm"],
                "shape": nod["shape"],
                "density": nod["density"],
                "position": nod["position"],
                "box3d": [xs.start, ys.start, zs.start, xs.stop, ys.stop, zs.stop],
                "volume_mm3": round(float(m.sum()) * float(np.prod(spacing)), 1),
                "label": 1,
            }
        )

    noise_hu = log_uniform(rng, 15, 60)
    img = scanner(rng, img, spacing, psf_mm=(rng.uniform(0.35, 0.6), rng.uniform(0.2, 0.4)), noise_hu=noise_hu)
    img += np.float32(rng.uniform(-10, 10))
    meta = {
        "kind": "full-chest",
        "nodule_count": len(nodules_meta),
        "nodules": nodules_meta,
        "fov_mm": round(fov, 1),
        "noise_hu": round(noise_hu, 1),
    }
    origin = (-ext[2] / 2, -ext[1] / 2, -100.0)
    return SynthCase(to_hu_int16(img), mask, spacing, origin, meta)
