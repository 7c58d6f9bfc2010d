"""The one DICOM series reader (serving uploads, PACS retrieves and training manifests alike).

``parse_dicom`` turns bytes into a pydicom ``Dataset`` (Part 10 files only). ``read_series`` takes the
datasets of an upload, a retrieve or a folder (``read_dicom_folder``), picks one series, checks its
geometry and decodes it into a :class:`msdn_core.volume.Volume`:

* instances repeated with the same SOP Instance UID and the same content are dropped
  (``Volume.duplicates_dropped`` counts them: PACS and routers resend); the same UID with different
  content, or two different instances at one position, is ``INCONSISTENT_GEOMETRY``;
* one series: several series need ``series_uid``, else ``MIXED_SERIES`` listing them in ``detail``;
* single-frame instances, or one (enhanced or legacy-converted) multi-frame instance whose frames
  are placed by its functional groups;
* frames sorted by position along the slice normal (cross product of the orientation's row and
  column directions); mixed orientations, image sizes or pixel spacings, a missing PixelSpacing or
  position, duplicate positions and slice gaps off their median by more than ``gap_rtol`` (and
  ``gap_atol`` mm) are ``INCONSISTENT_GEOMETRY``;
* gantry tilt: :func:`msdn_core.geometry.correct_tilt` (resampled up to ``max_tilt_deg``, refused above);
* pixel data decoded by pydicom with the pylibjpeg plugins (JPEG, JPEG-LS, JPEG 2000, HTJ2K, RLE,
  deflate); a transfer syntax with no decoder is ``UNSUPPORTED_TRANSFER_SYNTAX``;
* the modality transform applied (rescale slope/intercept per frame, or a modality LUT): CT values
  come out in Hounsfield units.

Tolerances and limits are keyword-only arguments (the service passes its settings in). With
``release_pixels`` the datasets' pixel data are deleted once decoded (the service keeps the datasets,
without pixels, for the DICOM SEG answer). The affine is LPS (:mod:`msdn_core.geometry`).
"""

from __future__ import annotations

import functools
import io
import logging
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Optional, Sequence

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from msdn_core import geometry
from msdn_core.errors import ErrorCode, InvalidInput
from msdn_core.readers._limits import check_shape
from msdn_core.volume import Volume

logger = logging.getLogger(__name__)

PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_GEOMETRY = ErrorCode.INCONSISTENT_GEOMETRY


#: With ``defer_pixels``, element values larger than this stay in the source until they are used.
DEFER_SIZE = 16 * 1024


def parse_dicom(data: bytes | BinaryIO | os.PathLike | str, *, name: str, defer_pixels: bool = False) -> Dataset:
    """Parse one DICOM Part 10 file (bytes, a binary file or a path).

    Args:
        data: the file.
        name: its name in messages.
        defer_pixels: read the headers only; values over :data:`DEFER_SIZE` bytes (the pixel data) are
            read from ``data`` when first used (pydicom's deferred read), so a binary file given here
            must stay open until :func:`read_series` has decoded the slices it needs.

    Raises:
        InvalidInput: ``NOT_DICOM`` for no preamble/'DICM' prefix or unparseable content.
    """
    source: Any = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    try:
        return pydicom.dcmread(source, defer_size=DEFER_SIZE if defer_pixels else None)
    except InvalidDicomError:
        raise InvalidInput(
            f"{name}: not a DICOM Part 10 file (no 128-byte preamble and 'DICM' prefix)", code=ErrorCode.NOT_DICOM
        ) from None
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on bad input
        raise InvalidInput(
            f"{name}: unreadable DICOM ({type(exc).__name__}: {exc})", code=ErrorCode.NOT_DICOM
        ) from None


