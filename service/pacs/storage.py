"""Receiving instances by C-STORE: the transfer syntaxes accepted and the per-series collector.

Shared by the DIMSE client (``service.pacs.dimse``, C-GET on its own association) and the Storage SCP
(``service.pacs.scp``, C-MOVE destination and push listener); its own module so neither imports the other
back.
"""

from __future__ import annotations

import logging
import threading

from pydicom import Dataset
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from service.pacs.base import pixel_bytes
from service.pacs.errors import SeriesTooLargeError

logger = logging.getLogger(__name__)

#: Uncompressed transfer syntaxes, proposed together in one presentation context.
NATIVE_TRANSFER_SYNTAXES: tuple[UID, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
)
#: Compressed transfer syntaxes pydicom + pylibjpeg decode; each gets its own context so the peer can
#: send an instance as stored instead of transcoding it.
COMPRESSED_TRANSFER_SYNTAXES: tuple[UID, ...] = (
    JPEG2000Lossless,
    JPEG2000,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700


class SeriesCollector:
    """Instances of one series arriving by C-STORE, with the size limits enforced as they come.

    Args:
        series_uid: the series expected; instances of other series are refused.
        max_instances / max_bytes: limits; instances over them are refused with status 0xA700 and
            :meth:`raise_if_exceeded` raises.
    """

    def __init__(self, series_uid: str, *, max_instances: int, max_bytes: int) -> None:
        if max_instances < 1:
            raise ValueError(f"max_instances must be >= 1, got {max_instances}")
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
        self.series_uid = series_uid
        self.max_instances = max_instances
        self.max_bytes = max_bytes
        self.datasets: list[Dataset] = []
        self.nbytes = 0
        self.exceeded: str | None = None
        self._lock = threading.Lock()

    def add(self, dataset: Dataset, nbytes: int) -> int:
        """Take one instance; returns the C-STORE status to answer."""
        with self._lock:
            if self.exceeded:
                return STATUS_OUT_OF_RESOURCES
            if len(self.datasets) + 1 > self.max_instances:
                self.exceeded = f"more than max_instances={self.max_instances} instances"
                return STATUS_OUT_OF_RESOURCES
            if self.nbytes + nbytes > self.max_bytes:
                self.exceeded = f"more than max_series_bytes={self.max_bytes} bytes"
                return STATUS_OUT_OF_RESOURCES
            self.datasets.append(dataset)
            self.nbytes += nbytes
            return STATUS_SUCCESS

    def handle_store(self, event) -> int:
        """EVT_C_STORE handler (for C-GET on our own association)."""
        dataset, nbytes = dataset_from_store_event(event)
        if str(dataset.get("SeriesInstanceUID", "")) != self.series_uid:
            logger.warning("received an instance of another series during a retrieve; refused")
            return 0xA900
        # Over a limit: refuse this and every further instance (the peer then ends the retrieve with a
        # failure status); nothing more is kept in memory.
        return self.add(dataset, nbytes)

    def raise_if_exceeded(self) -> None:
        if self.exceeded:
            raise SeriesTooLargeError(f"series {self.series_uid} has {self.exceeded}")


def dataset_from_store_event(event) -> tuple[Dataset, int]:
    """The received instance (with its file meta) and its bytes of pixel data."""
    dataset = event.dataset
    dataset.file_meta = event.file_meta
    return dataset, pixel_bytes(dataset)
