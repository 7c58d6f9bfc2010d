"""PACS client over DIMSE (C-ECHO, C-FIND, C-GET / C-MOVE, C-STORE) using ``pynetdicom``.

Every operation opens its own association (PACS connections are cheap and this keeps the client
thread-safe). Failures become :mod:`service.pacs.errors` exceptions: peer unreachable, association
rejected (with the peer's reason), aborted, timed out, or a failure status of the operation.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from pydicom import Dataset
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, Association, _config, build_role, evt
from pynetdicom.pdu_primitives import A_ABORT, A_ASSOCIATE, A_P_ABORT
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from service.pacs.base import SeriesInfo, StoreResult, StudyInfo, check_uid, sort_instances
from service.pacs.errors import (
    AssociationAbortedError,
    AssociationRejectedError,
    PacsAuthError,
    PacsError,
    PacsNotConfiguredError,
    PacsOperationError,
    PacsTimeoutError,
    PacsUnreachableError,
    SeriesNotFoundError,
    SeriesTooLargeError,
)
from service.pacs.scp import StorageReceiver
from service.pacs.settings import PacsSettings
from service.pacs.storage import (
    COMPRESSED_TRANSFER_SYNTAXES,
    NATIVE_TRANSFER_SYNTAXES,
    STATUS_SUCCESS,
    SeriesCollector,
)

logger = logging.getLogger(__name__)

# pynetdicom logs C-FIND identifiers at INFO by default; a peer may put patient attributes in its
# answers even when not asked, so never log identifiers.
_config.LOG_REQUEST_IDENTIFIERS = False
_config.LOG_RESPONSE_IDENTIFIERS = False

#: A-ASSOCIATE-RQ may hold at most 128 presentation contexts.
MAX_CONTEXTS = 128

_PENDING = (0xFF00, 0xFF01)
_WARNINGS = (0x0001, 0xB000, 0xB006, 0xB007)
#: Statuses meaning "not allowed" rather than "failed" (refused: not authorised / move destination unknown).
_REFUSED = (0x0124, 0xA801, 0x0122)


def _status_text(status: int) -> str:
    from pynetdicom.status import code_to_category

    return f"0x{status:04X} ({code_to_category(status)})"


class _AssociationWatch:
    """Event handlers recording what happened on an association (connection, A-ABORT from the peer)."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.connected = False
        self.closed = False
        self.peer_aborted = False
        #: the peer's A-ASSOCIATE answer when it was a rejection (kept even if the peer then drops the
        #: connection so fast that the association object reports an abort instead)
        self.rejection = None

    def handlers(self) -> list:
        return [
            (evt.EVT_CONN_OPEN, self._on_open),
            (evt.EVT_CONN_CLOSE, self._on_close),
            (evt.EVT_ACSE_RECV, self._on_acse),
        ]

    def _on_open(self, event) -> None:
        self.connected = True

    def _on_close(self, event) -> None:
        self.closed = True

    def _on_acse(self, event) -> None:
        primitive = event.primitive
        if isinstance(primitive, (A_ABORT, A_P_ABORT)):
            self.peer_aborted = True
        elif isinstance(primitive, A_ASSOCIATE) and primitive.result not in (None, 0x00):
            self.rejection = primitive


