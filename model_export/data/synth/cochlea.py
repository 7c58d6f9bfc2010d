"""Synthetic temporal-bone CT cut-outs around the cochlea (the paper's inner-ear task).

A case is a small non-contrast temporal-bone CT (0.40625 mm pixels, 1 mm slices) of one ear
(left or right, drawn) with:

* petrous bone (800-1500 HU, textured) and a very dense otic capsule (1500-2300 HU) around the
  labyrinth; squamous skull plate, scalp and air laterally; brain (about 35 HU) medially;
* the cochlea (label 1): a fluid-filled (0-40 HU) spiral lumen of 2.4-2.8 turns, basal radius
  3.3-4.3 mm narrowing towards the apex, lumen radius 0.75-1.1 mm narrowing too, around an axis
  pointing antero-laterally with random tilt;
* distractors of the same fluid density joined to or near it: the vestibule (its basal turn opens
  into it), three semicircular canals, the internal auditory canal; air distractors: middle ear with
  ossicles, external auditory canal, mastoid air cells (some fluid-filled) in bony septa;
* 1 mm slices make the apical turns a partial-volume blur (thin structures are drawn on 3 sub-slices
  per slice and averaged, so image and mask share the slice-thickness partial volume); scanner blur
  and 25-80 HU noise.

The mask is the cochlear lumen: slice-averaged occupancy >= 0.5 of the drawn spiral tube, before
blur and noise.
"""

from __future__ import annotations

import numpy as np

from model_export.data.synth.common import (
    FineGrid,
    SynthCase,
    blend,
    ellipsoid,
    log_uniform,
    paint_capsules,
    scanner,
    smooth_noise,
    to_hu_int16,
)

