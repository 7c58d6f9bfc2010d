"""Deterministic result UIDs: the same series segmented by the same model gives the same SEG UIDs.

A resend of a series (or a restart that re-runs a job) then produces the SEG the PACS already has,
never a second result series. The UIDs derive from the source SeriesInstanceUID, the model's
SHA-256 and the SOP Instance UIDs the SEG covers (a series that gained instances is a new result).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from pydicom import Dataset
from pydicom.uid import PYDICOM_ROOT_UID, generate_uid

#: Root of the result UIDs (pydicom's; ``generate_uid`` hashes the entropy sources below it).
UID_PREFIX = PYDICOM_ROOT_UID


def instances_digest(sop_instance_uids: Iterable[str]) -> str:
    """SHA-256 of the sorted SOP Instance UIDs."""
    return hashlib.sha256("\n".join(sorted(set(sop_instance_uids))).encode()).hexdigest()


def result_uid(series_uid: str, model_sha256: str, digest: str, role: str) -> str:
    """One deterministic UID; ``role`` tells the UIDs of one result apart (series, instance...)."""
    return generate_uid(prefix=UID_PREFIX, entropy_srcs=["msdn-seg", series_uid, model_sha256, digest, role])


def assign_result_uids(
    seg: Dataset, *, series_uid: str, model_sha256: str, sop_instance_uids: Iterable[str]
) -> Dataset:
    """Replace the SEG's series / instance / tracking UIDs by deterministic ones (in place)."""
    digest = instances_digest(sop_instance_uids)
    seg.SeriesInstanceUID = result_uid(series_uid, model_sha256, digest, "series")
    seg.SOPInstanceUID = result_uid(series_uid, model_sha256, digest, "instance")
    meta = getattr(seg, "file_meta", None)
    if meta is not None:
        meta.MediaStorageSOPInstanceUID = seg.SOPInstanceUID
    for item in seg.get("SegmentSequence", []):
        if "TrackingUID" in item:
            item.TrackingUID = result_uid(series_uid, model_sha256, digest, f"tracking-{item.SegmentNumber}")
    return seg
