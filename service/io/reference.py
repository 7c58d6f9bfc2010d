"""Parse the ``reference`` upload of a request; the matching to the input is :mod:`msdn_core.reference`.

A reference is a DICOM SEG (parsed to a pydicom ``Dataset``), a NIfTI or NRRD label volume (a
:class:`msdn_core.volume.Volume`, matched through its affine) or a ``.npy`` label array (no geometry:
it must have the input's shape).
"""

from __future__ import annotations

from typing import BinaryIO

import numpy as np
from pydicom.dataset import Dataset

from msdn_core.readers import DICOM_MAGIC_OFFSET
from msdn_core.readers.dicom import parse_dicom
from msdn_core.volume import Volume
from service.io.volume import read_array_file
from service.settings import Settings


def read_reference_file(fh: BinaryIO, *, name: str, settings: Settings) -> Dataset | Volume | np.ndarray:
    """A reference upload as a DICOM SEG dataset, a NIfTI/NRRD :class:`Volume` or a ``.npy`` array.

    The result goes to ``service.pipeline.segment_image(reference=...)``.
    """
    head = fh.read(DICOM_MAGIC_OFFSET + 4)
    fh.seek(0)
    if head[DICOM_MAGIC_OFFSET:] == b"DICM":
        return parse_dicom(fh, name=name)
    return read_array_file(fh, name=name, settings=settings)