@dataclass
class DicomSeries:
    """The source instances of a volume, in slice order.

    Attributes:
        datasets: single-frame instances sorted by slice position, or one multi-frame instance.
        frame_numbers: for a multi-frame instance, the 1-based frame number of each slice.
        series_instance_uid: the series.
        file_names: names of ``datasets`` (for messages).
        positions: (Z, 3) ImagePositionPatient (LPS mm) of each slice as acquired.
        uid_derived: the instances carry no SeriesInstanceUID (an anonymiser blanked it):
            ``series_instance_uid`` is derived from what groups them (:func:`derived_series_uid`).
    """

    datasets: list[Dataset]
    frame_numbers: Optional[list[int]]
    series_instance_uid: str
    file_names: list[str]
    positions: Optional[np.ndarray] = None
    uid_derived: bool = False

    @property
    def multiframe(self) -> bool:
        return self.frame_numbers is not None

    @property
    def sop_instance_uids(self) -> list[str]:
        """SOP Instance UID of each slice (the same UID for all frames of a multi-frame)."""
        if self.multiframe:
            return [str(self.datasets[0].get("SOPInstanceUID") or "")] * len(self.frame_numbers or [])
        return [str(ds.get("SOPInstanceUID") or "") for ds in self.datasets]


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


_NUMBER_VRS = ("DS", "IS")
_TEXT_VRS = ("UI", "CS")
_FAST_VRS = {**{vr: "number" for vr in _NUMBER_VRS}, **{vr: "text" for vr in _TEXT_VRS}, "US": "us"}


@functools.lru_cache(maxsize=None)
def _tag_and_vr(keyword: str) -> tuple[int, str]:
    from pydicom.datadict import dictionary_VR, tag_for_keyword

    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    return tag, dictionary_VR(tag)


def _value(ds: Dataset, keyword: str, default: Any = None) -> Any:
    """``ds.get(keyword, default)``, read straight from the element's bytes while pydicom has not
    converted it yet, for the few value kinds the series geometry needs: DS/IS numbers (a float, or
    a list for several values), UI/CS text and US integers.

    pydicom's conversion (value objects, validation) is the slowest part of reading the headers of a
    large series; anything unusual (empty, several text values, unparsable, deferred) takes pydicom's
    path, so values and errors are pydicom's.
    """
    tag, vr = _tag_and_vr(keyword)
    elem = ds.get_item(tag)
    if elem is None:
        return default
    raw = elem.value if isinstance(elem, RawDataElement) else None
    kind = _FAST_VRS.get(vr)
    if raw and kind is not None and elem.VR in (None, vr):
        try:
            if kind == "us":
                if len(raw) == 2:
                    return int.from_bytes(raw, "little" if elem.is_little_endian else "big")
            else:
                text = raw.decode("ascii").strip(" \x00")
                if kind == "number":
                    numbers = [float(v) for v in text.split("\\")]
                    if vr == "IS" and all(v.is_integer() for v in numbers):
                        numbers = [int(v) for v in numbers]  # type: ignore[misc]
                    return numbers[0] if len(numbers) == 1 else numbers
                if text and "\\" not in text:
                    return text
        except (UnicodeDecodeError, ValueError):
            pass
    return ds.get(keyword, default)


def _floats(value: object, count: int, what: str, name: str) -> np.ndarray:
    try:
        arr = np.array([float(v) for v in value], np.float64)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise InvalidInput(f"{name}: {what} is not numeric", code=_GEOMETRY) from None
    if arr.shape != (count,) or not np.all(np.isfinite(arr)):
        raise InvalidInput(f"{name}: {what} must be {count} finite numbers", code=_GEOMETRY)
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
    n_frames = int(_value(ds, "NumberOfFrames", 1) or 1)
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
            position = _value(ds, "ImagePositionPatient")
            orientation = _value(ds, "ImageOrientationPatient")
            spacing = _value(ds, "PixelSpacing")
            rescale = ds
        where = f"{name}" + (f" frame {f + 1}" if n_frames > 1 else "")
        if position is None or orientation is None:
            raise InvalidInput(
                f"{where}: no ImagePositionPatient/ImageOrientationPatient, so the slices cannot be placed",
                code=_GEOMETRY,
            )
        if spacing is None:
            raise InvalidInput(f"{where}: no PixelSpacing", code=_GEOMETRY)
        ps = _floats(spacing, 2, "PixelSpacing", where)
        if np.any(ps <= 0):
            raise InvalidInput(f"{where}: PixelSpacing must be positive, got {ps.tolist()}", code=_GEOMETRY)
        frames.append(
            _Frame(
                dataset=index,
                frame=f if n_frames > 1 or enhanced else None,
                position=_floats(position, 3, "ImagePositionPatient", where),
                orientation=_floats(orientation, 6, "ImageOrientationPatient", where),
                pixel_spacing=(float(ps[0]), float(ps[1])),
                slope=float(_value(rescale, "RescaleSlope", 1.0) or 1.0),
                intercept=float(_value(rescale, "RescaleIntercept", 0.0) or 0.0),
            )
        )
    return frames


