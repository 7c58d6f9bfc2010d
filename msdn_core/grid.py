"""The canonical model grid: one step that brings any input onto the grid a model was trained on, and
its answer back onto the input's own grid.

A 2D CNN is neither scale- nor mirror-invariant: a 512 x 512 chest shown to a model trained at 1.25 mm
pixels looks twice as large as anything it learned, and a file stored with one axis flipped shows it
mirrored anatomy. So, as nnU-Net's plans do (a fixed axis order and a target spacing; every case is
transposed and resampled before training and before inference, predictions resampled back), the model
card names the grid (``input.orientation``, ``input.spacing_mm``; :class:`ModelGrid`) and this module is
the one place that moves data between an input's grid and the model's. Training sampling, validation,
calibration, evaluation, the service, the CLI and the jobs all call it, so they agree by construction.

Native -> model (:class:`GridTransform`, made by :meth:`ModelGrid.transform` for one input grid):

1. **Orientation**: the voxel axes are permuted and flipped (no interpolation, exact) so that indices
   x, y, z run towards ``orientation`` (three letters, the LPS patient directions of index x, y and z:
   ``"LPS"`` is the DICOM axial view, columns to the patient's left, rows posterior, slices superior).
   For an oblique grid the nearest axes are taken (nibabel's ``io_orientation``); the remaining rotation
   stays in the affine, no resampling.
2. **Resampling**: every axis whose spacing differs from the model's by more than ``rtol`` (relative) is
   resampled to exactly the model's spacing. The grids are edge-aligned (the first voxel's outer edge
   stays where it was; the model axis has ``round(n * s / t)`` voxels). Interpolation is linear
   (``scipy.ndimage.affine_transform``, order 1, edge values extended), after a Gaussian anti-aliasing
   filter of sigma ``(t / s - 1) / 2`` voxels where the model grid is coarser (skimage's rule), so a
   downsampled fine scan looks like a scan reconstructed at the coarser pixel size. In-plane resampling
   runs slice by slice, so a model-grid volume can be filled batch by batch while the model runs
   (:meth:`GridTransform.model_volume`).

Model -> native: labels are resampled as nnU-Net resamples segmentations (each class's one-hot map
interpolated linearly and set where it reaches 0.5, classes in order), only around where there are
labels; scores (``uint8``, foreground probability x 255) linearly, only where asked (the answer's
labels: the only place post-processing reads them); then the inverse permutation and flips. Boxes in
continuous pixel coordinates (:mod:`msdn_core.boxes`) are mapped exactly both ways.

Why ``scipy.ndimage`` and not SimpleITK: it is already a core dependency (torch-free, no extra wheel
in the serving image), it works slice by slice on NumPy arrays in place, and ``affine_transform``
takes the exact pixel-centre transform; SimpleITK would add a 50 MB dependency and a copy per call.

A card without ``spacing_mm`` and ``orientation`` (every card before them) gives the identity
transform: the input is used on its own grid, as before.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional, Sequence

import numpy as np

from msdn_core import geometry
from msdn_core.boxes import SliceBox
from msdn_core.volume import Volume

#: Letters of the LPS patient directions, (negative, positive) for world axes x, y, z (nibabel's ``labels``).
LPS_LABELS = (("R", "L"), ("A", "P"), ("I", "S"))
#: The DICOM axial view: columns to the patient's left, rows posterior, slices superior.
AXIAL_LPS = "LPS"
#: Default relative spacing difference within which an axis is not resampled.
DEFAULT_SPACING_RTOL = 0.01


def orientation_of(affine: np.ndarray) -> str:
    """The three letters (LPS labels) index x, y and z of an LPS ``affine`` point to (nearest axes)."""
    from nibabel.orientations import aff2axcodes

    return "".join(aff2axcodes(np.asarray(affine, np.float64), labels=LPS_LABELS))


def check_orientation(value: str) -> str:
    """``value`` upper-cased when it names each world axis once (e.g. ``"LPS"``, ``"RAS"``), else ValueError."""
    text = str(value).upper()
    axes = []
    for letter in text:
        hit = [i for i, pair in enumerate(LPS_LABELS) if letter in pair]
        axes += hit
    if len(text) != 3 or sorted(axes) != [0, 1, 2]:
        raise ValueError(f"orientation must be three letters naming L/R, P/A and S/I once each, got {value!r}")
    return text


def check_spacing(value: Sequence[float]) -> tuple[float, ...]:
    """``value`` as (sy, sx) or (sz, sy, sx) positive finite mm, else ValueError."""
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"spacing_mm must be [sy, sx] or [sz, sy, sx] in mm, got {value!r}") from None
    if len(out) not in (2, 3) or not all(math.isfinite(v) and v > 0 for v in out):
        raise ValueError(f"spacing_mm must be [sy, sx] or [sz, sy, sx] positive mm, got {value!r}")
    return out


@dataclass(frozen=True)
class ModelGrid:
    """The grid a model was trained on, as its card says.

    Attributes:
        spacing_mm: (sy, sx) in-plane, or (sz, sy, sx), mm; None: any spacing (not resampled).
        orientation: LPS letters of index x, y, z (e.g. ``"LPS"``); None: any orientation.
        rtol: an axis whose spacing is within this relative difference is not resampled.
    """

    spacing_mm: Optional[tuple[float, ...]] = None
    orientation: Optional[str] = None
    rtol: float = DEFAULT_SPACING_RTOL

    def __post_init__(self) -> None:
        if self.spacing_mm is not None:
            object.__setattr__(self, "spacing_mm", check_spacing(self.spacing_mm))
        if self.orientation is not None:
            object.__setattr__(self, "orientation", check_orientation(self.orientation))
        if not (isinstance(self.rtol, (int, float)) and 0 <= self.rtol < 1):
            raise ValueError(f"rtol must be in [0, 1), got {self.rtol!r}")

    @property
    def defined(self) -> bool:
        """Whether the card names a grid at all (False: every input is used on its own grid)."""
        return self.spacing_mm is not None or self.orientation is not None

    def describe(self) -> dict:
        """``{"spacing_mm", "orientation"}`` for ``/v1/model`` and logs."""
        return {
            "spacing_mm": None if self.spacing_mm is None else list(self.spacing_mm),
            "orientation": self.orientation,
        }

    def transform(self, shape: Sequence[int], affine: np.ndarray) -> "GridTransform":
        """The transform between the (Z, Y, X) grid ``shape`` / LPS ``affine`` and this model grid."""
        shape = tuple(int(v) for v in shape)
        affine = np.asarray(affine, np.float64)
        oriented_shape, oriented_affine = shape, affine
        if self.orientation is not None:
            oriented_shape, oriented_affine = _reoriented(shape, affine, self.orientation)
        mapping = geometry.grid_mapping(shape, affine, oriented_shape, oriented_affine)
        assert mapping is not None  # a permutation with flips of the same voxels, by construction
        steps = [1.0, 1.0, 1.0]  # model voxel size in oriented voxels, (z, y, x)
        sizes = list(oriented_shape)
        if self.spacing_mm is not None:
            have = geometry.spacing_of(oriented_affine)
            want = (None,) * (3 - len(self.spacing_mm)) + tuple(self.spacing_mm)
            for k in range(3):
                if want[k] is not None and abs(have[k] - want[k]) > self.rtol * want[k]:
                    steps[k] = want[k] / have[k]
                    sizes[k] = max(1, int(round(oriented_shape[k] / steps[k])))
        model_affine = oriented_affine.copy()
        for k in range(3):  # (z, y, x) -> affine column 2 - k
            col = 2 - k
            model_affine[:3, 3] += (0.5 * steps[k] - 0.5) * oriented_affine[:3, col]
            model_affine[:3, col] = oriented_affine[:3, col] * steps[k]
        return GridTransform(
            native_shape=shape,
            native_affine=affine,
            mapping=mapping,
            oriented_shape=tuple(oriented_shape),
            steps=tuple(steps),
            shape=tuple(sizes),
            affine=model_affine,
        )

    def transform_for(self, volume: Volume) -> "GridTransform":
        """:meth:`transform` for a volume's grid."""
        return self.transform(volume.shape, volume.affine)


