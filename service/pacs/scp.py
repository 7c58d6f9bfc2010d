"""Our DICOM Storage SCP: receives C-STORE requests (C-MOVE results, or series pushed to us).

Instances of a series some retrieve is waiting for go to that retrieve's
:class:`~service.pacs.storage.SeriesCollector`; any other instance goes to ``on_unexpected`` (the push
listener) or is refused when there is none.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from pydicom import Dataset
from pynetdicom import AE, evt
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification

from service.pacs.settings import PacsSettings
from service.pacs.storage import (
    COMPRESSED_TRANSFER_SYNTAXES,
    NATIVE_TRANSFER_SYNTAXES,
    STATUS_OUT_OF_RESOURCES,
    STATUS_SUCCESS,
    SeriesCollector,
    dataset_from_store_event,
)

logger = logging.getLogger(__name__)

#: Refused: "Cannot understand" (no retrieve waits for it and no listener takes pushes).
STATUS_NOT_EXPECTED = 0xC001

#: Refused: "Cannot understand" (the data set does not decode).
STATUS_CANNOT_UNDERSTAND = 0xC000

#: Called with (Part 10 bytes, dataset, calling AE title, association id); returns a C-STORE status
#: (an int or a status Dataset with ErrorComment).
UnexpectedHandler = Callable[[bytes, Dataset, str, int], "int | Dataset"]


class StorageReceiver:
    """A pynetdicom Storage SCP running in background threads.

    Args:
        ae_title: our AE title (the called AE must match it).
        host / port: where to listen (port 0 = any free port; see :attr:`port` after start).
        allowed_aes: calling AE titles accepted; empty = anyone.
        on_unexpected: where instances nobody waits for go (the push listener); refused when None.
        on_association_closed: called with the association id when one ends (the listener's series
            complete only once no open association is sending them).
        acse_timeout_s / dimse_timeout_s: pynetdicom timeouts.
        network_timeout_s: an association idle this long is closed (A-ABORT).
        max_associations: established associations at once; more are aborted right after the AE
            title check (TCP connections that never associate do not count, and are closed after
            ``acse_timeout_s``).
        max_connections: TCP connections at once (pynetdicom's limit, checked before anything else).
    """

    def __init__(
        self,
        *,
        ae_title: str,
        host: str = "0.0.0.0",
        port: int = 11112,
        allowed_aes: Sequence[str] = (),
        on_unexpected: UnexpectedHandler | None = None,
        on_association_closed: Callable[[int], None] | None = None,
        acse_timeout_s: float = 10.0,
        dimse_timeout_s: float = 60.0,
        network_timeout_s: float = 60.0,
        max_associations: int = 16,
        max_connections: int = 64,
    ) -> None:
        if max_associations < 1 or max_connections < max_associations:
            raise ValueError(
                f"max_associations must be >= 1 and <= max_connections, got {max_associations}, {max_connections}"
            )
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {port}")
        if not ae_title or len(ae_title) > 16:
            raise ValueError(f"ae_title must have 1..16 characters, got {ae_title!r}")
        self.ae_title = ae_title
        self.host = host
        self.requested_port = port
        self.allowed_aes = list(allowed_aes)
        self.on_unexpected = on_unexpected
        self.on_association_closed = on_association_closed
        self.max_associations = max_associations
        self.max_connections = max_connections
        self._timeouts = (acse_timeout_s, dimse_timeout_s, network_timeout_s)
        self._established: set[int] = set()
        self.aborted_over_limit = 0
        self._server = None
        self._ae: AE | None = None
        self._lock = threading.Lock()
        self._waiting: dict[str, list[SeriesCollector]] = {}

    @classmethod
    def from_settings(
        cls,
        settings: PacsSettings,
        *,
        on_unexpected: UnexpectedHandler | None = None,
        on_association_closed: Callable[[int], None] | None = None,
    ) -> StorageReceiver:
        """A receiver with our AE title, the storage host/port and the PACS as the only allowed peer."""
        return cls(
            ae_title=settings.move_destination,
            host=settings.storage_host,
            port=settings.storage_port,
            allowed_aes=[settings.peer_ae_title] + list(settings.listener_allowed_aes),
            on_unexpected=on_unexpected,
            on_association_closed=on_association_closed,
            acse_timeout_s=settings.acse_timeout_s,
            dimse_timeout_s=settings.dimse_timeout_s,
            network_timeout_s=settings.listener_association_idle_s,
            max_associations=settings.listener_max_associations,
            max_connections=settings.listener_max_connections,
        )

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def port(self) -> int:
        """The port listened on (the real one when started with port 0)."""
        if self._server is None:
            return self.requested_port
        return int(self._server.server_address[1])

    def start(self) -> StorageReceiver:
        """Start listening (idempotent)."""
        if self._server is not None:
            return self
        ae = AE(ae_title=self.ae_title)
        ae.acse_timeout, ae.dimse_timeout, ae.network_timeout = self._timeouts
        ae.require_called_aet = True
        ae.maximum_associations = self.max_connections
        if self.allowed_aes:
            ae.require_calling_aet = self.allowed_aes
        syntaxes = list(NATIVE_TRANSFER_SYNTAXES) + list(COMPRESSED_TRANSFER_SYNTAXES)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, syntaxes)
        ae.add_supported_context(Verification)
        handlers = [
            (evt.EVT_C_STORE, self._handle_store),
            (evt.EVT_ESTABLISHED, self._on_established),
            (evt.EVT_CONN_CLOSE, self._on_closed),
        ]
        try:
            self._server = ae.start_server((self.host, self.requested_port), block=False, evt_handlers=handlers)
        except OSError as exc:
            raise OSError(f"Storage SCP cannot listen on {self.host}:{self.requested_port}: {exc}") from exc
        self._ae = ae
        logger.info("Storage SCP %s listening on %s:%d", self.ae_title, self.host, self.port)
        return self

    def stop(self) -> None:
        """Stop listening and close open associations."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if self._ae is not None:
            self._ae.shutdown()
            self._ae = None

    @contextmanager
    def expect(self, collector: SeriesCollector) -> Iterator[SeriesCollector]:
        """Route instances of ``collector.series_uid`` to ``collector`` while the block runs."""
        with self._lock:
            self._waiting.setdefault(collector.series_uid, []).append(collector)
        try:
            yield collector
        finally:
            with self._lock:
                waiting = self._waiting.get(collector.series_uid, [])
                if collector in waiting:
                    waiting.remove(collector)
                if not waiting:
                    self._waiting.pop(collector.series_uid, None)

    def _on_established(self, event) -> None:
        key = id(event.assoc)
        with self._lock:
            over = len(self._established) >= self.max_associations
            if not over:
                self._established.add(key)
        if over:
            self.aborted_over_limit += 1
            logger.warning(
                "Storage SCP: %d associations open (MSDN_PACS_LISTENER_MAX_ASSOCIATIONS); aborted one from %s",
                self.max_associations,
                str(event.assoc.requestor.ae_title).strip(),
            )
            event.assoc.abort()

    def _on_closed(self, event) -> None:
        key = id(event.assoc)
        with self._lock:
            self._established.discard(key)
        if self.on_association_closed is not None:
            self.on_association_closed(key)

    @property
    def open_associations(self) -> int:
        return len(self._established)

    def _handle_store(self, event):
        try:
            dataset, nbytes = dataset_from_store_event(event)
            series_uid = str(dataset.get("SeriesInstanceUID", ""))
        except Exception as exc:  # noqa: BLE001 - a data set that does not decode
            logger.warning("Storage SCP: refused an undecodable instance (%s)", type(exc).__name__)
            return STATUS_CANNOT_UNDERSTAND
        with self._lock:
            collectors = list(self._waiting.get(series_uid, ()))
        if collectors:
            statuses = [collector.add(dataset, nbytes) for collector in collectors]
            return STATUS_SUCCESS if STATUS_SUCCESS in statuses else STATUS_OUT_OF_RESOURCES
        if self.on_unexpected is not None:
            calling = str(event.assoc.requestor.ae_title).strip()
            try:
                return self.on_unexpected(event.encoded_dataset(), dataset, calling, id(event.assoc))
            except Exception:  # a listener bug must not kill the association thread
                logger.exception("listener failed on an instance of series %s", series_uid)
                return 0xC002
        logger.warning("Storage SCP: refused an instance of series %s (no retrieve waits for it)", series_uid)
        return STATUS_NOT_EXPECTED
