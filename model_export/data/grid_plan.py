"""The model grid of a training run, chosen like nnU-Net's plans: a fixed axis order and a target
spacing, by default the median voxel size of the training images (``msdn_core.grid``).

``plan_grid(cases, spacing="auto", orientation="LPS")`` reads each training image's geometry with the
core reader, brings it into ``orientation`` (axes only, no resampling) and takes the median in-plane
voxel size (sy, sx); a given spacing is used as it is. The result goes into the model card
(``input.spacing_mm``, ``input.orientation``), which training, evaluation and serving then all use.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Optional

import numpy as np

from model_export.data.manifest import Case
from model_export.data.volumes import read_volume
from msdn_core.grid import ModelGrid

logger = logging.getLogger(__name__)


def parse_spacing_option(text: str) -> str | tuple[float, ...] | None:
    """A ``--spacing`` value: ``auto``, ``none``, or ``S`` / ``SY,SX`` / ``SZ,SY,SX`` mm (ValueError otherwise)."""
    value = str(text).strip().lower()
    if value in ("auto", "none"):
        return None if value == "none" else "auto"
    try:
        numbers = [float(v) for v in value.replace(" ", ",").split(",") if v]
    except ValueError:
        raise ValueError(f"--spacing must be auto, none or SY,SX (mm), got {text!r}") from None
    from msdn_core.grid import check_spacing

    return check_spacing(numbers * 2 if len(numbers) == 1 else numbers)


def parse_orientation_option(text: str) -> Optional[str]:
    """An ``--orientation`` value: three LPS letters (e.g. ``LPS``) or ``none``."""
    from msdn_core.grid import check_orientation

    return None if str(text).strip().lower() == "none" else check_orientation(text)


def median_spacing(cases: Sequence[Case], *, orientation: Optional[str] = None) -> tuple[float, float]:
    """Median (sy, sx) in mm of the cases' images, in ``orientation``'s axis order when given.

    Raises:
        ValueError: no cases.
    """
    if not cases:
        raise ValueError("median_spacing needs at least one case")
    grid = ModelGrid(orientation=orientation)
    spacings = []
    for case in cases:
        image = read_volume(case.image)
        spacings.append(grid.transform(image.shape, image.affine).spacing[1:])
    sy, sx = np.median(np.asarray(spacings, np.float64), axis=0)
    return round(float(sy), 4), round(float(sx), 4)


def plan_grid(
    cases: Sequence[Case],
    *,
    spacing: str | Sequence[float] | None = "auto",
    orientation: Optional[str] = "LPS",
) -> ModelGrid:
    """The model grid for training on ``cases`` (module docstring); ``spacing=None`` and
    ``orientation=None`` give the undefined grid (every image on its own)."""
    if spacing == "auto":
        spacing = median_spacing(cases, orientation=orientation)
        logger.info("model grid: median in-plane spacing of %d training images %s mm", len(cases), spacing)
    return ModelGrid(None if spacing is None else tuple(float(v) for v in spacing), orientation)


__all__ = ["median_spacing", "parse_orientation_option", "parse_spacing_option", "plan_grid"]