class DimsePacsClient:
    """:class:`~service.pacs.base.PacsClient` over DIMSE.

    Args:
        settings: PACS settings (AE titles, peer address, timeouts, retrieve method, limits).
        receiver: the Storage SCP that receives C-MOVE results (``retrieve="c-move"``); created from the
            settings and started on first use when not given.
    """

    protocol = "dimse"

    def __init__(self, settings: PacsSettings, *, receiver=None) -> None:
        self.settings = settings
        self._receiver = receiver
        self._owns_receiver = receiver is None
        self._receiver_lock = threading.Lock()

    def describe(self) -> str:
        s = self.settings
        return f"DICOM {s.peer_ae_title}@{s.peer_host}:{s.peer_port}"

    # --- associations --------------------------------------------------------------------------

    def _new_ae(self) -> AE:
        s = self.settings
        ae = AE(ae_title=s.ae_title)
        ae.connection_timeout = s.connect_timeout_s
        ae.acse_timeout = s.acse_timeout_s
        ae.dimse_timeout = s.dimse_timeout_s
        ae.network_timeout = s.network_timeout_s
        return ae

    @contextmanager
    def _associate(
        self,
        action: str,
        contexts: Sequence[tuple[UID | str, Sequence[UID]]],
        *,
        handlers: Sequence = (),
        ext_neg: list | None = None,
    ) -> Iterator[tuple[Association, _AssociationWatch]]:
        """An established association, released afterwards; raises a PacsError when there is none."""
        s = self.settings
        if len(contexts) > MAX_CONTEXTS:
            raise PacsOperationError(f"{action}: {len(contexts)} presentation contexts needed, at most 128")
        ae = self._new_ae()
        for abstract, syntaxes in contexts:
            ae.add_requested_context(abstract, list(syntaxes))
        watch = _AssociationWatch()
        assoc = ae.associate(
            s.peer_host,
            s.peer_port,
            ae_title=s.peer_ae_title,
            ext_neg=ext_neg,
            evt_handlers=watch.handlers() + list(handlers),
        )
        if not assoc.is_established:
            self._raise_not_established(action, assoc, watch)
        try:
            yield assoc, watch
        finally:
            if assoc.is_established:
                assoc.release()
            ae.shutdown()

    def _raise_not_established(self, action: str, assoc: Association, watch: _AssociationWatch) -> None:
        s = self.settings
        peer = self.describe()
        if not watch.connected:
            raise PacsUnreachableError(
                f"{action}: cannot connect to {peer} (refused, unreachable or no answer within "
                f"{s.connect_timeout_s:g}s)"
            )
        primitive = assoc.acceptor.primitive
        if watch.rejection is not None:
            primitive = watch.rejection
        if (assoc.is_rejected or watch.rejection is not None) and primitive is not None:
            raise AssociationRejectedError(
                f"{action}: {peer} rejected the association from {s.ae_title!r}: {primitive.reason_str} "
                f"({primitive.result_str}, source {primitive.source_str}); check that the PACS knows AE "
                f"{s.ae_title!r} and that {s.peer_ae_title!r} is its AE title"
            )
        if primitive is not None and primitive.result == 0x00:
            raise AssociationRejectedError(
                f"{action}: {peer} accepted none of the proposed presentation contexts "
                "(SOP classes / transfer syntaxes not supported, or the service is not allowed for "
                f"AE {s.ae_title!r})"
            )
        if watch.peer_aborted:
            raise AssociationAbortedError(f"{action}: {peer} aborted the association request")
        # A peer that refuses our AE and drops the connection at once can beat pynetdicom to decoding its
        # A-ASSOCIATE-RJ: a close well before the ACSE timeout is a refusal, not a silent peer.
        if watch.closed and time.monotonic() - watch.started < 0.8 * s.acse_timeout_s:
            raise AssociationAbortedError(
                f"{action}: {peer} closed the connection without accepting the association (does it know AE "
                f"{s.ae_title!r}?)"
            )
        raise PacsTimeoutError(f"{action}: {peer} did not answer the association request within {s.acse_timeout_s:g}s")

    def _raise_lost(self, action: str, assoc: Association, watch: _AssociationWatch) -> None:
        """An operation got no (final) response: the peer aborted, or the DIMSE timeout hit."""
        if watch.peer_aborted:
            raise AssociationAbortedError(f"{action}: {self.describe()} aborted the association")
        if assoc.is_aborted or not assoc.is_established:
            raise PacsTimeoutError(
                f"{action}: no response from {self.describe()} within {self.settings.dimse_timeout_s:g}s "
                "(association aborted)"
            )
        raise PacsOperationError(f"{action}: {self.describe()} sent an invalid response")

    # --- C-ECHO --------------------------------------------------------------------------------

    def echo(self) -> None:
        """C-ECHO; raises a PacsError unless the peer answers Success."""
        with self._associate("echo", [(Verification, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])]) as (
            assoc,
            watch,
        ):
            status = assoc.send_c_echo()
            if "Status" not in status:
                self._raise_lost("echo", assoc, watch)
            if status.Status != STATUS_SUCCESS:
                raise PacsOperationError(f"echo: {self.describe()} answered {_status_text(status.Status)}")
        logger.info("DIMSE echo ok: %s", self.describe())

    # --- C-FIND --------------------------------------------------------------------------------

    def _find(self, action: str, identifier: Dataset) -> list[Dataset]:
        contexts = [(StudyRootQueryRetrieveInformationModelFind, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])]
        matches: list[Dataset] = []
        with self._associate(action, contexts) as (assoc, watch):
            final = None
            for status, found in assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind):
                if "Status" not in status:
                    self._raise_lost(action, assoc, watch)
                code = int(status.Status)
                if code in _PENDING:
                    if found is not None:
                        matches.append(found)
                    continue
                final = code
            if final is None:
                self._raise_lost(action, assoc, watch)
            if final in _REFUSED:
                raise PacsAuthError(f"{action}: {self.describe()} refused the query: {_status_text(final)}")
            if final != STATUS_SUCCESS:
                raise PacsOperationError(f"{action}: {self.describe()} answered {_status_text(final)}")
        return matches

    def find_studies(
        self, *, study_uid: str | None = None, modality: str | None = None, limit: int | None = None
    ) -> list[StudyInfo]:
        """Study-level C-FIND (Study Root)."""
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = check_uid(study_uid, "study_uid") if study_uid else ""
        query.StudyDate = ""
        query.StudyDescription = ""
        query.ModalitiesInStudy = modality or ""
        query.NumberOfStudyRelatedSeries = ""
        matches = self._find("find studies", query)
        studies = [
            StudyInfo(
                study_uid=str(m.get("StudyInstanceUID", "")),
                study_date=_text(m.get("StudyDate")),
                study_description=_text(m.get("StudyDescription")),
                modalities=_multi(m.get("ModalitiesInStudy")),
                series_count=_int(m.get("NumberOfStudyRelatedSeries")),
            )
            for m in matches
        ]
        if limit is not None:
            studies = studies[:limit]
        logger.info("DIMSE find studies: %d found", len(studies))
        return studies

    def find_series(
        self, study_uid: str, *, series_uid: str | None = None, modality: str | None = None
    ) -> list[SeriesInfo]:
        """Series-level C-FIND inside one study."""
        query = Dataset()
        query.QueryRetrieveLevel = "SERIES"
        query.StudyInstanceUID = check_uid(study_uid, "study_uid")
        query.SeriesInstanceUID = check_uid(series_uid, "series_uid") if series_uid else ""
        query.Modality = modality or ""
        query.SeriesNumber = ""
        query.SeriesDescription = ""
        query.NumberOfSeriesRelatedInstances = ""
        matches = self._find("find series", query)
        found = [
            SeriesInfo(
                study_uid=str(m.get("StudyInstanceUID", study_uid)),
                series_uid=str(m.get("SeriesInstanceUID", "")),
                modality=_text(m.get("Modality")),
                series_number=_int(m.get("SeriesNumber")),
                series_description=_text(m.get("SeriesDescription")),
                instance_count=_int(m.get("NumberOfSeriesRelatedInstances")),
            )
            for m in matches
        ]
        logger.info("DIMSE find series in study %s: %d found", study_uid, len(found))
        return found

    def _series_sop_classes(self, action: str, study_uid: str, series_uid: str) -> tuple[int, list[str]]:
        """Instance-level C-FIND: how many instances the series has and their SOP classes."""
        query = Dataset()
        query.QueryRetrieveLevel = "IMAGE"
        query.StudyInstanceUID = study_uid
        query.SeriesInstanceUID = series_uid
        query.SOPInstanceUID = ""
        query.SOPClassUID = ""
        matches = self._find(action, query)
        classes = sorted({str(m.SOPClassUID) for m in matches if m.get("SOPClassUID")})
        return len(matches), classes

    # --- C-GET / C-MOVE ------------------------------------------------------------------------

    def fetch_series(self, study_uid: str, series_uid: str) -> list[Dataset]:
        """All instances of a series via C-GET (default) or C-MOVE to our Storage SCP."""
        check_uid(study_uid, "study_uid")
        check_uid(series_uid, "series_uid")
        action = "fetch series"
        count, sop_classes = self._series_sop_classes(action, study_uid, series_uid)
        if count == 0:
            raise SeriesNotFoundError(f"{action}: no series {series_uid} in study {study_uid} on {self.describe()}")
        if count > self.settings.max_instances:
            raise SeriesTooLargeError(
                f"series {series_uid} has {count} instances, more than max_instances={self.settings.max_instances}"
            )
        collector = SeriesCollector(
            series_uid, max_instances=self.settings.max_instances, max_bytes=self.settings.max_series_bytes
        )
        if self.settings.retrieve == "c-move":
            self._move(action, study_uid, series_uid, collector)
        else:
            self._get(action, study_uid, series_uid, sop_classes, collector)
        collector.raise_if_exceeded()
        datasets = collector.datasets
        if not datasets:
            raise SeriesNotFoundError(
                f"{action}: {self.describe()} sent no instance of series {series_uid} (expected {count})"
            )
        logger.info(
            "DIMSE fetched series %s via %s: %d instances, %d bytes",
            series_uid,
            self.settings.retrieve,
            len(datasets),
            collector.nbytes,
        )
        return sort_instances(datasets)

    @staticmethod
    def _retrieve_identifier(study_uid: str, series_uid: str) -> Dataset:
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "SERIES"
        identifier.StudyInstanceUID = study_uid
        identifier.SeriesInstanceUID = series_uid
        return identifier

    def _get(
        self, action: str, study_uid: str, series_uid: str, sop_classes: list[str], collector: SeriesCollector
    ) -> None:
        contexts: list[tuple[UID | str, Sequence[UID]]] = [
            (StudyRootQueryRetrieveInformationModelGet, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        ]
        for sop_class in sop_classes:
            contexts.append((sop_class, NATIVE_TRANSFER_SYNTAXES))
            contexts.extend((sop_class, [ts]) for ts in COMPRESSED_TRANSFER_SYNTAXES)
        roles = [build_role(sop_class, scp_role=True) for sop_class in sop_classes]
        handlers = [(evt.EVT_C_STORE, collector.handle_store)]
        with self._associate(action, contexts, handlers=handlers, ext_neg=roles) as (assoc, watch):
            responses = assoc.send_c_get(
                self._retrieve_identifier(study_uid, series_uid), StudyRootQueryRetrieveInformationModelGet
            )
            self._check_retrieve_responses(action, responses, assoc, watch, collector)

    def _move(self, action: str, study_uid: str, series_uid: str, collector: SeriesCollector) -> None:
        try:
            receiver = self._ensure_receiver()
        except OSError as exc:  # our storage port is taken: nothing the PACS can do about it
            raise PacsNotConfiguredError(f"{action}: C-MOVE needs our Storage SCP, which cannot listen: {exc}") from exc
        contexts = [(StudyRootQueryRetrieveInformationModelMove, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])]
        with receiver.expect(collector), self._associate(action, contexts) as (assoc, watch):
            responses = assoc.send_c_move(
                self._retrieve_identifier(study_uid, series_uid),
                self.settings.move_destination,
                StudyRootQueryRetrieveInformationModelMove,
            )
            self._check_retrieve_responses(action, responses, assoc, watch, collector)

    def _check_retrieve_responses(self, action, responses, assoc, watch, collector) -> None:
        final: Dataset | None = None
        for status, _identifier in responses:
            if "Status" not in status:
                break
            if int(status.Status) in _PENDING:
                continue
            final = status
        if collector.exceeded:  # we refused instances on purpose; raise_if_exceeded reports it
            return
        if final is None:
            self._raise_lost(action, assoc, watch)
        code = int(final.Status)
        failed = int(final.get("NumberOfFailedSuboperations", 0) or 0)
        if code == 0xA801:
            raise PacsAuthError(
                f"{action}: {self.describe()} does not know the move destination "
                f"{self.settings.move_destination!r} (add it to the PACS's modalities)"
            )
        if code in _REFUSED:
            raise PacsAuthError(f"{action}: {self.describe()} refused the retrieve: {_status_text(code)}")
        if code not in (STATUS_SUCCESS, *_WARNINGS) or failed:
            comment = str(final.get("ErrorComment", "") or "").strip()
            raise PacsOperationError(
                f"{action}: {self.describe()} answered {_status_text(code)}, {failed} sub-operations failed"
                + (f": {comment}" if comment else "")
                + (
                    f" (is {self.settings.move_destination!r} a modality the PACS knows?)"
                    if self.settings.retrieve == "c-move" and code == 0xC000 and not failed
                    else ""
                )
            )

    def _ensure_receiver(self):
        with self._receiver_lock:
            if self._receiver is None:
                self._receiver = StorageReceiver.from_settings(self.settings)
            if not self._receiver.running:
                self._receiver.start()
            return self._receiver

    # --- C-STORE -------------------------------------------------------------------------------

    def store(self, datasets: Sequence[Dataset]) -> StoreResult:
        """C-STORE each instance on one association (each in its own transfer syntax)."""
        if not datasets:
            raise ValueError("datasets is empty: nothing to store")
        contexts: dict[tuple[str, str], None] = {}
        for ds in datasets:
            meta = getattr(ds, "file_meta", None)
            ts = str(meta.TransferSyntaxUID) if meta is not None and "TransferSyntaxUID" in meta else None
            if ts is None:
                raise ValueError(f"instance {ds.get('SOPInstanceUID', '?')} has no file meta TransferSyntaxUID")
            contexts[(str(ds.SOPClassUID), ts)] = None
        action = "store"
        result = StoreResult()
        failure: int | None = None
        with self._associate(action, [(sop, [ts]) for sop, ts in contexts]) as (assoc, watch):
            for ds in datasets:
                uid = str(ds.SOPInstanceUID)
                try:
                    status = assoc.send_c_store(ds)
                except ValueError as exc:  # no accepted context for this SOP class / transfer syntax
                    logger.warning("DIMSE store: %s not sent: %s", uid, exc)
                    result.failed.append(uid)
                    continue
                if "Status" not in status:
                    self._raise_lost(action, assoc, watch)
                code = int(status.Status)
                if code == STATUS_SUCCESS:
                    result.stored.append(uid)
                elif code in _WARNINGS:
                    result.stored.append(uid)
                    result.warnings.append(uid)
                else:
                    logger.warning("DIMSE store: %s refused with %s", uid, _status_text(code))
                    result.failed.append(uid)
                    failure = code
        return result.finish("DIMSE", self.describe(), len(datasets), dimse_status=failure)

    def close(self) -> None:
        """Stop the Storage SCP if this client started it."""
        if self._owns_receiver and self._receiver is not None:
            self._receiver.stop()


def _text(value) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _int(value) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _multi(value) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, (list, tuple)) or hasattr(value, "__iter__") and not isinstance(value, str):
        return tuple(str(v) for v in value)
    return (str(value),)


__all__ = ["DimsePacsClient", "PacsError", "SeriesCollector"]