def _reoriented(shape: tuple[int, ...], affine: np.ndarray, orientation: str) -> tuple[tuple[int, ...], np.ndarray]:
    """The (Z, Y, X) shape and LPS affine of the same voxels with axes permuted/flipped to ``orientation``."""
    from nibabel.orientations import axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

    xyz = shape[::-1]
    ornt = ornt_transform(io_orientation(affine), axcodes2ornt(tuple(orientation), labels=LPS_LABELS))
    out_xyz = [0, 0, 0]
    for i, (axis, _) in enumerate(ornt):
        out_xyz[int(axis)] = xyz[i]
    return tuple(out_xyz[::-1]), affine @ inv_ornt_aff(ornt, xyz)


@dataclass(frozen=True)
class GridTransform:
    """Native grid <-> model grid for one input (module docstring). Shapes are (Z, Y, X).

    Attributes:
        native_shape, native_affine: the input's grid.
        mapping: native -> oriented axes (permutation and flips, :class:`msdn_core.geometry.GridMapping`).
        oriented_shape: the native voxels in the model's axis order.
        steps: (z, y, x) size of a model voxel in oriented voxels (1.0: not resampled).
        shape, affine: the model grid.
    """

    native_shape: tuple[int, int, int]
    native_affine: np.ndarray
    mapping: geometry.GridMapping
    oriented_shape: tuple[int, int, int]
    steps: tuple[float, float, float]
    shape: tuple[int, int, int]
    affine: np.ndarray

    # ------------------------------------------------------------------------------ properties

    @property
    def resampled(self) -> bool:
        """Whether any axis is resampled."""
        return any(s != 1.0 for s in self.steps)

    @property
    def identity(self) -> bool:
        """Whether the model grid is the native grid (nothing to do)."""
        return self.mapping.identity and not self.resampled

    @property
    def slice_aligned(self) -> bool:
        """Whether each model slice is one native slice (z neither permuted nor resampled)."""
        return self.mapping.perm[2] == 2 and self.steps[0] == 1.0

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Model-grid voxel size (sz, sy, sx) in mm."""
        return geometry.spacing_of(self.affine)

    def describe(self) -> dict:
        """What was done, for logs and answers: orientation flips/permutation and the two spacings."""
        return {
            "native": geometry.describe(self.native_shape, self.native_affine),
            "model": geometry.describe(self.shape, self.affine),
            "permuted": self.mapping.perm != (0, 1, 2),
            "flipped_xyz": list(self.mapping.flip),
            "resampled_zyx": [s != 1.0 for s in self.steps],
        }

    def native_slices(self, start: int, stop: int) -> tuple[int, int]:
        """The native slices [a, b) that model slices [start, stop) come from (``slice_aligned`` only)."""
        if not self.slice_aligned:
            raise ValueError("native_slices needs a slice-aligned transform")
        if self.mapping.flip[2]:
            n = self.native_shape[0]
            return n - stop, n - start
        return start, stop

    # ------------------------------------------------------------------------------ images

    def to_model(self, array: np.ndarray, *, start: int = 0, stop: Optional[int] = None) -> np.ndarray:
        """Model-grid image, float32: slices [start, stop) of it (slice-aligned transforms), else all.

        Args:
            array: the native (Z, Y, X) image (only the slices :meth:`native_slices` names are read).
            start, stop: model slices wanted; a transform that is not slice-aligned needs the whole
                volume (``start=0``, ``stop=None``).
        """
        stop = self.shape[0] if stop is None else stop
        if self.slice_aligned:
            a, b = self.native_slices(start, stop)
            oriented = self.mapping.apply(array[a:b])
        else:
            if (start, stop) != (0, self.shape[0]):
                raise ValueError("a transform that is not slice-aligned maps whole volumes only")
            oriented = self.mapping.apply(array)
        _, ry, rx = self.steps
        out = np.empty((oriented.shape[0], self.shape[1], self.shape[2]), np.float32)
        if ry == 1.0 and rx == 1.0:
            out[...] = oriented
        else:
            for z in range(oriented.shape[0]):
                out[z] = _resample_plane(oriented[z], (ry, rx), self.shape[1:])
        if self.steps[0] != 1.0:
            out = _resample_z(out, self.steps[0], self.shape[0])
        return out

    def model_volume(self, volume: Volume) -> Volume:
        """``volume`` (native) on the model grid, as a :class:`Volume`; ``volume`` itself when identity.

        For a slice-aligned transform of a volume decoded on demand (``Volume.loader``), the model-grid
        volume is filled batch by batch too: its :meth:`Volume.load` decodes the native slices it needs
        and resamples them then. Partly decoded volumes (``Volume.decoded``) map to the model slices
        of the decoded native ones. The result carries no ``series`` / ``header`` (they describe the
        native grid, where answers are written).
        """
        if self.identity:
            return volume
        decoded = None
        if volume.decoded is not None:
            if not self.slice_aligned:
                raise ValueError("a partly decoded volume needs a slice-aligned transform")
            n = self.native_shape[0]
            native = np.asarray(volume.decoded, np.int64)
            decoded = np.sort(n - 1 - native) if self.mapping.flip[2] else native
        meta = {"modality": volume.modality, "frame_of_reference_uid": volume.frame_of_reference_uid}
        if decoded is not None:  # only the decoded slices hold values: resample those
            array = np.zeros(self.shape, np.float32)
            for k in decoded:
                array[k : k + 1] = self.to_model(volume.array, start=int(k), stop=int(k) + 1)
            return Volume(array, self.affine, volume.source, decoded=decoded, **meta)
        if volume.loader is None or not self.slice_aligned:
            return Volume(self.to_model(volume.load()), self.affine, volume.source, **meta)
        array = np.empty(self.shape, np.float32)  # pages untouched until a batch fills them
        filled = np.zeros(self.shape[0], bool)

        def load(start: int, stop: int) -> np.ndarray:
            todo = np.flatnonzero(~filled[start:stop])
            if todo.size:
                a, b = start + int(todo[0]), start + int(todo[-1]) + 1
                na, nb = self.native_slices(a, b)
                array[a:b] = self.to_model(volume.load(na, nb), start=a, stop=b)
                filled[a:b] = True
            return array

        return Volume(array, self.affine, volume.source, loader=load, **meta)

    # ------------------------------------------------------------------------------ answers

    def labels_to_model(self, labels: np.ndarray) -> np.ndarray:
        """Native (Z, Y, X) integer labels (a training mask) on the model grid, uint8 (one-hot linear)."""
        if self.identity:
            return np.asarray(labels, np.uint8)
        oriented = self.mapping.apply(np.asarray(labels, np.uint8))
        if not self.resampled:
            return np.ascontiguousarray(oriented)
        return _resample_labels(oriented, self.shape, [1.0 / s for s in self.steps])

    def labels_to_native(self, labels: np.ndarray) -> np.ndarray:
        """Model-grid (Z, Y, X) uint8 labels on the native grid (one-hot linear resampling, module docstring)."""
        if self.identity:
            return labels
        oriented = _resample_labels(labels, self.oriented_shape, self.steps) if self.resampled else labels
        return np.ascontiguousarray(self.mapping.inverse().apply(oriented))

    def scores_to_native(self, scores: np.ndarray, *, where: Sequence[np.ndarray]) -> np.ndarray:
        """Model-grid uint8 scores on the native grid (linear), filled only around the native ``where``
        labels (any non-zero of any of them; elsewhere 0)."""
        if self.identity:
            return scores
        if not self.resampled:
            return np.ascontiguousarray(self.mapping.inverse().apply(scores))
        oriented = np.zeros(self.oriented_shape, np.uint8)
        masks = [self.mapping.apply(w) for w in where]
        for z in range(self.oriented_shape[0]):
            rows = cols = None
            for m in masks:
                r, c = _extent(m[z])
                if r is not None:
                    rows = r if rows is None else (min(rows[0], r[0]), max(rows[1], r[1]))
                    cols = c if cols is None else (min(cols[0], c[0]), max(cols[1], c[1]))
            if rows is None:
                continue
            mz = (z + 0.5) / self.steps[0] - 0.5
            source = scores[min(max(int(round(mz)), 0), scores.shape[0] - 1)]
            region = _resample_region(source.astype(np.float32), self.steps[1:], rows, cols, order=1)
            np.rint(region, out=region)
            oriented[z, rows[0] : rows[1], cols[0] : cols[1]] = np.clip(region, 0, 255)
        return np.ascontiguousarray(self.mapping.inverse().apply(oriented))

    # ------------------------------------------------------------------------------ boxes

    def box_to_model(self, box: Sequence[float]) -> list[float]:
        """A native 3D box [x1, y1, z1, x2, y2, z2] (continuous pixels) on the model grid."""
        lo, hi = self._orient_box(box, self.mapping, self.native_shape[::-1])
        steps_xyz = self.steps[::-1]
        sizes_xyz = self.shape[::-1]
        lo = [min(max(_round(v / s), 0.0), n) for v, s, n in zip(lo, steps_xyz, sizes_xyz, strict=True)]
        hi = [min(max(_round(v / s), 0.0), n) for v, s, n in zip(hi, steps_xyz, sizes_xyz, strict=True)]
        return [*lo, *hi]

    def box_to_native(self, box: Sequence[float]) -> list[float]:
        """A model-grid 3D box [x1, y1, z1, x2, y2, z2] on the native grid."""
        steps_xyz = self.steps[::-1]
        sizes_xyz = self.oriented_shape[::-1]
        scaled = [min(max(_round(float(box[k]) * steps_xyz[k % 3]), 0.0), sizes_xyz[k % 3]) for k in range(6)]
        lo, hi = self._orient_box(scaled, self.mapping.inverse(), sizes_xyz)
        return [*lo, *hi]

    @staticmethod
    def _orient_box(box: Sequence[float], mapping: geometry.GridMapping, src_sizes_xyz) -> tuple[list, list]:
        lo, hi = [0.0] * 3, [0.0] * 3
        for j in range(3):
            i = mapping.perm[j]
            a, b = float(box[i]), float(box[i + 3])
            if mapping.flip[j]:
                a, b = src_sizes_xyz[i] - b, src_sizes_xyz[i] - a
            lo[j], hi[j] = min(a, b), max(a, b)
        return lo, hi

    def slice_boxes_to_model(self, boxes: Sequence[SliceBox]) -> list[SliceBox]:
        """Native slice boxes on the model grid: each on the model slices its slice maps to."""
        if self.identity:
            return list(boxes)
        return _slice_boxes(boxes, self.box_to_model, self.shape[0])

    def slice_boxes_to_native(self, boxes: Sequence[SliceBox]) -> list[SliceBox]:
        """Model-grid slice boxes on the native grid."""
        if self.identity:
            return list(boxes)
        return _slice_boxes(boxes, self.box_to_native, self.native_shape[0])


def _round(value: float) -> float:
    """Box coordinates to a millionth of a pixel, so a round trip of whole pixels stays whole."""
    return round(value, 6)


def _slice_boxes(boxes: Sequence[SliceBox], fn, depth: int) -> list[SliceBox]:
    out: list[SliceBox] = []
    for b in boxes:
        x1, y1, z1, x2, y2, z2 = fn([b.x1, b.y1, b.slice, b.x2, b.y2, b.slice + 1])
        if not (x2 > x1 and y2 > y1):
            continue
        first = min(max(math.floor(z1 + 1e-6), 0), depth - 1)
        last = min(max(math.ceil(z2 - 1e-6), first + 1), depth)
        out += [replace(b, slice=z, x1=x1, y1=y1, x2=x2, y2=y2) for z in range(first, last)]
    return out


# ---------------------------------------------------------------------------------- resampling


def _antialias(plane: np.ndarray, steps: Sequence[float]) -> np.ndarray:
    """Gaussian prefilter of sigma (step - 1) / 2 along axes the resampling coarsens (skimage's rule)."""
    sigma = [max(0.0, (s - 1.0) / 2.0) for s in steps]
    if not any(sigma):
        return plane
    from scipy import ndimage

    return ndimage.gaussian_filter(plane, sigma, mode="nearest")


def _resample_plane(plane: np.ndarray, steps: Sequence[float], out_shape: Sequence[int]) -> np.ndarray:
    """A (Y, X) plane on the model grid: anti-aliased, linear, edge-aligned (module docstring)."""
    from scipy import ndimage

    src = _antialias(np.asarray(plane, np.float32), steps)
    ry, rx = steps
    return ndimage.affine_transform(
        src,
        np.asarray([ry, rx]),
        offset=[0.5 * ry - 0.5, 0.5 * rx - 0.5],
        output_shape=tuple(int(v) for v in out_shape),
        output=np.float32,
        order=1,
        mode="nearest",
        prefilter=False,
    )


def _resample_z(volume: np.ndarray, step: float, depth: int) -> np.ndarray:
    """(Z, Y, X) float32 resampled along z to ``depth`` slices of ``step`` native slices each."""
    from scipy import ndimage

    src = volume
    if step > 1.0:
        src = ndimage.gaussian_filter1d(volume, (step - 1.0) / 2.0, axis=0, mode="nearest")
    out = np.empty((depth, *volume.shape[1:]), np.float32)
    for k in range(depth):
        pos = min(max((k + 0.5) * step - 0.5, 0.0), volume.shape[0] - 1.0)
        lo = int(math.floor(pos))
        hi = min(lo + 1, volume.shape[0] - 1)
        w = np.float32(pos - lo)
        out[k] = src[lo] * (1 - w) + src[hi] * w
    return out


def _extent(mask2d: np.ndarray, margin: int = 0) -> tuple[Optional[tuple[int, int]], Optional[tuple[int, int]]]:
    """(rows [r0, r1), cols [c0, c1)) of a 2D array's non-zero pixels, or (None, None)."""
    rows = np.flatnonzero(mask2d.any(axis=1))
    if not rows.size:
        return None, None
    cols = np.flatnonzero(mask2d.any(axis=0))
    return (int(rows[0]), int(rows[-1]) + 1), (int(cols[0]), int(cols[-1]) + 1)


def _resample_region(
    model_plane: np.ndarray, steps: Sequence[float], rows: tuple[int, int], cols: tuple[int, int], *, order: int
) -> np.ndarray:
    """Pixels rows x cols of the other grid sampled from a plane (float32); ``steps``: a source pixel's
    size in output pixels (model -> native: the transform's steps)."""
    from scipy import ndimage

    ry, rx = steps
    return ndimage.affine_transform(
        model_plane,
        np.asarray([1.0 / ry, 1.0 / rx]),
        offset=[(rows[0] + 0.5) / ry - 0.5, (cols[0] + 0.5) / rx - 0.5],
        output_shape=(rows[1] - rows[0], cols[1] - cols[0]),
        output=np.float32,
        order=order,
        mode="nearest",
        prefilter=False,
    )


def _native_extent(extent: tuple[int, int], step: float, size: int) -> tuple[int, int]:
    """Output pixels [a, b) that a source pixel range's one-hot interpolation can reach (``step``: source
    pixel size in output pixels)."""
    return max(int(math.floor(extent[0] * step)) - 1, 0), min(int(math.ceil(extent[1] * step)) + 1, size)


def _resample_labels(labels: np.ndarray, shape: Sequence[int], steps: Sequence[float]) -> np.ndarray:
    """(Z, Y, X) uint8 labels resampled onto an edge-aligned grid of ``shape`` whose voxels are
    ``1 / steps`` source voxels (``steps``: a source voxel's size in output voxels), one-hot linear."""
    out = np.zeros(tuple(int(v) for v in shape), np.uint8)
    classes = [int(c) for c in np.unique(labels) if c]
    if not classes:
        return out
    if steps[0] != 1.0:
        _labels_3d(labels, out, steps, classes)
    else:
        for z in np.flatnonzero(labels.reshape(labels.shape[0], -1).any(axis=1)):
            _labels_plane(labels[z], out[z], steps[1:], classes)
    return out


def _labels_plane(labels: np.ndarray, out: np.ndarray, steps: Sequence[float], classes: Sequence[int]) -> None:
    """One plane's labels into the plane ``out`` of the other grid, classes in order."""
    r, c = _extent(labels)
    if r is None:
        return
    rows = _native_extent(r, steps[0], out.shape[0])
    cols = _native_extent(c, steps[1], out.shape[1])
    target = out[rows[0] : rows[1], cols[0] : cols[1]]
    for value in classes:
        onehot = (labels == value).astype(np.float32)
        target[_resample_region(onehot, steps, rows, cols, order=1) >= 0.5] = value


def _labels_3d(labels: np.ndarray, out: np.ndarray, steps: Sequence[float], classes: Sequence[int]) -> None:
    """Labels into the volume ``out`` of the other grid when z is resampled too."""
    from scipy import ndimage

    nz = np.flatnonzero(labels.reshape(labels.shape[0], -1).any(axis=1))
    r, c = _extent(labels.any(axis=0))
    zs = _native_extent((int(nz[0]), int(nz[-1]) + 1), steps[0], out.shape[0])
    rows = _native_extent(r, steps[1], out.shape[1])
    cols = _native_extent(c, steps[2], out.shape[2])
    target = out[zs[0] : zs[1], rows[0] : rows[1], cols[0] : cols[1]]
    for value in classes:
        onehot = (labels == value).astype(np.float32)
        region = ndimage.affine_transform(
            onehot,
            np.asarray([1.0 / s for s in steps]),
            offset=[(a + 0.5) / s - 0.5 for a, s in zip((zs[0], rows[0], cols[0]), steps, strict=True)],
            output_shape=target.shape,
            output=np.float32,
            order=1,
            mode="nearest",
            prefilter=False,
        )
        target[region >= 0.5] = value


__all__ = [
    "AXIAL_LPS",
    "DEFAULT_SPACING_RTOL",
    "GridTransform",
    "ModelGrid",
    "check_orientation",
    "check_spacing",
    "orientation_of",
]
