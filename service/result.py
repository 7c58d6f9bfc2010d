"""``SegmentationResult``: what the pipeline produces and the outputs render (JSON, NIfTI, DICOM SEG).

Its own module so that ``service.outputs`` and ``service.pipeline`` both import it without a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from msdn_core.card import ModelCard
from msdn_core.grid import GridTransform
from msdn_core.volume import Volume
from service.boxes import SliceBox
from service.model import RunStats


@dataclass
class SegmentationResult:
    """A segmented volume and what produced it.

    Attributes:
        image: the input volume (geometry, DICOM sources).
        labels: (Z, Y, X) uint8 class labels.
        mode: ``slices``, ``boxes`` or ``proposals``.
        boxes: the request boxes or detector proposals that were segmented.
        components: 3D connected components after post-processing (``msdn_core.postprocess``),
            largest first, each with its ``score`` and ``centre``.
        metrics: scores against the reference (``service.evaluation.evaluate``), or None.
        run: model calls and their time.
        timings: ``read_s`` (decode), ``total_s`` (whole pipeline).
        card, model_sha256, provider: the model that ran.
        grid: the transform between the input's grid and the model's (``msdn_core.grid``), or None.
        slices: with ``with_slices`` in proposals mode, the whole-slice (``slices`` mode) answer
            computed from the same model run; its ``total_s`` counts reading, that run's model
            time, the pipeline's other pre-processing and its own post-processing.
    """

    image: Volume
    labels: np.ndarray
    mode: str
    boxes: list[SliceBox]
    components: list[dict]
    metrics: Optional[dict]
    run: RunStats
    timings: dict[str, float]
    card: ModelCard
    model_sha256: str
    provider: str
    slices: Optional["SegmentationResult"] = None
    grid: Optional[GridTransform] = None
