"""Reference masks matched to the input by physical geometry, never by array shape alone.

* A NIfTI or NRRD reference (:class:`msdn_core.volume.Volume`) is brought onto the input's voxel grid
  through the two affines: axis permutations and flips are applied exactly
  (:func:`msdn_core.geometry.map_to_grid`); a voxel-aligned reference covering part of the input (the
  box of slices a dcmqi or 3D Slicer export keeps) is zero-padded onto it; any other pair of grids is
  ``REFERENCE_MISMATCH`` with both geometries in the message and ``detail``.
* A ``.npy`` reference (or any reference of a ``.npy`` input) has no geometry: it must have the
  input's (Z, Y, X) shape.
* A DICOM SEG reference (DICOM input only; segment number k is class value k) is matched frame by
  frame: by source instance (and source frame, for a multi-frame input) when every frame declares
  ``SpatialLocationsPreserved`` YES for a source image of the input; otherwise (dcmqi / 3D Slicer
  SEGs do not declare it) by plane position: the SEG must share the input's Frame of Reference,
  orientation, pixel spacing and image size, and each frame's ImagePositionPatient must lie within
  ``position_tol_mm`` (default a tenth of the smallest voxel size) of an input slice's position.
  Overlapping segments: a voxel in several segments takes the highest segment number. A FRACTIONAL
  SEG is thresholded at half its maximum fractional value. For a gantry-tilt corrected input the SEG's
  labels (on the acquired slices) are moved onto the corrected grid (nearest neighbour).

Every reference then holds integer labels 0..C (:func:`check_labels`).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from pydicom.dataset import Dataset

from msdn_core import geometry
from msdn_core.errors import ErrorCode, InvalidInput
from msdn_core.volume import Volume

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
_MISMATCH = ErrorCode.REFERENCE_MISMATCH


def check_labels(labels: np.ndarray, *, name: str, num_classes: int) -> np.ndarray:
    """``labels`` as uint8 after checking they are integer class values 0..``num_classes``."""
    if labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels)) or not np.all(labels == np.round(labels)):
            raise InvalidInput(
                f"{name}: reference must hold integer class labels, found fractional values", code=_MISMATCH
            )
    elif labels.dtype.kind not in "biu":
        raise InvalidInput(f"{name}: reference data type {labels.dtype} is not a label type", code=_MISMATCH)
    low, high = (int(labels.min()), int(labels.max())) if labels.size else (0, 0)
    if low < 0 or high > num_classes:
        raise InvalidInput(
            f"{name}: reference labels span {low}..{high}; this model's classes are 0..{num_classes} (0 = background)",
            code=_MISMATCH,
        )
    return labels.astype(np.uint8)


def match_reference(
    reference: Volume | np.ndarray,
    *,
    image: Volume,
    name: str,
    num_classes: int,
    tol_voxels: float = 0.01,
) -> np.ndarray:
    """A NIfTI/NRRD/npy reference as (Z, Y, X) uint8 labels on ``image``'s grid (module docstring)."""
    if isinstance(reference, np.ndarray) or reference.source == "npy" or image.source == "npy":
        labels = reference if isinstance(reference, np.ndarray) else reference.array
        if labels.shape != image.shape:
            raise InvalidInput(
                f"{name}: reference shape (Z, Y, X) {list(labels.shape)} differs from the input's "
                f"{list(image.shape)} (a .npy has no geometry, so the shapes must agree)",
                code=_MISMATCH,
            )
    else:
        labels = geometry.map_to_grid(
            reference.array, reference.affine, image.shape, image.affine, tol_voxels=tol_voxels, what=name, subgrid=True
        )
    return check_labels(labels, name=name, num_classes=num_classes)


def _first(seq: object) -> Optional[Dataset]:
    return seq[0] if seq else None  # type: ignore[index]


def _frame_item(ds: Dataset, f: int, keyword: str) -> Optional[Dataset]:
    per = ds.get("PerFrameFunctionalGroupsSequence")
    if per is not None and len(per) > f and keyword in per[f]:
        return _first(per[f].get(keyword))
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared and keyword in shared[0]:
        return _first(shared[0].get(keyword))
    return None


def _sources(ds: Dataset, f: int) -> list[Dataset]:
    per = ds.get("PerFrameFunctionalGroupsSequence")
    if per is None or len(per) <= f:
        return []
    return [src for der in per[f].get("DerivationImageSequence", []) for src in der.get("SourceImageSequence", [])]


def _slots_by_source(ds: Dataset, n_frames: int, image: Volume) -> Optional[list[int]]:
    """Input slice of each SEG frame through its preserved source image, or None when not all are declared."""
    series = image.series
    if series.multiframe:
        lookup = {(series.sop_instance_uids[0], n): z for z, n in enumerate(series.frame_numbers or [])}
    else:
        lookup = {(uid, None): z for z, uid in enumerate(series.sop_instance_uids)}
    slots = []
    for f in range(n_frames):
        found = None
        for src in _sources(ds, f):
            if str(src.get("SpatialLocationsPreserved", "")).upper() != "YES":
                continue
            uid = str(src.get("ReferencedSOPInstanceUID", ""))
            frames = src.get("ReferencedFrameNumber")
            key = (
                (uid, int(frames if not isinstance(frames, (list, tuple)) else frames[0]))
                if series.multiframe and frames
                else (uid, None)
            )
            if key in lookup:
                found = lookup[key]
                break
        if found is None:
            return None
        slots.append(found)
    return slots


