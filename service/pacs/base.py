"""The interface every PACS client offers, and the records it returns.

A client is picked by :func:`service.pacs.factory.create_pacs_client` from the settings; callers only
see :class:`PacsClient`. Records hold UIDs and descriptive fields, never patient identifiers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from pydicom import Dataset

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudyInfo:
    """One study as found by a study-level query (no patient attributes)."""

    study_uid: str
    study_date: str | None = None
    study_description: str | None = None
    modalities: tuple[str, ...] = ()
    series_count: int | None = None


@dataclass(frozen=True)
class SeriesInfo:
    """One series as found by a series-level query."""

    study_uid: str
    series_uid: str
    modality: str | None = None
    series_number: int | None = None
    series_description: str | None = None
    instance_count: int | None = None


@dataclass
class StoreResult:
    """What the PACS accepted: SOP Instance UIDs stored, with warnings, and refused."""

    stored: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing was refused."""
        return not self.failed

    def finish(self, protocol: str, peer: str, total: int, *, dimse_status: int | None = None) -> "StoreResult":
        """Log the counts (UIDs only, never patient data) and raise when the PACS refused anything.

        Raises:
            StoreFailedError: some of the ``total`` instances were refused by ``peer``.
        """
        from service.pacs.errors import StoreFailedError

        logger.info(
            "%s store: %d stored, %d with warnings, %d failed",
            protocol,
            len(self.stored),
            len(self.warnings),
            len(self.failed),
        )
        if self.failed:
            raise StoreFailedError(
                f"store: {peer} refused {len(self.failed)} of {total} instances "
                f"(SOP Instance UIDs: {', '.join(self.failed[:5])})",
                dimse_status=dimse_status,
            )
        return self


@runtime_checkable
class PacsClient(Protocol):
    """What the service needs from a PACS, whatever the protocol."""

    #: ``"dicomweb"`` or ``"dimse"``.
    protocol: str

    def describe(self) -> str:
        """A short, credential-free description of the peer (for logs and errors)."""
        ...

    def echo(self) -> None:
        """Check the PACS answers (C-ECHO, or a QIDO-RS request); raises a ``PacsError`` if not."""
        ...

    def find_studies(
        self, *, study_uid: str | None = None, modality: str | None = None, limit: int | None = None
    ) -> list[StudyInfo]:
        """Study-level query; filters are optional exact matches."""
        ...

    def find_series(
        self,
        study_uid: str,
        *,
        series_uid: str | None = None,
        modality: str | None = None,
    ) -> list[SeriesInfo]:
        """Series-level query inside one study."""
        ...

    def fetch_series(self, study_uid: str, series_uid: str) -> list[Dataset]:
        """All instances of one series (with file meta), sorted by InstanceNumber.

        Raises:
            SeriesNotFoundError: the PACS has no instance of that series.
            SeriesTooLargeError: more than ``max_instances`` instances or ``max_series_bytes`` bytes.
        """
        ...

    def store(self, datasets: Sequence[Dataset]) -> StoreResult:
        """Send instances (e.g. a DICOM SEG) to the PACS; raises ``StoreFailedError`` if any is refused."""
        ...

    def close(self) -> None:
        """Free sockets, sessions and listeners."""
        ...


def sort_instances(datasets: Sequence[Dataset]) -> list[Dataset]:
    """Instances ordered by InstanceNumber (missing last), then SOP Instance UID, for stable output."""

    def key(ds: Dataset) -> tuple[int, int, str]:
        number = ds.get("InstanceNumber")
        try:
            value = int(number)
        except (TypeError, ValueError):
            return (1, 0, str(ds.get("SOPInstanceUID", "")))
        return (0, value, str(ds.get("SOPInstanceUID", "")))

    return sorted(datasets, key=key)


def pixel_bytes(ds: Dataset) -> int:
    """Bytes of (possibly compressed) pixel data in ``ds``; what ``max_series_bytes`` counts."""
    for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if keyword in ds:
            value = ds[keyword].value
            return len(value) if value is not None else 0
    return 0


def check_uid(value: str, name: str) -> str:
    """Validate a UID given by a caller; raises ValueError naming the field."""
    from pydicom.uid import UID

    if not isinstance(value, str) or not value or len(value) > 64 or not UID(value).is_valid:
        raise ValueError(f"{name} is not a valid DICOM UID: {value!r}")
    return value
