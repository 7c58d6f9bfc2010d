"""Read a DICOM series into an ``ImageVolume``.

``parse_dicom`` turns uploaded bytes into a pydicom ``Dataset`` (Part 10 files only).
``series_volume`` takes the datasets of an upload (or of a PACS retrieve), picks one series, checks
its geometry and decodes it:

* one series: several series need ``series_uid``, else ``MixedSeries`` listing them;
* single-frame instances, or one (enhanced or legacy-converted) multi-frame instance whose frames are
  placed by its functional groups;
* frames sorted by position along the slice normal (cross product of the orientation's row and
  column directions); mixed orientations, different sizes or pixel spacings, duplicate positions and
  irregular slice gaps are ``InconsistentGeometry``;
* pixel data decoded by pydicom with the pylibjpeg plugins (JPEG, JPEG-LS, JPEG 2000, HTJ2K, RLE,
  deflate); a transfer syntax with no decoder is ``UnsupportedTransferSyntax``;
* the modality transform applied (rescale slope/intercept per frame, or a modality LUT): CT values
  come out in Hounsfield units.

Pixel data of the datasets is released once decoded (the datasets are kept, without pixels, for
the DICOM SEG answer, which only needs their metadata).
"""

from __future__ import annotations

import io
import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import BinaryIO, Optional, Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from msdn_core.errors import ErrorCode
from service.errors import (
    InconsistentGeometry,
    InvalidInput,
    LimitExceeded,
    MixedSeries,
    ModalityNotAllowed,
    NoPixelData,
    NotDicom,
    UnsupportedTransferSyntax,
)
from service.image import LPS_TO_RAS, ImageVolume
from service.settings import Settings

logger = logging.getLogger(__name__)

PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
#: Orientation cosines may differ by this much and still count as the same orientation.
ORIENTATION_TOL = 1e-4
#: Slice gaps may differ from their median by this fraction (and at least ``GAP_ATOL`` mm).
GAP_RTOL = 0.05
GAP_ATOL = 1e-3
#: Positions closer than this (mm) along the normal are duplicates.
DUPLICATE_TOL = 1e-3


def parse_dicom(data: bytes | BinaryIO, *, name: str) -> Dataset:
    """Parse one DICOM Part 10 file.

    Raises:
        NotDicom: no file meta header / 'DICM' prefix, or unparseable content.
    """
    fileobj = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    try:
        return pydicom.dcmread(fileobj)
    except InvalidDicomError:
        raise NotDicom(f"{name}: not a DICOM Part 10 file (no 128-byte preamble and 'DICM' prefix)") from None
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on bad input
        raise NotDicom(f"{name}: unreadable DICOM ({type(exc).__name__}: {exc})") from None


@dataclass
class DicomSeries:
    """The source instances of a volume, in slice order.

    Attributes:
        datasets: single-frame instances sorted by slice position, or one multi-frame instance.
        frame_numbers: for a multi-frame instance, the 1-based frame number of each slice.
        series_instance_uid: the series.
        file_names: upload names of ``datasets`` (for messages).
    """

    datasets: list[Dataset]
    frame_numbers: Optional[list[int]]
    series_instance_uid: str
    file_names: list[str]

    @property
    def multiframe(self) -> bool:
        return self.frame_numbers is not None

    @property
    def sop_instance_uids(self) -> list[str]:
        """SOP Instance UID of each slice (the same UID for all frames of a multi-frame)."""
        if self.multiframe:
            return [str(self.datasets[0].SOPInstanceUID)] * len(self.frame_numbers or [])
        return [str(ds.SOPInstanceUID) for ds in self.datasets]


@dataclass
class _Frame:
    dataset: int
    frame: Optional[int]  # 0-based frame index for multi-frame instances
    position: np.ndarray
    orientation: np.ndarray
    pixel_spacing: tuple[float, float]
    slope: float
    intercept: float


def _describe_series(groups: dict[str, list[tuple[str, Dataset]]]) -> list[dict]:
    out = []
    for uid, items in groups.items():
        first = items[0][1]
        out.append(
            {
                "series_instance_uid": uid,
                "modality": str(first.get("Modality", "")),
                "series_description": str(first.get("SeriesDescription", "")),
                "instances": len(items),
            }
        )
    return out


def _floats(value: object, count: int, what: str, name: str) -> np.ndarray:
    try:
        arr = np.array([float(v) for v in value], np.float64)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise InconsistentGeometry(f"{name}: {what} is not numeric") from None
    if arr.shape != (count,) or not np.all(np.isfinite(arr)):
        raise InconsistentGeometry(f"{name}: {what} must be {count} finite numbers")
    return arr