def _same_content(a: Dataset, b: Dataset) -> bool:
    """Whether two datasets carry the same elements (file meta aside)."""
    try:
        return a == b
    except Exception:  # noqa: BLE001 - comparing unparsable elements
        return False


def drop_duplicates(pairs: Sequence[tuple[str, Dataset]]) -> tuple[list[tuple[str, Dataset]], int]:
    """``pairs`` without repeats of one SOP Instance UID with identical content, and how many were dropped.

    Raises:
        InvalidInput: ``INCONSISTENT_GEOMETRY`` when one SOP Instance UID comes with different content.
    """
    seen: dict[str, tuple[str, Dataset]] = {}
    kept, dropped = [], 0
    for name, ds in pairs:
        uid = _value(ds, "SOPInstanceUID")
        if not uid:
            kept.append((name, ds))
            continue
        uid = str(uid)
        if uid in seen:
            if not _same_content(seen[uid][1], ds):
                raise InvalidInput(
                    f"{name} and {seen[uid][0]} have the same SOP Instance UID {uid} but different content",
                    code=_GEOMETRY,
                )
            dropped += 1
            continue
        seen[uid] = (name, ds)
        kept.append((name, ds))
    return kept, dropped


#: the attributes that group instances without a SeriesInstanceUID into one series
FALLBACK_SERIES_KEYS = ("FrameOfReferenceUID", "Modality", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns")


def derived_series_uid(ds: Dataset) -> str:
    """A deterministic UID (``2.25.``) for an instance without SeriesInstanceUID, from
    :data:`FALLBACK_SERIES_KEYS`: instances an anonymiser stripped of their UIDs that share a frame of
    reference, modality, orientation, pixel spacing and size are taken as one series."""
    import uuid

    key = "|".join(repr(ds.get(k)) for k in FALLBACK_SERIES_KEYS)
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, 'msdn derived series|' + key).int}"  # PS3.5 B.2: UUID-derived


def _pick_series(
    items: Sequence[tuple[str, Dataset]], series_uid: Optional[str]
) -> tuple[str, list[tuple[str, Dataset]]]:
    groups: dict[str, list[tuple[str, Dataset]]] = defaultdict(list)
    for name, ds in items:
        uid = _value(ds, "SeriesInstanceUID")
        groups[str(uid) if uid else derived_series_uid(ds)].append((name, ds))
    if series_uid:
        if series_uid not in groups:
            raise InvalidInput(
                f"series_uid {series_uid!r} is not in the upload",
                code=ErrorCode.MIXED_SERIES,
                detail={"series": _describe_series(groups)},
            )
        return series_uid, groups[series_uid]
    if len(groups) > 1:
        raise InvalidInput(
            f"the upload holds {len(groups)} series; pick one with the 'series_uid' field",
            code=ErrorCode.MIXED_SERIES,
            detail={"series": _describe_series(groups)},
        )
    uid = next(iter(groups))
    return uid, groups[uid]


