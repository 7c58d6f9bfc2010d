"""The mask as a DICOM Segmentation (SEG) made with highdicom (``application/dicom``).

The SEG is a BINARY segmentation with one segment per model class (segment number = class value),
referencing the source series instance by instance (or frame by frame for a multi-frame source),
in the source study, with empty frames omitted (kept with ``keep_empty_frames``). Segments carry
the class name as label, the model's name/version as the algorithm identification, and what the card's class says it is
(``msdn_core.card.ClassInfo``: category and type, e.g. SNOMED CT 49755003 "Morphologically abnormal
structure" / 27925004 "Nodule", anatomic region, display colour as RecommendedDisplayCIELabValue); a
class the card does not code gets category "Tissue" (SCT 85756007) and a type in the private coding
scheme ``99MSDN``.

Real scanners' quirks are absorbed here, not refused: a source whose SpecificCharacterSet (0008,0005)
is empty (as GE CT writes it; DICOM: the default repertoire) gives a SEG without one; a value no
standard term names gives a UTF-8 (``ISO_IR 192``) SEG, which encodes whatever pydicom decoded. Any
other source attribute highdicom cannot build a SEG from is answered 422 ``seg_not_built`` naming it,
never a 500.
"""

from __future__ import annotations

import io
import logging
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

import numpy as np
from pydicom.dataset import Dataset

from msdn_core.errors import ErrorCode, InvalidInput

if TYPE_CHECKING:
    from msdn_core.card import Coded
    from service.result import SegmentationResult

SERIES_NUMBER = 900
CODING_SCHEME = "99MSDN"
UTF8 = "ISO_IR 192"
logger = logging.getLogger(__name__)


def character_set(datasets: Sequence[Dataset]) -> Optional[Union[str, list[str]]]:
    """The SEG's SpecificCharacterSet from its sources': None (the default repertoire) when the first
    source's is absent or empty, its value when highdicom knows every term, else UTF-8."""
    from highdicom.enum import SpecificCharacterSetValues

    value: Any = datasets[0].get("SpecificCharacterSet") if datasets else None
    terms = [value] if isinstance(value, str) else list(value or [])
    terms = [str(t).strip() for t in terms]
    if not any(terms):
        return None
    known = {v.value for v in SpecificCharacterSetValues}
    if all(t in known for t in terms if t):
        return terms[0] if len(terms) == 1 else terms
    logger.warning("source SpecificCharacterSet %r not a standard term: the SEG is written as %s", terms, UTF8)
    return UTF8


def _code(coded: "Coded") -> Any:
    from pydicom.sr.coding import Code

    return Code(coded.code, coded.scheme, coded.meaning)


def build_seg(result: "SegmentationResult", *, keep_empty_frames: bool = False) -> Dataset:
    """A highdicom ``Segmentation`` of ``result.labels`` referencing the input DICOM series.

    Args:
        result: the answer, from DICOM input.
        keep_empty_frames: a frame for every source slice and segment, empty ones included
            (``MSDN_SEG_KEEP_EMPTY_FRAMES``); by default empty frames are omitted.

    Raises:
        ValueError: the result does not come from DICOM input.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code
    from pydicom.uid import generate_uid

    from msdn_core import __version__

    series = result.image.series
    if series is None:
        raise ValueError("a DICOM SEG answer needs DICOM input")
    missing = [
        keyword
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
        if not all(str(ds.get(keyword) or "").strip() for ds in series.datasets)
    ]
    if missing:  # a SEG references its sources by these: it would point at nothing
        raise InvalidInput(
            f"a DICOM SEG cannot reference these instances: they carry no {' / '.join(missing)} (anonymised?); "
            "ask for json or nifti",
            code=ErrorCode.SEG_NOT_BUILT,
        )
    card = result.card
    algorithm = hd.AlgorithmIdentificationSequence(
        name=card.name[:64], version=str(card.version)[:64], family=codes.cid7162.ArtificialIntelligence
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=c.value,
            segment_label=c.name[:64],
            segmented_property_category=_code(c.category) if c.category else codes.cid7150.Tissue,
            segmented_property_type=_code(c.type) if c.type else Code(f"class-{c.value}", CODING_SCHEME, c.name[:64]),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=generate_uid(),
            tracking_id=f"{card.name} {c.name}"[:64],
            anatomic_regions=[_code(c.anatomic_region)] if c.anatomic_region else None,
            display_color=hd.color.CIELabColor.from_rgb(*c.color_rgb) if c.color_rgb else None,
        )
        for c in card.classes
    ]
    labels = result.labels.astype(np.uint8)
    if result.image.tilt_deg and series.positions is not None:  # back onto the tilted source slices
        from msdn_core.geometry import to_acquired_slices

        labels = to_acquired_slices(labels, result.image.affine, series.positions)
    if series.multiframe:
        frames = np.zeros_like(labels)
        frames[np.asarray(series.frame_numbers) - 1] = labels
        labels = frames
    try:
        return hd.seg.Segmentation(
            source_images=series.datasets,
            pixel_array=labels,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=generate_uid(),
            series_number=SERIES_NUMBER,
            sop_instance_uid=generate_uid(),
            instance_number=1,
            manufacturer="msdn",
            manufacturer_model_name=card.name[:64],
            software_versions=__version__,
            device_serial_number=result.model_sha256[:16],
            content_label="MSDN",
            content_description=f"{card.name} {card.version} ({result.mode})"[:64],
            series_description=f"MSDN {card.name}"[:64],
            specific_character_set=character_set(series.datasets),
            omit_empty_frames=not keep_empty_frames,
        )
    except (ValueError, AttributeError, KeyError) as exc:  # highdicom's checks of the sources
        raise InvalidInput(
            f"a DICOM SEG cannot be built from this series: {exc}; ask for json or nifti",
            code=ErrorCode.SEG_NOT_BUILT,
        ) from exc


def seg_bytes(result: "SegmentationResult", *, keep_empty_frames: bool = False) -> bytes:
    """``build_seg`` written as a DICOM Part 10 file."""
    buffer = io.BytesIO()
    build_seg(result, keep_empty_frames=keep_empty_frames).save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