def _slots_by_position(ds: Dataset, n_frames: int, image: Volume, name: str, tol: float) -> list[int]:
    """Input slice of each SEG frame by plane position (module docstring)."""
    frame_uid = ds.get("FrameOfReferenceUID")
    if image.frame_of_reference_uid and frame_uid and str(frame_uid) != image.frame_of_reference_uid:
        referenced = {str(item.get("SeriesInstanceUID", "")) for item in ds.get("ReferencedSeriesSequence", [])}
        series_note = (
            ""
            if image.series.series_instance_uid in referenced
            else f" does not reference the input series {image.series.series_instance_uid} and"
        )
        raise InvalidInput(
            f"{name}: the SEG{series_note} its Frame of Reference {frame_uid} is not the input's "
            f"{image.frame_of_reference_uid}",
            code=_MISMATCH,
        )
    if (int(ds.Rows), int(ds.Columns)) != image.shape[1:]:
        raise InvalidInput(
            f"{name}: SEG frames are {int(ds.Rows)}x{int(ds.Columns)}, "
            f"the input's slices {image.shape[1]}x{image.shape[2]}",
            code=_MISMATCH,
        )
    direction = image.direction
    positions = image.series.positions if image.series.positions is not None else image.slice_positions()
    slots = []
    for f in range(n_frames):
        ori = _frame_item(ds, f, "PlaneOrientationSequence")
        pos = _frame_item(ds, f, "PlanePositionSequence")
        meas = _frame_item(ds, f, "PixelMeasuresSequence")
        if ori is None or pos is None or "ImagePositionPatient" not in pos:
            raise InvalidInput(
                f"{name}: SEG frame {f + 1} declares neither a preserved source image nor a plane position",
                code=_MISMATCH,
            )
        iop = np.asarray([float(v) for v in ori.ImageOrientationPatient])
        if not (np.allclose(iop[:3], direction[:, 0], atol=1e-3) and np.allclose(iop[3:], direction[:, 1], atol=1e-3)):
            raise InvalidInput(
                f"{name}: SEG orientation {iop.round(4).tolist()} is not the input's "
                f"{np.concatenate([direction[:, 0], direction[:, 1]]).round(4).tolist()}",
                code=_MISMATCH,
            )
        if meas is not None and "PixelSpacing" in meas:
            ps = [float(v) for v in meas.PixelSpacing]
            if not np.allclose(ps, image.spacing[1:], rtol=1e-3):
                raise InvalidInput(
                    f"{name}: SEG pixel spacing {ps} is not the input's {list(image.spacing[1:])}", code=_MISMATCH
                )
        p = np.asarray([float(v) for v in pos.ImagePositionPatient])
        dist = np.linalg.norm(positions - p[None, :], axis=1)
        z = int(np.argmin(dist))
        if dist[z] > tol:
            raise InvalidInput(
                f"{name}: SEG frame {f + 1} at {p.round(3).tolist()} mm is {dist[z]:.3f} mm from the nearest input "
                f"slice (tolerance {tol:.3f} mm)",
                code=_MISMATCH,
            )
        slots.append(z)
    return slots


def labels_from_seg(
    ds: Dataset, *, image: Volume, name: str, num_classes: int, position_tol_mm: Optional[float] = None
) -> np.ndarray:
    """Class labels (Z, Y, X) uint8 of a DICOM SEG dataset on the DICOM ``image``'s grid (module docstring)."""
    if str(ds.get("SOPClassUID", "")) != SEG_SOP_CLASS:
        raise InvalidInput(
            f"{name}: a DICOM reference must be a Segmentation (SEG), got SOP class {ds.get('SOPClassUID')}",
            code=_MISMATCH,
        )
    if image.series is None:
        raise InvalidInput(
            f"{name}: a DICOM SEG reference needs DICOM input (it refers to source images)", code=_MISMATCH
        )
    try:
        pixels = np.asarray(ds.pixel_array)
        per = ds.PerFrameFunctionalGroupsSequence
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on broken SEGs
        raise InvalidInput(
            f"{name}: not a valid DICOM SEG ({type(exc).__name__}: {exc})", code=ErrorCode.INVALID_REFERENCE
        ) from None
    if pixels.ndim == 2:
        pixels = pixels[None]
    n_frames = pixels.shape[0]
    if len(per) != n_frames:
        raise InvalidInput(
            f"{name}: {len(per)} per-frame items for {n_frames} frames", code=ErrorCode.INVALID_REFERENCE
        )
    if str(ds.get("SegmentationType", "BINARY")).upper() == "FRACTIONAL":
        pixels = pixels > float(ds.get("MaximumFractionalValue", 255)) / 2
    slots = _slots_by_source(ds, n_frames, image)
    if slots is None:
        tol = position_tol_mm if position_tol_mm is not None else 0.1 * min(image.spacing)
        slots = _slots_by_position(ds, n_frames, image, name, tol)
    labels = np.zeros(image.shape, np.int32)
    for f, z in enumerate(slots):
        seg_item = _frame_item(ds, f, "SegmentIdentificationSequence")
        if seg_item is None:
            raise InvalidInput(f"{name}: SEG frame {f + 1} names no segment", code=ErrorCode.INVALID_REFERENCE)
        number = int(seg_item.ReferencedSegmentNumber)
        plane = labels[z]
        np.maximum(plane, np.where(pixels[f] > 0, number, 0), out=plane)  # overlap: highest segment number wins
    if image.tilt_deg and image.series.positions is not None:  # SEG frames lie on the acquired (tilted) slices
        labels = geometry.to_acquired_slices(labels, image.affine, image.series.positions, inverse=True)
    return check_labels(labels, name=name, num_classes=num_classes)