def _check_decodable(ds: Dataset, name: str) -> None:
    from pydicom.pixels import get_decoder

    meta = getattr(ds, "file_meta", None)
    tsyntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if tsyntax is None:
        raise InvalidInput(
            f"{name}: no Transfer Syntax UID in the file meta header", code=ErrorCode.UNSUPPORTED_TRANSFER_SYNTAX
        )
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError:
        raise InvalidInput(
            f"{name}: transfer syntax {tsyntax} ({tsyntax.name}) cannot be decoded by this reader",
            code=ErrorCode.UNSUPPORTED_TRANSFER_SYNTAX,
        ) from None
    if not decoder.is_available:
        raise InvalidInput(
            f"{name}: no decoder installed for transfer syntax {tsyntax} ({tsyntax.name}); "
            f"missing: {'; '.join(decoder.missing_dependencies)}",
            code=ErrorCode.UNSUPPORTED_TRANSFER_SYNTAX,
        )


_NATIVE_LITTLE_ENDIAN = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")  # implicit / explicit VR little endian


def _native(ds: Dataset) -> Optional[np.ndarray]:
    """Uncompressed little-endian grey-scale pixel data of 8 or 16 bits (all bits stored) as a
    (frames, rows, columns) view of the element's bytes; None for anything else (pydicom decodes it).

    pydicom's decoder pipeline costs more than the copy it makes for such data (the usual CT).
    """
    meta = getattr(ds, "file_meta", None)
    if meta is None or str(meta.get("TransferSyntaxUID", "")) not in _NATIVE_LITTLE_ENDIAN:
        return None
    bits = _value(ds, "BitsAllocated")
    if bits not in (8, 16) or _value(ds, "BitsStored") != bits or _value(ds, "SamplesPerPixel", 1) != 1:
        return None
    signed = _value(ds, "PixelRepresentation")
    if signed not in (0, 1):
        return None
    rows, cols = _value(ds, "Rows"), _value(ds, "Columns")
    frames = int(_value(ds, "NumberOfFrames", 1) or 1)
    data = ds.PixelData
    dtype = np.dtype(f"<{'i' if signed else 'u'}{bits // 8}")
    count = int(rows) * int(cols) * frames
    if not isinstance(data, (bytes, bytearray)) or len(data) < count * dtype.itemsize:
        return None
    return np.frombuffer(data, dtype, count).reshape(frames, int(rows), int(cols))


def _decode(ds: Dataset, name: str) -> np.ndarray:
    """Stored pixel values as (frames, rows, columns)."""
    from pydicom.pixels import get_decoder

    native = _native(ds) if "PixelData" in ds else None
    if native is not None:
        return native
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


def _fits_int16(values: np.ndarray, intercept: int) -> bool:
    """Whether ``values + intercept`` lies in the int16 range (integer ``values``)."""
    if not values.size:
        return True
    info = np.iinfo(np.int16)
    return int(values.min()) + intercept >= info.min and int(values.max()) + intercept <= info.max


