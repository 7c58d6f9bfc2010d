"""PACS client over DICOMweb (QIDO-RS, WADO-RS, STOW-RS) using ``dicomweb-client``.

HTTP failures become :mod:`service.pacs.errors` exceptions with messages naming the peer and the
HTTP status; series are streamed instance by instance so the size limits stop a download early.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import Dataset

from service.jobs.backoff import parse_retry_after
from service.pacs.base import SeriesInfo, StoreResult, StudyInfo, check_uid, pixel_bytes, sort_instances
from service.pacs.errors import (
    PacsAuthError,
    PacsError,
    PacsOperationError,
    PacsTimeoutError,
    PacsUnreachableError,
    SeriesNotFoundError,
    SeriesTooLargeError,
)
from service.pacs.settings import PacsSettings

logger = logging.getLogger(__name__)


def _attr(item: dict, keyword_tag: str) -> str | None:
    """First value of a DICOM JSON attribute (tag as 8 hex digits), or None."""
    element = item.get(keyword_tag) or {}
    values = element.get("Value") or []
    if not values:
        return None
    value = values[0]
    if isinstance(value, dict):  # PN in DICOM JSON; never used for patient names here
        return value.get("Alphabetic")
    return str(value)


def _attr_all(item: dict, keyword_tag: str) -> tuple[str, ...]:
    element = item.get(keyword_tag) or {}
    return tuple(str(v) for v in element.get("Value") or [])


def _as_int(value: str | None) -> int | None:
    try:
        return int(float(value)) if value is not None else None
    except ValueError:
        return None


class DicomwebPacsClient:
    """:class:`~service.pacs.base.PacsClient` over DICOMweb.

    Args:
        settings: PACS settings; ``dicomweb_url`` is required.
        session: a ``requests.Session`` to use instead of building one from the auth settings.
    """

    protocol = "dicomweb"

    def __init__(self, settings: PacsSettings, *, session: requests.Session | None = None) -> None:
        if not settings.dicomweb_url:
            raise ValueError("settings.dicomweb_url is required for the DICOMweb client")
        self.settings = settings
        self.url = settings.dicomweb_url
        self._session = session if session is not None else self._build_session(settings)
        self._client = DICOMwebClient(
            url=self.url,
            session=self._session,
            qido_url_prefix=settings.dicomweb_qido_prefix,
            wado_url_prefix=settings.dicomweb_wado_prefix,
            stow_url_prefix=settings.dicomweb_stow_prefix,
            timeout=(settings.connect_timeout_s, settings.network_timeout_s),
        )
        # No retries inside dicomweb-client (they ignore Retry-After): callers retry with
        # service.pacs.retry, which honours it and stays within their deadline.
        self._client.set_http_retry_params(retry=False)

    @staticmethod
    def _build_session(settings: PacsSettings) -> requests.Session:
        session = requests.Session()
        if settings.dicomweb_auth == "basic":
            assert settings.dicomweb_username is not None and settings.dicomweb_password is not None
            session.auth = (settings.dicomweb_username, settings.dicomweb_password.get_secret_value())
        elif settings.dicomweb_auth == "bearer":
            assert settings.dicomweb_token is not None
            session.headers["Authorization"] = f"Bearer {settings.dicomweb_token.get_secret_value()}"
        session.verify = settings.dicomweb_ca_bundle or settings.dicomweb_verify_tls
        return session

    def describe(self) -> str:
        """The base URL (credentials are never part of it)."""
        return f"DICOMweb {self.url}"

    @contextmanager
    def _errors(self, action: str, *, not_found: str | None = None) -> Iterator[None]:
        """Translate requests/HTTP failures into PacsError subclasses."""
        try:
            yield
        except PacsError:
            raise
        except requests.exceptions.Timeout as exc:
            raise PacsTimeoutError(
                f"{action}: {self.describe()} did not answer within "
                f"{self.settings.connect_timeout_s:g}s (connect) / {self.settings.network_timeout_s:g}s (read)"
            ) from exc
        except requests.exceptions.ConnectionError as exc:
            raise PacsUnreachableError(f"{action}: cannot connect to {self.describe()} ({_reason(exc)})") from exc
        except requests.exceptions.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            retry_after = (
                parse_retry_after(exc.response.headers.get("Retry-After")) if exc.response is not None else None
            )
            if status in (401, 403):
                raise PacsAuthError(
                    f"{action}: {self.describe()} refused our credentials (HTTP {status}); "
                    "check MSDN_PACS_DICOMWEB_AUTH and its username/password or token"
                ) from exc
            if status == 404 and not_found:
                raise SeriesNotFoundError(f"{action}: {not_found} (HTTP 404 from {self.describe()})") from exc
            raise PacsOperationError(
                f"{action}: {self.describe()} answered HTTP {status}"
                + (f" (Retry-After {retry_after:g} s)" if retry_after is not None else ""),
                http_status=status,
                retry_after_s=retry_after,
            ) from exc
        except requests.exceptions.RequestException as exc:
            raise PacsOperationError(f"{action}: request to {self.describe()} failed ({_reason(exc)})") from exc

    def echo(self) -> None:
        """QIDO-RS study search with limit 1: proves reachability, auth and a working DICOMweb root."""
        with self._errors("echo"):
            self._client.search_for_studies(limit=1, fields=["StudyInstanceUID"])
        logger.info("DICOMweb echo ok: %s", self.url)

    def find_studies(
        self, *, study_uid: str | None = None, modality: str | None = None, limit: int | None = None
    ) -> list[StudyInfo]:
        """QIDO-RS ``/studies`` with optional exact-match filters."""
        filters: dict[str, str] = {}
        if study_uid:
            filters["StudyInstanceUID"] = check_uid(study_uid, "study_uid")
        if modality:
            filters["ModalitiesInStudy"] = modality
        with self._errors("find studies"):
            items = self._client.search_for_studies(
                search_filters=filters or None,
                limit=limit,
                fields=["StudyDate", "StudyDescription", "ModalitiesInStudy", "NumberOfStudyRelatedSeries"],
            )
        studies = [
            StudyInfo(
                study_uid=_attr(item, "0020000D") or "",
                study_date=_attr(item, "00080020"),
                study_description=_attr(item, "00081030"),
                modalities=_attr_all(item, "00080061"),
                series_count=_as_int(_attr(item, "00201206")),
            )
            for item in items
        ]
        logger.info("DICOMweb find studies: %d found", len(studies))
        return studies

    def find_series(
        self, study_uid: str, *, series_uid: str | None = None, modality: str | None = None
    ) -> list[SeriesInfo]:
        """QIDO-RS ``/studies/{study}/series`` with optional filters."""
        check_uid(study_uid, "study_uid")
        filters: dict[str, str] = {}
        if series_uid:
            filters["SeriesInstanceUID"] = check_uid(series_uid, "series_uid")
        if modality:
            filters["Modality"] = modality
        with self._errors("find series"):
            items = self._client.search_for_series(
                study_instance_uid=study_uid,
                search_filters=filters or None,
                fields=["SeriesDescription", "NumberOfSeriesRelatedInstances"],
            )
        found = [
            SeriesInfo(
                study_uid=_attr(item, "0020000D") or study_uid,
                series_uid=_attr(item, "0020000E") or "",
                modality=_attr(item, "00080060"),
                series_number=_as_int(_attr(item, "00200011")),
                series_description=_attr(item, "0008103E"),
                instance_count=_as_int(_attr(item, "00201209")),
            )
            for item in items
        ]
        logger.info("DICOMweb find series in study %s: %d found", study_uid, len(found))
        return found

    def fetch_series(self, study_uid: str, series_uid: str) -> list[Dataset]:
        """WADO-RS retrieve of a whole series, streamed, as stored (``transfer-syntax=*`` by default)."""
        check_uid(study_uid, "study_uid")
        check_uid(series_uid, "series_uid")
        limit_n = self.settings.max_instances
        limit_bytes = self.settings.max_series_bytes
        missing = f"no series {series_uid} in study {study_uid}"
        # Count first: QIDO is cheap and lets an oversized series fail before any download.
        found = self.find_series(study_uid, series_uid=series_uid)
        if not found:
            raise SeriesNotFoundError(f"fetch series: {missing} on {self.describe()}")
        count = found[0].instance_count
        if count is not None and count > limit_n:
            raise SeriesTooLargeError(f"series {series_uid} has {count} instances, more than max_instances={limit_n}")
        media_types = (("application/dicom", self.settings.dicomweb_transfer_syntax),)
        datasets: list[Dataset] = []
        nbytes = 0
        with self._errors("fetch series", not_found=missing):
            for ds in self._client.iter_series(study_uid, series_uid, media_types=media_types):
                datasets.append(ds)
                nbytes += pixel_bytes(ds)
                if len(datasets) > limit_n:
                    raise SeriesTooLargeError(f"series {series_uid} has more than max_instances={limit_n} instances")
                if nbytes > limit_bytes:
                    raise SeriesTooLargeError(
                        f"series {series_uid} has more than max_series_bytes={limit_bytes} bytes of pixel data"
                    )
        if not datasets:
            raise SeriesNotFoundError(f"fetch series: {missing} on {self.describe()}")
        logger.info("DICOMweb fetched series %s: %d instances, %d pixel bytes", series_uid, len(datasets), nbytes)
        return sort_instances(datasets)

    def store(self, datasets: Sequence[Dataset]) -> StoreResult:
        """STOW-RS of the instances (all in one request, grouped under their study)."""
        if not datasets:
            raise ValueError("datasets is empty: nothing to store")
        by_study: dict[str, list[Dataset]] = {}
        for ds in datasets:
            by_study.setdefault(str(ds.StudyInstanceUID), []).append(ds)
        result = StoreResult()
        for study_uid, group in by_study.items():
            with self._errors("store"):
                response = self._client.store_instances(group, study_instance_uid=study_uid)
            _collect_stow_response(response, group, result)
        return result.finish("DICOMweb", self.describe(), len(datasets))

    def close(self) -> None:
        """Close the HTTP session."""
        self._session.close()


def _collect_stow_response(response: Dataset, sent: Sequence[Dataset], result: StoreResult) -> None:
    """Read the STOW-RS response (Referenced / Failed SOP Sequence) into ``result``."""
    referenced = response.get("ReferencedSOPSequence") or []
    failed = response.get("FailedSOPSequence") or []
    for item in referenced:
        uid = str(item.get("ReferencedSOPInstanceUID", ""))
        if item.get("WarningReason") is not None:
            result.warnings.append(uid)
        result.stored.append(uid)
    for item in failed:
        result.failed.append(str(item.get("ReferencedSOPInstanceUID", "")))
    if not referenced and not failed:  # servers answering an empty body: trust the 2xx
        result.stored.extend(str(ds.SOPInstanceUID) for ds in sent)


def _reason(exc: BaseException) -> str:
    """The innermost cause of a requests error, without URLs' query strings or credentials."""
    inner: BaseException = exc
    while inner.__cause__ is not None or inner.__context__ is not None:
        inner = inner.__cause__ or inner.__context__  # type: ignore[assignment]
    text = type(inner).__name__
    message = str(inner).split(":")[-1].strip()
    return f"{text}: {message}" if message else text