TASK_CODE = 2
CLASSES = [{"value": 1, "name": "cochlea"}]
SLICE_MM = 1.0
PIXEL_MM = 0.40625
#: the labyrinth, middle ear and ossicles are drawn on 3 sub-slices per slice and averaged
Z_SUPERSAMPLE = 3


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def _rotate(v: np.ndarray, axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues rotation of v about a unit axis."""
    return v * np.cos(angle) + np.cross(axis, v) * np.sin(angle) + axis * (axis @ v) * (1 - np.cos(angle))


def _ring(centre, u, w, radius, phi0, phi1, n=48) -> np.ndarray:
    phi = np.linspace(phi0, phi1, n)
    return centre + radius * (np.cos(phi)[:, None] * u + np.sin(phi)[:, None] * w)


def make_case(rng: np.random.Generator, *, size: int = 192, slices: int = 24) -> SynthCase:
    """Draw one cochlea case; see the module docstring.

    Args:
        rng: the case's random stream (``common.case_rng``); everything drawn comes from it.
        size: in-plane pixels (Y = X).
        slices: axial slices.

    Returns:
        The case: int16 HU image, uint8 mask, spacing, DICOM origin and ``meta`` (what was drawn).
    """
    spacing = (SLICE_MM, PIXEL_MM, PIXEL_MM)
    shape = (int(slices), int(size), int(size))
    ext = (np.array(shape) - 1) * np.array(spacing)
    px = PIXEL_MM
    edge = 0.6

    side = "right" if rng.random() < 0.5 else "left"
    # Anatomical directions in (z, y, x) = (superior, posterior, patient-left) mm.
    sup, post = np.array([1.0, 0, 0]), np.array([0, 1.0, 0])
    ant = -post
    lat = np.array([0, 0, -1.0]) if side == "right" else np.array([0, 0, 1.0])
    med = -lat
    # small head rotation
    yaw = rng.normal(0, 0.15)
    roll = rng.normal(0, 0.1)
    ant, lat = _rotate(ant, sup, yaw), _rotate(lat, sup, yaw)
    med, post = -lat, -ant
    lat, sup = _rotate(lat, ant, roll), _rotate(sup, ant, roll)
    med = -lat

    # Cochlear axis (modiolus base -> apex): antero-lateral, tilted down.
    alpha = np.deg2rad(rng.uniform(30, 60))
    beta = np.deg2rad(rng.uniform(0, 25))
    axis = _unit(np.cos(alpha) * ant + np.sin(alpha) * lat)
    axis = _unit(np.cos(beta) * axis - np.sin(beta) * sup)
    e1 = _unit(np.cross(axis, sup))
    e2 = np.cross(axis, e1)
    turn0 = rng.uniform(0, 2 * np.pi)

    turns = rng.uniform(2.4, 2.8)
    theta_max = 2 * np.pi * turns
    rho0 = rng.uniform(3.3, 4.3)
    rho_end = rng.uniform(0.9, 1.3)
    height = rng.uniform(3.2, 4.6)
    lumen0 = rng.uniform(0.75, 1.1)
    theta = np.linspace(0, theta_max, int(40 * turns))
    tt = theta / theta_max
    rho = rho0 * np.exp(np.log(rho_end / rho0) * tt)
    h = height * tt**0.85
    r_lumen = lumen0 * (1 - 0.45 * tt)
    ang = theta + turn0
    local = h[:, None] * axis + rho[:, None] * (np.cos(ang)[:, None] * e1 + np.sin(ang)[:, None] * e2)
    # Place the cochlea (centroid) near the volume centre with jitter.
    centre = ext / 2 + rng.uniform(-1, 1, 3) * np.array([1.5, 0.12 * ext[1], 0.12 * ext[2]])
    base = centre - local.mean(axis=0)
    spiral = base + local

    img = np.empty(shape, dtype=np.float32)
    # --- background: brain / soft tissue
    img[:] = rng.uniform(28, 42)
    img += np.float32(6) * smooth_noise(rng, shape, (0.7, 2.5, 2.5))

    # --- bone: petrous pyramid + mastoid + lateral skull plate
    bone = np.zeros(shape, np.float32)
    ridge = _unit(ant * 0.7 + med * 0.7)
    r_sup = _unit(np.cross(ridge, lat))
    r_third = np.cross(ridge, r_sup)
    ellipsoid(
        bone,
        spacing,
        base + med * 2.0 + rng.normal(0, 1.0, 3),
        np.stack([ridge, r_sup, r_third]),
        [rng.uniform(28, 40), rng.uniform(10, 13), rng.uniform(11, 15)],
        edge=1.0,
    )
    mastoid_c = base + post * rng.uniform(11, 16) + lat * rng.uniform(7, 11) - sup * rng.uniform(0, 4)
    mastoid_axes = np.stack([sup, post, lat])
    mastoid_semi = [rng.uniform(10, 16), rng.uniform(11, 16), rng.uniform(8, 12)]
    ellipsoid(bone, spacing, mastoid_c, mastoid_axes, mastoid_semi, edge=1.0)
    gz, gy, gx = (
        np.arange(n, dtype=np.float32)[..., None, None].reshape([-1 if k == i else 1 for k in range(3)])
        * np.float32(spacing[i])
        for i, n in enumerate(shape)
    )
    lat_dist = (gz - base[0]) * lat[0] + (gy - base[1]) * lat[1] + (gx - base[2]) * lat[2]  # mm lateral of base
    plate_in = rng.uniform(14, 20)
    plate_out = plate_in + rng.uniform(4, 7)
    plate = np.clip(0.5 + (lat_dist - plate_in) / 0.8, 0, 1) * np.clip(0.5 + (plate_out - lat_dist) / 0.8, 0, 1)
    np.maximum(bone, plate.astype(np.float32), out=bone)
    bone_hu = rng.uniform(800, 1500) + rng.uniform(80, 200) * smooth_noise(rng, shape, (0.8, 2.0, 2.0))
    blend(img, bone, bone_hu)
    # scalp and air lateral to the plate
    scalp_out = plate_out + rng.uniform(3, 7)
    blend(img, np.clip(0.5 + (lat_dist - plate_out) / 0.8, 0, 1).astype(np.float32), rng.uniform(20, 50))
    blend(img, np.clip(0.5 + (lat_dist - scalp_out) / 0.8, 0, 1).astype(np.float32), -1000.0)

    # --- mastoid air cells (some fluid-filled) inside the mastoid region
    cells = np.zeros(shape, np.float32)
    ellipsoid(cells, spacing, mastoid_c, mastoid_axes, np.array(mastoid_semi) - 1.5, edge=1.0)
    cell_noise = smooth_noise(rng, shape, (0.9 / spacing[0], 0.9 / px, 0.9 / px))
    air_cells = cells * np.clip((cell_noise - rng.uniform(-0.3, 0.3)) / 0.25, 0, 1)
    mastoid_fluid = rng.random() < 0.3
    blend(img, air_cells.astype(np.float32), rng.uniform(-20, 40) if mastoid_fluid else -1000.0)

    fine = FineGrid.of(shape, spacing, Z_SUPERSAMPLE)
    fs, fo = fine.spacing, fine.offset
    # --- labyrinth lumens (fluid) and the otic capsule around them
    coch = fine.zeros()
    paint_capsules(coch, fs, spiral[:-1], spiral[1:], r_lumen[:-1], r_lumen[1:], edge=edge, offset=fo)
    vest_c = base + post * rng.uniform(3.5, 4.8) + lat * rng.uniform(1.5, 2.8) + sup * rng.uniform(-0.5, 1.0)
    vest_axes = np.stack([sup, post, lat])
    vest_semi = np.array([rng.uniform(2.0, 2.8), rng.uniform(1.6, 2.4), rng.uniform(1.3, 1.8)])
    other = fine.zeros()
    ellipsoid(other, fs, vest_c, vest_axes, vest_semi, edge=edge, offset=fo)
    # basal turn -> vestibule connection (not cochlea)
    link = [spiral[0], spiral[0] + 0.5 * (vest_c - spiral[0]), vest_c]
    r_link = lumen0 * 0.85
    paint_capsules(other, fs, np.array(link[:-1]), np.array(link[1:]), r_link, r_link, edge=edge, offset=fo)
    # semicircular canals
    canals = []
    r_canal = rng.uniform(0.35, 0.5)
    for off, u, w in ((lat, lat, post), (sup, sup, _unit(ant + lat)), (post, post, sup)):
        rr = rng.uniform(2.6, 3.4)
        c = vest_c + off * (rr + vest_semi.min() * 0.6)
        ring = _ring(c, u, w, rr, np.pi * 1.15, np.pi * 2.85)
        canals.append(ring)
        paint_capsules(other, fs, ring[:-1], ring[1:], r_canal, r_canal, edge=edge, offset=fo)
    # internal auditory canal: from the modiolus base medially into the posterior fossa
    iac_dir = _unit(med + 0.35 * post - 0.6 * axis)
    iac = np.array([base - axis * 0.5 + iac_dir * t for t in np.linspace(0, rng.uniform(12, 18), 8)])
    r_iac = rng.uniform(1.8, 2.6)
    paint_capsules(other, fs, iac[:-1], iac[1:], r_iac * 0.8, r_iac, edge=edge, offset=fo)

    capsule = fine.zeros()
    wall = rng.uniform(1.4, 2.2)
    paint_capsules(capsule, fs, spiral[:-1], spiral[1:], r_lumen[:-1] + wall, r_lumen[1:] + wall, edge=1.0, offset=fo)
    ellipsoid(capsule, fs, vest_c, vest_axes, vest_semi + wall, edge=1.0, offset=fo)
    for ring in canals:
        paint_capsules(capsule, fs, ring[:-1], ring[1:], r_canal + wall, r_canal + wall, edge=1.0, offset=fo)
    blend(img, fine.slab_mean(capsule), rng.uniform(1500, 2300) + 80 * smooth_noise(rng, shape, (0.5, 1.5, 1.5)))

    # --- middle ear with ossicles, external auditory canal (air)
    me_c = base + lat * rng.uniform(7.0, 8.5) + ant * rng.uniform(-0.5, 1.5) + sup * rng.uniform(0, 2)
    air = fine.zeros()
    ellipsoid(
        air,
        fs,
        me_c,
        np.stack([sup, ant, lat]),
        [rng.uniform(5, 7.5), rng.uniform(3.5, 5.5), rng.uniform(1.8, 2.8)],
        edge=edge,
        offset=fo,
    )
    eac_dir = _unit(lat + rng.normal(0, 0.15, 3))
    eac = np.array([me_c + lat * 2.5 - sup * 3.5 + eac_dir * t for t in np.linspace(0, 40, 10)])
    r_eac = rng.uniform(3.0, 4.2)
    paint_capsules(air, fs, eac[:-1], eac[1:], r_eac, r_eac, edge=edge, offset=fo)
    blend(img, fine.slab_mean(air), -1000.0)
    ossicles = fine.zeros()
    head = me_c + sup * rng.uniform(2, 3.5) + lat * 0.3
    ellipsoid(ossicles, fs, head, np.stack([sup, ant, lat]), [1.6, 1.1, 1.0], edge=edge, offset=fo)
    arms = [(head, head - sup * 4.0 + ant * 0.8, 0.45), (head, head - sup * 3.0 - ant * 1.5 - lat * 0.6, 0.4)]
    for a, b, r in arms:
        paint_capsules(ossicles, fs, a, b, r, r * 0.7, edge=edge, offset=fo)
    blend(img, fine.slab_mean(ossicles), rng.uniform(600, 1300))

    # --- fluid lumens last: cochlea, vestibule, canals, IAC
    fluid_hu = rng.uniform(0, 40)
    fluid = fine.slab_mean(np.maximum(coch, other))
    coch = fine.slab_mean(coch)
    blend(img, fluid, fluid_hu + 5 * smooth_noise(rng, shape, (0.5, 1.0, 1.0)))

    mask = (coch >= 0.5).astype(np.uint8)
    noise_hu = log_uniform(rng, 25, 80)
    img = scanner(rng, img, spacing, psf_mm=(rng.uniform(0.25, 0.45), rng.uniform(0.15, 0.3)), noise_hu=noise_hu)
    meta = {
        "side": side,
        "turns": round(turns, 2),
        "basal_radius_mm": round(rho0, 2),
        "lumen_radius_mm": round(lumen0, 2),
        "height_mm": round(height, 2),
        "volume_mm3": round(float(mask.sum()) * float(np.prod(spacing)), 1),
        "noise_hu": round(noise_hu, 1),
        "mastoid_fluid": bool(mastoid_fluid),
        "centre_voxel": [int(round(centre[i] / spacing[i])) for i in range(3)],
    }
    origin = (-ext[2] / 2, -ext[1] / 2, -40.0)
    return SynthCase(to_hu_int16(img), mask, spacing, origin, meta)