class _SliceDecoder:
    """Decodes slices of a sorted series into one (Z, Y, X) array, on demand, each instance once."""

    def __init__(
        self,
        datasets: list[Dataset],
        names: list[str],
        frames: list[_Frame],
        needed: np.ndarray,
        dtype: Any,
        *,
        where: Callable[[_Frame], str],
        release_pixels: bool,
    ) -> None:
        self.datasets, self.names, self.frames, self.needed = datasets, names, frames, needed
        self.where, self.release_pixels = where, release_pixels
        rows, cols = int(datasets[0].Rows), int(datasets[0].Columns)
        # np.zeros: pages of slices never decoded are never touched (no memory for them).
        self.volume = np.zeros((len(frames), rows, cols), dtype)
        self.done = np.zeros(len(frames), bool)
        self.left: dict[int, int] = defaultdict(int)  # slices still to decode per instance
        for z, fr in enumerate(frames):
            self.left[fr.dataset] += int(needed[z])
        self.target: Optional[Volume] = None
        if release_pixels:  # instances none of whose slices are needed: released now
            for i, ds in enumerate(datasets):
                if not self.left[i]:
                    _release(ds)

    def attach(self, volume: Volume) -> None:
        """Decode into ``volume`` on its :meth:`Volume.load` calls."""
        self.target = volume
        volume.loader = self.decode

    def decode(self, start: int, stop: int) -> np.ndarray:
        """Decode the needed, not yet decoded slices in [start, stop); returns the volume array."""
        todo = [z for z in range(max(start, 0), min(stop, len(self.frames))) if self.needed[z] and not self.done[z]]
        by_dataset: dict[int, list[int]] = defaultdict(list)
        for z in todo:
            by_dataset[self.frames[z].dataset].append(z)
        info16 = np.iinfo(np.int16)
        for i, zs in by_dataset.items():
            ds = self.datasets[i]
            stored = _decode(ds, self.names[i])
            for z in zs:
                fr = self.frames[z]
                values = stored[fr.frame or 0]
                if "ModalityLUTSequence" in ds and fr.frame is None:
                    from pydicom.pixels import apply_modality_lut

                    self.volume[z] = apply_modality_lut(values, ds)
                elif self.volume.dtype == np.int16 and fr.slope == 1 and _fits_int16(values, int(fr.intercept)):
                    # values + intercept computed in int32 and written straight into the slice (no temporaries)
                    np.add(values, np.int32(fr.intercept), out=self.volume[z], casting="unsafe")
                elif self.volume.dtype == np.int16:
                    out = values.astype(np.int32) * int(fr.slope) + int(fr.intercept)
                    if out.size and (out.min() < info16.min or out.max() > info16.max):
                        self.volume = self.volume.astype(np.float32)  # beyond int16: float32 from here on
                    self.volume[z] = out
                else:
                    self.volume[z] = values.astype(np.float32) * fr.slope + fr.intercept
                if self.volume.dtype.kind == "f" and not np.isfinite(self.volume[z]).all():
                    raise InvalidInput(
                        f"{self.where(fr)}: pixel values are NaN or infinite", code=ErrorCode.PIXEL_DATA_INVALID
                    )
                self.done[z] = True
                self.left[i] -= 1
            del stored
            if self.release_pixels and self.left[i] <= 0:
                _release(ds)
        if self.target is not None:
            self.target.array = self.volume
            if self.done[self.needed].all():
                self.target.loader = None
        return self.volume


def _release(ds: Dataset) -> None:
    """Delete the pixel data of ``ds``; with a deferred-read source, read what else is deferred and close it."""
    for keyword in PIXEL_KEYWORDS:
        if keyword in ds:
            delattr(ds, keyword)
    buffer = getattr(ds, "buffer", None)
    if buffer is None:
        return
    for tag, elem in list(ds._dict.items()):
        if isinstance(elem, RawDataElement) and elem.value is None and elem.length:
            ds[tag]  # noqa: B018 - reads the deferred value while the source is open
    ds.buffer = None
    try:
        buffer.close()
    except Exception:  # noqa: BLE001 - closing is best effort
        pass


def _modality_allowed(modality: str, allowed: Optional[Sequence[str]]) -> bool:
    if allowed is None:
        return True
    upper = [a.upper() for a in allowed]
    return "*" in upper or modality.upper() in upper


