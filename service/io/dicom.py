"""The service's settings applied to the one DICOM series reader (:mod:`msdn_core.readers.dicom`).

``parse_dicom`` is the core's; ``series_volume`` passes the service's limits, allowed modalities and
tolerances (``Settings``, ``MSDN_*``) as the reader's keyword options.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

from pydicom.dataset import Dataset

from msdn_core.readers.dicom import parse_dicom, read_series
from msdn_core.volume import Volume
from service.settings import Settings

__all__ = ["parse_dicom", "series_volume"]


def series_volume(
    items: Sequence[tuple[str, Dataset]] | Sequence[Dataset],
    *,
    settings: Settings,
    series_uid: Optional[str] = None,
    slices: Optional[Callable[[tuple[int, int, int]], Optional[Sequence[int]]]] = None,
    lazy: bool = False,
) -> Volume:
    """One series of ``items`` as a (Z, Y, X) :class:`Volume` (:func:`msdn_core.readers.dicom.read_series`).

    Values are int16 when the modality values are integers that fit (CT in HU), else float32;
    ``slices`` (called with the shape) limits decoding to the slices a request needs; with ``lazy``
    the pixel data are decoded on demand (:meth:`msdn_core.volume.Volume.load`).
    """
    return read_series(
        items,
        series_uid=series_uid,
        allowed_modalities=settings.allowed_modalities,
        max_slices=settings.max_slices,
        max_voxels=settings.max_voxels,
        gap_rtol=settings.slice_gap_rtol,
        max_tilt_deg=settings.max_gantry_tilt_deg,
        slices=slices,
        compact=True,
        lazy=lazy,
    )
