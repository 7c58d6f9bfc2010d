"""Building blocks shared by the synthetic CT scenes: random streams, soft shapes, blur, noise, HU.

Coordinates: a scene lives on a (Z, Y, X) voxel grid with spacing (sz, sy, sx) in mm; shapes are
given in mm in the same (z, y, x) order, measured from the centre of voxel (0, 0, 0). Shapes are
painted as *occupancy* in [0, 1] (the fraction of a voxel inside the shape, approximated by a linear
ramp of one ``edge`` across the surface), which is what makes partial-volume effects: a ground-truth
mask is ``occupancy >= 0.5`` and the image mixes tissue values by occupancy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from scipy import ndimage

#: HU range stored by 12-bit CT (what the DICOM writer can represent with intercept -1024).
HU_MIN, HU_MAX = -1024, 3071


@dataclass
class SynthCase:
    """One generated case.

    Attributes:
        image: (Z, Y, X) int16 CT values in HU.
        mask: (Z, Y, X) uint8 labels (0 background, 1 target).
        spacing: (sz, sy, sx) in mm.
        origin: (x, y, z) DICOM patient position (LPS, mm) of the first voxel of the first slice.
        meta: what was drawn for the case (sizes, types), JSON-serialisable.
    """

    image: np.ndarray
    mask: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(Z, Y, X)."""
        return tuple(self.image.shape)  # type: ignore[return-value]

    def ras_affine(self) -> np.ndarray:
        """NIfTI (RAS) affine of the (X, Y, Z)-ordered array, matching the DICOM geometry.

        Rows run along +x (patient left) and columns along +y (posterior) in LPS, as written by
        the DICOM writer (ImageOrientationPatient 1\\0\\0\\0\\1\\0); RAS flips x and y.
        """
        sz, sy, sx = self.spacing
        ox, oy, oz = self.origin
        return np.array([[-sx, 0, 0, -ox], [0, -sy, 0, -oy], [0, 0, sz, oz], [0, 0, 0, 1]], dtype=np.float64)


def case_rng(seed: int, task_code: int, index: int) -> np.random.Generator:
    """The random stream of one case: depends only on (seed, task, index), not on the data set size."""
    return np.random.default_rng([int(seed), int(task_code), int(index)])