def read_series(
    items: Sequence[tuple[str, Dataset]] | Sequence[Dataset],
    *,
    series_uid: Optional[str] = None,
    allowed_modalities: Optional[Sequence[str]] = None,
    max_slices: Optional[int] = None,
    max_voxels: Optional[int] = None,
    gap_rtol: float = 0.05,
    gap_atol: float = 1e-3,
    orientation_tol: float = 1e-4,
    duplicate_tol: float = 1e-3,
    tilt_tol_deg: float = 0.01,
    max_tilt_deg: float = 30.0,
    release_pixels: bool = True,
    slices: Optional[Callable[[tuple[int, int, int], np.ndarray], Optional[Sequence[int]]]] = None,
    compact: bool = False,
    lazy: bool = False,
) -> Volume:
    """Assemble one series of ``items`` into a (Z, Y, X) :class:`Volume` in modality units.

    Values are float32, or int16 with ``compact`` where they are integers that fit.

    Args:
        items: datasets, or (name, dataset) pairs (names appear in error messages).
        series_uid: the series to use when several are present.
        allowed_modalities: modalities accepted (``"*"`` for any); None accepts any.
        max_slices, max_voxels: limits (413 ``TOO_MANY_SLICES`` / ``TOO_MANY_VOXELS``); None for none.
        gap_rtol, gap_atol: a slice gap may differ from the median gap by ``max(gap_rtol * median, gap_atol)`` mm.
        orientation_tol: direction cosines may differ by this much between slices.
        duplicate_tol: two slices closer than this (mm) along the normal are at one position.
        tilt_tol_deg, max_tilt_deg: the gantry-tilt policy (:func:`msdn_core.geometry.correct_tilt`).
        release_pixels: delete the datasets' pixel data once decoded.
        slices: called with the (Z, Y, X) shape and LPS affine once the geometry is checked; returns the slice
            indices whose pixel data are needed (None: all). Only those instances are decoded; the
            other slices are zero and ``Volume.decoded`` says which were read (with gantry tilt,
            which resamples across slices, all are decoded). Indices outside the volume are ignored.
        compact: keep integer modality values as int16 when the rescale is integer and the values
            fit (half the memory of float32; the model input is normalised to float32 batch by
            batch); float32 otherwise.
        lazy: decode on demand: the returned volume's array is zero until :meth:`Volume.load` asks
            for slices (the service decodes the next batch while the model runs the current one;
            decoding errors are raised then). Gantry-tilted series and multi-frame instances are
            decoded at once.

    Raises:
        InvalidInput, LimitExceeded: the message says which file and what; ``code`` is the ErrorCode.
    """
    pairs = [it if isinstance(it, tuple) else (f"instance {i + 1}", it) for i, it in enumerate(items)]
    if not pairs:
        raise InvalidInput("no DICOM files in the upload", code=ErrorCode.NO_INPUT)
    pairs, dropped = drop_duplicates(pairs)
    uid, chosen = _pick_series(pairs, series_uid)
    derived = not _value(chosen[0][1], "SeriesInstanceUID")
    if derived:
        logger.info(
            "instances without SeriesInstanceUID: grouped as series %s (%s)", uid, ", ".join(FALLBACK_SERIES_KEYS)
        )
    names = [n for n, _ in chosen]
    datasets = [ds for _, ds in chosen]

    modalities = sorted({str(_value(ds, "Modality", "")) for ds in datasets})
    if len(modalities) > 1:
        raise InvalidInput(f"series {uid} mixes modalities {modalities}", code=_GEOMETRY)
    modality = modalities[0]
    if not _modality_allowed(modality, allowed_modalities):
        raise InvalidInput(
            f"modality {modality or '(none)'!r} is not allowed; accepted: {list(allowed_modalities or [])}",
            code=ErrorCode.MODALITY_NOT_ALLOWED,
        )
    for name, ds in chosen:
        if not any(k in ds for k in PIXEL_KEYWORDS):
            raise InvalidInput(
                f"{name}: no pixel data (SOP class {ds.get('SOPClassUID', '?')})", code=ErrorCode.NO_PIXEL_DATA
            )
        if int(_value(ds, "SamplesPerPixel", 1)) != 1:
            raise InvalidInput(
                f"{name}: {ds.get('SamplesPerPixel')} samples per pixel ({ds.get('PhotometricInterpretation')}); "
                "only grey-scale images are supported",
                code=ErrorCode.UNSUPPORTED_IMAGE,
            )
    multi = [i for i, ds in enumerate(datasets) if int(_value(ds, "NumberOfFrames", 1) or 1) > 1]
    if multi and len(datasets) > 1:
        raise InvalidInput(
            f"series {uid} mixes {len(datasets)} instances with multi-frame ones ({names[multi[0]]}); "
            "send one multi-frame instance or single-frame instances",
            code=ErrorCode.MIXED_INSTANCES,
        )

    frames = [fr for i, (name, ds) in enumerate(chosen) for fr in _frames_of(ds, i, name)]
    sizes = {(int(_value(ds, "Rows")), int(_value(ds, "Columns"))) for ds in datasets}
    if len(sizes) > 1:
        raise InvalidInput(f"series {uid} mixes image sizes (rows, columns) {sorted(sizes)}", code=_GEOMETRY)
    rows, cols = sizes.pop()
    check_shape((len(frames), rows, cols), name=f"series {uid}", max_slices=max_slices, max_voxels=max_voxels)

    def where(fr: _Frame) -> str:
        return names[fr.dataset] + (f" frame {fr.frame + 1}" if fr.frame is not None else "")

    first = frames[0]
    # one vectorised check of all frames (np.allclose per frame costs more than the rest of the geometry)
    odd_orientation = ~np.isclose(
        np.stack([fr.orientation for fr in frames]), first.orientation, atol=orientation_tol
    ).all(axis=1)
    odd_spacing = ~np.isclose(
        np.array([fr.pixel_spacing for fr in frames]), first.pixel_spacing, rtol=1e-4, atol=1e-6
    ).all(axis=1)
    for i in np.flatnonzero(odd_orientation | odd_spacing)[:1]:
        fr = frames[int(i)]
        if odd_orientation[i]:
            raise InvalidInput(
                f"mixed orientations: {where(fr)} has ImageOrientationPatient {fr.orientation.round(4).tolist()}, "
                f"{where(first)} has {first.orientation.round(4).tolist()}",
                code=_GEOMETRY,
            )
        if odd_spacing[i]:
            raise InvalidInput(
                f"mixed pixel spacings: {where(fr)} has {list(fr.pixel_spacing)}, {where(first)} has "
                f"{list(first.pixel_spacing)}",
                code=_GEOMETRY,
            )
    row_dir, col_dir = first.orientation[:3], first.orientation[3:]
    normal = np.cross(row_dir, col_dir)
    if not np.isclose(np.linalg.norm(normal), 1.0, atol=1e-3):
        raise InvalidInput(
            f"ImageOrientationPatient {first.orientation.tolist()} is not two orthogonal unit vectors", code=_GEOMETRY
        )
    distance = np.array([float(fr.position @ normal) for fr in frames])
    order = np.argsort(distance, kind="stable")
    frames = [frames[i] for i in order]
    distance = distance[order]
    gaps = np.diff(distance)
    if gaps.size:
        dup = np.flatnonzero(gaps < duplicate_tol)
        if dup.size:
            a, b = frames[dup[0]], frames[dup[0] + 1]
            raise InvalidInput(
                f"duplicate slice positions: {where(a)} and {where(b)} are different instances both at "
                f"{distance[dup[0]]:.3f} mm along the slice normal (several acquisitions or phases in one series?)",
                code=_GEOMETRY,
            )
        median = float(np.median(gaps))
        bad = np.flatnonzero(np.abs(gaps - median) > max(gap_rtol * median, gap_atol))
        if bad.size:
            i = bad[0]
            raise InvalidInput(
                f"irregular slice spacing: {gaps[i]:.3f} mm between {where(frames[i])} and {where(frames[i + 1])}, "
                f"median gap {median:.3f} mm (missing slices?)",
                code=_GEOMETRY,
            )
        step = (frames[-1].position - frames[0].position) / (len(frames) - 1)
    else:
        ds0 = datasets[0]
        thickness = ds0.get("SpacingBetweenSlices") or ds0.get("SliceThickness") or 1.0
        sz = float(thickness) if float(thickness) > 0 else 1.0
        step = normal * sz
    sy, sx = first.pixel_spacing  # PixelSpacing = (row spacing, column spacing)
    affine = np.eye(4)
    affine[:3, 0] = row_dir * sx
    affine[:3, 1] = col_dir * sy
    affine[:3, 2] = step
    affine[:3, 3] = frames[0].position

    depth = len(frames)
    wanted = None if slices is None else slices((depth, rows, cols), affine)
    if wanted is not None and len(frames) > 1 and geometry.tilt_deg(normal, step) > tilt_tol_deg:
        wanted = None  # the tilt correction resamples across slices: it needs them all
    needed = np.ones(depth, bool)
    if wanted is not None:
        needed[:] = False
        index = np.asarray([int(z) for z in wanted], np.int64)
        needed[index[(index >= 0) & (index < depth)]] = True

    integer = all(
        "PixelData" in ds and "ModalityLUTSequence" not in ds and int(_value(ds, "BitsAllocated", 16) or 16) <= 16
        for ds in datasets
    ) and all(float(fr.slope).is_integer() and float(fr.intercept).is_integer() for fr in frames)
    tilted = len(frames) > 1 and geometry.tilt_deg(normal, step) > tilt_tol_deg
    decoder = _SliceDecoder(
        datasets,
        names,
        frames,
        needed,
        np.int16 if compact and integer and not tilted else np.float32,
        where=where,
        release_pixels=release_pixels,
    )
    on_demand = lazy and not tilted and not multi
    if not on_demand:
        decoder.decode(0, depth)
    volume, affine, tilt = geometry.correct_tilt(
        decoder.volume, affine, tilt_tol_deg=tilt_tol_deg, max_tilt_deg=max_tilt_deg, what=f"series {uid}"
    )
    positions = np.stack([fr.position for fr in frames])
    if multi:
        series = DicomSeries(
            [datasets[0]], [int(fr.frame or 0) + 1 for fr in frames], uid, [names[0]], positions, derived
        )
    else:
        series = DicomSeries(
            [datasets[fr.dataset] for fr in frames], None, uid, [names[fr.dataset] for fr in frames], positions, derived
        )
    frame_uid = datasets[0].get("FrameOfReferenceUID")
    out = Volume(
        array=volume,
        affine=affine,
        source="dicom",
        modality=modality,
        frame_of_reference_uid=str(frame_uid) if frame_uid else None,
        series=series,
        duplicates_dropped=dropped,
        tilt_deg=tilt,
        decoded=None if needed.all() else np.flatnonzero(needed),
    )
    if on_demand:
        decoder.attach(out)
    sz_, sy_, sx_ = out.spacing
    logger.info(
        "DICOM series: %s, %d slices of %dx%d, spacing %.3g/%.3g/%.3g mm, %d duplicates dropped, tilt %.2f deg",
        modality,
        len(frames),
        rows,
        cols,
        sz_,
        sy_,
        sx_,
        dropped,
        tilt,
    )
    return out


#: Files of a DICOM folder that are not images of the series and are passed over by name.
SKIPPED_NAMES = ("DICOMDIR",)


def read_dicom_folder(folder: str | os.PathLike, **options: Any) -> Volume:
    """Read the one DICOM series in ``folder`` (files directly in it, sorted by name).

    Hidden files (names starting with ``.``) and ``DICOMDIR`` are passed over; any other file must be
    a readable DICOM image (``NOT_DICOM`` otherwise: unreadable files are never silently skipped).
    ``options`` are :func:`read_series`'s keyword options (pixel data are released by default).
    """
    path = Path(folder)
    files = sorted(
        p for p in path.iterdir() if p.is_file() and not p.name.startswith(".") and p.name not in SKIPPED_NAMES
    )
    if not files:
        raise InvalidInput(f"{path}: no DICOM images found", code=ErrorCode.NO_INPUT)
    pairs = [(p.name, parse_dicom(p, name=str(p))) for p in files]
    return read_series(pairs, **options)


__all__ = ["DicomSeries", "drop_duplicates", "parse_dicom", "read_dicom_folder", "read_series"]