def _group_item(ds: Dataset, frame: int, sequence: str) -> Optional[Dataset]:
    """Item of a functional-group macro for ``frame``: per-frame first, then shared."""
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        seq = ds.get(groups)
        if seq is not None and len(seq) > index:
            inner = seq[index].get(sequence)
            if inner:
                return inner[0]
    return None


def _frames_of(ds: Dataset, index: int, name: str) -> list[_Frame]:
    """Geometry and rescale of every frame of one instance."""
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    enhanced = "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds
    frames = []
    for f in range(n_frames):
        if enhanced:
            pos_item = _group_item(ds, f, "PlanePositionSequence")
            ori_item = _group_item(ds, f, "PlaneOrientationSequence")
            meas_item = _group_item(ds, f, "PixelMeasuresSequence")
            value_item = _group_item(ds, f, "PixelValueTransformationSequence")
            position = pos_item.get("ImagePositionPatient") if pos_item else None
            orientation = ori_item.get("ImageOrientationPatient") if ori_item else None
            spacing = meas_item.get("PixelSpacing") if meas_item else None
            rescale = value_item if value_item is not None else ds
        else:
            position = ds.get("ImagePositionPatient")
            orientation = ds.get("ImageOrientationPatient")
            spacing = ds.get("PixelSpacing")
            rescale = ds
        where = f"{name}" + (f" frame {f + 1}" if n_frames > 1 else "")
        if position is None or orientation is None:
            raise InconsistentGeometry(
                f"{where}: no ImagePositionPatient/ImageOrientationPatient, so the slices cannot be placed"
            )
        if spacing is None:
            raise InconsistentGeometry(f"{where}: no PixelSpacing")
        ps = _floats(spacing, 2, "PixelSpacing", where)
        if np.any(ps <= 0):
            raise InconsistentGeometry(f"{where}: PixelSpacing must be positive, got {ps.tolist()}")
        frames.append(
            _Frame(
                dataset=index,
                frame=f if n_frames > 1 or enhanced else None,
                position=_floats(position, 3, "ImagePositionPatient", where),
                orientation=_floats(orientation, 6, "ImageOrientationPatient", where),
                pixel_spacing=(float(ps[0]), float(ps[1])),
                slope=float(rescale.get("RescaleSlope", 1.0) or 1.0),
                intercept=float(rescale.get("RescaleIntercept", 0.0) or 0.0),
            )
        )
    return frames


def _pick_series(
    items: Sequence[tuple[str, Dataset]], series_uid: Optional[str]
) -> tuple[str, list[tuple[str, Dataset]]]:
    groups: dict[str, list[tuple[str, Dataset]]] = defaultdict(list)
    for name, ds in items:
        uid = ds.get("SeriesInstanceUID")
        if not uid:
            raise InvalidInput(f"{name}: no SeriesInstanceUID", code=ErrorCode.MISSING_ATTRIBUTE)
        groups[str(uid)].append((name, ds))
    if series_uid:
        if series_uid not in groups:
            raise MixedSeries(
                f"series_uid {series_uid!r} is not in the upload", detail={"series": _describe_series(groups)}
            )
        return series_uid, groups[series_uid]
    if len(groups) > 1:
        raise MixedSeries(
            f"the upload holds {len(groups)} series; pick one with the 'series_uid' field",
            detail={"series": _describe_series(groups)},
        )
    uid = next(iter(groups))
    return uid, groups[uid]


def _check_decodable(ds: Dataset, name: str) -> None:
    from pydicom.pixels import get_decoder

    meta = getattr(ds, "file_meta", None)
    tsyntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if tsyntax is None:
        raise UnsupportedTransferSyntax(f"{name}: no Transfer Syntax UID in the file meta header")
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError:
        raise UnsupportedTransferSyntax(
            f"{name}: transfer syntax {tsyntax} ({tsyntax.name}) cannot be decoded by this service"
        ) from None
    if not decoder.is_available:
        raise UnsupportedTransferSyntax(
            f"{name}: no decoder installed for transfer syntax {tsyntax} ({tsyntax.name}); "
            f"missing: {'; '.join(decoder.missing_dependencies)}"
        )