def log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    """A draw uniform in log between lo and hi."""
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def random_unit(rng: np.random.Generator, n: int = 1) -> np.ndarray:
    """(n, 3) random unit vectors, uniform on the sphere, in (z, y, x) order."""
    v = rng.normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def rotation_matrix(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3x3 rotation."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return q


def grid_box(
    shape: Sequence[int],
    spacing: Sequence[float],
    lo_mm: np.ndarray,
    hi_mm: np.ndarray,
    offset: Sequence[float] = (0.0, 0.0, 0.0),
) -> tuple[tuple[slice, ...], list[np.ndarray]] | None:
    """Voxel slices covering the mm box [lo, hi] clipped to the grid, and open mm coordinate grids.

    Voxel ``i`` along an axis sits at ``offset + i * spacing`` mm. Returns None when the box misses the grid.
    """
    sp = np.asarray(spacing, dtype=np.float64)
    off = np.asarray(offset, dtype=np.float64)
    lo = np.maximum(np.floor((np.asarray(lo_mm) - off) / sp).astype(int), 0)
    hi = np.minimum(np.ceil((np.asarray(hi_mm) - off) / sp).astype(int) + 1, np.asarray(shape))
    if np.any(hi <= lo):
        return None
    sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    coords = [
        (np.arange(s.start, s.stop, dtype=np.float32) * np.float32(d) + np.float32(o)).reshape(
            [-1 if k == i else 1 for k in range(3)]
        )
        for i, (s, d, o) in enumerate(zip(sl, sp, off, strict=True))
    ]
    return sl, coords


@dataclass(frozen=True)
class FineGrid:
    """A grid ``factor`` times finer along z whose slabs of ``factor`` slices make one coarse slice.

    Painting thin structures here and averaging each slab (``slab_mean``) gives the fraction of a thick
    slice they fill: the partial-volume effect of slice thickness, for the image and the mask alike.
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    offset: tuple[float, float, float]
    factor: int

    @classmethod
    def of(cls, shape: Sequence[int], spacing: Sequence[float], factor: int) -> "FineGrid":
        sz = float(spacing[0]) / factor
        return cls(
            (int(shape[0]) * factor, int(shape[1]), int(shape[2])),
            (sz, float(spacing[1]), float(spacing[2])),
            (-(factor - 1) / 2 * sz, 0.0, 0.0),
            int(factor),
        )

    def zeros(self) -> np.ndarray:
        return np.zeros(self.shape, np.float32)

    def slab_mean(self, field_: np.ndarray) -> np.ndarray:
        """(Z * factor, Y, X) -> (Z, Y, X) mean over each slab."""
        z, y, x = field_.shape
        return field_.reshape(z // self.factor, self.factor, y, x).mean(axis=1, dtype=np.float32)


def paint_capsules(
    field_: np.ndarray,
    spacing: Sequence[float],
    p0: np.ndarray,
    p1: np.ndarray,
    r0: np.ndarray,
    r1: np.ndarray,
    *,
    edge: float,
    offset: Sequence[float] = (0.0, 0.0, 0.0),
) -> None:
    """Paint tapered capsules (segment p0->p1, radius r0->r1, mm) into ``field_`` as max-occupancy.

    Each segment only touches the voxels of its own bounding box, so long thin tubes made of many
    short segments stay cheap.
    """
    p0 = np.atleast_2d(np.asarray(p0, dtype=np.float64))
    p1 = np.atleast_2d(np.asarray(p1, dtype=np.float64))
    r0 = np.broadcast_to(np.asarray(r0, dtype=np.float64), (len(p0),))
    r1 = np.broadcast_to(np.asarray(r1, dtype=np.float64), (len(p0),))
    for a, b, ra, rb in zip(p0, p1, r0, r1, strict=True):
        pad = max(ra, rb) + edge
        box = grid_box(field_.shape, spacing, np.minimum(a, b) - pad, np.maximum(a, b) + pad, offset)
        if box is None:
            continue
        sl, (gz, gy, gx) = box
        d = b - a
        dd = float(d @ d) or 1e-12
        dz, dy, dx = (gz - a[0]), (gy - a[1]), (gx - a[2])
        t = np.clip((dz * d[0] + dy * d[1] + dx * d[2]) / dd, 0.0, 1.0)
        dist = np.sqrt((dz - t * d[0]) ** 2 + (dy - t * d[1]) ** 2 + (dx - t * d[2]) ** 2)
        occ = np.clip(0.5 + (ra + t * (rb - ra) - dist) / edge, 0.0, 1.0)
        np.maximum(field_[sl], occ, out=field_[sl])


def polyline_capsules(points: np.ndarray, radii: np.ndarray) -> tuple[np.ndarray, ...]:
    """Segments (p0, p1, r0, r1) of a polyline with per-point radii."""
    return points[:-1], points[1:], radii[:-1], radii[1:]


def smooth_noise(rng: np.random.Generator, shape: Sequence[int], sigma_vox: Sequence[float]) -> np.ndarray:
    """Gaussian-filtered white noise rescaled to unit standard deviation (float32)."""
    white = rng.standard_normal(size=tuple(shape), dtype=np.float32)
    out = ndimage.gaussian_filter(white, sigma=sigma_vox, mode="wrap", truncate=3.0)
    std = float(out.std())
    return out / (std if std > 0 else 1.0)


def blend(image: np.ndarray, occupancy: np.ndarray, value: np.ndarray | float) -> None:
    """In place: image = image * (1 - occ) + value * occ (painter's model of partial volume)."""
    image += occupancy * (np.asarray(value, dtype=np.float32) - image)


def scanner(
    rng: np.random.Generator,
    image: np.ndarray,
    spacing: Sequence[float],
    *,
    psf_mm: tuple[float, float],
    noise_hu: float,
    noise_corr_vox: float = 0.7,
) -> np.ndarray:
    """Point-spread blur (sigma in mm: in-plane, along z) then correlated Gaussian noise of std noise_hu."""
    sz, sy, sx = spacing
    sig = (psf_mm[1] / sz, psf_mm[0] / sy, psf_mm[0] / sx)
    out = ndimage.gaussian_filter(image, sigma=sig, mode="nearest", truncate=3.0)
    noise = smooth_noise(rng, image.shape, (0.0, noise_corr_vox, noise_corr_vox))
    out += np.float32(noise_hu) * noise
    return out


def to_hu_int16(image: np.ndarray) -> np.ndarray:
    """Round and clip to the stored CT range, as int16."""
    return np.clip(np.rint(image), HU_MIN, HU_MAX).astype(np.int16)


def mm_grid(shape: Sequence[int], spacing: Sequence[float]) -> list[np.ndarray]:
    """Open (z, y, x) coordinate grids in mm for the whole volume (float32)."""
    return [
        (np.arange(n, dtype=np.float32) * np.float32(d)).reshape([-1 if k == i else 1 for k in range(3)])
        for i, (n, d) in enumerate(zip(shape, spacing, strict=True))
    ]


def ellipsoid(
    field_: np.ndarray,
    spacing: Sequence[float],
    centre: Sequence[float],
    axes: np.ndarray,
    semi: Sequence[float],
    *,
    edge: float,
    offset: Sequence[float] = (0.0, 0.0, 0.0),
) -> None:
    """Paint an ellipsoid (centre mm, rows of ``axes`` its unit directions, ``semi`` its semi-axes mm)
    into ``field_`` as max-occupancy; the surface ramp is ``edge`` mm wide."""
    c = np.asarray(centre, dtype=np.float64)
    semi = np.asarray(semi, dtype=np.float64)
    pad = float(semi.max()) + edge
    box = grid_box(field_.shape, spacing, c - pad, c + pad, offset)
    if box is None:
        return
    sl, (gz, gy, gx) = box
    dz, dy, dx = gz - c[0], gy - c[1], gx - c[2]
    rho2 = 0.0
    for k in range(3):
        a = axes[k]
        rho2 = rho2 + ((dz * a[0] + dy * a[1] + dx * a[2]) / semi[k]) ** 2
    rho = np.sqrt(rho2)
    occ = np.clip(0.5 + (1.0 - rho) * float(semi.min()) / edge, 0.0, 1.0)
    np.maximum(field_[sl], occ, out=field_[sl])
