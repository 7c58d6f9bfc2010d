"""The proposal operating point in use: which detector score threshold, from where, and what ``auto`` does.

``MSDN_PROPOSAL_SCORE_THRESHOLD`` is optional. The threshold of proposals mode is

* the setting, when it is set (source ``setting``);
* else the model card's calibrated ``detection.score_threshold`` (``msdn calibrate``; source ``card``);
* else ``DEFAULT_SCORE_THRESHOLD`` 0.5 (source ``default``).

``mode=auto`` (no boxes) uses proposals only when the model detects **and** its threshold comes from
the card or the setting; a detecting model without a calibrated threshold answers ``auto`` with whole
slices, so an uncalibrated detector (whose scores may never reach 0.5) never answers ``auto`` with an
empty mask. ``mode=proposals`` asked for explicitly always runs, at the threshold above. Torch-free.

The score the threshold applies to (``MSDN_PROPOSAL_CONFIRMATION``): the setting when set, else the
card's ``detection.confirmation`` (what ``msdn calibrate`` chose the threshold on), else ``none``
(the detection score). ``segmentation``: a component's score is its detection score x its mean
whole-slice foreground probability (``msdn_core.postprocess`` step 5).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from msdn_core.card import ModelCard

#: Threshold of proposals mode when neither the setting nor the card gives one.
DEFAULT_SCORE_THRESHOLD = 0.5

Source = Literal["setting", "card", "default"]


@dataclass(frozen=True)
class ProposalThreshold:
    """The proposal score threshold in use and where it comes from (``setting``, ``card``, ``default``)."""

    value: float
    source: Source

    @property
    def calibrated(self) -> bool:
        """Chosen for this model (card) or by the operator (setting), not the fixed default."""
        return self.source != "default"


def proposal_threshold(setting: Optional[float], card: Optional[ModelCard]) -> ProposalThreshold:
    """The threshold for ``MSDN_PROPOSAL_SCORE_THRESHOLD`` = ``setting`` and the model's ``card``."""
    if setting is not None:
        return ProposalThreshold(float(setting), "setting")
    if card is not None and card.score_threshold is not None:
        return ProposalThreshold(float(card.score_threshold), "card")
    return ProposalThreshold(DEFAULT_SCORE_THRESHOLD, "default")


def confirmation(setting: Optional[str], card: Optional[ModelCard]) -> str:
    """``none`` or ``segmentation`` for ``MSDN_PROPOSAL_CONFIRMATION`` = ``setting`` and ``card``."""
    if setting is not None:
        return str(setting)
    return card.confirmation if card is not None else "none"


def auto_mode(*, has_boxes: bool, has_detection: bool, threshold: ProposalThreshold) -> str:
    """What ``mode=auto`` runs: ``boxes`` when given, ``proposals`` for a detecting model with a
    calibrated or set threshold, else ``slices`` (module docstring)."""
    if has_boxes:
        return "boxes"
    return "proposals" if has_detection and threshold.calibrated else "slices"


__all__ = ["DEFAULT_SCORE_THRESHOLD", "ProposalThreshold", "auto_mode", "confirmation", "proposal_threshold"]