def _decode(ds: Dataset, name: str) -> np.ndarray:
    """Stored pixel values as (frames, rows, columns)."""
    from pydicom.pixels import get_decoder

    if "PixelData" not in ds:
        # Float pixel data carries real values already; pydicom reads it through pixel_array.
        arr = ds.pixel_array
    else:
        _check_decodable(ds, name)
        try:
            arr, _ = get_decoder(ds.file_meta.TransferSyntaxUID).as_array(ds)
        except Exception as exc:  # noqa: BLE001 - decoders raise many types on corrupt data
            raise InvalidInput(
                f"{name}: pixel data cannot be decoded ({type(exc).__name__}: {exc})",
                code=ErrorCode.PIXEL_DATA_INVALID,
            ) from None
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise InvalidInput(
            f"{name}: only single-sample (grey-scale) images are supported, got pixel array {arr.shape}",
            code=ErrorCode.UNSUPPORTED_IMAGE,
        )
    return arr


def series_volume(
    items: Sequence[tuple[str, Dataset]] | Sequence[Dataset],
    *,
    settings: Settings,
    series_uid: Optional[str] = None,
) -> ImageVolume:
    """Assemble one series of ``items`` into a (Z, Y, X) float32 volume in modality units.

    Args:
        items: datasets, or (name, dataset) pairs (names appear in error messages).
        settings: limits and allowed modalities.
        series_uid: the series to use when several are present.

    Raises:
        MixedSeries, ModalityNotAllowed, NoPixelData, InconsistentGeometry, UnsupportedTransferSyntax,
        LimitExceeded, InvalidInput: the messages say which file and what.
    """
    pairs = [it if isinstance(it, tuple) else (f"instance {i + 1}", it) for i, it in enumerate(items)]
    if not pairs:
        raise InvalidInput("no DICOM files in the upload", code=ErrorCode.NO_INPUT)
    uid, chosen = _pick_series(pairs, series_uid)
    names = [n for n, _ in chosen]
    datasets = [ds for _, ds in chosen]

    modalities = sorted({str(ds.get("Modality", "")) for ds in datasets})
    if len(modalities) > 1:
        raise InconsistentGeometry(f"series {uid} mixes modalities {modalities}")
    modality = modalities[0]
    if not settings.modality_allowed(modality):
        raise ModalityNotAllowed(
            f"modality {modality or '(none)'!r} is not allowed; this service takes {settings.allowed_modalities} "
            "(MSDN_ALLOWED_MODALITIES)"
        )
    for name, ds in chosen:
        if not any(k in ds for k in PIXEL_KEYWORDS):
            raise NoPixelData(f"{name}: no pixel data (SOP class {ds.get('SOPClassUID', '?')})")
        if int(ds.get("SamplesPerPixel", 1)) != 1:
            raise InvalidInput(
                f"{name}: {ds.get('SamplesPerPixel')} samples per pixel ({ds.get('PhotometricInterpretation')}); "
                "only grey-scale images are supported",
                code=ErrorCode.UNSUPPORTED_IMAGE,
            )
    multi = [i for i, ds in enumerate(datasets) if int(ds.get("NumberOfFrames", 1) or 1) > 1]
    if multi and len(datasets) > 1:
        raise InvalidInput(
            f"series {uid} mixes {len(datasets)} instances with multi-frame ones ({names[multi[0]]}); "
            "send one multi-frame instance or single-frame instances",
            code=ErrorCode.MIXED_INSTANCES,
        )

    frames = [fr for i, (name, ds) in enumerate(chosen) for fr in _frames_of(ds, i, name)]
    sizes = {(int(ds.Rows), int(ds.Columns)) for ds in datasets}
    if len(sizes) > 1:
        raise InconsistentGeometry(f"series {uid} mixes image sizes (rows, columns) {sorted(sizes)}")
    rows, cols = sizes.pop()
    if len(frames) > settings.max_slices:
        raise LimitExceeded(
            f"{len(frames)} slices is over the limit of {settings.max_slices} (MSDN_MAX_SLICES)",
            code=ErrorCode.TOO_MANY_SLICES,
        )
    if len(frames) * rows * cols > settings.max_voxels:
        raise LimitExceeded(
            f"{len(frames)} x {rows} x {cols} voxels is over the limit of {settings.max_voxels} (MSDN_MAX_VOXELS)",
            code=ErrorCode.TOO_MANY_VOXELS,
        )

    def where(fr: _Frame) -> str:
        return names[fr.dataset] + (f" frame {fr.frame + 1}" if fr.frame is not None else "")

    first = frames[0]
    for fr in frames[1:]:
        if not np.allclose(fr.orientation, first.orientation, atol=ORIENTATION_TOL):
            raise InconsistentGeometry(
                f"mixed orientations: {where(fr)} has ImageOrientationPatient {fr.orientation.round(4).tolist()}, "
                f"{where(first)} has {first.orientation.round(4).tolist()}"
            )
        if not np.allclose(fr.pixel_spacing, first.pixel_spacing, rtol=1e-4, atol=1e-6):
            raise InconsistentGeometry(
                f"mixed pixel spacings: {where(fr)} has {list(fr.pixel_spacing)}, {where(first)} has "
                f"{list(first.pixel_spacing)}"
            )
    row_dir, col_dir = first.orientation[:3], first.orientation[3:]
    normal = np.cross(row_dir, col_dir)
    if not np.isclose(np.linalg.norm(normal), 1.0, atol=1e-3):
        raise InconsistentGeometry(f"ImageOrientationPatient {first.orientation.tolist()} is not two unit vectors")
    distance = np.array([float(fr.position @ normal) for fr in frames])
    order = np.argsort(distance, kind="stable")
    frames = [frames[i] for i in order]
    distance = distance[order]
    gaps = np.diff(distance)
    if gaps.size:
        dup = np.flatnonzero(gaps < DUPLICATE_TOL)
        if dup.size:
            a, b = frames[dup[0]], frames[dup[0] + 1]
            raise InconsistentGeometry(
                f"duplicate slice positions: {where(a)} and {where(b)} are both at {distance[dup[0]]:.3f} mm "
                "along the slice normal (several acquisitions or phases in one series?)"
            )
        median = float(np.median(gaps))
        bad = np.flatnonzero(np.abs(gaps - median) > max(GAP_RTOL * median, GAP_ATOL))
        if bad.size:
            i = bad[0]
            raise InconsistentGeometry(
                f"irregular slice spacing: {gaps[i]:.3f} mm between {where(frames[i])} and {where(frames[i + 1])}, "
                f"median gap {median:.3f} mm (missing slices?)"
            )
        step = (frames[-1].position - frames[0].position) / (len(frames) - 1)
        sz = median
    else:
        ds0 = datasets[0]
        thickness = ds0.get("SpacingBetweenSlices") or ds0.get("SliceThickness") or 1.0
        sz = float(thickness) if float(thickness) > 0 else 1.0
        step = normal * sz
    sy, sx = first.pixel_spacing  # PixelSpacing = (row spacing, column spacing)

    volume = np.empty((len(frames), rows, cols), np.float32)
    slot = {(fr.dataset, fr.frame): z for z, fr in enumerate(frames)}
    by_dataset: dict[int, list[_Frame]] = defaultdict(list)
    for fr in frames:
        by_dataset[fr.dataset].append(fr)
    for i, ds in enumerate(datasets):
        stored = _decode(ds, names[i])
        for fr in by_dataset[i]:
            values = stored[fr.frame or 0]
            if "ModalityLUTSequence" in ds and fr.frame is None:
                from pydicom.pixels import apply_modality_lut

                volume[slot[(i, fr.frame)]] = apply_modality_lut(values, ds)
            else:
                volume[slot[(i, fr.frame)]] = values.astype(np.float32) * fr.slope + fr.intercept
            if not np.isfinite(volume[slot[(i, fr.frame)]]).all():
                raise InvalidInput(f"{where(fr)}: pixel values are NaN or infinite", code=ErrorCode.PIXEL_DATA_INVALID)
        for keyword in PIXEL_KEYWORDS:
            if keyword in ds:
                delattr(ds, keyword)

    affine = np.eye(4)
    affine[:3, 0] = row_dir * sx
    affine[:3, 1] = col_dir * sy
    affine[:3, 2] = step
    affine[:3, 3] = frames[0].position
    if multi:
        series = DicomSeries([datasets[0]], [int(fr.frame or 0) + 1 for fr in frames], uid, [names[0]])
    else:
        series = DicomSeries([datasets[fr.dataset] for fr in frames], None, uid, [names[fr.dataset] for fr in frames])
    logger.info(
        "DICOM series: %s, %d slices of %dx%d, spacing %.3g/%.3g/%.3g mm",
        modality,
        len(frames),
        rows,
        cols,
        sz,
        sy,
        sx,
    )
    return ImageVolume(
        array=volume,
        spacing=(float(sz), float(sy), float(sx)),
        affine=LPS_TO_RAS @ affine,
        source="dicom",
        modality=modality,
        series=series,
    )
