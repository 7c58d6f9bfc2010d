"""What the push listener refuses at C-STORE time: instances that will never be segmented.

:func:`check_instance` is called before an instance is written to the spool; a refusal is answered
with a DICOM failure status (and an ErrorComment), so the sender learns at once, instead of the
Success the old listener gave to everything. Checked: the data set parses; it has the attributes the
reader needs (UIDs made of digits and dots, Modality, Rows/Columns, pixel data,
position/orientation/spacing for single-frame images); its modality is allowed; it is not a SEG /
RT / SR / presentation object; uncompressed pixel data has the size Rows x Columns x frames x
samples x bits says.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Optional

from pydicom import Dataset

from msdn_core.errors import ErrorCode

#: C-STORE failure statuses (PS3.4 Annex B.2.3; 0xCxxx "Cannot understand" is ours to subdivide).
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_DATASET_MISMATCH = 0xA900
STATUS_SOP_CLASS_REFUSED = 0x0122
STATUS_MODALITY_REFUSED = 0xC011

#: Modalities of derived / non-image objects: never segmented, whatever MSDN_ALLOWED_MODALITIES says.
REFUSED_MODALITIES = frozenset({"SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "RTIMAGE", "SR", "PR", "KO", "REG"})
#: SOP class UID prefixes of the same objects (SEG 1.2.840.10008.5.1.4.1.1.66.4, RT 1.2.840.10008.5.1.4.1.1.481.*,
#: SR 1.2.840.10008.5.1.4.1.1.88.*, presentation states 1.2.840.10008.5.1.4.1.1.11.*).
REFUSED_SOP_CLASS_PREFIXES = (
    "1.2.840.10008.5.1.4.1.1.66",
    "1.2.840.10008.5.1.4.1.1.481",
    "1.2.840.10008.5.1.4.1.1.88",
    "1.2.840.10008.5.1.4.1.1.11",
)
_REQUIRED_UIDS = ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID")
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
#: A UID as received: digits and dots, at most 64 characters (leading zeros tolerated).
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


@dataclass(frozen=True)
class Refusal:
    """Why an instance is refused: the C-STORE status, a stable error code, and words."""

    status: int
    code: ErrorCode
    message: str

    def status_dataset(self) -> Dataset:
        """The C-STORE response status (with ErrorComment, at most 64 characters)."""
        status = Dataset()
        status.Status = self.status
        status.ErrorComment = self.message[:64]
        return status


def _numbers(ds: Dataset, keyword: str, count: int) -> Optional[list[float]]:
    try:
        value = ds.get(keyword)  # a raw (received) element is converted here: "abc" in a DS raises
    except (TypeError, ValueError, OverflowError):
        return None
    if value is None:
        return None
    try:
        values = [float(v) for v in (value if not isinstance(value, (str, bytes, float, int)) else [value])]
    except (TypeError, ValueError):
        return None
    if len(values) != count or not all(math.isfinite(v) for v in values):
        return None
    return values


def _expected_pixel_bytes(ds: Dataset) -> int:
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    bits = int(ds.BitsAllocated)
    pixels = int(ds.Rows) * int(ds.Columns) * frames * samples
    return (pixels + 7) // 8 if bits == 1 else pixels * (bits // 8)


def check_instance(ds: Dataset, *, modality_allowed: Callable[[str], bool]) -> Optional[Refusal]:
    """None when ``ds`` can be spooled, else why not (module docstring).

    Args:
        ds: the received data set (file meta attached as ``ds.file_meta``).
        modality_allowed: the service's modality policy (``Settings.modality_allowed``).
    """
    try:
        return _check(ds, modality_allowed)
    except Exception as exc:  # noqa: BLE001 - pydicom decodes lazily and raises many types on bad data
        return Refusal(STATUS_CANNOT_UNDERSTAND, ErrorCode.NOT_DICOM, f"unparseable data set ({type(exc).__name__})")


def _check(ds: Dataset, modality_allowed: Callable[[str], bool]) -> Optional[Refusal]:
    for keyword in _REQUIRED_UIDS:
        value = str(ds.get(keyword, "") or "").strip()
        if not value:
            return Refusal(STATUS_DATASET_MISMATCH, ErrorCode.MISSING_ATTRIBUTE, f"no {keyword}")
        if len(value) > 64 or not _UID.fullmatch(value):  # UIDs name spool files: never a path
            return Refusal(STATUS_DATASET_MISMATCH, ErrorCode.INVALID_INPUT, f"{keyword} is not a UID")
    modality = str(ds.get("Modality", "") or "").strip().upper()
    sop_class = str(ds.SOPClassUID)
    if modality in REFUSED_MODALITIES or sop_class.startswith(REFUSED_SOP_CLASS_PREFIXES):
        return Refusal(
            STATUS_SOP_CLASS_REFUSED, ErrorCode.UNSUPPORTED_IMAGE, f"{modality or sop_class} objects are not segmented"
        )
    if not modality:
        return Refusal(STATUS_DATASET_MISMATCH, ErrorCode.MISSING_ATTRIBUTE, "no Modality")
    if not modality_allowed(modality):
        return Refusal(STATUS_MODALITY_REFUSED, ErrorCode.MODALITY_NOT_ALLOWED, f"modality {modality} not allowed")
    keyword = next((k for k in _PIXEL_KEYWORDS if k in ds), None)
    if keyword is None:
        return Refusal(STATUS_DATASET_MISMATCH, ErrorCode.NO_PIXEL_DATA, "no pixel data")
    for name in ("Rows", "Columns", "BitsAllocated"):
        value = ds.get(name)
        if value is None or int(value) <= 0:
            return Refusal(STATUS_DATASET_MISMATCH, ErrorCode.MISSING_ATTRIBUTE, f"no valid {name}")
    multiframe = int(ds.get("NumberOfFrames", 1) or 1) > 1 and "PerFrameFunctionalGroupsSequence" in ds
    if not multiframe:
        if _numbers(ds, "ImagePositionPatient", 3) is None:
            return Refusal(STATUS_DATASET_MISMATCH, ErrorCode.INCONSISTENT_GEOMETRY, "ImagePositionPatient invalid")
        if _numbers(ds, "ImageOrientationPatient", 6) is None:
            return Refusal(STATUS_DATASET_MISMATCH, ErrorCode.INCONSISTENT_GEOMETRY, "ImageOrientationPatient invalid")
        spacing = _numbers(ds, "PixelSpacing", 2)
        if spacing is None or min(spacing) <= 0:
            return Refusal(STATUS_DATASET_MISMATCH, ErrorCode.INCONSISTENT_GEOMETRY, "PixelSpacing invalid")
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if keyword == "PixelData" and syntax is not None and not syntax.is_compressed:
        expected = _expected_pixel_bytes(ds)
        got = len(ds.PixelData or b"")
        if got < expected or got > expected + 1:
            return Refusal(
                STATUS_DATASET_MISMATCH,
                ErrorCode.PIXEL_DATA_INVALID,
                f"pixel data is {got} bytes, expected {expected}",
            )
    return None
